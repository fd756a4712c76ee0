"""Fused layouts recognised by structure (padiff_lite/layout_infer.py): q/k/v <-> one projection and gate/up <-> one
projection, decided by running the unit where the shapes allow several layouts; refused when none or several agree.

The transformers <-> PaddleFormers families (Qwen2, Qwen3, ...) port through tests/test_hf_ports.py (tests/hf_families.py,
``inferred=True``); here: what is reported, reuse in conversion through a mapping, refusals, registered rules winning,
head counts from shapes alone, and a spoiled fused weight located by auto_diff.
"""
import json

import numpy as np
import paddle
import pytest
import torch

import hf_families as hf
from padiff_lite import assign_weight, auto_diff, convert_checkpoint
from padiff_lite.errors import AmbiguousPairingError, PairingError


def _logits_diff(family, t, p):
    x = family.inputs()
    return float(np.abs(family.forward_torch(t, x).astype("float64") - family.forward_paddle(p, x)).max())


def test_an_inferred_layout_is_reported_in_notes_and_the_mapping_file(tmp_path):
    family = hf.BY_NAME["qwen2"]
    t, p = family.torch_model(1), family.paddle_model(2)
    report = assign_weight(t, p)
    assert _logits_diff(family, t, p) < 1e-4
    notes = [n for n in report.notes if "layout inferred" in n]
    assert len(notes) == 2, report.notes
    attn = next(n for n in notes if "q_proj/k_proj/v_proj <-> qkv_proj" in n)
    assert "grouped per KV head [q heads | k | v] (4 heads, 2 KV heads, head_dim 16)" in attn
    assert attn.startswith("model.layers.0.self_attn (Qwen2Attention) -> model.layers.0.self_attn (Qwen2Attention) and 1 more")
    assert "whose unit outputs agree on a random input" in attn
    mlp = next(n for n in notes if "gate_proj/up_proj <-> up_gate_proj" in n)
    assert "[gate | up]" in mlp and "one candidate of 3" in mlp
    saved = json.loads(report.mapping.save(tmp_path / "map.json").read_text())
    rules = {e["rule"] for e in saved["layers"] if e["base"] == "model.layers.1.self_attn"}
    assert rules == {"mapping inferred q_proj/k_proj/v_proj <-> qkv_proj: grouped per KV head [q heads | k | v] "
                     "(4 heads, 2 KV heads, head_dim 16)"}
    # the parts written: layer 1's k_proj goes to output features 32:48 and 96:112 of qkv_proj (group 0: q q k v)
    k = [e for e in saved["tensors"] if e["base"] == "model.layers.1.self_attn.k_proj.weight"]
    assert k == [{"base": "model.layers.1.self_attn.k_proj.weight", "raw": "model.layers.1.self_attn.qkv_proj.weight",
                  "transform": "transpose", "raw_part": "[32:48,96:112 dim 1]"}]
    np.testing.assert_array_equal(p.model.layers[1].self_attn.qkv_proj.weight.numpy()[:, 96:112],
                                  t.model.layers[1].self_attn.k_proj.weight.detach().numpy()[16:32].T)


def test_conversion_without_a_run_refuses_and_names_the_candidates(tmp_path):
    from ckpt_helpers import save, state_as_torch

    family = hf.BY_NAME["qwen2"]
    t = family.torch_model(1)
    save(state_as_torch(t, "torch"), tmp_path / "model.safetensors")
    with pytest.raises(PairingError) as err:
        # models given as factories are built without storage: nothing can run
        convert_checkpoint(tmp_path / "model.safetensors", tmp_path / "out.pdparams", lambda: family.torch_model(1),
                           lambda: family.paddle_model(2))
    msg = str(err.value)
    assert "model.layers.0.self_attn (Qwen2Attention) -> model.layers.0.self_attn (Qwen2Attention)" in msg
    assert "(1) concatenated [q | k | v]; (2) grouped per KV head" in msg
    assert "pass mapping=" in msg and not (tmp_path / "out.pdparams").exists()


def test_a_registered_rule_wins_over_inference(scoped_pool):
    from padiff_lite.special_init.fused import layouts

    scoped_pool.register_maps("torch", "Qwen2Attention", "paddle", "Qwen2Attention")(layouts(qkv="grouped per KV head"))
    family = hf.BY_NAME["qwen2"]
    t, p = family.torch_model(1), family.paddle_model(2)
    report = assign_weight(t, p)
    assert _logits_diff(family, t, p) < 1e-4
    assert not any("q_proj/k_proj/v_proj" in n for n in report.notes)
    assert any("gate_proj/up_proj" in n for n in report.notes)  # the MLP has no rule: still inferred


@pytest.mark.parametrize("direction", ["torch->paddle", "paddle->torch"])
def test_a_spoiled_fused_weight_is_located_in_its_unit(direction):
    family = hf.BY_NAME["qwen3"]
    t, p = family.torch_model(1), family.paddle_model(2)
    base, raw = (t, p) if direction == "torch->paddle" else (p, t)
    assign_weight(base, raw)
    if direction == "torch->paddle":  # the value head of group 1 inside the fused weight: features 112:128
        w = p.model.layers[1].self_attn.qkv_proj.weight
        w.set_value(w.numpy() * np.r_[np.ones(112), np.full(16, 1.05)].astype("float32"))
    else:
        with torch.no_grad():
            t.model.layers[1].self_attn.v_proj.weight[16:32] *= 1.05
    result = auto_diff(base, raw, {"input_ids": family.inputs()["input_ids"]}, auto_init=False)
    f = result.first_diff
    assert not result.ok and f is not None
    # q/k/v and qkv_proj have no counterpart module to compare with: the first compared call after them, in the
    # spoiled layer's attention, diverges with inputs that already differ; everything before it agrees
    assert (f.base_path, f.raw_path) == ("model.layers.1.self_attn.o_proj", "model.layers.1.self_attn.o_proj")
    assert f.inputs_agree is False
    assert all(ld.ok for ld in result.layers if ld.order < f.order)
    assert any(ld.base_path == "model.layers.0.self_attn" for ld in result.layers if ld.order < f.order)
    # ... and the weights the transfer would have written name the spoiled part itself, and nothing else
    [w] = result.weight_diffs
    if direction == "torch->paddle":
        assert (w.base_param, w.raw_param) == ("model.layers.1.self_attn.v_proj.weight",
                                               "model.layers.1.self_attn.qkv_proj.weight")
        assert w.note == "transposed, raw part [48:64,112:128 dim 1]" and 1000 <= w.mismatched <= 1024  # group 1 of 2: half
    else:
        assert (w.base_param, w.raw_param) == ("model.layers.1.self_attn.qkv_proj.weight",
                                               "model.layers.1.self_attn.v_proj.weight")
        assert w.note == "base part [48:64,112:128 dim 1], transposed" and 0 < w.mismatched <= 1024
    assert any(f"raw {w.raw_param}" in n and "does not hold base" in n for n in result.notes)
    # no optimizer ran: the entry says it is the weight as the transfer maps it, not one after a step
    assert not w.after_step and "as the transfer maps it (no optimizer step ran)" in str(w)
    assert "optimizer step:" not in str(w) and "after the optimizer step" not in str(w)


# -- small hand-made units: layouts the shapes cannot tell, told (or not) by running --------------------------
class TorchMLP(torch.nn.Module):
    def __init__(self, symmetric=False):
        super().__init__()
        self.gate_proj, self.up_proj = torch.nn.Linear(8, 12, bias=False), torch.nn.Linear(8, 12, bias=False)
        self.down_proj = torch.nn.Linear(12, 8, bias=False)
        self.symmetric = symmetric

    def forward(self, x):
        g, u = self.gate_proj(x), self.up_proj(x)
        return self.down_proj((g if self.symmetric else torch.nn.functional.silu(g)) * u)


class PaddleMLP(paddle.nn.Layer):
    """``up_gate_proj`` read as ``order``: "gate_up" ([gate | up]), "pairs" (blocks of 2 rows: g g u u g g u u ...)."""

    def __init__(self, symmetric=False, order="gate_up"):
        super().__init__()
        self.up_gate_proj = paddle.nn.Linear(8, 24, bias_attr=False)
        self.down_proj = paddle.nn.Linear(12, 8, bias_attr=False)
        self.symmetric, self.order = symmetric, order

    def forward(self, x):
        y = self.up_gate_proj(x)
        if self.order == "gate_up":
            g, u = y[..., :12], y[..., 12:]
        else:
            y = y.reshape([*y.shape[:-1], 6, 2, 2])
            g, u = y[..., 0, :].reshape([*y.shape[:-3], 12]), y[..., 1, :].reshape([*y.shape[:-3], 12])
        return self.down_proj((g if self.symmetric else paddle.nn.functional.silu(g)) * u)


class Net(torch.nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.mlp = TorchMLP(**kw)

    def forward(self, x):
        return self.mlp(x)


class PNet(paddle.nn.Layer):
    def __init__(self, **kw):
        super().__init__()
        self.mlp = PaddleMLP(**kw)

    def forward(self, x):
        return self.mlp(x)


def _outputs(t, p):
    x = np.random.default_rng(0).standard_normal((3, 8)).astype("float32")
    return float(np.abs(t(torch.from_numpy(x)).detach().numpy() - p(paddle.to_tensor(x)).numpy()).max())


@pytest.mark.parametrize("direction", ["torch->paddle", "paddle->torch"])
def test_gate_up_layout_is_decided_by_running(direction):
    t, p = Net(), PNet()
    assert _outputs(t, p) > 1e-3
    report = assign_weight(t, p) if direction == "torch->paddle" else assign_weight(p, t)
    assert _outputs(t, p) < 1e-6
    assert any("[gate | up]" in n and "one candidate of 3" in n for n in report.notes), report.notes


def test_layouts_that_run_alike_are_refused_naming_both():
    t, p = Net(symmetric=True), PNet(symmetric=True)  # silu left out: gate * up == up * gate
    before = p.mlp.up_gate_proj.weight.numpy().copy()
    with pytest.raises(AmbiguousPairingError) as err:
        assign_weight(t, p)
    msg = str(err.value)
    assert msg.startswith("mlp (TorchMLP) -> mlp (PaddleMLP): gate_proj/up_proj <-> up_gate_proj fit 3 layouts and "
                          "running the unit on a random input agrees under 2 of them")
    assert "[gate | up]: max |diff|" in msg and "[up | gate]: max |diff|" in msg
    np.testing.assert_array_equal(p.mlp.up_gate_proj.weight.numpy(), before)


def test_a_layout_no_candidate_explains_is_refused():
    t, p = Net(), PNet(order="pairs")
    with pytest.raises(PairingError) as err:
        assign_weight(t, p)
    msg = str(err.value)
    assert "agrees under none of them" in msg and "mlp (TorchMLP) -> mlp (PaddleMLP)" in msg
    for name in ("[gate | up]", "[up | gate]", "interleaved [gate0, up0, gate1, up1, ...]"):
        assert f"{name}: max |diff|" in msg


class TorchAttn(torch.nn.Module):
    """Heads only in the forward (no attribute names them): 4 query heads, 2 key/value heads of 8."""

    def __init__(self):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (torch.nn.Linear(16, n) for n in (32, 16, 16))

    def forward(self, x):  # x [B, S, 16]
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, 4, 8).transpose(1, 2)
        k = self.k_proj(x).view(b, s, 2, 8).transpose(1, 2).repeat_interleave(2, 1)
        v = self.v_proj(x).view(b, s, 2, 8).transpose(1, 2).repeat_interleave(2, 1)
        a = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, -1) @ v
        return a.transpose(1, 2).reshape(b, s, 32)


class PaddleAttn(paddle.nn.Layer):
    """The same attention with one ``qkv_proj`` grouped per key/value head."""

    def __init__(self):
        super().__init__()
        self.qkv_proj = paddle.nn.Linear(16, 64)

    def forward(self, x):
        b, s, _ = x.shape
        y = self.qkv_proj(x).reshape([b, s, 2, 32])  # per KV group: 2 query heads, 1 key, 1 value (8 each)
        q = y[..., :16].reshape([b, s, 4, 8]).transpose([0, 2, 1, 3])
        k = y[..., 16:24].transpose([0, 2, 1, 3]).repeat_interleave(2, 1)
        v = y[..., 24:].transpose([0, 2, 1, 3]).repeat_interleave(2, 1)
        a = paddle.nn.functional.softmax(q @ k.transpose([0, 1, 3, 2]) / 8 ** 0.5, -1) @ v
        return a.transpose([0, 2, 1, 3]).reshape([b, s, 32])


def test_heads_from_shapes_alone_are_decided_by_running():
    t, p = TorchAttn(), PaddleAttn()
    report = assign_weight(t, p)
    x = np.random.default_rng(0).standard_normal((2, 5, 16)).astype("float32")
    diff = float(np.abs(t(torch.from_numpy(x)).detach().numpy() - p(paddle.to_tensor(x)).numpy()).max())
    assert diff < 1e-6
    note = next(n for n in report.notes if "layout inferred" in n)
    assert "grouped per KV head [q heads | k | v] (4 heads, 2 KV heads, head_dim 8)" in note, note


@pytest.mark.parametrize("name", ["qwen2_moe", "deepseek_v3"])
def test_moe_checkpoint_converts_without_storage_with_the_mapping_of_a_run(name, tmp_path):
    """Factories build the models without storage (nothing can run): the mapping of a run on small random models
    says the inferred layouts (packed experts, router transposed, fused q/k/v and gate/up); the converted file
    equals what assign_weight writes, tensor by tensor."""
    from ckpt_helpers import load, save, state_as_torch

    family = hf.BY_NAME[name]
    t, p = family.torch_model(1), family.paddle_model(2)
    save(state_as_torch(t, "torch"), tmp_path / "model.safetensors")
    mapping = assign_weight(family.torch_model(5), family.paddle_model(6)).mapping
    report = convert_checkpoint(tmp_path / "model.safetensors", tmp_path / "out.pdparams",
                                lambda: family.torch_model(1), lambda: family.paddle_model(2), mapping=mapping)
    assert any("as the mapping's tensors say" in n for n in report.notes), report.notes
    assign_weight(t, p)
    converted, expected = load(tmp_path / "out.pdparams"), state_as_torch(p, "paddle")
    assert converted.keys() == expected.keys()
    assert all(torch.equal(converted[k], expected[k]) for k in expected)


class TorchMaskedAttn(TorchAttn):
    """TorchAttn taking a required ``attention_mask`` (additive); a missing mask means attending both ways."""

    def forward(self, x, attention_mask):
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, 4, 8).transpose(1, 2)
        k = self.k_proj(x).view(b, s, 2, 8).transpose(1, 2).repeat_interleave(2, 1)
        v = self.v_proj(x).view(b, s, 2, 8).transpose(1, 2).repeat_interleave(2, 1)
        scores = q @ k.transpose(-1, -2) / 8 ** 0.5
        if attention_mask is not None:
            scores = scores + attention_mask
        return (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(b, s, 32)


class PaddleMaskedAttn(PaddleAttn):
    """PaddleAttn taking a required ``attention_mask``; a missing mask means causal (as PaddleFormers' sdpa path)."""

    def forward(self, x, attention_mask):
        b, s, _ = x.shape
        y = self.qkv_proj(x).reshape([b, s, 2, 32])
        q = y[..., :16].reshape([b, s, 4, 8]).transpose([0, 2, 1, 3])
        k = y[..., 16:24].transpose([0, 2, 1, 3]).repeat_interleave(2, 1)
        v = y[..., 24:].transpose([0, 2, 1, 3]).repeat_interleave(2, 1)
        scores = q @ k.transpose([0, 1, 3, 2]) / 8 ** 0.5
        if attention_mask is None:
            attention_mask = paddle.triu(paddle.full([s, s], -1e9), 1)
        scores = scores + attention_mask
        return (paddle.nn.functional.softmax(scores, -1) @ v).transpose([0, 2, 1, 3]).reshape([b, s, 32])


@pytest.mark.parametrize("direction", ["torch->paddle", "paddle->torch"])
def test_a_unit_is_run_with_an_explicit_causal_mask(direction):
    """The two libraries read a missing mask differently (transformers' eager attention and PaddleFormers' eager one
    attend both ways, PaddleFormers' sdpa one causally): the unit gets an explicit causal mask, so the layout is
    decided whatever each side does without one."""
    t, p = TorchMaskedAttn(), PaddleMaskedAttn()
    report = assign_weight(t, p) if direction == "torch->paddle" else assign_weight(p, t)
    x = np.random.default_rng(0).standard_normal((2, 5, 16)).astype("float32")
    mask = np.triu(np.full((5, 5), -1e9, "float32"), 1)
    diff = float(np.abs(t(torch.from_numpy(x), torch.from_numpy(mask)).detach().numpy()
                        - p(paddle.to_tensor(x), None).numpy()).max())
    assert diff < 1e-5
    assert any("grouped per KV head [q heads | k | v] (4 heads, 2 KV heads, head_dim 8)" in n and
               "agree on a random input" in n for n in report.notes), report.notes


# -- the registered transformers <-> PaddleFormers layouts are the ones inference finds --------------------------
def _without_fused_registrations(pool):
    """The registry without the class-keyed fused layouts of special_init/init_hf_*.py (ERNIE's MoE block rule, a
    renamed tensor and a forward that cannot run on a CPU, stays)."""
    for e in list(pool.entries()):
        if "init_hf_" in e.origin and "SparseMoeBlock" not in e.key.base_class:
            pool.remove(*e.key)


@pytest.mark.parametrize("name", ["ernie4_5", "ernie4_5_moe", "gemma3_text", "qwen3_vl_text"])
def test_registered_layouts_are_what_inference_finds(name, scoped_pool):
    """The registrations are data on top of inference: without them the same tensors are written to the same parts
    (each decided by running its unit); they stay so that a conversion, where nothing runs, needs no mapping."""
    family = hf.BY_NAME[name]
    registered = assign_weight(family.torch_model(1), family.paddle_model(2))
    _without_fused_registrations(scoped_pool)
    inferred = assign_weight(family.torch_model(1), family.paddle_model(2))
    assert set(inferred.mapping.tensors) == set(registered.mapping.tensors)
    assert any("layout inferred" in n and "agree on a random input" in n for n in inferred.notes)
    assert not any("layout inferred" in n and "q_proj/k_proj/v_proj" in n for n in registered.notes)


def test_qwen25vl_attention_stays_registered_its_unit_needs_multimodal_rotary(scoped_pool):
    """Qwen2.5-VL's attention rotates with three position sections (mrope): a random single-section input cannot run
    it, so without its registration the layout is refused, naming the candidates and why (nothing written)."""
    family = hf.BY_NAME["qwen2_5_vl_text"]
    _without_fused_registrations(scoped_pool)
    t, p = family.torch_model(1), family.paddle_model(2)
    before = p.layers[0].self_attn.qkv_proj.weight.numpy().copy()
    with pytest.raises(PairingError, match=r"Qwen2_5_VLAttention.*\(1\) concatenated \[q \| k \| v\]; \(2\) grouped "
                                           r"per KV head.*failed to run on a random input"):
        assign_weight(t, p)
    np.testing.assert_array_equal(p.layers[0].self_attn.qkv_proj.weight.numpy(), before)
