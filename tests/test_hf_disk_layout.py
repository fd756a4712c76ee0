"""transformers' on-disk (Hub) layout <-> in-memory layout through transformers' own conversion tables
(padiff_lite/hf_disk_layout.py): folders written by transformers' save_pretrained, MoE families (per-expert keys on
disk, packed experts in memory) and a family whose layouts agree."""
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import hf_families as hf
import library_models as L
from ckpt_helpers import load, load_into, save, state_as_torch
from padiff_lite import assign_weight, convert_checkpoint
from padiff_lite.errors import CheckpointError, TransferError
from padiff_lite.hf_disk_layout import to_disk, to_memory


def _saved(model, folder) -> dict:
    model.save_pretrained(folder)
    out = {}
    for name in os.listdir(folder):
        if name.endswith(".safetensors"):
            out.update(load_file(os.path.join(folder, name)))
    return out


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["qwen2_moe", "deepseek_v3", "qwen3_next", "qwen2"])
def test_a_save_pretrained_folder_reads_into_memory_and_writes_back(name, tmp_path):
    t = hf.BY_NAME[name].torch_model(1)
    disk = _saved(t, tmp_path)
    memory = {k: v for k, v in t.state_dict().items()}
    if name != "qwen2":  # experts one per expert on disk, packed in memory
        assert "model.layers.1.mlp.experts.3.gate_proj.weight" in disk
        assert "model.layers.1.mlp.experts.gate_up_proj" in memory and len(disk) > len(memory)
    assert _equal(to_memory(t, disk), memory)
    assert _equal(to_disk(t, memory), disk)


def test_a_transformers_folder_converts_to_paddleformers(tmp_path):
    """save_pretrained's folder -> in-memory layout -> convert_checkpoint (the layouts inferred once by a run, as
    the mapping says) -> the PaddleFormers model's file; equal to what assign_weight writes."""
    family = hf.BY_NAME["qwen2_moe"]
    t, p = family.torch_model(1), family.paddle_model(2)
    save(to_memory(t, _saved(t, tmp_path / "hub")), tmp_path / "model.safetensors")
    mapping = assign_weight(family.torch_model(5), family.paddle_model(6)).mapping
    convert_checkpoint(tmp_path / "model.safetensors", tmp_path / "out.pdparams", lambda: family.torch_model(1),
                       lambda: family.paddle_model(2), mapping=mapping)
    assign_weight(t, p)
    assert _equal(load(tmp_path / "out.pdparams"), state_as_torch(p, "paddle"))


# -- convert's factory form reads save_pretrained folders as they are (streaming, at key resolution) ----------------
@pytest.fixture(scope="module")
def mappings():
    """The inferred layouts of each family, found once on small random-weight models (as a user runs `pair` once)."""
    out = {}

    def get(name):
        if name not in out:
            fam = hf.BY_NAME[name]
            out[name] = assign_weight(fam.torch_model(5), fam.paddle_model(6)).mapping
        return out[name]
    return get


@pytest.mark.parametrize("name", ["qwen2_moe", "deepseek_v3", "qwen3_next"])
def test_convert_reads_a_save_pretrained_folder_into_paddleformers(name, tmp_path, mappings):
    """Per-expert on-disk keys are combined by transformers' own converters while converting: the .pdparams equals
    assign_weight's result bit for bit, and PaddleFormers' model loaded from it gives the transformers logits."""
    fam = hf.BY_NAME[name]
    t = fam.torch_model(1)
    t.save_pretrained(tmp_path / "hub")
    assert any(".experts.0.gate_proj.weight" in k for k in load_file(tmp_path / "hub" / "model.safetensors"))
    report = convert_checkpoint(tmp_path / "hub", tmp_path / "out.pdparams", lambda: fam.torch_model(1),
                                lambda: fam.paddle_model(2), mapping=mappings(name))
    assert any("read in transformers' on-disk layout" in n for n in report.notes)
    got = load(tmp_path / "out.pdparams")
    p = fam.paddle_model(2)
    assign_weight(t, p)
    assert _equal(got, state_as_torch(p, "paddle"))
    loaded = load_into(fam.paddle_model(3), "paddle", got)
    x = fam.inputs()
    assert np.abs(fam.forward_paddle(loaded, x) - fam.forward_torch(t, x)).max() < 1e-5


def test_convert_refuses_safetensors_for_a_paddleformers_class_that_reads_hf_layout(tmp_path, mappings):
    """The factory form into PaddleFormers' .safetensors: refused (its loader would transpose again), nothing
    written, the folder command named (the folder form writes what PaddleFormers' loader reads)."""
    fam = hf.BY_NAME["qwen2_moe"]
    fam.torch_model(1).save_pretrained(tmp_path / "hub")
    with pytest.raises(CheckpointError, match="--to paddleformers"):
        convert_checkpoint(tmp_path / "hub", tmp_path / "out.safetensors", lambda: fam.torch_model(1),
                           lambda: fam.paddle_model(2), mapping=mappings("qwen2_moe"))
    assert not (tmp_path / "out.safetensors").exists()


def test_convert_reads_a_vl_folder_with_its_renamed_keys(tmp_path):
    """Qwen2.5-VL on disk: model.layers.* / visual.*; in memory model.language_model.* / model.visual.*."""
    t = L.torch_qwen25vl()
    t.save_pretrained(tmp_path / "hub")
    assert "model.layers.0.mlp.up_proj.weight" in load_file(tmp_path / "hub" / "model.safetensors")
    report = convert_checkpoint(tmp_path / "hub", tmp_path / "out.safetensors", L.torch_qwen25vl, L.torch_qwen25vl)
    assert any("key(s) renamed" in n for n in report.notes)
    assert _equal(load_file(tmp_path / "out.safetensors"), t.state_dict())
    save(t.state_dict(), tmp_path / "memory.safetensors")  # the in-memory layout is read as it is, no note
    report = convert_checkpoint(tmp_path / "memory.safetensors", tmp_path / "out2.safetensors", L.torch_qwen25vl,
                                L.torch_qwen25vl)
    assert not any("on-disk layout" in n for n in report.notes)
    assert _equal(load_file(tmp_path / "out2.safetensors"), t.state_dict())


def test_a_file_mixing_both_layouts_is_refused(tmp_path):
    """In-memory packed experts of layer 1 plus its on-disk per-expert keys: two sources for one tensor."""
    fam = hf.BY_NAME["qwen2_moe"]
    t = fam.torch_model(1)
    state = {k: v.contiguous() for k, v in t.state_dict().items()}
    state.update({k: v for k, v in _saved(t, tmp_path / "hub").items() if ".layers.1.mlp.experts.0." in k})
    save(state, tmp_path / "mixed.safetensors")
    with pytest.raises(CheckpointError, match=r"mixes transformers' on-disk and in-memory layouts.*"
                                              r"model\.layers\.1\.mlp\.experts\.gate_up_proj"):
        convert_checkpoint(tmp_path / "mixed.safetensors", tmp_path / "out.safetensors", lambda: fam.torch_model(1),
                           lambda: fam.torch_model(2))
    assert not (tmp_path / "out.safetensors").exists()


def test_without_a_table_the_refusal_says_how_to_read_the_folder(tmp_path, monkeypatch):
    """A transformers version with no conversion table for the family (simulated: the table lookup returns none)
    cannot read per-expert keys: refused naming the missing tensors and the fix, nothing written."""
    import transformers.conversion_mapping as cm

    fam = hf.BY_NAME["qwen2_moe"]
    fam.torch_model(1).save_pretrained(tmp_path / "hub")
    monkeypatch.setattr(cm, "get_model_conversion_mapping", lambda *a, **k: [])
    with pytest.raises(TransferError, match=r"experts\.gate_up_proj.*no conversion table for it.*save_file"):
        convert_checkpoint(tmp_path / "hub", tmp_path / "out.safetensors", lambda: fam.torch_model(1),
                           lambda: fam.torch_model(2))
    assert not (tmp_path / "out.safetensors").exists()


def test_cli_factory_form_reads_a_deepseek_v3_folder(tmp_path, mappings, capsys):
    """`padiff-lite convert HUB out.pdparams --base file.py:f --raw file.py:g --map m.json` on DeepSeek-V3's
    save_pretrained folder: exit 0, the note printed, the file bit-equal to assign_weight's result."""
    from padiff_lite.cli import main

    fam = hf.BY_NAME["deepseek_v3"]
    t = fam.torch_model(1)
    t.save_pretrained(tmp_path / "hub")
    mappings("deepseek_v3").save(tmp_path / "map.json")
    (tmp_path / "models.py").write_text(
        f"import sys\nsys.path.insert(0, {os.path.dirname(__file__)!r})\nimport hf_families as hf\n"
        "def base():\n    return hf.BY_NAME['deepseek_v3'].torch_model(1)\n"
        "def raw():\n    return hf.BY_NAME['deepseek_v3'].paddle_model(2)\n")
    code = main(["convert", str(tmp_path / "hub"), str(tmp_path / "out.pdparams"), "--base",
                 f"{tmp_path / 'models.py'}:base", "--raw", f"{tmp_path / 'models.py'}:raw", "--map",
                 str(tmp_path / "map.json")])
    assert code == 0
    assert "read in transformers' on-disk layout for DeepseekV3ForCausalLM" in capsys.readouterr().out
    p = fam.paddle_model(2)
    assign_weight(t, p)
    assert _equal(load(tmp_path / "out.pdparams"), state_as_torch(p, "paddle"))


# -- writing transformers' on-disk layout from the factory form (out_layout="hf") ----------------------------------
@pytest.mark.parametrize("name", ["qwen2_moe", "deepseek_v3"])
def test_factory_form_writes_the_on_disk_layout_from_pretrained_loads(name, tmp_path, mappings):
    """PaddleFormers' .pdparams -> a transformers .safetensors with out_layout="hf": the file holds what transformers'
    own save_pretrained writes (per-expert keys, bit for bit), says padiff_lite_layout=hf, and from_pretrained on a
    folder with it gives the PaddleFormers model's logits; our factory form reads it back unchanged."""
    from safetensors import safe_open

    import transformers

    fam = hf.BY_NAME[name]
    t = fam.torch_model(1)
    t.save_pretrained(tmp_path / "hub")
    hub = load_file(tmp_path / "hub" / "model.safetensors")
    convert_checkpoint(tmp_path / "hub", tmp_path / "pf.pdparams", lambda: fam.torch_model(1),
                       lambda: fam.paddle_model(2), mapping=mappings(name))
    out = tmp_path / "folder" / "model.safetensors"
    out.parent.mkdir()
    report = convert_checkpoint(tmp_path / "pf.pdparams", out, lambda: fam.paddle_model(3), lambda: fam.torch_model(4),
                                mapping=mappings(name), out_layout="hf")
    assert any("written in transformers' on-disk layout" in n for n in report.notes)
    written = load_file(out)
    assert any(".experts.0.gate_proj.weight" in k for k in written)
    assert _equal(written, hub)
    with safe_open(str(out), "pt") as h:
        assert h.metadata() == {"format": "pt", "padiff_lite_layout": "hf"}
    t.config.save_pretrained(tmp_path / "folder")
    loaded = getattr(transformers, type(t).__name__).from_pretrained(tmp_path / "folder", dtype=torch.float32).eval()
    p = load_into(fam.paddle_model(3), "paddle", load(tmp_path / "pf.pdparams"))
    x = fam.inputs()
    assert np.abs(fam.forward_torch(loaded, x) - fam.forward_paddle(p, x)).max() < 1e-5
    convert_checkpoint(out, tmp_path / "again.pdparams", lambda: fam.torch_model(1), lambda: fam.paddle_model(2),
                       mapping=mappings(name))
    assert _equal(load(tmp_path / "again.pdparams"), load(tmp_path / "pf.pdparams"))
    # without out_layout: the in-memory layout, and the report says how to get the other
    report = convert_checkpoint(tmp_path / "pf.pdparams", tmp_path / "memory.safetensors", lambda: fam.paddle_model(3),
                                lambda: fam.torch_model(4), mapping=mappings(name))
    assert any("--out-layout hf" in n for n in report.notes)
    assert _equal(load_file(tmp_path / "memory.safetensors"), {k: v for k, v in t.state_dict().items()})


def test_on_disk_layout_sharded_and_vl(tmp_path):
    """A sharded Qwen2.5-VL hub folder rewritten with out_layout="hf": shard by shard, the same keys (model.layers.*,
    visual.*) and bytes as transformers' own save; out_layout refused where it does not apply, nothing written."""
    t = L.torch_qwen25vl()
    t.save_pretrained(tmp_path / "hub", max_shard_size="100KB")
    hub = {}
    for f in sorted((tmp_path / "hub").glob("*.safetensors")):
        hub.update(load_file(f))
    convert_checkpoint(tmp_path / "hub", tmp_path / "out" / "model.safetensors.index.json", L.torch_qwen25vl,
                       L.torch_qwen25vl, out_layout="hf")
    shards = sorted((tmp_path / "out").glob("*.safetensors"))
    assert len(shards) > 1
    got = {}
    for f in shards:
        got.update(load_file(f))
    assert _equal(got, hub)
    with pytest.raises(CheckpointError, match="out_layout='hf' writes a transformers model's .safetensors"):
        convert_checkpoint(tmp_path / "hub", tmp_path / "x.pt", L.torch_qwen25vl, L.torch_qwen25vl, out_layout="hf")
    assert not (tmp_path / "x.pt").exists()


def test_cli_out_layout(tmp_path, capsys):
    """`padiff-lite convert HUB out.safetensors --base ... --raw ... --out-layout hf` writes the hub's tensors."""
    from padiff_lite.cli import main

    fam = hf.BY_NAME["qwen2_moe"]
    fam.torch_model(1).save_pretrained(tmp_path / "hub")
    (tmp_path / "models.py").write_text(
        f"import sys\nsys.path.insert(0, {os.path.dirname(__file__)!r})\nimport hf_families as hf\n"
        "def t():\n    return hf.BY_NAME['qwen2_moe'].torch_model(1)\n")
    factory = f"{tmp_path / 'models.py'}:t"
    assert main(["convert", str(tmp_path / "hub"), str(tmp_path / "out.safetensors"), "--base", factory, "--raw",
                 factory, "--out-layout", "hf"]) == 0
    assert "written in transformers' on-disk layout for Qwen2MoeForCausalLM" in capsys.readouterr().out
    assert _equal(load_file(tmp_path / "out.safetensors"), load_file(tmp_path / "hub" / "model.safetensors"))
