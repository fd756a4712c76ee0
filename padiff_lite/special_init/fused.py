"""Rules for HuggingFace transformers (torch) <-> PaddleFormers (paddle) layers whose layouts differ.

Not a plugin itself (the name does not start with ``init_``): the family plugins (``init_hf_*.py``)
register these functions for their class pairs. Every rule is called as ``rule(torch_module,
paddle_layer)`` and serves both directions. Nothing here imports transformers or paddleformers: the
rules read attributes and shapes only.

- :func:`layouts`: fused layouts named as data (q/k/v <-> ``qkv_proj`` grouped per key/value head, gate/up <->
  ``up_gate_proj`` ``[gate | up]``); the groups are found by structure as :mod:`padiff_lite.layout_infer` finds
  them, which infers the same layouts by running units where no rule names them.
- :func:`packed_experts_moe`: ERNIE-4.5's MoE block (packed experts, router, its correction bias renamed).
- everything else under the pair is copied by name, Linear weights transposed.
"""
from __future__ import annotations

from ..errors import TransferError
from .maps import prefixed
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
        maps += prefixed("shared_experts.", "shared_experts.",
                         layouts(gate_up="[gate | up]")(module.shared_experts, layer.shared_experts))
    return maps


def _child_linears(module, paddle_side: bool) -> list:
    """The direct children of ``module`` that are plain projections (2-D ``weight``, maybe ``bias``), as
    layout_infer's ``Linear``: names and sizes only (models without storage have shapes too)."""
    from ..layout_infer import Linear

    out = []
    for name, child in module.named_children():
        w = getattr(child, "weight", None)
        if w is None or len(w.shape) != 2:
            continue
        transposed = paddle_side and _is_linear(child)
        out_f, in_f = (w.shape[1], w.shape[0]) if transposed else (w.shape[0], w.shape[1])
        out.append(Linear(name, None, int(out_f), int(in_f), getattr(child, "bias", None) is not None, transposed))
    return out


def layouts(**chosen):
    """A mapping rule that *names* fused layouts, as data: ``layouts(qkv="grouped per KV head", gate_up="[gate | up]")``.

    The groups (q/k/v against one projection, gate/up against one) are found by structure as
    :mod:`padiff_lite.layout_infer` finds them, and the candidate whose name starts with the given text is taken
    (no run needed: a registered layout works where nothing can run, e.g. checkpoint conversion). A pair where
    neither side fuses is copied by name. Everything else under the pair: by name, Linear weights transposed."""
    def rule(module, layer) -> list[Map]:
        # imported when used: layout_infer imports this package, whose plugins call layouts() at import
        from ..layout_infer import (GATE_UP_ROLES, QKV_ROLES, gate_up_candidates, is_fused_gate_up, is_fused_qkv,
                                    match_roles, qkv_candidates)

        kinds = {"qkv": (QKV_ROLES, is_fused_qkv), "gate_up": (GATE_UP_ROLES, is_fused_gate_up)}
        lt, lp = _child_linears(module, False), _child_linears(layer, True)
        maps, used = [], []
        for kind, want in chosen.items():
            roles, is_fused = kinds[kind]
            for split_side, fused_side, split_is_base in ((lt, lp, True), (lp, lt, False)):
                split = match_roles(split_side, roles)
                fused = [x for x in fused_side if is_fused(x.name)]
                if split is not None and len(fused) == 1:
                    break
            else:
                continue  # not fused on either side here: copied by name
            parts, f = [split[r] for r in roles], fused[0]
            if any(p.inp != f.inp for p in parts) or sum(p.out for p in parts) != f.out:
                raise TransferError(f"{'/'.join(p.name for p in parts)} ({sum(p.out for p in parts)} output features) "
                                    f"do not add up to {f.name} ({f.out}); build both models with the same sizes")
            cands = (qkv_candidates(*parts, f, split_is_base, (module, layer)) if kind == "qkv"
                     else gate_up_candidates(*parts, f, split_is_base))
            cand = next((c for c in cands if c.name.startswith(want)), None)
            if cand is None:
                raise TransferError(f"{f.name}: no {want!r} layout fits these shapes (the shapes allow "
                                    f"{'; '.join(c.name for c in cands)})")
            maps += cand.maps
            used += [p.name for p in parts] + [f.name]
        return maps + same_names(module, layer, skip=tuple(used))

    rule.__qualname__ = rule.__name__ = "layouts(" + ", ".join(f"{k}={v!r}" for k, v in chosen.items()) + ")"
    return rule


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
