"""One adapter per framework: the only place in the package that knows torch from paddle.

An adapter gives a uniform view of a model: children in order, own parameters and
buffers, class names, and access to tensor memory as a torch tensor view (zero copy
where the memory allows it) so the executor can write in place. :class:`ModelAdapter`
(base.py) is the contract: every method the rest of the package calls.
"""
from __future__ import annotations

from .base import ModelAdapter
from .paddle_adapter import PaddleAdapter
from .torch_adapter import TorchAdapter

ADAPTERS: dict[str, ModelAdapter] = {"torch": TorchAdapter(), "paddle": PaddleAdapter()}


def adapter_for(model) -> ModelAdapter | None:
    """The adapter whose framework ``model`` (a module/layer or a tensor) belongs to, or None."""
    for adapter in ADAPTERS.values():
        if adapter.owns(model):
            return adapter
    return None
