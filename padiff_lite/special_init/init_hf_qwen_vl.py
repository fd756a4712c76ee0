"""Qwen2.5-VL and Qwen3-VL text decoders: transformers <-> PaddleFormers (fused grouped ``qkv_proj`` with bias,
``up_gate_proj``). Their vision towers have the same layouts on both sides and need no rule."""
from . import init_pool
from .fused import attention, gated_mlp, register_pairs

register_pairs(init_pool, attention, [("Qwen2_5_VLAttention", "Qwen2_5_VLAttention"),
                                      ("Qwen3VLTextAttention", "Qwen3VLTextAttention")],
               note="q/k/v_proj (+bias) <-> qkv_proj grouped per KV head (transposed); o_proj, q_norm, k_norm by name")
register_pairs(init_pool, gated_mlp, [("Qwen2MLP", "Qwen2MLP"), ("Qwen3VLTextMLP", "Qwen3VLTextMLP")],
               note="gate_proj/up_proj <-> up_gate_proj [gate | up] (transposed) or the same split layout, by name")
