"""Real ports: every HF transformers <-> PaddleFormers family that builds on a CPU (tests/hf_families.py), both
directions, with and without auto_layer_map, zero configuration; checkpoint conversion round trips.

Outputs after a transfer: max |diff| < 1e-4 and < 1e-5 of max |output|. The MoE family's forward needs a GPU
kernel in PaddleFormers: its tensors are compared one by one after round trips instead.
"""
import numpy as np
import pytest
import torch

import hf_families as hf
from ckpt_helpers import load, save, state_as_torch
from padiff_lite import assign_weight, convert_checkpoint, create_model

RUNS = [f for f in hf.FAMILIES if f.runs_on_cpu]
ALL = [pytest.param(f, id=f.name) for f in hf.FAMILIES]
DIRS = ["torch->paddle", "paddle->torch"]


def _pair(family, direction):
    t, p = family.torch_model(1), family.paddle_model(2)  # other seeds: the weights differ before the transfer
    return (t, p) if direction == "torch->paddle" else (p, t)


def _agree(family, t, p):
    x = family.inputs()
    a, b = family.forward_torch(t, x), family.forward_paddle(p, x)
    diff = float(np.abs(a.astype("float64") - b).max())
    return diff, diff / float(np.abs(a).max())


@pytest.mark.parametrize("auto", [False, True], ids=["default", "auto_layer_map"])
@pytest.mark.parametrize("direction", DIRS)
@pytest.mark.parametrize("family", [pytest.param(f, id=f.name) for f in RUNS])
def test_a_family_ports_with_equal_outputs(family, direction, auto):
    src, dst = _pair(family, direction)
    t, p = (src, dst) if direction == "torch->paddle" else (dst, src)
    assert _agree(family, t, p)[0] > 1e-3, "outputs agree before the transfer: the test would prove nothing"
    if auto:
        report = assign_weight(create_model(src).auto_layer_map("base"), create_model(dst).auto_layer_map("raw"))
    else:
        report = assign_weight(src, dst)
    assert not report.missing and not report.unexpected
    diff, rel = _agree(family, t, p)
    assert diff < 1e-4 and rel < 1e-5, f"{family.name} {direction}: max |diff| {diff:.3g}, relative {rel:.3g}"


def _tensors(model) -> dict:
    fw = "torch" if isinstance(model, torch.nn.Module) else "paddle"
    return state_as_torch(model, fw)


def _assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("direction", DIRS)
def test_moe_round_trips_in_memory_exactly(direction):
    family = hf.BY_NAME["ernie4_5_moe"]
    src, mid = _pair(family, direction)
    back = family.torch_model(3) if direction == "torch->paddle" else family.paddle_model(3)
    assign_weight(src, mid)
    before = _tensors(back)
    assign_weight(mid, back)
    after = _tensors(back)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    _assert_same_tensors(_tensors(src), after)
    # spot checks of the layout, value by value: a packed expert and the transposed router
    t, p = (src, mid) if direction == "torch->paddle" else (mid, src)
    packed = t.model.layers[1].mlp.experts.gate_up_proj.detach()
    np.testing.assert_array_equal(p.model.layers[1].mlp.experts[2].up_gate_proj.weight.numpy(), packed[2].T.numpy())
    np.testing.assert_array_equal(p.model.layers[1].mlp.gate.weight.numpy(),
                                  t.model.layers[1].mlp.gate.weight.detach().T.numpy())


@pytest.mark.parametrize("family", ALL)
def test_convert_a_transformers_checkpoint_and_back_bit_exact(family, tmp_path):
    """A transformers-layout safetensors file -> the PaddleFormers model's .pdparams -> safetensors again."""
    t = family.torch_model(1)
    first = tmp_path / "model.safetensors"
    save(state_as_torch(t, "torch"), first)
    p_model = family.paddle_model(2)
    # layouts inferred by running units: nothing runs in a conversion, so the mapping of a run on small random
    # models (other seeds) says which layout (the documented way to reuse an inferred layout)
    mapping = assign_weight(family.torch_model(5), family.paddle_model(6)).mapping if family.inferred else None
    convert_checkpoint(first, tmp_path / "model.pdparams", t, p_model, mapping=mapping)
    converted = load(tmp_path / "model.pdparams")
    if family.runs_on_cpu:  # the converted file gives the PaddleFormers model the transformers model's outputs
        import paddle

        p_model.set_state_dict({k: paddle.to_tensor(v.numpy()) for k, v in converted.items()})
        diff, rel = _agree(family, t, p_model)
        assert diff < 1e-4 and rel < 1e-5
    convert_checkpoint(tmp_path / "model.pdparams", tmp_path / "back.safetensors", family.paddle_model(3),
                       family.torch_model(4), mapping=mapping)
    back, orig = load(tmp_path / "back.safetensors"), load(first)
    # safetensors stores a tied tensor once (as transformers does): the names left out must be tied aliases
    first_name = {}
    for name, tensor in t.state_dict(keep_vars=True).items():
        first_name.setdefault(id(tensor), name)
    aliases = {n for n, v in t.state_dict(keep_vars=True).items() if first_name[id(v)] != n}
    assert set(orig) - set(back) <= aliases and set(back) <= set(orig)
    _assert_same_tensors({k: orig[k] for k in back}, back)


def test_supported_models_doc_lists_every_family():
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "supported_models.md").read_text()
    missing = [f.name for f in hf.FAMILIES if f"| {f.name} |" not in doc]
    assert not missing, f"regenerate docs/supported_models.md (python tests/supported_models.py): {missing}"
