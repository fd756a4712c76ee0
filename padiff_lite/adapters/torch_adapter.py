"""The torch side of the uniform model view."""
from __future__ import annotations

import copy
import sys

import torch

from ..fastcopy import copy_all
from . import memory
from .base import Adapter


class _NoInit(torch.overrides.TorchFunctionMode):
    """torch.nn.init's in-place initialisers as no-ops while a model is built on the meta device: there is
    nothing to initialise, and on meta tensors they import torch._dynamo (seconds, ~100 MB) the first time.

    A torch function mode: it applies to this thread's calls inside the ``with`` only (torch.nn.init's
    functions dispatch to an active mode before doing anything), so nothing global is rebound."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__module__", None) == "torch.nn.init" and getattr(func, "__name__", "").endswith("_"):
            return args[0] if args else next(iter((kwargs or {}).values()), None)
        return func(*args, **(kwargs or {}))


class TorchAdapter(Adapter):
    name = "torch"
    _dtype_prefix = "torch."

    # -- recognising objects -------------------------------------------------
    def owns(self, obj) -> bool:
        torch = sys.modules.get("torch")  # never import a framework the caller did not use
        return torch is not None and isinstance(obj, (torch.nn.Module, torch.Tensor))

    def is_module(self, obj) -> bool:
        torch = sys.modules.get("torch")
        return torch is not None and isinstance(obj, torch.nn.Module)

    # -- structure -----------------------------------------------------------
    def named_children(self, module):
        return module._modules.items()

    def own_tensors(self, module):
        """(name, tensor, kind, persistent) for the module's own parameters and buffers."""
        out = [(n, p, "param", True) for n, p in module._parameters.items() if p is not None]
        buffers = module._buffers
        if buffers:  # most modules have none
            skip = module._non_persistent_buffers_set
            out += [(n, b, "buffer", n not in skip) for n, b in buffers.items() if b is not None]
        return out

    def tree_parts(self, module):
        """(parameters, buffers, names of non-persistent buffers, children): the module's own dicts by name
        (values may be None), for ModelTree, which walks every module once and asks only this."""
        return module._parameters, module._buffers, module._non_persistent_buffers_set, module._modules

    def set_training(self, module, training: bool):
        module.train(training)

    # -- tensors -------------------------------------------------------------

    def grad_mode(self) -> bool:
        return torch.is_grad_enabled()

    def no_grad(self):
        return torch.no_grad()

    def no_storage(self):
        import contextlib

        stack = contextlib.ExitStack()
        stack.enter_context(torch.device("meta"))
        stack.enter_context(_NoInit())
        return stack

    def materialize(self, module):
        if any(t.is_meta for t in list(module.parameters()) + list(module.buffers())):
            module.to_empty(device="cpu")

    def release(self, module):
        module.to("meta")

    def set_grad_mode(self, enabled: bool):
        torch.set_grad_enabled(enabled)
    def readable(self, t) -> bool:
        return not t.is_meta

    def device(self, t) -> str:
        return str(t.device)

    def is_direct(self, t) -> bool:
        """Whether torch_view(t) shares t's memory (writes through it land in t)."""
        return True

    def torch_view(self, t):
        """A torch tensor sharing ``t``'s memory (no copy)."""
        return t.detach()

    def writable_view(self, t):
        """``(view, direct)``: a torch tensor always shares memory with ``t`` (any strides or device)."""
        return t.detach(), True

    def overlapping_strides(self, t):
        """``t.stride()`` when some of ``t``'s elements share memory (``expand``, ``as_strided``), else None."""
        if t.is_contiguous():
            return None
        strides = t.stride()
        return tuple(strides) if memory.overlapping(tuple(t.shape), strides) else None

    def gather(self, tensors, shape, dtype: str):
        """A new torch tensor (K, *shape) holding ``tensors`` (``torch.stack``), or None when they cannot be
        stacked (different devices)."""
        try:
            with torch.no_grad():
                return torch.stack(tensors)
        except RuntimeError:
            return None

    def scatter(self, tensors, values) -> bool:
        """Write ``values[i]`` into ``tensors[i]``: by address in one call (:mod:`.memory`) when all are
        contiguous CPU tensors of ``values``' dtype, else with one batched copy (copy_ casts dtype and device)."""
        dt = values.dtype
        if values.is_cpu and all(t.is_cpu and t.dtype is dt and t.is_contiguous() for t in tensors):
            if memory.scatter([t.data_ptr() for t in tensors], values.reshape(len(tensors), -1)):
                # written behind autograd's back: bump their version counters as copy_ would
                torch.autograd.graph.increment_version(tensors)
                return True
        with torch.no_grad():
            copy_all(tensors, list(values.unbind(0)))
        return True

    def write(self, t, value):
        """Write a torch tensor ``value`` (same shape) into ``t`` in place, keeping dtype/device."""
        with torch.no_grad():
            t.copy_(value)

    def version(self, t) -> int:
        """``t``'s in-place version counter (autograd's): every in-place write raises it."""
        return t._version

    def wrote(self, tensors):
        """Nothing to do: the executor's writes into torch tensors already raised their version counters
        (``copy_`` through ``detach()`` views, which share the counter; ``increment_version`` after a write by
        address), so a graph that saved one of them refuses to backpropagate through the old values."""

    # -- initialising (padiff_lite.init) ---------------------------------------
    def stored_transposed(self, module, name: str) -> bool:
        """Whether own tensor ``name`` of ``module`` is stored transposed to torch's layout (never, here)."""
        return False

    def padding_idx(self, module):
        """An Embedding's padding row as a non-negative index, or None."""
        return getattr(module, "padding_idx", None)

    def fresh_defaults(self, module, names) -> dict:
        """What torch's own reset gives the named own tensors of ``module``, as torch tensors.

        A deep copy of the module is reset with ``reset_parameters()`` (``_reset_parameters()`` for
        MultiheadAttention); ``module`` itself is not touched. A class without either gives ``{}``.
        """
        reset = next((n for n in ("reset_parameters", "_reset_parameters") if callable(getattr(module, n, None))), None)
        if reset is None:
            return {}
        clone = copy.deepcopy(module)
        with torch.no_grad():
            getattr(clone, reset)()
        own = {n: t for n, t, _, _ in self.own_tensors(clone)}
        return {n: own[n].detach().clone() for n in names if n in own}

    # -- running (output comparison) -----------------------------------------
    def is_tensor(self, obj) -> bool:
        torch = sys.modules.get("torch")
        return torch is not None and isinstance(obj, torch.Tensor)

    def to_tensor(self, array):
        """A torch tensor holding a numpy array (same dtype)."""
        import numpy as np

        return torch.from_numpy(np.ascontiguousarray(array))

    def snapshot(self, t):
        """An independent numpy copy of ``t`` (bfloat16 widened to float32, which numpy lacks)."""
        t = t.detach()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.cpu().numpy().copy()

    def add_forward_hook(self, module, fn):
        """Call ``fn(inputs, output)`` each time ``module`` finishes a forward; returns a removable handle."""
        return module.register_forward_hook(lambda _m, inputs, output: fn(inputs, output))

    def add_call_hook(self, module, fn):
        """Call ``fn(args, kwargs, output)`` each time ``module`` finishes a forward (keyword inputs too); what ``fn``
        returns, when not None, replaces the output."""
        return module.register_forward_hook(lambda _m, args, kwargs, output: fn(args, kwargs, output),
                                            with_kwargs=True)

    def forward(self, model, args, kwargs, grad: bool):
        with torch.set_grad_enabled(grad):
            return model(*args, **kwargs)

    def backward_mean(self, tensors, retain: bool = False) -> bool:
        """Backward from the sum of the means of every floating tensor that needs a gradient (the graph kept for
        another backward when ``retain``); False when none."""
        terms = [t.float().mean() for t in tensors if t.is_floating_point() and t.requires_grad]
        if not terms:
            return False
        torch.stack(terms).sum().backward(retain_graph=retain)
        return True

    def grads_of(self, target, tensors) -> list:
        """The gradients of ``target`` (a scalar) with respect to ``tensors`` (None where it does not depend on one),
        the graph kept."""
        return list(torch.autograd.grad(target, tensors, retain_graph=True, allow_unused=True))

    def backward_with(self, tensors, grads) -> None:
        """One backward from ``tensors``, each seeded by its entry of ``grads`` (None: a scalar's 1)."""
        torch.autograd.backward(tensors, grads)

    def float64_copy(self, t):
        """A float64 copy of ``t`` that autograd tracks, outside ``t``'s graph; not a leaf, so hooks put on it apply
        to gradients taken with respect to it, as on a model's output."""
        return t.detach().double().requires_grad_() * 1.0

    def needs_grad(self, t) -> bool:
        return bool(t.requires_grad)

    def like(self, array, t):
        import numpy as np

        return torch.from_numpy(np.ascontiguousarray(array)).to(dtype=t.dtype, device=t.device)

    def add_pre_hook(self, module, fn):
        return module.register_forward_pre_hook(lambda _m, args, kwargs: fn(args, kwargs), with_kwargs=True)

    def clear_grads(self, model):
        model.zero_grad(set_to_none=True)

    def load_weights(self, model, path: str):
        """Load a state dict file (.pt/.pth/.bin, .safetensors, an index) into ``model``, strictly, with the package's
        safe readers (torch files with weights_only=True)."""
        from ..formats.files import read_for_model

        own = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
        model.load_state_dict(read_for_model(path, "torch", own, type(model).__name__), strict=True)
