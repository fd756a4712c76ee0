"""Small helpers shared by the plugin files (not a plugin itself: the name does not start with init_)."""
from __future__ import annotations

import functools

from ..errors import TransferError
from .registry import Map


def optional(src: str, dst: str, src_has: bool, dst_has: bool, value: float, transform: str = "copy") -> list[Map]:
    """Maps for a tensor that either side may lack (affine=False, bias=False, ...).

    Both have it: copy. Only the target has it: fill it with ``value`` (the constant the source
    layer behaves as if it had). Only the source has it: it must equal ``value``. Neither: nothing.
    """
    try:
        # type(value) is part of the key: 1 and 1.0 are equal but print differently in reports
        return list(_optional(src, dst, bool(src_has), bool(dst_has), value, transform, type(value)))
    except TypeError:  # an unhashable argument: build the maps afresh
        return list(_optional.__wrapped__(src, dst, src_has, dst_has, value, transform, None))


@functools.lru_cache(maxsize=1024)
def _optional(src, dst, src_has, dst_has, value, transform, _value_type) -> tuple[Map, ...]:
    # Maps are immutable, so every layer of a model can share them: building one costs a few
    # microseconds, and norm layers ask for two per layer
    if src_has and dst_has:
        return (Map(src, dst, transform),)
    if dst_has:
        return (Map(None, dst, value=value),)
    if src_has:
        return (Map(src, None, value=value),)
    return ()


def has(module, name: str) -> bool:
    """``getattr(module, name) is not None``, looking in the module's parameter table first.

    Rules run once per layer pair, and torch and paddle both find a parameter through a Python-level
    ``__getattr__`` (about 1 us a read); their table (``_parameters`` in both) holds the same object,
    and a name held there is never also a plain attribute. Anything else (None, a buffer, a plain
    attribute, no such attribute at all) is read with ``getattr``, as before.
    """
    return module._parameters.get(name) is not None or getattr(module, name) is not None


def require_same(what: str, torch_value, paddle_value, fix: str):
    """Raise TransferError when a setting that weights cannot carry differs between the two layers."""
    if torch_value is None or paddle_value is None:
        return
    if isinstance(torch_value, float) or isinstance(paddle_value, float):
        same = abs(float(torch_value) - float(paddle_value)) <= 1e-12
    else:
        same = torch_value == paddle_value
    if not same:
        raise TransferError(f"{what} differs: torch {torch_value!r}, paddle {paddle_value!r}; "
                            f"the outputs would differ whatever the weights; {fix}")


def require_same_eps(module, layer):
    """A torch norm layer's ``eps`` and its paddle counterpart's ``_epsilon`` must agree (``module`` is torch's).

    Checked for every norm layer of a model: equal values return at once, and the message (two class
    names) is only built for a mismatch.
    """
    eps, epsilon = module.eps, getattr(layer, "_epsilon", None)
    if eps != epsilon:
        require_same(f"{type(module).__name__}.eps vs {type(layer).__name__}._epsilon", eps, epsilon,
                     "build both with the same epsilon")
