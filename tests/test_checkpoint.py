"""convert_checkpoint: every format pair both ways, shards, bf16, legacy names, bad input, atomic output."""
from __future__ import annotations

import json

import numpy as np
import paddle
import pytest
import torch
from ckpt_helpers import (SUFFIX, assert_same_outputs, digest, load, load_into, save, save_sharded,
                          state_as_torch, trained_conv_lstm)
from helpers import DIRECTIONS, assert_refused, max_abs_diff, tensors_to_write

from fixtures.models import conv_lstm, conv_lstm_paddle, conv_lstm_torch
from padiff_lite import CheckpointError, TransferError, convert_checkpoint
from padiff_lite.models import attention_net, llama, llama_paddle, llama_torch, run
from padiff_lite.special_init import init_pool

FACTORY = {"torch": conv_lstm_torch, "paddle": conv_lstm_paddle}
FORMATS = ["pt", "safetensors", "pdparams"]
OWN = {"torch": ("pt", "safetensors"), "paddle": ("pdparams", "safetensors")}  # the suffix says the framework
PAIRS = [(fs, fd, i, o) for fs, fd in DIRECTIONS for i in OWN[fs] for o in OWN[fd]]


def _fresh_differs(src_model, fs, fd):
    fresh = conv_lstm(fd)
    with pytest.raises(AssertionError):
        assert_same_outputs(src_model, fs, fresh, fd)


@pytest.mark.parametrize("fs,fd,in_fmt,out_fmt", PAIRS, ids=[f"{a}->{b}-{i}-{o}" for a, b, i, o in PAIRS])
def test_round_trip_every_format_pair(tmp_path, fs, fd, in_fmt, out_fmt):
    a = trained_conv_lstm(fs)
    _fresh_differs(a, fs, fd)
    src = tmp_path / f"src{SUFFIX[in_fmt]}"
    save(state_as_torch(a, fs), src)
    before = digest(tmp_path)
    dst = tmp_path / f"out{SUFFIX[out_fmt]}"
    report = convert_checkpoint(src, dst, FACTORY[fs], FACTORY[fd])
    assert report.outputs == [str(dst)] and report.tensors == tensors_to_write(conv_lstm(fd))
    assert not report.missing and not report.unexpected
    b = load_into(conv_lstm(fd), fd, load(dst))
    assert_same_outputs(a, fs, b, fd)
    after = digest(tmp_path)
    assert after[src.name] == before[src.name]  # the source is only read
    assert sorted(after) == sorted([src.name, dst.name])  # no temporary file left


@pytest.mark.parametrize("suffix", [".pth", ".bin"])
def test_other_torch_suffixes(tmp_path, suffix):
    a = trained_conv_lstm("torch")
    save(state_as_torch(a, "torch"), tmp_path / f"w{suffix}")
    convert_checkpoint(tmp_path / f"w{suffix}", tmp_path / "p.pdparams", conv_lstm_torch, conv_lstm_paddle)
    convert_checkpoint(tmp_path / "p.pdparams", tmp_path / f"back{suffix}", conv_lstm_paddle, conv_lstm_torch)
    back = load(tmp_path / f"back{suffix}")
    orig = state_as_torch(a, "torch")
    assert set(back) == set(orig) - {"bn.num_batches_tracked"}
    for k in back:
        assert torch.equal(back[k], orig[k]), k


def test_models_may_be_instances_and_are_left_untouched(tmp_path):
    a = trained_conv_lstm("torch")
    save(state_as_torch(a, "torch"), tmp_path / "w.pt")
    base, raw = conv_lstm("torch"), conv_lstm("paddle")
    bsnap, rsnap = state_as_torch(base, "torch"), state_as_torch(raw, "paddle")
    convert_checkpoint(tmp_path / "w.pt", tmp_path / "w.pdparams", base, raw)
    for k, v in state_as_torch(base, "torch").items():
        assert torch.equal(v, bsnap[k]), k
    for k, v in state_as_torch(raw, "paddle").items():
        assert torch.equal(v, rsnap[k]), k
    assert_same_outputs(a, "torch", load_into(conv_lstm("paddle"), "paddle", load(tmp_path / "w.pdparams")), "paddle")


# -- shards --------------------------------------------------------------------
@pytest.mark.parametrize("fs,fd,in_suffix,out_name", [
    ("torch", "paddle", ".safetensors", "model.safetensors"),
    ("paddle", "torch", ".safetensors", "pytorch_model.bin"),
    ("torch", "paddle", ".bin", "model_state.pdparams.index.json"),
], ids=["st->st", "st->bin", "bin->pdparams"])
def test_sharded_in_sharded_out(tmp_path, fs, fd, in_suffix, out_name):
    a = trained_conv_lstm(fs)
    src_dir, out_dir = tmp_path / "src", tmp_path / "out"
    src_dir.mkdir()
    index = save_sharded(state_as_torch(a, fs), src_dir, "model", in_suffix, shards=3)
    before = digest(src_dir)
    report = convert_checkpoint(src_dir, out_dir / out_name, FACTORY[fs], FACTORY[fd])  # the folder is accepted
    assert digest(src_dir) == before
    stem, suffix = out_name.split(".")[0], "." + out_name.split(".")[1]
    out_index = out_dir / f"{stem}{suffix}.index.json"
    shards = [out_dir / f"{stem}-{i:05d}-of-00003{suffix}" for i in (1, 2, 3)]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(p.name for p in shards + [out_index])
    assert report.outputs == [str(p) for p in shards + [out_index]]
    data = json.loads(out_index.read_text())
    assert set(data["weight_map"].values()) == {p.name for p in shards}
    assert data["metadata"]["total_size"] == report.bytes
    b = load_into(conv_lstm(fd), fd, load(out_index))
    assert_same_outputs(a, fs, b, fd)
    # the index file itself is accepted as the source too
    convert_checkpoint(index, tmp_path / "single.safetensors.index.json", FACTORY[fs], FACTORY[fs])


def test_missing_shard_is_reported_and_nothing_is_written(tmp_path):
    a = trained_conv_lstm("torch")
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    index = save_sharded(state_as_torch(a, "torch"), src, "model", ".safetensors", shards=3)
    (src / "model-00002-of-00003.safetensors").unlink()
    assert_refused(lambda: convert_checkpoint(index, out / "model.safetensors", conv_lstm_torch, conv_lstm_paddle),
                   CheckpointError, src, out, match=r"model-00002-of-00003\.safetensors.*copy every shard")
    assert list(out.iterdir()) == []


# -- dtypes --------------------------------------------------------------------
@pytest.mark.parametrize("mid", [".pdparams", ".safetensors"])
def test_bf16_survives_both_ways(tmp_path, mid):
    t = llama_torch().to(torch.bfloat16)
    orig = state_as_torch(t, "torch")
    save(orig, tmp_path / "t.safetensors")
    convert_checkpoint(tmp_path / "t.safetensors", tmp_path / f"p{mid}", llama_torch, llama_paddle)
    mid_state = load(tmp_path / f"p{mid}")
    assert {v.dtype for v in mid_state.values()} == {torch.bfloat16}
    assert torch.equal(mid_state["layers.0.self_attn.q_proj.weight"], orig["layers.0.self_attn.q_proj.weight"].t())
    convert_checkpoint(tmp_path / f"p{mid}", tmp_path / "back.pt", llama_paddle, llama_torch)
    back = load(tmp_path / "back.pt")
    assert back.keys() == orig.keys()
    for k in orig:
        assert back[k].dtype == torch.bfloat16 and torch.equal(back[k], orig[k]), k
    # the bf16 weights drive a paddle model (computing in fp32; paddle's CPU kernels lack bf16) like the torch one
    p = load_into(llama("paddle"), "paddle", {k: v.float() for k, v in mid_state.items()})
    ids = np.random.default_rng(0).integers(0, 256, (2, 5)).astype("int64")
    assert max_abs_diff(run(t.float(), "torch", [ids]), run(p, "paddle", [ids])) < 1e-4


# -- the checkpoint must fit the models ------------------------------------------
def test_wrong_shapes_name_the_key_and_both_shapes(tmp_path):
    small = llama("torch", vocab=256, dim=32, layers=2, hidden=160, heads=4)
    save(state_as_torch(small, "torch"), tmp_path / "w.safetensors")
    with pytest.raises(TransferError) as err:
        convert_checkpoint(tmp_path / "w.safetensors", tmp_path / "o.pdparams", llama_torch, llama_paddle)
    msg = str(err.value)
    assert "embed_tokens.weight is [256, 32] in the checkpoint but embed_tokens.weight is [256, 64]" in msg
    assert "build the base model with the sizes" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_missing_and_unexpected_keys_strict_and_not(tmp_path):
    state = state_as_torch(trained_conv_lstm("torch"), "torch")
    state.pop("head.bias")
    state["extra.weight"] = torch.ones(3)
    save(state, tmp_path / "w.pt")
    with pytest.raises(TransferError) as err:
        convert_checkpoint(tmp_path / "w.pt", tmp_path / "o.pdparams", conv_lstm_torch, conv_lstm_paddle)
    msg = str(err.value)
    assert "needs are not in the checkpoint: head.bias" in msg and "--no-strict" in msg
    assert "not tensors of the base model ConvLSTM: extra.weight" in msg
    assert not (tmp_path / "o.pdparams").exists()
    report = convert_checkpoint(tmp_path / "w.pt", tmp_path / "o.pdparams", conv_lstm_torch, conv_lstm_paddle,
                                strict=False)
    assert report.missing == ["head.bias"] and report.unexpected == ["extra.weight"]
    out = load(tmp_path / "o.pdparams")
    assert "head.bias" not in out and torch.equal(out["head.weight"], state["head.weight"].t())


def test_legacy_gamma_beta_names_are_recognised_with_a_note(tmp_path):
    t = attention_net("torch")
    with torch.no_grad():
        t.norm.weight.uniform_(0.5, 1.5)
        t.norm.bias.uniform_(-0.5, 0.5)
    state = state_as_torch(t, "torch")
    state["norm.gamma"], state["norm.beta"] = state.pop("norm.weight"), state.pop("norm.bias")
    save(state, tmp_path / "old.bin")
    report = convert_checkpoint(tmp_path / "old.bin", tmp_path / "new.pdparams",
                                lambda: attention_net("torch"), lambda: attention_net("paddle"))
    assert "legacy key names recognised in the checkpoint: norm.gamma -> norm.weight, norm.beta -> norm.bias" in str(report)
    p = load_into(attention_net("paddle"), "paddle", load(tmp_path / "new.pdparams"))
    xs = [np.random.default_rng(1).standard_normal((2, 5, 16)).astype("float32")]
    assert max_abs_diff(run(t, "torch", xs), run(p, "paddle", xs)) < 1e-5


# -- bad input -----------------------------------------------------------------
def _good_pt(tmp_path):
    save(state_as_torch(trained_conv_lstm("torch"), "torch"), tmp_path / "good.pt")
    return (tmp_path / "good.pt").read_bytes()


@pytest.mark.parametrize("case", ["truncated", "garbage", "wrong_suffix", "missing", "unknown_suffix"])
def test_bad_input_gives_one_clear_error_and_no_output(tmp_path, case):
    good = _good_pt(tmp_path)
    expect = {
        "truncated": r"bad\.pt: cannot read this file as torch .*truncated, corrupt or not what its suffix says",
        "garbage": r"bad\.safetensors: cannot read this file as safetensors .*re-create or re-download it",
        "wrong_suffix": r"bad\.pdparams: cannot read this file as paddle",
        "missing": r"nothere\.pt: no such file",
        "unknown_suffix": r"bad\.ckpt: unknown checkpoint suffix '\.ckpt'; use one of \.bin, \.pdparams",
    }[case]
    name = {"truncated": "bad.pt", "garbage": "bad.safetensors", "wrong_suffix": "bad.pdparams",
            "missing": "nothere.pt", "unknown_suffix": "bad.ckpt"}[case]
    if case == "truncated":
        (tmp_path / name).write_bytes(good[: len(good) // 2])
    elif case == "garbage":
        (tmp_path / name).write_bytes(b"\x00\xffnot a checkpoint" * 50)
    elif case in ("wrong_suffix", "unknown_suffix"):
        (tmp_path / name).write_bytes(good)  # a torch file named .pdparams / .ckpt
    before = digest(tmp_path)
    with pytest.raises(CheckpointError, match=expect):
        convert_checkpoint(tmp_path / name, tmp_path / "out.pdparams", conv_lstm_torch, conv_lstm_paddle)
    assert digest(tmp_path) == before  # source unchanged, no output, no temporary file


def test_output_over_the_source_is_refused(tmp_path):
    _good_pt(tmp_path)
    with pytest.raises(CheckpointError, match="would overwrite the source"):
        convert_checkpoint(tmp_path / "good.pt", tmp_path / "good.pt", conv_lstm_torch, conv_lstm_torch)


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    """An error in the middle of a sharded conversion (here: in the second shard) removes every file written."""
    a = trained_conv_lstm("torch")
    src = tmp_path / "src"
    src.mkdir()
    index = save_sharded(state_as_torch(a, "torch"), src, "model", ".safetensors", shards=3)
    from padiff_lite import checkpoint

    calls = {"n": 0}
    real = checkpoint.Runner.compute

    def flaky(self, unit, stats, *args):
        calls["n"] += 1
        if calls["n"] == 12:
            raise KeyboardInterrupt  # an interruption, the hardest case
        return real(self, unit, stats, *args)

    monkeypatch.setattr(checkpoint.Runner, "compute", flaky)
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(index, tmp_path / "out" / "model.safetensors", conv_lstm_torch, conv_lstm_paddle)
    assert calls["n"] == 12
    assert not (tmp_path / "out").exists()
    assert len(list(src.iterdir())) == 4


def test_factory_that_fails_is_a_checkpoint_error(tmp_path):
    _good_pt(tmp_path)

    def broken():
        raise RuntimeError("config.json not found")

    assert_refused(lambda: convert_checkpoint(tmp_path / "good.pt", tmp_path / "o.pdparams", conv_lstm_torch, broken),
                   CheckpointError, tmp_path, match=r"raw model factory .*broken\(\) raised RuntimeError: config.json not found")
    with pytest.raises(CheckpointError, match=r"cannot import module 'no_such_module'"):
        convert_checkpoint(tmp_path / "good.pt", tmp_path / "o.pdparams", "no_such_module:build", conv_lstm_paddle)
    assert not (tmp_path / "o.pdparams").exists()


# -- imperative special inits run on just their pair ---------------------------------
def test_imperative_special_init_runs_on_its_pair_only(tmp_path):
    class Scale(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4, 6))

    class ScaleP(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.w = self.create_parameter([6, 4])

    seen = []

    @init_pool.register("torch", "Scale", "paddle", "ScaleP")
    def init_scale(module, layer):
        seen.append((module.w.device.type, layer.w._is_initialized()))
        layer.w.set_value(module.w.detach().numpy().T * 2)

    try:
        def tnet():
            return torch.nn.Sequential(torch.nn.Linear(3, 4), Scale())

        def pnet():
            return paddle.nn.Sequential(paddle.nn.Linear(3, 4), ScaleP())

        t = tnet()
        save(state_as_torch(t, "torch"), tmp_path / "w.safetensors")
        report = convert_checkpoint(tmp_path / "w.safetensors", tmp_path / "w.pdparams", tnet, pnet)
        assert seen == [("cpu", True)]
        out = load(tmp_path / "w.pdparams")
        assert torch.equal(out["1.w"], t[1].w.detach().t() * 2)
        assert torch.equal(out["0.weight"], t[0].weight.detach().t())
        assert any("special init" in p.rule for p in report.pairs)
    finally:
        init_pool.remove("torch", "Scale", "paddle", "ScaleP")
