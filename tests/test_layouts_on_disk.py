"""A checkpoint file's layout is known from what wrote it, never guessed from shapes (issue 26, part 1).

PaddleFormers' from_pretrained reads HuggingFace-layout safetensors and transposes them itself, so a paddle-layout
.safetensors handed to it loads silently wrong; PaddleFormers' save_pretrained writes HF layout, which the factory
form of convert must not take for paddle's in-memory layout. Real transformers / PaddleFormers Llamas, real files.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file as np_save_file

import library_models as L
from ckpt_helpers import load, save, state_as_torch, trained_conv_lstm
from fixtures.models import conv_lstm_paddle, conv_lstm_torch
from padiff_lite import convert_checkpoint
from padiff_lite.errors import CheckpointError

FACTORIES = {False: (L.llama_torch, L.llama_paddle), True: (L.square_llama_torch, L.square_llama_paddle)}


def _files(folder):
    return sorted(p.name for p in folder.rglob("*"))


@pytest.mark.parametrize("square", [False, True], ids=["llama", "all-square"])
def test_paddle_layout_safetensors_for_a_paddleformers_class_is_refused(tmp_path, square):
    L.torch_llama(square=square).save_pretrained(tmp_path / "hf")
    before = _files(tmp_path)
    tm, pm = FACTORIES[square]
    with pytest.raises(CheckpointError) as e:
        convert_checkpoint(tmp_path / "hf" / "model.safetensors", tmp_path / "out" / "model.safetensors", tm, pm)
    msg = str(e.value)
    assert "reads .safetensors in the HuggingFace layout" in msg and "transposed a second time" in msg
    assert "--to paddleformers" in msg and "Nothing was written" in msg
    assert _files(tmp_path) == before


@pytest.mark.parametrize("square", [False, True], ids=["llama", "all-square"])
def test_paddleformers_saved_folder_is_not_taken_for_paddle_layout(tmp_path, square):
    """The issue's reverse case: refused ten times on a normal Llama, exit 0 with wrong weights on an all-square
    one. Now the folder's config.json says the file is in HF layout, whatever the shapes."""
    L.paddle_llama(square=square).save_pretrained(str(tmp_path / "pf"))
    before = _files(tmp_path)
    tm, pm = FACTORIES[square]
    with pytest.raises(CheckpointError) as e:
        convert_checkpoint(tmp_path / "pf", tmp_path / "t.safetensors", pm, tm)
    assert "is in the HuggingFace layout" in str(e.value) and "config.json names LlamaForCausalLM" in str(e.value)
    assert "--to transformers" in str(e.value)
    assert _files(tmp_path) == before


def test_square_file_of_unknown_layout_is_refused_and_layout_decides(tmp_path):
    """A shard taken out of its folder: nothing says how it was written. All-square: refused, asking --layout."""
    pf = L.paddle_llama(square=True)
    pf.save_pretrained(str(tmp_path / "pf"))
    shard = next((tmp_path / "pf").glob("*.safetensors"))
    lone = tmp_path / "lone.safetensors"
    shutil.copy(shard, lone)
    with pytest.raises(CheckpointError) as e:
        convert_checkpoint(lone, tmp_path / "t.safetensors", L.square_llama_paddle, L.square_llama_torch)
    assert "cannot tell whether this file is in paddle's in-memory layout" in str(e.value)
    assert "--layout paddle" in str(e.value) and "--layout hf" in str(e.value)
    with pytest.raises(CheckpointError, match="is in the HuggingFace layout"):
        convert_checkpoint(lone, tmp_path / "t.safetensors", L.square_llama_paddle, L.square_llama_torch, layout="hf")
    assert not (tmp_path / "t.safetensors").exists()

    # the model's own state_dict, saved with safetensors.numpy: --layout paddle says so, and the result is right
    mem = tmp_path / "mem.safetensors"
    np_save_file({k: v.numpy() for k, v in pf.state_dict().items()}, str(mem))
    convert_checkpoint(mem, tmp_path / "t.safetensors", L.square_llama_paddle, L.square_llama_torch, layout="paddle")
    t = L.torch_llama(square=True, seed=5)
    t.load_state_dict(load(tmp_path / "t.safetensors"))
    x = L.ids()
    diff = np.abs(L.logits_torch(t, x) - L.logits_paddle(pf, x)).max()
    assert diff < 1e-4, diff


def test_written_files_say_their_layout_and_it_is_read_back(tmp_path):
    a = trained_conv_lstm("torch")
    save(state_as_torch(a, "torch"), tmp_path / "src.safetensors")
    convert_checkpoint(tmp_path / "src.safetensors", tmp_path / "pd.safetensors", conv_lstm_torch, conv_lstm_paddle)
    convert_checkpoint(tmp_path / "pd.safetensors", tmp_path / "pt.safetensors", conv_lstm_paddle, conv_lstm_torch)
    for name, layout, fmt in (("pd", "paddle", "np"), ("pt", "torch", "pt")):
        with safe_open(str(tmp_path / f"{name}.safetensors"), "pt") as h:
            assert h.metadata() == {"format": fmt, "padiff_lite_layout": layout}
    # a paddle-layout file given with a torch base is refused by what its header says, not by shapes
    with pytest.raises(CheckpointError) as e:
        convert_checkpoint(tmp_path / "pd.safetensors", tmp_path / "x.pdparams", conv_lstm_torch, conv_lstm_paddle)
    assert "padiff_lite_layout='paddle'" in str(e.value) and "pass the paddle model as --base" in str(e.value)
    back = load(tmp_path / "pt.safetensors")
    orig = state_as_torch(a, "torch")
    assert all(torch.equal(back[k], orig[k]) for k in back)


def test_cli_refuses_with_one_line_and_exit_2(tmp_path, capsys):
    from padiff_lite.cli import main

    L.torch_llama(square=True).save_pretrained(tmp_path / "hf")
    rc = main(["convert", str(tmp_path / "hf" / "model.safetensors"), str(tmp_path / "o" / "model.safetensors"),
               "--base", "library_models:square_llama_torch", "--raw", "library_models:square_llama_paddle"])
    err = capsys.readouterr().err
    assert rc == 2 and "padiff-lite: error: CheckpointError:" in err and "--to paddleformers" in err
    assert not (tmp_path / "o").exists()
