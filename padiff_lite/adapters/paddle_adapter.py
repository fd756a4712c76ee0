"""The paddle side of the uniform model view."""
from __future__ import annotations

import copy
import math
import sys

_DTYPE_NAMES: dict = {}
_DLPACK: list = []


def _dlpack():
    """(paddle to_dlpack, torch from_dlpack), imported once."""
    if not _DLPACK:
        from paddle.utils.dlpack import to_dlpack
        from torch.utils.dlpack import from_dlpack

        _DLPACK[:] = [to_dlpack, from_dlpack]
    return _DLPACK


class PaddleAdapter:
    name = "paddle"

    # -- recognising objects -------------------------------------------------
    def owns(self, obj) -> bool:
        paddle = sys.modules.get("paddle")
        return paddle is not None and isinstance(obj, (paddle.nn.Layer, paddle.Tensor))

    def is_module(self, obj) -> bool:
        paddle = sys.modules.get("paddle")
        return paddle is not None and isinstance(obj, paddle.nn.Layer)

    # -- structure -----------------------------------------------------------
    def named_children(self, module):
        return module._sub_layers.items()

    def own_tensors(self, module):
        """(name, tensor, kind, persistent) for the layer's own parameters and buffers.

        BatchNorm's ``_mean``/``_variance`` are parameters in paddle, so they come out as
        "param" here; the rule tables map them to torch's buffers by name.
        """
        out = [(n, p, "param", True) for n, p in module._parameters.items() if p is not None]
        skip = getattr(module, "_non_persistable_buffer_names_set", set())
        out += [(n, b, "buffer", n not in skip) for n, b in module._buffers.items() if b is not None]
        return out

    def class_names(self, module):
        return [c.__name__ for c in type(module).__mro__]

    def get_tensor(self, module, dotted: str):
        import paddle

        obj = module
        for part in dotted.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                return None
        return obj if isinstance(obj, paddle.Tensor) else None

    def set_training(self, module, training: bool):
        module.train() if training else module.eval()

    def is_training(self, module) -> bool:
        return module.training

    # -- tensors -------------------------------------------------------------
    def shape(self, t) -> tuple:
        return tuple(t.shape)

    def dtype_name(self, t) -> str:
        dt = t.dtype
        name = _DTYPE_NAMES.get(dt)
        if name is None:  # str() of a paddle dtype costs a few microseconds: once per dtype
            name = _DTYPE_NAMES[dt] = str(dt).replace("paddle.", "")
        return name

    def readable(self, t) -> bool:
        return bool(t._is_initialized())

    def device(self, t) -> str:
        return str(t.place)

    def is_direct(self, t) -> bool:
        """Whether torch_view(t) shares t's memory (writes through it land in t)."""
        return t.place.is_cpu_place() and t.is_contiguous()

    def torch_view(self, t):
        """A torch tensor sharing ``t``'s memory through DLPack, or a copy where that cannot work."""
        return self.writable_view(t)[0]

    def writable_view(self, t):
        """``(view, direct)``: a torch tensor sharing ``t``'s memory and True for a contiguous CPU tensor,
        else a copy of ``t`` and False (write it back with :meth:`write`).

        The DLPack capsule is made by paddle's ``to_dlpack`` (which also takes parameters that require
        grad, so no ``detach()``) and read by torch's ``from_dlpack``: about 3 us a tensor, against
        about 11 us through the ``__dlpack__`` protocol (``torch.from_dlpack(t.detach())``).
        """
        if t.is_contiguous():
            to_capsule, from_capsule = _dlpack()
            try:
                view = from_capsule(to_capsule(t))
            except (RuntimeError, BufferError, TypeError, ValueError):
                view = None  # e.g. a GPU tensor and a CPU-only torch
            if view is not None and view.device.type == "cpu":
                return view, True
        import torch

        return torch.from_numpy(t.numpy()), False

    def write(self, t, value):
        """Write a torch tensor ``value`` (same shape) into ``t`` in place, keeping dtype/device."""
        view, direct = self.writable_view(t)
        if direct:
            import torch

            with torch.no_grad():
                view.copy_(value)
            return
        import paddle

        t.set_value(paddle.to_tensor(value.cpu().numpy()).astype(t.dtype))

    def to_numpy(self, t):
        return t.numpy()

    # -- initialising (padiff_lite.init) ---------------------------------------
    def stored_transposed(self, module, name: str) -> bool:
        """Whether own tensor ``name`` of ``module`` is stored transposed to torch's layout.

        Only Linear weights are: paddle keeps them [in, out], torch [out, in].
        """
        return name == "weight" and "Linear" in self.class_names(module)

    def padding_idx(self, module):
        """An Embedding's padding row as a non-negative index, or None (paddle keeps negative indices)."""
        p = getattr(module, "_padding_idx", None)
        if p is None:
            return None
        return p if p >= 0 else module.weight.shape[0] + p

    _NORMS = {"LayerNorm", "GroupNorm", "_BatchNormBase", "BatchNorm", "_InstanceNormBase"}
    _NORM_VALUES = {"weight": 1.0, "scale": 1.0, "bias": 0.0, "_mean": 0.0, "_variance": 1.0}

    def fresh_defaults(self, module, names) -> dict:
        """What paddle's constructor would give the named own tensors of ``module``, as torch tensors.

        Paddle layers have no reset method, so each tensor is re-created with the initialiser the
        constructor uses: the layer's ParamAttr initialiser when one was given, else the class default
        (Linear/Embedding weight Xavier-uniform, biases 0, Conv weight Normal(0, sqrt(2 / fan_in)),
        norm weight/scale 1, bias 0, mean 0, variance 1, RNN tensors Uniform(+-1/sqrt(hidden))); an
        Embedding's padding row is 0. ``module`` itself is not touched. Other classes give nothing.
        """
        import paddle

        init = paddle.nn.initializer
        classes = set(self.class_names(module))
        out = {}
        for name in names:
            t = module._parameters.get(name)
            if t is None:
                t = module._buffers.get(name)
            if t is None:
                continue
            attr, default = None, None
            is_bias = name.startswith("bias")
            if classes & {"Linear", "Embedding"}:
                attr = getattr(module, "_bias_attr" if is_bias else "_weight_attr", None)
            elif "_ConvNd" in classes:
                attr = getattr(module, "_bias_attr" if is_bias else "_param_attr", None)
                if not is_bias and "Transpose" not in type(module).__name__:
                    fan_in = math.prod(module._kernel_size) * module._in_channels
                    default = init.Normal(0.0, (2.0 / fan_in) ** 0.5)
            elif classes & self._NORMS and name in self._NORM_VALUES:
                if name in ("weight", "scale", "bias"):
                    attr = getattr(module, "_bias_attr" if is_bias else "_weight_attr", None)
                default = init.Constant(self._NORM_VALUES[name])
            elif classes & {"RNNBase", "RNNCellBase"}:
                bound = 1.0 / math.sqrt(module.hidden_size)
                default = init.Uniform(-bound, bound)
            else:
                continue
            fresh = paddle.create_parameter(list(t.shape), t.dtype, attr=_unnamed(attr), is_bias=is_bias,
                                            default_initializer=default)
            value = self.torch_view(fresh).clone()
            pad = self.padding_idx(module) if "Embedding" in classes else None
            if pad is not None:
                value[pad] = 0
            out[name] = value
        return out


def _unnamed(attr):
    """A ParamAttr like ``attr`` without its name, so re-creating a parameter cannot clash with it."""
    import paddle

    if attr is None or attr is False or isinstance(attr, str):
        return None
    attr = paddle.ParamAttr._to_attr(attr)
    attr = copy.copy(attr)
    attr.name = None
    return attr
