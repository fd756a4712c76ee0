"""transformers' on-disk (Hub) layout <-> in-memory layout through transformers' own conversion tables
(padiff_lite/hf_disk_layout.py): folders written by transformers' save_pretrained, MoE families (per-expert keys on
disk, packed experts in memory) and a family whose layouts agree."""
import os

import pytest
import torch
from safetensors.torch import load_file

import hf_families as hf
from ckpt_helpers import load, save, state_as_torch
from padiff_lite import assign_weight, convert_checkpoint
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


@pytest.mark.parametrize("name", ["qwen2_moe", "deepseek_v3", "qwen2"])
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
