"""Model folders in one command (issue 26): `convert SRC_DIR DST_DIR --to paddleformers|transformers`.

Real libraries, real loaders: a folder written by one library's save_pretrained is converted and loaded by the
other library's from_pretrained, whose logits must equal those of the model that was saved. Tiny models with
random weights and noise on the norms (tests/library_models.py, tests/hf_families.py).
"""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from safetensors import safe_open

import hf_families as H
import library_models as L
from padiff_lite import convert_checkpoint
from padiff_lite import library_folders as LF
from padiff_lite.cli import main
from padiff_lite.errors import CheckpointError
from padiff_lite.library_verify import load, run

TOL = 2e-5


def _ids():
    return L.ids()


def _logits(library, model):
    return run(library, model, _ids())


def _saved(tmp_path, library, model, name, **kw):
    folder = tmp_path / name
    model.save_pretrained(str(folder), **kw)
    return folder


def _headers(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            out.update({k: (f.name, h.get_slice(k).get_dtype(), tuple(h.get_slice(k).get_shape())) for k in h.keys()})
            meta = h.metadata()
    return out, meta


# one entry per family of tests/hf_families.py that both libraries load from a folder on a CPU
FAMILIES = ["llama", "llama_tied", "phi3", "ernie4_5", "gemma3_text", "gpt_oss"]
# PaddleFormers' eager classes (tests/hf_families.py, paddlefleet stand-ins) save folders transformers loads. The other
# way is not tested: a transformers folder names Qwen2ForCausalLM ..., whose PaddleFormers class needs paddlefleet
# (not on a CPU; the stand-ins only let the *Deprecated eager classes import).
FROM_PADDLEFORMERS = FAMILIES + ["qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "deepseek_v3", "glm4_moe"]


def _run(fam, library, model):
    """The family's own forward (GPT-OSS: PaddleFormers' experts in training mode, see hf_families)."""
    x = {"input_ids": _ids()}
    return fam.forward_torch(model, x) if library == "transformers" else fam.forward_paddle(model, x)


@pytest.mark.parametrize("name", FAMILIES)
def test_transformers_folder_loads_in_paddleformers(tmp_path, name):
    fam = H.BY_NAME[name]
    t = L.noisy_torch(fam.torch_model(0))
    src = _saved(tmp_path, "transformers", t, "hf")
    report = convert_checkpoint(src, tmp_path / "pf", to="paddleformers")
    arch = json.loads((src / "config.json").read_text())["architectures"][0]
    got = _run(fam, "paddleformers", load("paddleformers", arch, tmp_path / "pf"))
    diff = np.abs(got - _run(fam, "transformers", t)).max()
    assert diff < TOL, (name, diff)
    assert report.tensors == len(_headers(src)[0])
    assert _headers(tmp_path / "pf")[1] == {"format": "pt", "padiff_lite_layout": "hf"}


def _as_saved(p, folder):
    """PaddleFormers' own save_pretrained writes MoE routers in bfloat16 from a float32 model (upstream; issue 26):
    the folder holds the rounded values, so the model compared with is given them too (every other tensor is
    float32 in the folder, so nothing else changes)."""
    import paddle

    rounded = {k for k, (_, dtype, _) in _headers(folder)[0].items() if dtype == "BF16"}
    own = p.state_dict()
    for k in rounded:
        t = own[k]
        if t.dtype == paddle.float32:
            t.set_value(t.astype("bfloat16").astype("float32"))
    return rounded


@pytest.mark.parametrize("name", FROM_PADDLEFORMERS)
def test_paddleformers_folder_loads_in_transformers(tmp_path, name):
    fam = H.BY_NAME[name]
    p = L.noisy_paddle(fam.paddle_model(0))
    src = _saved(tmp_path, "paddleformers", p, "pf")
    arch = json.loads((src / "config.json").read_text())["architectures"][0]
    report = convert_checkpoint(src, tmp_path / "hf", to="transformers")
    if name == "gemma3_text":  # PaddleFormers' own save leaves layer 1's up_gate_proj fused: split, noted
        assert any("1 tensor(s) mlp.up_gate_proj.weight split into" in n for n in report.notes)
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    # PaddleFormers' eager classes (Qwen2ForCausalLMDeprecated ...) save their own name: transformers' is written
    assert cfg["architectures"] == [arch.removesuffix("Deprecated")]
    got = _run(fam, "transformers", load("transformers", cfg["architectures"][0], tmp_path / "hf"))
    _as_saved(p, src)
    diff = np.abs(got - _run(fam, "paddleformers", p)).max()
    assert diff < TOL, (name, diff)
    assert "paddleformers_version" not in cfg and "fuse_rms_norm" not in cfg


@pytest.mark.parametrize("to", ["paddleformers", "transformers"])
def test_all_square_model_folders_are_right(tmp_path, to):
    """Every transposed matrix square: the layout comes from the folder, never from shapes."""
    if to == "paddleformers":
        model, src_lib = L.torch_llama(square=True), "transformers"
    else:
        model, src_lib = L.paddle_llama(square=True), "paddleformers"
    src = _saved(tmp_path, src_lib, model, "src")
    convert_checkpoint(src, tmp_path / "dst", to=to)
    got = _logits(to, load(to, "LlamaForCausalLM", tmp_path / "dst"))
    diff = np.abs(got - _logits(src_lib, model)).max()
    assert diff < TOL, diff


def test_sharded_source_gives_sharded_output_and_dtypes_are_kept(tmp_path):
    t = L.torch_llama().to(torch.bfloat16)
    src = _saved(tmp_path, "transformers", t, "hf", max_shard_size="100KB")
    (src / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    (src / "tokenizer.json").write_text('{"version": "1.0"}')
    shards = sorted(p.name for p in src.glob("*.safetensors"))
    assert len(shards) >= 2
    report = convert_checkpoint(src, tmp_path / "pf", to="paddleformers")
    dst = tmp_path / "pf"
    assert sorted(p.name for p in dst.glob("*.safetensors")) == shards
    index = json.loads((dst / "model.safetensors.index.json").read_text())["weight_map"]
    assert index == json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    assert _headers(dst)[0] == _headers(src)[0]  # every tensor, same shard, same dtype, same shape
    for name in ("tokenizer_config.json", "tokenizer.json", "generation_config.json"):
        assert (dst / name).read_bytes() == (src / name).read_bytes()
    assert set(report.copied) == {"tokenizer_config.json", "tokenizer.json", "generation_config.json"}
    got = _logits("paddleformers", load("paddleformers", "LlamaForCausalLM", dst))
    ref = _logits("transformers", t.float())
    assert np.abs(got - ref).max() < TOL


def test_verify_passes_and_catches_a_spoiled_tensor(tmp_path, monkeypatch, capsys):
    src = _saved(tmp_path, "transformers", L.torch_llama(), "hf")
    assert main(["convert", str(src), str(tmp_path / "good"), "--to", "paddleformers", "--verify"]) == 0
    out = capsys.readouterr().out
    assert "verified: max |diff| of outputs" in out
    assert (tmp_path / "good" / "config.json").is_file() and not (tmp_path / "good" / LF.UNVERIFIED_MARK).exists()

    class Spoiling(LF.SafetensorsWriter):  # a fault in our writing: one tensor off by 0.5
        def add(self, key, tensor):
            if key.endswith("layers.1.self_attn.v_proj.weight"):
                tensor = tensor + 0.5
            super().add(key, tensor)

    monkeypatch.setattr(LF, "SafetensorsWriter", Spoiling)
    assert main(["convert", str(src), str(tmp_path / "bad"), "--to", "paddleformers", "--verify"]) == 1
    out = capsys.readouterr().out
    assert "NOT VERIFIED" in out
    assert not (tmp_path / "bad").exists()
    left = tmp_path / ("bad" + LF.UNVERIFIED_SUFFIX)
    assert "Do not use it" in (left / LF.UNVERIFIED_MARK).read_text()


def test_folder_refusals_write_nothing(tmp_path):
    src = _saved(tmp_path, "transformers", L.torch_llama(), "hf")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    with pytest.raises(CheckpointError, match="exists and is not an empty folder"):
        convert_checkpoint(src, tmp_path / "full", to="paddleformers")
    with pytest.raises(CheckpointError, match="not a model folder"):
        convert_checkpoint(src / "model.safetensors", tmp_path / "o", to="paddleformers")
    with pytest.raises(CheckpointError, match="lies inside the source folder"):
        convert_checkpoint(src, src / "sub", to="paddleformers")
    with pytest.raises(CheckpointError, match="do not pass base_model"):
        convert_checkpoint(src, tmp_path / "o", L.llama_torch, to="paddleformers")
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = ["NoSuchForCausalLM"]
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="names the architecture NoSuchForCausalLM"):
        convert_checkpoint(src, tmp_path / "o", to="paddleformers")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "hf"]


def test_check_switches_off_fused_kernels_on_cpu(caplog):
    """A PaddleFormers Llama as configured (fuse_rms_norm on: no CPU kernel) runs in `check`, and says so."""
    with caplog.at_level(logging.INFO, logger="padiff_lite"):
        code = main(["check", "--base", "library_models:llama_torch",
                     "--raw", "library_models:paddle_llama_as_configured", "--input-shape", "2,7", "--dtype", "int64",
                     "--int-range", "1,128", "--input-name", "input_ids"])
    assert code == 0
    assert any("switched off fuse_rms_norm=False" in r.getMessage() for r in caplog.records)


def test_tied_phi3_loads_in_paddleformers_and_back(tmp_path):
    """PaddleFormers' own loader fails on transformers' tied Phi3 folder (its rules ask for lm_head.weight, which
    transformers does not store): the converted folder holds it as a copy of the embedding."""
    t, p = L.phi3_tied_pair()
    src = _saved(tmp_path, "transformers", t, "hf")
    with pytest.raises(ValueError, match="lm_head.weight should be assigned before"):
        load("paddleformers", "Phi3ForCausalLM", src)
    report = convert_checkpoint(src, tmp_path / "pf", to="paddleformers")
    assert any("lm_head.weight written as a copy of model.embed_tokens.weight" in n for n in report.notes)
    diff = np.abs(_logits("paddleformers", load("paddleformers", "Phi3ForCausalLM", tmp_path / "pf"))
                  - _logits("transformers", t)).max()
    assert diff < TOL, diff
    back = _saved(tmp_path, "paddleformers", p, "pfs")
    convert_checkpoint(back, tmp_path / "hf2", to="transformers")
    diff = np.abs(_logits("transformers", load("transformers", "Phi3ForCausalLM", tmp_path / "hf2"))
                  - _logits("paddleformers", p)).max()
    assert diff < TOL, diff


def test_verify_from_a_paddleformers_folder_leaves_the_source_as_it_was(tmp_path):
    """PaddleFormers' from_pretrained writes flex-ckpt.auto_generated.metadata into the folder it reads: --verify
    removes it again from the source."""
    src = _saved(tmp_path, "paddleformers", L.paddle_llama(), "pf")
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    report = convert_checkpoint(src, tmp_path / "hf", to="transformers", verify=True)
    assert report.verified and report.max_diff < TOL
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [
        "config.json", "model-00001-of-00001.safetensors", "model.safetensors.index.json"]
    same = convert_checkpoint(src, tmp_path / "pf2", to="paddleformers")  # the direction it already has
    assert any("written by paddleformers already" in n for n in same.notes)


def test_ernie45_moe_folders_both_ways(tmp_path):
    """ERNIE-4.5-MoE: PaddleFormers' forward needs a GPU kernel, so the PaddleFormers side is checked by its loaded
    tensors against padiff_lite's own in-memory transfer of the same model (rules of special_init/init_hf_ernie.py);
    PaddleFormers' config is told what transformers' class always has (no MTP layers, the correction bias)."""
    from padiff_lite import assign_weight

    fam = H.BY_NAME["ernie4_5_moe"]
    t = L.noisy_torch(fam.torch_model(0))
    src = _saved(tmp_path, "transformers", t, "hf")
    report = convert_checkpoint(src, tmp_path / "pf", to="paddleformers")
    assert "num_nextn_predict_layers = 0 (what transformers' class has)" in report.config_changes
    loaded = load("paddleformers", "Ernie4_5_MoeForCausalLM", tmp_path / "pf").state_dict()
    p = fam.paddle_model(1)
    assign_weight(t, p)
    expected = p.state_dict()
    assert set(loaded) == set(expected)
    for k, v in expected.items():
        assert np.array_equal(loaded[k].numpy(), v.numpy()), k
    p.save_pretrained(str(tmp_path / "pfs"))
    convert_checkpoint(tmp_path / "pfs", tmp_path / "hf2", to="transformers")
    diff = np.abs(_logits("transformers", load("transformers", "Ernie4_5_MoeForCausalLM", tmp_path / "hf2"))
                  - _logits("transformers", t)).max()
    assert diff < TOL, diff


def test_qwen25vl_folders_both_ways(tmp_path):
    """Text-only token ids (below the image/video token ids). PaddleFormers' own save writes the text layers' q/k/v
    biases under model.language_model.layers.* (it cannot read that folder back itself): renamed, noted."""
    t = L.torch_qwen25vl()
    arch = "Qwen2_5_VLForConditionalGeneration"
    x = _ids() % 100 + 1  # no image/video token ids (120-122)
    src = _saved(tmp_path, "transformers", t, "hf")
    convert_checkpoint(src, tmp_path / "pf", to="paddleformers")
    p = load("paddleformers", arch, tmp_path / "pf")
    ref = run("transformers", t, x)
    assert np.abs(run("paddleformers", p, x) - ref).max() < TOL
    p.save_pretrained(str(tmp_path / "pfs"))
    report = convert_checkpoint(tmp_path / "pfs", tmp_path / "hf2", to="transformers")
    assert any("renamed model.language_model.layers.* -> model.layers.*" in n for n in report.notes)
    assert np.abs(run("transformers", load("transformers", arch, tmp_path / "hf2"), x) - ref).max() < TOL
