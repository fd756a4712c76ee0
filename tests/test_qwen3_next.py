"""Qwen3-Next (transformers Qwen3NextForCausalLM <-> PaddleFormers' eager Qwen3NextForCausalLM, tests/hf_families.py):
what is particular to it. Ports, files and transformers' save_pretrained folders run with every family
(tests/test_hf_ports.py, tests/test_hf_disk_layout.py).

- Its full-attention ``q_proj`` holds per head ``[query | gate]``; PaddleFormers fuses it with k/v into ``qkv_proj``
  grouped per KV head. Inferred by structure (no plugin), named as such.
- PaddleFormers 1.2's model passes its full-attention layers no mask: with its default eager attention they attend
  both ways (the logits differed by about 0.35-1.3 from transformers' on the same weights: what looked like a layout
  error at layer 1's ``o_proj``); with sdpa attention causally.
- ``auto_diff`` locates a spoiled weight: in the fused gated projection and in the linear-attention (gated delta net)
  layer; the routers (transformers: probabilities, PaddleFormers: a Linear's logits) are noted, not divergences.
"""
import numpy as np
import pytest
import torch

import hf_families as hf
from padiff_lite import assign_weight, auto_diff

FAMILY = hf.BY_NAME["qwen3_next"]


def _logits_diff(t, p):
    x = FAMILY.inputs()
    return float(np.abs(FAMILY.forward_torch(t, x).astype("float64") - FAMILY.forward_paddle(p, x)).max())


def test_gated_attention_is_inferred_and_paddleformers_eager_attention_attends_both_ways():
    t, p = FAMILY.torch_model(1), FAMILY.paddle_model(2)
    p.config._attn_implementation = "eager"  # PaddleFormers' default
    report = assign_weight(t, p)
    attn = next(n for n in report.notes if "q_proj/k_proj/v_proj <-> qkv_proj" in n)
    assert attn.startswith("model.layers.1.self_attn (Qwen3NextAttention) -> model.layers.1.self_attn")
    assert ("grouped per KV head [q heads | k | v] (8 query blocks: 4 heads, each [query | gate], 2 KV heads, "
            "head_dim 16)") in attn and "whose unit outputs agree on a random input" in attn
    eager = _logits_diff(t, p)
    p.config._attn_implementation = "sdpa"  # the same weights: only the mask PaddleFormers' attention applies changes
    sdpa = _logits_diff(t, p)
    assert eager > 0.1 and sdpa < 1e-4, (eager, sdpa)


@pytest.mark.parametrize("direction", ["torch->paddle", "paddle->torch"])
def test_auto_diff_locates_a_spoiled_weight(direction):
    """torch->paddle: a gate block inside the fused qkv_proj; paddle->torch: the linear attention's decay."""
    t, p = FAMILY.torch_model(1), FAMILY.paddle_model(2)
    base, raw = (t, p) if direction == "torch->paddle" else (p, t)
    assign_weight(base, raw)
    ids = {"input_ids": FAMILY.inputs()["input_ids"]}
    clean = auto_diff(base, raw, ids, auto_init=False)
    assert clean.ok and clean.max_abs_diff < 1e-4
    routers = [ld for ld in clean.layers if ld.base_path.endswith("mlp.gate")]
    assert len(routers) == 2 and all("not counted as a divergence" in ld.note for ld in routers if not ld.ok)
    if direction == "torch->paddle":  # the gate of head 3 (group 1's second head) inside the fused qkv_proj
        w = p.model.layers[1].self_attn.qkv_proj.weight
        scale = np.ones(w.shape[1], "float32")
        scale[96 + 32 + 16:96 + 64] = 1.05  # group 1 starts at 96: [q3 | g3 | q4 | g4 | k | v] blocks of 16
        w.set_value(w.numpy() * scale)
        where, part = ("model.layers.1.self_attn.o_proj", "model.layers.1.self_attn.o_proj"), "[0:64,96:160 dim 1]"
        expected = ("model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.qkv_proj.weight")
    else:  # the decay of the linear-attention layer
        with torch.no_grad():
            t.model.layers[0].linear_attn.A_log.mul_(1.2)
        # A_log is used inline before the gated norm: the norm is the first compared call after it, its inputs differ
        where, part = ("model.layers.0.linear_attn.norm", "model.layers.0.linear_attn.norm"), ""
        expected = ("model.layers.0.linear_attn.A_log", "model.layers.0.linear_attn.A_log")
    result = auto_diff(base, raw, ids, auto_init=False)
    f = result.first_diff
    assert not result.ok and (f.base_path, f.raw_path) == where and f.inputs_agree is False
    assert all(ld.ok or "not counted" in ld.note for ld in result.layers if ld.order < f.order)
    [w] = result.weight_diffs
    assert (w.base_param, w.raw_param) == expected and part in w.note


def test_auto_diff_names_the_moe_block_of_a_spoiled_expert():
    """The experts (packed against one module each) are compared only through their MoE block: that block is named,
    not its router, which returns another form of the same result as layer 0's router did."""
    t, p = FAMILY.torch_model(1), FAMILY.paddle_model(2)
    assign_weight(t, p)
    for expert in p.model.layers[1].mlp.experts:
        w = expert.down_proj.weight
        w.set_value(w.numpy() * 1.05)
    result = auto_diff(t, p, {"input_ids": FAMILY.inputs()["input_ids"]}, auto_init=False)
    f = result.first_diff
    assert not result.ok and (f.base_path, f.raw_path) == ("model.layers.1.mlp", "model.layers.1.mlp")
    assert f.inputs_agree is True
    router = next(ld for ld in result.layers if ld.base_path == "model.layers.1.mlp.gate")
    assert "as another call of Qwen3NextTopKRouter -> Linear did" in router.note
    assert sorted(w.raw_param for w in result.weight_diffs) == [
        f"model.layers.1.mlp.experts.{e}.down_proj.weight" for e in range(4)]
