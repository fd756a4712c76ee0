"""Gemma3 (text): transformers <-> PaddleFormers, as data: the fused layouts PaddleFormers uses, named (found by
structure, see padiff_lite/layout_infer.py; registered so that conversions need no run)."""
from . import init_pool
from .fused import layouts, register_pairs

register_pairs(init_pool, layouts(qkv="grouped per KV head"), [("Gemma3Attention", "Gemma3Attention")],
               note="q/k/v_proj <-> qkv_proj grouped per KV head (transposed); o_proj, q_norm, k_norm by name")
register_pairs(init_pool, layouts(gate_up="[gate | up]"), [("Gemma3MLP", "Gemma3MLP")],
               note="gate_proj/up_proj <-> up_gate_proj [gate | up] (transposed), down_proj by name")
