"""The paddle side of the uniform model view."""
from __future__ import annotations

import copy
import math
import sys

from . import memory
from .base import Adapter

_DLPACK: list = []
_CPU_ONLY: list = []


def _cpu_only() -> bool:
    """Whether this paddle was built without any device but the CPU (then every tensor lives on the CPU)."""
    if not _CPU_ONLY:
        import paddle

        devices = (paddle.is_compiled_with_cuda() or paddle.is_compiled_with_rocm() or paddle.is_compiled_with_xpu()
                   or bool(paddle.device.get_all_custom_device_type()))
        _CPU_ONLY.append(not devices)
    return _CPU_ONLY[0]


def _torch_dtype(name: str):
    """The torch dtype of a paddle dtype name ("float32", "bfloat16", ...; the names agree), or None."""
    import torch

    dt = getattr(torch, name, None)
    return dt if isinstance(dt, torch.dtype) else None


def _dlpack():
    """(paddle to_dlpack, torch from_dlpack), imported once."""
    if not _DLPACK:
        from paddle.utils.dlpack import to_dlpack
        from torch.utils.dlpack import from_dlpack

        _DLPACK[:] = [to_dlpack, from_dlpack]
    return _DLPACK


class PaddleAdapter(Adapter):
    name = "paddle"
    _dtype_prefix = "paddle."

    def __init__(self):
        super().__init__()
        self._dtype_ids: dict = {}  # id(dtype) -> (dtype, name): see dtype_name

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
        buffers = module._buffers
        if buffers:  # most layers have none
            skip = getattr(module, "_non_persistable_buffer_names_set", ())
            out += [(n, b, "buffer", n not in skip) for n, b in buffers.items() if b is not None]
        return out

    def tree_parts(self, module):
        """(parameters, buffers, names of non-persistent buffers, children): the layer's own dicts by name
        (values may be None), for ModelTree, which walks every layer once and asks only this."""
        return (module._parameters, module._buffers, getattr(module, "_non_persistable_buffer_names_set", ()),
                module._sub_layers)

    def set_training(self, module, training: bool):
        module.train() if training else module.eval()

    # -- tensors -------------------------------------------------------------

    def grad_mode(self) -> bool:
        import paddle

        return paddle.is_grad_enabled()

    def no_grad(self):
        import paddle

        return paddle.no_grad()

    def no_storage(self):
        import paddle

        return paddle.LazyGuard()

    def materialize(self, module):
        for t in [p for _, p in module.named_parameters()] + [b for _, b in module.named_buffers()]:
            if not t._is_initialized():
                t.initialize()

    def release(self, module):
        pass  # paddle has no storage-less device to move a layer to: the memory goes with the layer

    def set_grad_mode(self, enabled: bool):
        import paddle

        paddle.set_grad_enabled(enabled)
    def readable(self, t) -> bool:
        """Whether ``t`` holds data: initialised, or of zero size (paddle never allocates those: nothing to read)."""
        return bool(t._is_initialized()) or 0 in t.shape

    def dtype_name(self, t) -> str:
        """"float32", "bfloat16", ...: by the dtype object's identity first. Hashing a paddle dtype costs
        about 0.5 us, as much as the rest of the call, and validation asks this of every tensor; paddle
        hands out the same few dtype objects, and each entry keeps its dtype alive, so its id stays its own."""
        dt = t.dtype
        hit = self._dtype_ids.get(id(dt))
        if hit is not None:
            return hit[1]
        name = super().dtype_name(t)
        if len(self._dtype_ids) < 64:  # bounded, should paddle ever make a new dtype object each time
            self._dtype_ids[id(dt)] = (dt, name)
        return name

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

        # a contiguous CPU copy, through DLPack: numpy would turn bfloat16 into uint16 and lose its meaning
        return torch.from_dlpack(t.detach().cpu().contiguous()), False

    def overlapping_strides(self, t):
        """``t.strides`` when some of ``t``'s elements share memory (``paddle.as_strided``), else None. Writing
        one through ``set_value`` would keep one value of those that share a place, silently."""
        if t.is_contiguous():
            return None
        strides = t.strides
        return tuple(strides) if memory.overlapping(tuple(t.shape), strides) else None

    def gather(self, tensors, shape, dtype: str):
        """A new torch tensor (K, *shape) holding the K paddle ``tensors`` (each of ``shape`` and ``dtype``),
        read by address in one call (:mod:`.memory`), or None when that does not apply (then nothing was read)."""
        ptrs = self._pointers(tensors)
        td = _torch_dtype(dtype)
        if ptrs is None or td is None:
            return None
        out = memory.gather(ptrs, math.prod(shape), td)
        return None if out is None else out.view(len(tensors), *shape)

    def scatter(self, tensors, values) -> bool:
        """Write ``values[i]`` into paddle tensor ``tensors[i]`` (a torch tensor (K, ...) of their dtype and
        size), by address in one call; False when that does not apply (then nothing was written)."""
        if values.device.type != "cpu":
            return False
        ptrs = self._pointers(tensors)
        if ptrs is None:
            return False
        return memory.scatter(ptrs, values.reshape(len(tensors), -1))

    def _pointers(self, tensors):
        """The data pointers of ``tensors`` if every one is a dense, contiguous, initialised CPU tensor, else None.

        A paddle built for CPU only has no other place, so the per-tensor place check (about 1 us) is
        skipped there.
        """
        if not all(t.is_dense() and t.is_contiguous() and t._is_initialized() for t in tensors):
            return None
        if not _cpu_only() and not all(t.place.is_cpu_place() for t in tensors):
            return None
        return [t.data_ptr() for t in tensors]

    def write(self, t, value):
        """Write a torch tensor ``value`` (same shape) into ``t`` in place, keeping dtype/device."""
        view, direct = self.writable_view(t)
        if direct:
            import torch

            with torch.no_grad():
                view.copy_(value)
            return
        import paddle

        value = paddle.from_dlpack(value.detach().cpu().contiguous())  # bit-exact, bfloat16 included
        t.set_value(value if value.dtype == t.dtype else value.astype(t.dtype))

    def version(self, t) -> int:
        """``t``'s inplace version: paddle's in-place ops raise it, ``set_value`` and writes through views do not."""
        return t.inplace_version

    def wrote(self, tensors):
        """Raise the inplace version of paddle ``tensors`` the executor wrote (through DLPack views, by address,
        or with ``set_value``, none of which does it), as paddle's own in-place ops do: a graph that saved one of
        them then refuses to backpropagate through the old values, as torch's does."""
        for t in tensors:
            t._bump_inplace_version()

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


    # -- running (output comparison) -----------------------------------------
    def is_tensor(self, obj) -> bool:
        paddle = sys.modules.get("paddle")
        return paddle is not None and isinstance(obj, paddle.Tensor)

    def to_tensor(self, array):
        """A paddle tensor holding a numpy array (same dtype)."""
        import paddle

        return paddle.to_tensor(array)

    def snapshot(self, t):
        """An independent numpy copy of ``t`` (bfloat16, which numpy shows as uint16, widened to float32)."""
        t = t.detach()
        if "bfloat16" in str(t.dtype):
            t = t.astype("float32")
        a = t.numpy()  # paddle copies a tensor into a fresh array here; copy again only if it did not
        return a.copy() if a.size and a.ctypes.data == t.data_ptr() else a

    def add_forward_hook(self, module, fn):
        """Call ``fn(inputs, output)`` each time ``module`` finishes a forward; returns a removable handle."""

        def hook(_layer, inputs, output):
            fn(inputs, output)  # returns None: the output is left as it is

        return module.register_forward_post_hook(hook)

    def add_call_hook(self, module, fn):
        """Call ``fn(args, kwargs, output)`` each time ``module`` finishes a forward (keyword inputs too); what ``fn``
        returns, when not None, replaces the output."""

        def hook(_layer, args, kwargs, output):
            return fn(args, kwargs, output)

        return module.register_forward_post_hook(hook, with_kwargs=True)

    def forward(self, model, args, kwargs, grad: bool):
        import paddle

        flipped = []
        if grad:
            # paddle's fused RNN kernel keeps nothing for backward when is_test (eval mode): backward then
            # fails with "Tensor holds no memory". Without dropout its training mode computes the same
            # outputs, so for a gradient pass those layers run in training mode (restored right after).
            for layer in [model] + list(model.sublayers()):
                if isinstance(layer, paddle.nn.layer.rnn.RNNBase) and not layer.training and not layer.dropout:
                    layer.training = True
                    flipped.append(layer)
        try:
            with paddle.set_grad_enabled(grad):
                return model(*args, **kwargs)
        finally:
            for layer in flipped:
                layer.training = False

    def backward_mean(self, tensors, retain: bool = False) -> bool:
        """Backward from the sum of the means of every floating tensor that needs a gradient (the graph kept for
        another backward when ``retain``); False when none."""
        import paddle

        terms = [t.astype("float32").mean() for t in tensors if t.is_floating_point() and not t.stop_gradient]
        if not terms:
            return False
        paddle.add_n(terms).backward(retain_graph=retain)
        return True

    def grads_of(self, target, tensors) -> list:
        """The gradients of ``target`` (a scalar) with respect to ``tensors`` (None where it does not depend on one),
        the graph kept."""
        import paddle

        return list(paddle.grad(target, tensors, retain_graph=True, allow_unused=True))

    def backward_with(self, tensors, grads) -> None:
        """One backward from ``tensors``, each seeded by its entry of ``grads`` (None: a scalar's 1)."""
        import paddle

        paddle.autograd.backward(tensors, grads)

    def float64_copy(self, t):
        """A float64 copy of ``t`` that autograd tracks, outside ``t``'s graph; not a leaf, so hooks put on it apply
        to gradients taken with respect to it, as on a model's output (paddle.grad skips a leaf's hooks)."""
        c = t.detach().astype("float64")
        c.stop_gradient = False
        return c * 1.0

    def needs_grad(self, t) -> bool:
        return not t.stop_gradient

    def like(self, array, t):
        import paddle

        return paddle.to_tensor(array, place=t.place).astype(t.dtype)

    def add_pre_hook(self, module, fn):
        return module.register_forward_pre_hook(lambda _layer, args, kwargs: fn(args, kwargs), with_kwargs=True)

    def clear_grads(self, model):
        model.clear_gradients(set_to_zero=False)

    def load_weights(self, model, path: str):
        """Load a state dict file (.pdparams, .safetensors, an index) into ``model``; every key must fit. Read with
        the package's own .pdparams reader: never paddle.load, which runs the file's pickle."""
        import paddle
        import torch

        from ..formats.files import read_for_model

        own = model.state_dict()
        dtypes = {k: (tuple(v.shape), getattr(torch, str(v.dtype).split(".")[-1], torch.float32)) for k, v in own.items()}
        for k, t in read_for_model(path, "paddle", dtypes, type(model).__name__).items():
            own[k].set_value(paddle.from_dlpack(t.to(dtypes[k][1]).contiguous()))


def _unnamed(attr):
    """A ParamAttr like ``attr`` without its name, so re-creating a parameter cannot clash with it."""
    import paddle

    if attr is None or attr is False or isinstance(attr, str):
        return None
    attr = paddle.ParamAttr._to_attr(attr)
    attr = copy.copy(attr)
    attr.name = None
    return attr
