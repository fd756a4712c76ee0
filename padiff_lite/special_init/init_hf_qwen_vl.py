"""Qwen2.5-VL and Qwen3-VL text decoders: transformers <-> PaddleFormers, as data: the fused layouts PaddleFormers
uses, named (found by structure, see padiff_lite/layout_infer.py; registered so that conversions need no run).
Their vision towers have the same layouts on both sides and need no rule."""
from . import init_pool
from .fused import layouts, register_pairs

register_pairs(init_pool, layouts(qkv="grouped per KV head"), [("Qwen2_5_VLAttention", "Qwen2_5_VLAttention"),
                                                                ("Qwen3VLTextAttention", "Qwen3VLTextAttention")],
               note="q/k/v_proj (+bias) <-> qkv_proj grouped per KV head (transposed); o_proj, q_norm, k_norm by name")
register_pairs(init_pool, layouts(gate_up="[gate | up]"), [("Qwen2MLP", "Qwen2MLP"), ("Qwen3VLTextMLP", "Qwen3VLTextMLP")],
               note="gate_proj/up_proj <-> up_gate_proj [gate | up] (transposed) or the same split layout, by name")
