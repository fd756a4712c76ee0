"""ProxyModel: a torch or paddle model plus what the user said about how to pair it."""
from __future__ import annotations

from .errors import LayerMapError

MODES = ("self", "sublayers", "all")


def create_model(model, name: str | None = None, adapter=None) -> "ProxyModel":
    """Wrap a ``torch.nn.Module`` or ``paddle.nn.Layer`` (a ProxyModel is returned as it is).

    ``adapter``: the model's adapter (``adapters.base.ModelAdapter``); by default the one of its framework.
    """
    if isinstance(model, ProxyModel):
        return model
    return ProxyModel(model, name, adapter)


class ProxyModel:
    def __init__(self, model, name: str | None = None, adapter=None):
        if adapter is None:
            from .adapters import adapter_for  # here, not at import: a dump reader builds ProxyModels of plain data

            adapter = adapter_for(model)
        if adapter is None or not adapter.is_module(model):
            raise TypeError(
                f"create_model() takes a torch.nn.Module or a paddle.nn.Layer, got {type(model).__module__}."
                f"{type(model).__qualname__}; build the model first and pass the model object"
            )
        self.model = model
        self.adapter = adapter
        self.framework = adapter.name
        self.name = name or type(model).__name__
        self.layer_map: list = []
        self.layer_map_auto = False  # the layer map came from auto_layer_map: units marked, not an order
        self.black_list: dict[int, str] = {}
        self.white_list: dict[int, str] = {}

    def __repr__(self):
        return f"ProxyModel({self.framework}:{self.name}, layer_map={len(self.layer_map)})"

    # -- finding modules -----------------------------------------------------
    def named_modules(self):
        """(dotted path, module) for every module, parents before children, each module once."""
        seen = set()
        stack = [("", self.model)]
        out = []
        while stack:
            path, mod = stack.pop()
            if id(mod) in seen:
                continue
            seen.add(id(mod))
            out.append((path, mod))
            kids = [(f"{path}.{n}" if path else n, c) for n, c in self.adapter.named_children(mod) if c is not None]
            stack.extend(reversed(kids))
        return out

    def path_of(self, modules) -> list[str]:
        """Dotted paths of ``modules``; LayerMapError naming every one that is not part of this model."""
        if not modules:
            return []  # no layer map: do not walk the model
        index = {id(m): p for p, m in self.named_modules()}
        missing = [m for m in modules if id(m) not in index]
        if missing:
            names = ", ".join(f"{type(m).__name__} at 0x{id(m):x}" for m in missing)
            raise LayerMapError(
                f"{self.name} ({self.framework}) does not contain: {names}; pass submodules of this model "
                "(for example model.encoder.layers[0])"
            )
        return [index[id(m)] for m in modules]

    # -- what the user says --------------------------------------------------
    def _modules_arg(self, what, layers) -> list:
        """``layers`` as a list of this framework's modules; LayerMapError naming everything else."""
        if self.adapter.is_module(layers) and what != "set_layer_map":
            layers = [layers]
        elif self.adapter.is_module(layers) or isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
            raise LayerMapError(
                f"{what}() of {self.name} ({self.framework}) takes a list of {self.framework} modules, got "
                f"{type(layers).__name__}; pass e.g. [model.encoder, model.head] (list(container) for its children)"
            )
        else:
            layers = list(layers)
        bad = [layer for layer in layers if not self.adapter.is_module(layer)]
        if bad:
            raise LayerMapError(
                f"{what}() of {self.name} ({self.framework}) takes {self.framework} modules, got "
                + ", ".join(f"{type(b).__module__}.{type(b).__name__}" for b in bad)
                + "; pass submodules of this model"
            )
        self.path_of(layers)
        return layers

    def set_layer_map(self, layers):
        """Pair these submodules, in this order, with the other model's layer map."""
        layers = self._modules_arg("set_layer_map", layers)
        self.layer_map = layers
        self.layer_map_auto = False
        return self

    def auto_layer_map(self, side: str, pool=None):
        """Mark every outermost submodule whose class takes part in a registered rule or special init.

        The marked modules are transferred and compared as units; they are paired with the other model's
        modules by name (then by order among alike leftovers within a parent), never zipped by position:
        two same-shaped layers defined in a different order on the two sides still meet their namesakes.
        """
        if side not in ("base", "raw"):
            raise ValueError(f"auto_layer_map() takes 'base' or 'raw', got {side!r}")
        from .special_init import registry

        pool = registry(pool)
        classes = pool.classes_on(side, self.framework)
        picked, inside = [], []
        for path, mod in self.named_modules():
            if path == "" or any(path.startswith(p + ".") for p in inside):
                continue
            if set(self.adapter.class_names(mod)) & classes:
                picked.append(mod)
                inside.append(path)
        self.layer_map = picked
        self.layer_map_auto = True
        return self

    def _update(self, what, table, layers, mode):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        layers = self._modules_arg(what, layers)
        for layer in layers:
            table[id(layer)] = mode
        return self

    def update_black_list(self, layers, mode: str = "all"):
        """Leave these modules out: "self" their own tensors, "sublayers" their children, "all" both."""
        return self._update("update_black_list", self.black_list, layers, mode)

    def update_white_list(self, layers, mode: str = "all"):
        """Take only these modules: "self" their own tensors, "sublayers" their children, "all" both."""
        return self._update("update_white_list", self.white_list, layers, mode)
