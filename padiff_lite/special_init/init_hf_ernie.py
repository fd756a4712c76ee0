"""ERNIE-4.5 (dense and MoE): transformers <-> PaddleFormers.

PaddleFormers fuses attention into a grouped ``qkv_proj`` and the MLP into ``up_gate_proj``: named as data (the groups
found by structure, padiff_lite/layout_infer.py). The MoE block keeps one module per expert where transformers packs
them and its correction bias lives under another name: a rule of its own (fused.py).
"""
from . import init_pool
from .fused import layouts, packed_experts_moe, register_pairs

register_pairs(init_pool, layouts(qkv="grouped per KV head"), [("Ernie4_5Attention", "Ernie4_5Attention"),
                                      ("Ernie4_5_MoeAttention", "Ernie4_5Attention")],
               note="q/k/v_proj <-> qkv_proj grouped per KV head (transposed), o_proj and the rest by name")
register_pairs(init_pool, layouts(gate_up="[gate | up]"), [("Ernie4_5MLP", "MLP"), ("Ernie4_5_MoeMLP", "MLP")],
               note="gate_proj/up_proj <-> up_gate_proj [gate | up] (transposed), down_proj by name")
register_pairs(init_pool, packed_experts_moe, [("Ernie4_5_MoeSparseMoeBlock", "Ernie4_5_MoeSparseMoeBlock")],
               note="experts.gate_up_proj/down_proj [E, ...] <-> experts.N.up_gate_proj/down_proj (one entry each, "
                    "transposed); router [E, H] <-> [H, E]; gate.moe_statics <-> moe_statics; shared experts fused")
