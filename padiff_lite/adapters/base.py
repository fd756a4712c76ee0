"""The adapter contract (:class:`ModelAdapter`) and what the two framework adapters share.

Everything that differs lives in torch_adapter.py / paddle_adapter.py. The rest of the package talks to a
model only through the methods of :class:`ModelAdapter`; tests/test_adapter_contract.py checks that both
adapters have each of them with a compatible signature, and tests/unit/ runs tree, pairing and planning
over a fake adapter of plain objects.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol, runtime_checkable


class StructureAdapter(Protocol):
    """What a model is made of: modules, their children and own tensors, class names, layouts."""

    name: str  # "torch" | "paddle": the framework, as registry keys spell it

    def owns(self, obj) -> bool:
        """Whether ``obj`` (a module or a tensor) belongs to this framework."""

    def is_module(self, obj) -> bool: ...

    def is_tensor(self, obj) -> bool: ...

    def named_children(self, module) -> Iterable[tuple[str, Any]]:
        """(name, child) in definition order; a child may be None."""

    def own_tensors(self, module) -> list[tuple[str, Any, str, bool]]:
        """(name, tensor, "param" | "buffer", persistent) of the module's own tensors."""

    def tree_parts(self, module) -> tuple:
        """(parameters by name, buffers by name, names of non-persistent buffers, children by name)."""

    def class_names(self, module) -> list[str]:
        """The class name and its bases' (rules registered for a base apply to subclasses)."""

    def get_tensor(self, module, dotted: str) -> Any:
        """The tensor at ``dotted`` below ``module``, or None."""

    def stored_transposed(self, module, name: str) -> bool:
        """Whether own tensor ``name`` is stored transposed to torch's layout (paddle's Linear weight)."""


class MemoryAdapter(Protocol):
    """Tensor metadata and memory: what validation reads and what the executor writes through."""

    def shape(self, t) -> tuple: ...

    def dtype_name(self, t) -> str:
        """"float32", "bfloat16", ..."""

    def readable(self, t) -> bool:
        """Whether ``t`` holds data (not torch's meta device, not an uninitialised paddle tensor)."""

    def device(self, t) -> str: ...

    def is_direct(self, t) -> bool:
        """Whether ``torch_view(t)`` shares ``t``'s memory."""

    def torch_view(self, t) -> Any:
        """A torch tensor with ``t``'s values, sharing its memory where possible."""

    def writable_view(self, t) -> tuple[Any, bool]:
        """(torch tensor, shares memory): when it does not, write the result back with :meth:`write`."""

    def overlapping_strides(self, t) -> tuple | None:
        """``t``'s strides when some of its elements share memory (made with ``expand`` / ``as_strided``: it cannot
        hold a value per element), else None."""

    def gather(self, tensors: list, shape, dtype: str) -> Any:
        """A torch tensor (K, *shape) holding ``tensors``, or None when this cannot be done at once."""

    def scatter(self, tensors: list, values) -> bool:
        """Write ``values[i]`` into ``tensors[i]``; False when nothing was written (then copy one by one)."""

    def write(self, t, value) -> None:
        """Write the torch tensor ``value`` (same shape) into ``t`` in place."""

    def version(self, t) -> int:
        """``t``'s in-place version counter (the executor tells which tensors a special init wrote)."""

    def wrote(self, tensors) -> None:
        """Announce writes made behind the framework's back (raise the tensors' in-place versions)."""

    def no_storage(self) -> Any:
        """A context in which modules are built without storage (torch's meta device, paddle's LazyGuard)."""

    def materialize(self, module) -> None:
        """Give every tensor under ``module`` (built by :meth:`no_storage`) real, uninitialised CPU storage."""

    def release(self, module) -> None:
        """Give the storage of a module :meth:`materialize` filled back (nothing where the framework cannot)."""


class RunningAdapter(Protocol):
    """Running a model, for auto_diff and the command line."""

    def to_tensor(self, array) -> Any: ...

    def snapshot(self, t) -> Any:
        """An independent numpy copy of ``t``."""

    def grad(self, t) -> Any:
        """A numpy copy of ``t``'s gradient, or None."""

    def write_grad(self, t, value) -> None:
        """Write a torch tensor ``value`` into ``t``'s existing gradient, in place."""

    def is_training(self, module) -> bool: ...

    def set_training(self, module, training: bool) -> None: ...

    def grad_mode(self) -> bool:
        """Whether the framework records operations for autograd (this thread)."""

    def set_grad_mode(self, enabled: bool) -> None: ...

    def no_grad(self) -> Any:
        """A context in which the framework records nothing for autograd."""

    def add_forward_hook(self, module, fn: Callable) -> Any:
        """Call ``fn(inputs, output)`` after each forward of ``module``; returns a handle with ``remove()``."""

    def add_call_hook(self, module, fn: Callable) -> Any:
        """Call ``fn(args, kwargs, output)`` after each forward of ``module`` (keyword inputs too, as
        ``auto_diff`` needs them to tell whether a layer's inputs agree); a handle with ``remove()``. What ``fn``
        returns, when not None, replaces the output (``single_step`` hands base's outputs on)."""

    def forward(self, model, args, kwargs, grad: bool) -> Any: ...

    def backward_mean(self, tensors, retain: bool = False) -> bool:
        """Backward from the sum of the means of every floating tensor that needs a gradient (PaDiff's seed, so a
        gradient does not grow with the output's size), the graph kept for another backward when ``retain``; False
        when there is none."""

    def grads_of(self, target, tensors) -> list:
        """The gradients of ``target`` (a scalar) with respect to ``tensors`` (None where it does not depend on one),
        the graph kept."""

    def backward_with(self, tensors, grads) -> None:
        """One backward from ``tensors``, each seeded by its entry of ``grads`` (None: a scalar's 1)."""

    def float64_copy(self, t) -> Any:
        """A float64 copy of ``t`` that autograd tracks, outside ``t``'s graph; not a leaf (hooks put on it apply)."""

    def needs_grad(self, t) -> bool:
        """Whether autograd tracks ``t`` (torch ``requires_grad``, paddle ``not stop_gradient``)."""

    def like(self, array, t) -> Any:
        """A tensor holding numpy ``array`` with ``t``'s dtype and device (bf16 arrays come widened to float32)."""

    def add_pre_hook(self, module, fn: Callable) -> Any:
        """Call ``fn(args, kwargs)`` before each forward of ``module``; a returned ``(args, kwargs)`` replaces the
        inputs (``auto_diff(single_step=True)`` feeds each layer the base layer's inputs); a handle."""

    def clear_grads(self, model) -> None: ...

    def load_weights(self, model, path: str) -> None: ...


class InitAdapter(Protocol):
    """What initialisation (padiff_lite.init) needs to know of a layer."""

    def padding_idx(self, module) -> int | None: ...

    def fresh_defaults(self, module, names) -> dict:
        """The framework's own initial values of the named own tensors, as torch tensors."""


@runtime_checkable
class ModelAdapter(StructureAdapter, MemoryAdapter, RunningAdapter, InitAdapter, Protocol):
    """Everything the package asks of an adapter. Tree, pairing and planning need only the structure and
    memory methods (shape, dtype_name, readable, device) of it."""


CONCERNS = {"structure": StructureAdapter, "memory": MemoryAdapter, "running": RunningAdapter, "init": InitAdapter}


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

    def write_grad(self, t, value) -> None:
        """Write a torch tensor ``value`` (same shape) into ``t``'s existing gradient, in place."""
        self.write(t.grad, value)

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
