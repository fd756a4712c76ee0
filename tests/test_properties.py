"""Property-based tests: random stacks of supported layers, built in both frameworks.

1. Transferred either way, the two stacks give the same outputs (one layer may carry another name); both
   start from random weights, and their outputs are checked to differ before the transfer.
2. A random corruption of one side's structure (a layer dropped, a size changed, a parameter added,
   a layer renamed and of another class so order-pairing cannot apply) always raises TransferError
   naming the corrupted layer, and leaves the target bit-identical.

Bounded and reproducible for CI: a fixed number of derandomized examples, no deadline.
"""
from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import max_abs_diff
from padiff_lite import TransferError, assign_weight
from padiff_lite.models import run

B, L = 2, 5
SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow],
                print_blob=True)
KINDS = ["linear", "layernorm", "conv1d", "conv2d", "batchnorm", "lstm", "gru", "mha"]


# -- specs: plain data describing a stack, resolved to per-layer configs -------------------------
@st.composite
def stacks(draw):
    """(embedding or None, input dim, [layer config]) where each config is a dict with a name."""
    embed = draw(st.none() | st.tuples(st.integers(3, 9), st.integers(2, 8)))  # (vocab, dim)
    d = embed[1] if embed else draw(st.integers(2, 8))
    configs = []
    if embed:
        configs.append(dict(kind="embedding", vocab=embed[0], dim=embed[1]))
    for i in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(KINDS))
        c = dict(kind=kind, d=d)
        if kind in ("linear", "conv1d", "conv2d"):
            c["out"] = draw(st.integers(2, 8))
            c["k"] = 1 if kind == "linear" else draw(st.sampled_from([1, 3]))
            c["bias"] = draw(st.booleans())
            d = c["out"]
        elif kind in ("lstm", "gru"):
            c.update(hidden=draw(st.integers(2, 6)), layers=draw(st.integers(1, 2)), bidir=draw(st.booleans()))
            d = c["hidden"] * (2 if c["bidir"] else 1)
        elif kind == "mha":
            c["heads"] = draw(st.sampled_from([h for h in (1, 2, 4) if d % h == 0]))
        configs.append(c)
    for i, c in enumerate(configs):
        c["name"] = f"l{i}_{c['kind']}"
    return configs


def build_layer(fw, c):
    k = c["kind"]
    if fw == "torch":
        nn = torch.nn
        if k == "embedding":
            return nn.Embedding(c["vocab"], c["dim"])
        if k == "linear":
            return nn.Linear(c["d"], c["out"], bias=c["bias"])
        if k == "layernorm":
            return nn.LayerNorm(c["d"])
        if k == "conv1d":
            return nn.Conv1d(c["d"], c["out"], c["k"], padding=c["k"] // 2, bias=c["bias"])
        if k == "conv2d":
            return nn.Conv2d(c["d"], c["out"], (c["k"], 1), padding=(c["k"] // 2, 0), bias=c["bias"])
        if k == "batchnorm":
            return nn.BatchNorm1d(c["d"])
        if k in ("lstm", "gru"):
            cls = nn.LSTM if k == "lstm" else nn.GRU
            return cls(c["d"], c["hidden"], num_layers=c["layers"], bidirectional=c["bidir"], batch_first=True)
        return nn.MultiheadAttention(c["d"], c["heads"], batch_first=True)
    nn = paddle.nn
    nobias = {} if c.get("bias", True) else {"bias_attr": False}
    if k == "embedding":
        return nn.Embedding(c["vocab"], c["dim"])
    if k == "linear":
        return nn.Linear(c["d"], c["out"], **nobias)
    if k == "layernorm":
        return nn.LayerNorm(c["d"])
    if k == "conv1d":
        return nn.Conv1D(c["d"], c["out"], c["k"], padding=c["k"] // 2, **nobias)
    if k == "conv2d":
        return nn.Conv2D(c["d"], c["out"], (c["k"], 1), padding=(c["k"] // 2, 0), **nobias)
    if k == "batchnorm":
        return nn.BatchNorm1D(c["d"])
    if k in ("lstm", "gru"):
        cls = nn.LSTM if k == "lstm" else nn.GRU
        return cls(c["d"], c["hidden"], num_layers=c["layers"], direction="bidirect" if c["bidir"] else "forward")
    return nn.MultiHeadAttention(c["d"], c["heads"])


def _apply(fw, kind, layer, h):
    t = (lambda x: x.transpose(1, 2)) if fw == "torch" else (lambda x: x.transpose([0, 2, 1]))
    if kind in ("conv1d", "batchnorm"):
        return t(layer(t(h)))
    if kind == "conv2d":
        return t(layer(t(h).unsqueeze(-1)).squeeze(-1))
    if kind in ("lstm", "gru"):
        return layer(h)[0]
    if kind == "mha":
        out = layer(h, h, h)
        return out[0] if isinstance(out, tuple) else out
    return layer(h)


def build(fw, configs):
    class Stack(torch.nn.Module if fw == "torch" else paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.order = [(c["name"], c["kind"]) for c in configs]
            for c in configs:
                setattr(self, c["name"], build_layer(fw, c))

        def forward(self, h):
            for name, kind in self.order:
                h = _apply(fw, kind, getattr(self, name), h)
            return h

    model = Stack()
    model.eval()
    return model


def randomize(model, fw, seed):
    """Give the source model random values everywhere (running variances positive) so the test means something."""
    rng = np.random.default_rng(seed)
    if fw == "torch":
        with torch.no_grad():
            for name, t in list(model.named_parameters()) + list(model.named_buffers()):
                if t.is_floating_point():
                    v = rng.uniform(0.5, 1.5, t.shape) if name.endswith("running_var") else rng.normal(0, 0.4, t.shape)
                    t.copy_(torch.from_numpy(v.astype("float32")))
    else:
        for name, t in model.named_parameters():
            v = rng.uniform(0.5, 1.5, t.shape) if name.endswith("_variance") else rng.normal(0, 0.4, t.shape)
            t.set_value(v.astype("float32"))


def inputs(configs, seed):
    rng = np.random.default_rng(seed)
    if configs[0]["kind"] == "embedding":
        return [rng.integers(0, configs[0]["vocab"], (B, L)).astype("int64")]
    return [rng.standard_normal((B, L, configs[0]["d"])).astype("float32")]


def raw_bytes(model) -> dict:
    """Every tensor's raw bytes, dtype and shape by name: 'bit-identical' means exactly these."""
    out = {}
    for k, v in model.state_dict().items():
        t = v.detach().contiguous() if isinstance(v, torch.Tensor) else torch.from_dlpack(v.detach().contiguous())
        out[k] = (str(t.dtype), tuple(t.shape), t.numpy().tobytes())
    return out


direction = st.sampled_from([("torch", "paddle"), ("paddle", "torch")])


# -- property 1: equal outputs ------------------------------------------------------------------
@settings(max_examples=20, **SETTINGS)
@given(configs=stacks(), way=direction, rename=st.booleans(), seed=st.integers(0, 2**16))
def test_random_stacks_transfer_with_equal_outputs(configs, way, rename, seed):
    src, dst = way
    dst_configs = [dict(c) for c in configs]
    if rename:  # one layer under another name: paired by position within the parent
        dst_configs[-1]["name"] = "renamed_" + dst_configs[-1]["kind"]
    a, b = build(src, configs), build(dst, dst_configs)
    randomize(a, src, seed)
    randomize(b, dst, seed + 1)  # random on both sides: the outputs differ until the transfer
    xs = inputs(configs, seed)
    before = max_abs_diff(run(a, src, xs), run(b, dst, xs))
    assert before > 1e-3, f"outputs agree before the transfer ({before:.3g}): a no-op transfer would pass\n{configs}"
    report = assign_weight(a, b)
    assert not report.missing and not report.unexpected
    out_a, out_b = run(a, src, xs)[0], run(b, dst, xs)[0]
    assert out_a.shape == out_b.shape
    np.testing.assert_allclose(out_b, out_a, rtol=1e-4, atol=1e-5, err_msg=f"{src}->{dst} {configs}\n{report}")
    if rename:
        assert {p.raw_path: p.how for p in report.pairs}[dst_configs[-1]["name"]] == "order"


# -- property 2: corruptions are refused and leave the target bit-identical ----------------------
def corrupt(configs, how, i):
    """A copy of ``configs`` with one layer changed; returns (configs, the name the error must mention)."""
    out = [dict(c) for c in configs]
    c = out[i]
    if how == "drop":
        del out[i]
        return out, c["name"]
    if how == "resize":
        key = {"embedding": "dim", "layernorm": "d", "batchnorm": "d", "lstm": "hidden", "gru": "hidden"}.get(
            c["kind"], "out")
        if c["kind"] == "mha":
            c["d"] += c["heads"]
        else:
            c[key] += 1
        return out, c["name"]
    if how == "extra_param":
        c["extra"] = True
        return out, c["name"] + ".extra"
    # rename, and a class that is not alike, so that position cannot pair it either
    new = dict(kind="linear", d=c.get("d", c.get("dim")), out=3, k=1, bias=True) if c["kind"] != "linear" else \
        dict(kind="layernorm", d=c["d"])
    new["name"] = "other_" + new["kind"]
    out[i] = new
    return out, c["name"]


def build_corrupted(fw, configs):
    model = build(fw, configs)
    for c in configs:
        if c.get("extra"):
            layer = getattr(model, c["name"])
            if fw == "torch":
                layer.extra = torch.nn.Parameter(torch.zeros(3))
            else:
                layer.extra = layer.create_parameter([3])
    return model


@settings(max_examples=25, **SETTINGS)
@given(configs=stacks(), way=direction, how=st.sampled_from(["drop", "resize", "extra_param", "rename_reclass"]),
       which=st.integers(0, 100), corrupt_base=st.booleans())
def test_random_corruptions_raise_and_leave_the_target_bit_identical(configs, way, how, which, corrupt_base):
    src, dst = way
    broken, name = corrupt(configs, how, which % len(configs))
    a = build_corrupted(src, broken if corrupt_base else configs)
    b = build_corrupted(dst, configs if corrupt_base else broken)
    before = raw_bytes(b)
    with pytest.raises(TransferError) as e:
        assign_weight(a, b)
    msg = str(e.value)
    assert "nothing was written" in msg and name in msg, msg
    assert raw_bytes(b) == before
