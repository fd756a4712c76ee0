"""Rules for HuggingFace transformers (torch) <-> PaddleFormers (paddle) layers whose layouts differ.

Not a plugin itself (the name does not start with ``init_``): the family plugins (``init_hf_*.py``)
register these functions for their class pairs. Every rule is called as ``rule(torch_module,
paddle_layer)`` and serves both directions. Nothing here imports transformers or paddleformers: the
rules read attributes and shapes only.

- attention: transformers keeps ``q_proj/k_proj/v_proj``; PaddleFormers often fuses them into
  ``qkv_proj`` with output features grouped per key/value head (the group's query heads, its key head,
  its value head), bias likewise.
- gated MLP: transformers keeps ``gate_proj/up_proj``; PaddleFormers often fuses ``up_gate_proj`` as
  ``[gate | up]``.
- everything else under the pair is copied by name, Linear weights transposed.
"""
from __future__ import annotations

from ..errors import TransferError
from .maps import grouped_qkv, prefixed, stacked
from .registry import Map


def _is_linear(module) -> bool:
    return any(c.__name__ == "Linear" for c in type(module).__mro__)


def _sub(module, dotted: str):
    for part in dotted.split(".") if dotted else ():
        module = getattr(module, part)
    return module


def _torch_names(module) -> list[str]:
    return list(module.state_dict(keep_vars=True))  # persistent tensors, in state_dict order


def _paddle_names(layer) -> set[str]:
    return set(layer.state_dict())


def same_names(module, layer, skip=()) -> list[Map]:
    """A map for every tensor both sides hold under the same name (except those starting with ``skip``):
    a Linear weight on both sides is transposed (torch ``[out, in]``, paddle ``[in, out]``), anything else
    copied. Tensors held by one side only are left to the planner, which lists them."""
    theirs = _paddle_names(layer)
    maps = []
    for name in _torch_names(module):
        if name not in theirs or any(name == s or name.startswith(s + ".") for s in skip):
            continue
        owner, _, leaf = name.rpartition(".")
        transpose = leaf == "weight" and _is_linear(_sub(module, owner)) and _is_linear(_sub(layer, owner))
        maps.append(Map(name, name, "transpose" if transpose else "copy"))
    return maps


def _has(module, name) -> bool:
    return getattr(module, name, None) is not None


def _bias(linear) -> bool:
    return getattr(linear, "bias", None) is not None


def _head_dim(module) -> int:
    d = getattr(module, "head_dim", None)
    if d is None:
        raise TransferError(f"{type(module).__name__} has no head_dim; cannot tell how its q/k/v heads are laid out")
    return int(d)


def attention(module, layer) -> list[Map]:
    """transformers attention (q/k/v_proj) <-> PaddleFormers attention, fused grouped ``qkv_proj`` or split."""
    fused = _has(layer, "qkv_proj") and not _has(module, "qkv_proj")
    if not fused:
        return same_names(module, layer)
    d = _head_dim(module)
    nh, nkv = module.q_proj.out_features // d, module.k_proj.out_features // d
    want = (nh + 2 * nkv) * d
    got = layer.qkv_proj.weight.shape[-1]
    if got != want:
        raise TransferError(
            f"paddle qkv_proj has {got} output features but torch q/k/v_proj give {nh} query and {nkv} key/value heads "
            f"of {d} ({want} features); build both models with the same heads and head_dim")
    maps = []
    for name, part in zip(("q_proj", "k_proj", "v_proj"), grouped_qkv(nh, nkv, d)):
        maps.append(Map(f"{name}.weight", "qkv_proj.weight", "transpose", dst_part=part))
        if _bias(getattr(module, name)) or _bias(layer.qkv_proj):
            maps.append(Map(f"{name}.bias", "qkv_proj.bias", dst_part=part))
    return maps + same_names(module, layer, skip=("q_proj", "k_proj", "v_proj", "qkv_proj"))


def gated_mlp(module, layer) -> list[Map]:
    """transformers gate_proj/up_proj <-> PaddleFormers ``up_gate_proj`` ([gate | up]) or the same split."""
    fused = _has(layer, "up_gate_proj") and _has(module, "gate_proj")
    if not fused:
        return same_names(module, layer)
    n = module.gate_proj.out_features
    gate, up = stacked(n, n)
    maps = []
    for name, part in (("gate_proj", gate), ("up_proj", up)):
        maps.append(Map(f"{name}.weight", "up_gate_proj.weight", "transpose", dst_part=part))
        if _bias(getattr(module, name)) or _bias(layer.up_gate_proj):
            maps.append(Map(f"{name}.bias", "up_gate_proj.bias", dst_part=part))
    return maps + same_names(module, layer, skip=("gate_proj", "up_proj", "up_gate_proj"))


def packed_experts_moe(module, layer) -> list[Map]:
    """transformers MoE block with experts packed in 3-D tensors <-> PaddleFormers' one module per expert.

    torch ``experts.gate_up_proj [E, 2I, H]`` (rows ``[gate | up]``) and ``experts.down_proj [E, H, I]``; paddle
    ``experts.N.up_gate_proj.weight [H, 2I]`` and ``experts.N.down_proj.weight [I, H]``: each expert is one entry
    of the packed tensor, transposed. The router ``gate.weight`` is ``[E, H]`` in torch and ``[H, E]`` in paddle
    (PaddleFormers' gate is not a Linear). The score-correction bias lives under the router in transformers
    (``gate.moe_statics``) and beside it in PaddleFormers (``moe_statics``). Shared experts: a gated MLP.
    """
    from ..layout import Part

    experts = len(layer.experts)
    packed = module.experts.gate_up_proj.shape[0]
    if packed != experts:
        raise TransferError(f"torch packs {packed} experts but paddle has {experts}; build both with the same "
                            "number of experts")
    maps = []
    for e in range(experts):
        maps.append(Map("experts.gate_up_proj", f"experts.{e}.up_gate_proj.weight", "transpose", src_part=Part(index=e)))
        maps.append(Map("experts.down_proj", f"experts.{e}.down_proj.weight", "transpose", src_part=Part(index=e)))
    maps.append(Map("gate.weight", "gate.weight", "transpose"))
    if _has(module.gate, "moe_statics") or _has(layer, "moe_statics"):
        maps.append(Map("gate.moe_statics.e_score_correction_bias", "moe_statics.e_score_correction_bias"))
    if _has(module, "shared_experts") and _has(layer, "shared_experts"):
        maps += prefixed("shared_experts.", "shared_experts.", gated_mlp(module.shared_experts, layer.shared_experts))
    return maps


def register_pairs(pool, rule, pairs, note: str):
    """Register ``rule`` for each (torch class, paddle class) of ``pairs`` (both directions each).

    The entries' origin is the calling plugin (``init_hf_<family>.py:line``), not this file: the rules table and
    error messages point at the family that registered the pair."""
    import sys

    caller = sys._getframe(1)
    origin = f"{caller.f_globals.get('__name__', '?')}:{caller.f_lineno}"
    for torch_class, paddle_class in pairs:
        pool.register_maps("torch", torch_class, "paddle", paddle_class, note=note)(rule)
        for key in (("torch", torch_class, "paddle", paddle_class), ("paddle", paddle_class, "torch", torch_class)):
            pool[key].origin = origin
