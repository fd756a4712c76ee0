"""What the two framework adapters share. Everything that differs lives in torch_adapter.py / paddle_adapter.py."""
from __future__ import annotations


class Adapter:
    name = ""
    _dtype_prefix = ""  # "torch." / "paddle.": stripped from dtype names

    def __init__(self):
        self._dtype_names: dict = {}

    def is_tensor(self, obj) -> bool:  # pragma: no cover - each framework says
        raise NotImplementedError

    # -- structure -----------------------------------------------------------
    def class_names(self, module) -> list[str]:
        """The module's class name and its bases' (rules registered for a base class apply to subclasses)."""
        return [c.__name__ for c in type(module).__mro__]

    def get_tensor(self, module, dotted: str):
        """The tensor at ``dotted`` (e.g. "out_proj.weight") below ``module``, or None."""
        obj = module
        for part in dotted.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                return None
        return obj if self.is_tensor(obj) else None

    def grad(self, t):
        """A numpy copy of ``t``'s gradient, or None (``snapshot`` is each framework's own)."""
        g = getattr(t, "grad", None)
        return None if g is None else self.snapshot(g)

    def is_training(self, module) -> bool:
        return module.training

    # -- tensors -------------------------------------------------------------
    def shape(self, t) -> tuple:
        return tuple(t.shape)

    def dtype_name(self, t) -> str:
        """"float32", "bfloat16", ... (cached per dtype: validation asks for every tensor)."""
        dt = t.dtype
        name = self._dtype_names.get(dt)
        if name is None:
            name = self._dtype_names[dt] = str(dt).replace(self._dtype_prefix, "")
        return name
