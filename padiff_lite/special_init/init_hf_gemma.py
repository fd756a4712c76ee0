"""Gemma3 (text): transformers <-> PaddleFormers: fused grouped ``qkv_proj`` and ``up_gate_proj`` on the paddle side."""
from . import init_pool
from .fused import attention, gated_mlp, register_pairs

register_pairs(init_pool, attention, [("Gemma3Attention", "Gemma3Attention")],
               note="q/k/v_proj <-> qkv_proj grouped per KV head (transposed); o_proj, q_norm, k_norm by name")
register_pairs(init_pool, gated_mlp, [("Gemma3MLP", "Gemma3MLP")],
               note="gate_proj/up_proj <-> up_gate_proj [gate | up] (transposed), down_proj by name")
