"""Small helpers shared by the plugin files (not a plugin itself: the name does not start with init_)."""
from __future__ import annotations

import functools

from ..errors import TransferError
from ..layout import Part, features
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


def grouped_qkv(num_heads: int, num_kv_heads: int, head_dim: int) -> tuple[Part, Part, Part]:
    """Parts of a fused qkv projection grouped per key/value head: for each KV head, the query heads of its
    group, then its key head, then its value head (PaddleFormers' ``qkv_proj``). Output features, so the same
    parts address torch's ``[out, in]`` and paddle's ``[in, out]`` weights and the ``[out]`` bias."""
    if num_heads % num_kv_heads:
        raise TransferError(f"{num_heads} attention heads cannot be grouped over {num_kv_heads} key/value heads; "
                            "build the model with num_attention_heads a multiple of num_key_value_heads")
    r, d = num_heads // num_kv_heads, head_dim
    step = (r + 2) * d
    q = features(*[(g * step, g * step + r * d) for g in range(num_kv_heads)])
    k = features(*[(g * step + r * d, g * step + (r + 1) * d) for g in range(num_kv_heads)])
    v = features(*[(g * step + (r + 1) * d, (g + 1) * step) for g in range(num_kv_heads)])
    return q, k, v


def stacked(*sizes: int, axis="out") -> list[Part]:
    """Parts of a concatenation along ``axis``: ``stacked(i, i)`` is ``[gate | up]`` of a fused gate/up projection."""
    parts, start = [], 0
    for n in sizes:
        parts.append(Part(((start, start + n),), axis))
        start += n
    return parts


def prefixed(src_prefix: str, dst_prefix: str, maps) -> list[Map]:
    """``maps`` of a child pair, named from a parent pair: ``prefixed("mlp.", "mlp.", linear(m.mlp, l.mlp))``."""
    from dataclasses import replace

    return [replace(m, src=m.src and src_prefix + m.src, dst=m.dst and dst_prefix + m.dst) for m in maps]
