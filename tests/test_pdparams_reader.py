"""The .pdparams reader (padiff_lite/pdparams.py) reads what paddle.save writes exactly as paddle.load does, without
pickle; dtypes a state dict may hold (bf16 as uint16, float8, zero-size tensors) convert with the right numbers."""
from __future__ import annotations

import collections
import pickle

import numpy as np
import paddle
import pytest
import torch
from ckpt_helpers import load, load_into, save, state_as_torch
from helpers import max_abs_diff

from padiff_lite import convert_checkpoint, create_model
from padiff_lite.formats.files import open_checkpoint, read_state
from padiff_lite.models import llama, llama_paddle, llama_torch, run


def _paddle_model():
    paddle.seed(3)
    return paddle.nn.Sequential(paddle.nn.Linear(6, 5), paddle.nn.LayerNorm(5), paddle.nn.BatchNorm1D(5),
                                paddle.nn.Embedding(9, 5))


def _paddle_load_numpy(path):
    return {k: v for k, v in paddle.load(str(path), return_numpy=True).items() if isinstance(v, np.ndarray)}


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_reads_paddle_save_files_like_paddle_load(tmp_path, protocol):
    m = _paddle_model()
    path = tmp_path / "m.pdparams"
    paddle.save(m.state_dict(), str(path), protocol=protocol)
    ref = _paddle_load_numpy(path)
    got = read_state(path)
    assert set(got) == set(ref) == set(m.state_dict())
    for k in ref:
        assert got[k].numpy().dtype == ref[k].dtype and np.array_equal(got[k].numpy(), ref[k]), k


def test_bf16_model_round_trips_bit_exact(tmp_path):
    m = _paddle_model()
    m.to(dtype="bfloat16")
    paddle.save(m.state_dict(), str(tmp_path / "bf.pdparams"))
    got = read_state(tmp_path / "bf.pdparams")
    for k, v in m.state_dict().items():
        assert got[k].dtype == torch.bfloat16
        assert torch.equal(got[k].view(torch.int16), torch.from_dlpack(v.detach()).view(torch.int16)), k


def test_numpy_layouts_wrappers_and_protocol_5(tmp_path):
    arrays = {"f": np.asfortranarray(np.arange(12, dtype="f4").reshape(3, 4)), "be": np.arange(5, dtype=">i4"),
              "z": np.zeros((0, 3), "f4"), "d": np.linspace(0, 1, 7), "b": np.array([True, False])}
    for proto in (2, 4, 5):
        path = tmp_path / f"x{proto}.pdparams"
        with open(path, "wb") as fh:
            pickle.dump({"model": collections.OrderedDict(arrays), "epoch": 3}, fh, protocol=proto)
        got = read_state(path)
        assert set(got) == set(arrays)
        for k, a in arrays.items():
            assert np.array_equal(got[k].numpy(), a) and got[k].shape == a.shape, (proto, k)


def test_uint16_is_decided_by_the_model(tmp_path, capsys):
    """uint16 holds bf16 bits for a float tensor of the model, a real uint16 for an integer one."""
    bf = torch.tensor([[1.5, -2.0, 0.25], [3.25, 0.5, -8.0]], dtype=torch.bfloat16)
    bits = bf.view(torch.int16).numpy().view(np.uint16)
    path = tmp_path / "u.pdparams"
    with open(path, "wb") as fh:
        pickle.dump({"0.weight": bits.T.copy(), "0.bias": np.zeros(2, "f4"), "ids": np.array([1, 40000], "u2")}, fh,
                    protocol=4)
    float_model = create_model(paddle.nn.Sequential(paddle.nn.Linear(3, 2)))  # float32: the bits are bf16
    state = {"0.weight": bits.T.copy(), "0.bias": np.zeros(2, "f4")}
    with open(tmp_path / "f.pdparams", "wb") as fh:
        pickle.dump(state, fh, protocol=4)
    float_model.adapter.load_weights(float_model.model, str(tmp_path / "f.pdparams"))
    np.testing.assert_array_equal(float_model.model[0].weight.numpy(), bf.float().numpy().T)
    got = read_state(path, {"0.weight": torch.float32, "ids": torch.int32})
    assert got["0.weight"].dtype == torch.bfloat16 and torch.equal(got["0.weight"].float(), bf.float().t())
    assert got["ids"].dtype == torch.uint16 and got["ids"].to(torch.int64).tolist() == [1, 40000]


def test_pdparams_source_is_read_tensor_by_tensor_into_reused_memory(tmp_path):
    """A conversion from .pdparams gives the same numbers as paddle.load + a model, and reads each array on its own."""
    p = llama("paddle")
    for v in p.parameters():
        v.set_value(paddle.randn(v.shape) * 0.1)
    paddle.save(p.state_dict(), str(tmp_path / "l.pdparams"))
    ck = open_checkpoint(tmp_path / "l.pdparams")
    assert all(info.array is not None and info.array.parts[0].offset > 0 for info in ck.infos.values())
    convert_checkpoint(tmp_path / "l.pdparams", tmp_path / "l.safetensors", llama_paddle, llama_torch)
    t = load_into(llama("torch"), "torch", load(tmp_path / "l.safetensors"))
    ids = np.random.default_rng(0).integers(0, 256, (2, 5)).astype("int64")
    assert max_abs_diff(run(t, "torch", [ids]), run(p, "paddle", [ids])) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_converts_with_its_nan_count(tmp_path, dtype):
    lin = torch.nn.Linear(64, 48)
    state = {k: v.detach().to(dtype) for k, v in lin.state_dict().items()}
    state["weight"][3, 5] = float("nan")
    save(state, tmp_path / "f8.safetensors")

    def tnet():
        return torch.nn.Linear(64, 48).to(dtype)

    def pnet():
        return paddle.nn.Linear(64, 48)

    report = convert_checkpoint(tmp_path / "f8.safetensors", tmp_path / "p.safetensors", tnet, pnet)
    assert report.nonfinite == {"weight": 1}
    out = load(tmp_path / "p.safetensors")
    assert out["weight"].dtype == dtype
    assert torch.equal(out["weight"].view(torch.uint8), state["weight"].t().contiguous().view(torch.uint8))
    assert torch.equal(out["bias"].view(torch.uint8), state["bias"].view(torch.uint8))


def test_zero_size_paddle_tensors_convert(tmp_path):
    def pnet():
        return paddle.nn.Sequential(paddle.nn.Linear(4, 3), paddle.nn.Linear(3, 0))

    def tnet():
        return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 0))

    p = pnet()
    paddle.save(p.state_dict(), str(tmp_path / "z.pdparams"))
    convert_checkpoint(tmp_path / "z.pdparams", tmp_path / "z.pt", pnet, tnet)
    out = torch.load(tmp_path / "z.pt", weights_only=True)
    assert out["1.weight"].shape == (0, 3) and torch.equal(out["0.weight"], torch.from_numpy(p[0].weight.numpy()).t())
    assert state_as_torch(tnet(), "torch").keys() == out.keys()
