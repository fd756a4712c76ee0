"""One adapter per framework: the only place in the package that knows torch from paddle.

An adapter gives a uniform view of a model: children in order, own parameters and
buffers, class names, and access to tensor memory as a torch tensor view (zero copy
where the memory allows it) so the executor can write in place. :class:`ModelAdapter`
(base.py) is the contract: every method the rest of the package calls.

The two adapters (and so torch and paddle) are imported when first used (PEP 562): ``adapters.base``, the contract,
imports no framework, so a fake adapter of plain objects (``tests/unit/fake.py``) needs neither.
"""
from __future__ import annotations

from .base import ModelAdapter

_LAZY = {"TorchAdapter": "torch_adapter", "PaddleAdapter": "paddle_adapter"}


def _adapters() -> dict[str, ModelAdapter]:
    """``{"torch": TorchAdapter(), "paddle": PaddleAdapter()}``, made once."""
    found = globals().get("ADAPTERS")
    if found is None:
        from .paddle_adapter import PaddleAdapter
        from .torch_adapter import TorchAdapter

        found = globals()["ADAPTERS"] = {"torch": TorchAdapter(), "paddle": PaddleAdapter()}
    return found


def __getattr__(name: str):
    if name == "ADAPTERS":
        return _adapters()
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def adapter_for(model) -> ModelAdapter | None:
    """The adapter whose framework ``model`` (a module/layer or a tensor) belongs to, or None."""
    for adapter in _adapters().values():
        if adapter.owns(model):
            return adapter
    return None
