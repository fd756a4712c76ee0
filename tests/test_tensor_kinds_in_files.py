"""Legitimate files with less common tensors (issue 28, item 3): a .pt of nn.Parameters (``state_dict(keep_vars=True)``,
a dict of parameters) converts and loads like one of plain tensors; float8 goes to the formats that keep it
(.safetensors, .pt) bit for bit and a .pdparams output is refused naming the dtype and those formats; a nested tensor
is refused naming its key (or the file, for a jagged one torch.load refuses before we see its key)."""
from __future__ import annotations

import paddle
import pytest
import torch
from ckpt_helpers import assert_same_outputs, load, load_into, save, trained_conv_lstm

from fixtures.models import conv_lstm, conv_lstm_paddle, conv_lstm_torch
from padiff_lite import CheckpointError, convert_checkpoint, create_model
from padiff_lite.formats.files import open_checkpoint, read_state


def test_a_pt_of_parameters_converts_and_the_outputs_agree(tmp_path):
    a = trained_conv_lstm("torch")
    torch.save(a.state_dict(keep_vars=True), tmp_path / "keep_vars.pt")  # Parameters (requires_grad) and buffers
    params = {**dict(a.named_parameters()), **dict(a.named_buffers())}
    torch.save({"model": params}, tmp_path / "params.pt")  # a wrapped dict of Parameters
    assert any(isinstance(v, torch.nn.Parameter) for v in torch.load(tmp_path / "keep_vars.pt").values())
    for src in ("keep_vars.pt", "params.pt"):
        got = read_state(tmp_path / src)
        assert not any(t.requires_grad for t in got.values())
        for out in ("o.pdparams", "o.safetensors") if src == "keep_vars.pt" else ("o.pdparams",):  # torch -> paddle
            convert_checkpoint(tmp_path / src, tmp_path / out, conv_lstm_torch, conv_lstm_paddle)
            b = load_into(conv_lstm("paddle"), "paddle", load(tmp_path / out))
            assert_same_outputs(a, "torch", b, "paddle")
        fresh = create_model(conv_lstm("torch"))  # check --weights reads it into a torch model
        fresh.adapter.load_weights(fresh.model, str(tmp_path / src))
        fresh.model.eval()
        assert_same_outputs(a, "torch", fresh.model, "torch", atol=0.0)
    # and back: the paddle checkpoint made from Parameters converts to a torch .pt that reproduces the source
    convert_checkpoint(tmp_path / "o.pdparams", tmp_path / "back.pt", conv_lstm_paddle, conv_lstm_torch)
    assert_same_outputs(a, "torch", load_into(conv_lstm("torch"), "torch", load(tmp_path / "back.pt")), "torch",
                        atol=0.0)


def _f8_models(dtype):
    def tnet():
        return torch.nn.Linear(16, 8).to(dtype)

    def pnet():
        layer = paddle.nn.Linear(16, 8)
        layer.to(dtype=str(dtype).replace("torch.", ""))
        return layer

    return tnet, pnet


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_goes_to_safetensors_and_pt_bit_exact_and_pdparams_is_refused_by_name(tmp_path, dtype):
    tnet, pnet = _f8_models(dtype)
    torch.manual_seed(0)
    state = {k: (torch.randn(v.shape) * 3).to(dtype) for k, v in torch.nn.Linear(16, 8).state_dict().items()}
    save(state, tmp_path / "t.safetensors")
    # torch -> paddle: .safetensors keeps float8; .pdparams cannot (paddle.save stores it as int8)
    convert_checkpoint(tmp_path / "t.safetensors", tmp_path / "p.safetensors", tnet, pnet)
    p = load(tmp_path / "p.safetensors")
    assert p["weight"].dtype == dtype
    assert torch.equal(p["weight"].view(torch.uint8), state["weight"].t().contiguous().view(torch.uint8))
    with pytest.raises(CheckpointError, match=rf"p\.pdparams: tensor (weight|bias) is {str(dtype)[6:]}, which a "
                                              r"\.pdparams file cannot hold.*write this checkpoint as \.safetensors "
                                              r"or \.pt"):
        convert_checkpoint(tmp_path / "t.safetensors", tmp_path / "p.pdparams", tnet, pnet)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["p.safetensors", "t.safetensors"]  # nothing left behind
    # paddle -> torch: into a .pt, and the round trip gives the source's bits back
    convert_checkpoint(tmp_path / "p.safetensors", tmp_path / "back.pt", pnet, tnet)
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    for k in state:
        assert back[k].dtype == dtype and torch.equal(back[k].view(torch.uint8), state[k].view(torch.uint8)), k
    # the paddle model loading the converted file holds the torch source's float8 values
    proxy = create_model(pnet())
    proxy.adapter.load_weights(proxy.model, str(tmp_path / "p.safetensors"))
    assert proxy.model.weight.dtype == getattr(paddle, str(dtype)[6:])
    assert torch.equal(torch.from_dlpack(proxy.model.weight.detach().astype("float32")).t(), state["weight"].float())


def test_nested_tensors_are_refused_naming_the_key(tmp_path):
    nested = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])
    torch.save({"w": torch.ones(2), "packed": nested}, tmp_path / "nested.pt")
    with pytest.raises(CheckpointError, match=r"nested\.pt: packed is a nested tensor, which padiff_lite does not "
                                              r"convert; save it padded"):
        open_checkpoint(tmp_path / "nested.pt")
    jagged = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)], layout=torch.jagged)
    torch.save({"w": torch.ones(2), "packed": jagged}, tmp_path / "jagged.pt")
    # torch.load refuses a jagged tensor unless torch.nested was imported (here it was: the key is named)
    with pytest.raises(CheckpointError, match=r"jagged\.pt: (packed is a nested tensor|holds a nested \(jagged\) "
                                              r"tensor), which padiff_lite does not convert; save it padded"):
        open_checkpoint(tmp_path / "jagged.pt")
    with pytest.raises(CheckpointError, match="nested tensor"):
        convert_checkpoint(tmp_path / "nested.pt", tmp_path / "o.pdparams", lambda: torch.nn.Linear(2, 2),
                           lambda: paddle.nn.Linear(2, 2))
    assert not (tmp_path / "o.pdparams").exists()
