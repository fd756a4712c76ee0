"""The executor's fast and fallback paths give the same numbers (issue 7).

Fast path: a DLPack/torch view of the destination, written in place; big copies on a thread pool;
NaN/Inf counted in batches. Fallbacks: a non-contiguous destination, a dtype change. Non-contiguous
sources and destinations on either side give the same outputs. No timing here: speed lives in
bench/bench_transfer.py.
"""
from __future__ import annotations

import gc

import numpy as np
import paddle
import pytest
import torch

from helpers import DIRECTION_IDS, DIRECTIONS, inputs_for, np_of
from padiff_lite import assign_weight
from padiff_lite.adapters import ADAPTERS
from padiff_lite.execute import PARALLEL_MIN_ELEMENTS
from padiff_lite.models import run


def linear_stack(fw, sizes, dtype="float32"):
    nn = torch.nn if fw == "torch" else paddle.nn
    layers = [nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])]
    model = nn.Sequential(*layers)
    if dtype != "float32":
        model = model.half() if fw == "torch" else model.to(dtype=dtype)
    return model


def assert_linears_equal(src, dst, src_fw, dst_fw, rtol=0.0):
    for a, b in zip(src, dst):
        wa, wb = np_of(a.weight).astype("float64"), np_of(b.weight).astype("float64")
        if src_fw != dst_fw:
            wa = wa.T
        np.testing.assert_allclose(wb, wa, rtol=rtol, atol=0)
        np.testing.assert_allclose(np_of(b.bias).astype("float64"), np_of(a.bias).astype("float64"), rtol=rtol, atol=0)


@pytest.mark.parametrize("src,dst", DIRECTIONS + [("torch", "torch"), ("paddle", "paddle")],
                         ids=DIRECTION_IDS + ["torch->torch", "paddle->paddle"])
def test_big_tensors_on_the_thread_pool_are_copied_exactly(src, dst):
    side = int(PARALLEL_MIN_ELEMENTS ** 0.5)  # side * side elements: just at the pool threshold
    a, b = linear_stack(src, [side, side, 64, side]), linear_stack(dst, [side, side, 64, side])
    report = assign_weight(a, b)
    assert_linears_equal(a, b, src, dst)
    assert report.bytes == sum(np_of(p).nbytes for p in a.parameters())
    assert report.nonfinite == {}


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_nonfinite_values_are_counted_in_big_and_small_tensors(src, dst):
    side = int(PARALLEL_MIN_ELEMENTS ** 0.5)
    a, b = linear_stack(src, [side, side, 8]), linear_stack(dst, [side, side, 8])
    with torch.no_grad() if src == "torch" else paddle.no_grad():
        w = np_of(a[0].weight).copy()
        w[0, :3] = np.nan
        w[5, 7] = np.inf
        bias = np_of(a[1].bias).copy()
        bias[1] = -np.inf
        if src == "torch":
            a[0].weight.copy_(torch.from_numpy(w))
            a[1].bias.copy_(torch.from_numpy(bias))
        else:
            a[0].weight.set_value(w)
            a[1].bias.set_value(bias)
    report = assign_weight(a, b)
    assert report.nonfinite == {"0.weight": 4, "1.bias": 1}
    got = np_of(b[0].weight)
    got = got if src == dst else got.T
    np.testing.assert_array_equal(got, w)  # NaN/Inf are copied as they are


@pytest.mark.parametrize("src", ["torch", "paddle"])
def test_non_contiguous_torch_destination(src):
    a = linear_stack(src, [6, 5])
    b = linear_stack("torch", [6, 5])
    with torch.no_grad():
        b[0].weight = torch.nn.Parameter(torch.zeros(6, 5).t())  # [5, 6], not contiguous
    assert not b[0].weight.is_contiguous()
    assign_weight(a, b)
    assert not b[0].weight.is_contiguous()  # written in place, layout kept
    assert_linears_equal(a, b, src, "torch")


@pytest.mark.parametrize("src", ["torch", "paddle"])
def test_non_contiguous_paddle_destination_is_written_back(src):
    def model(fw):
        nn = torch.nn if fw == "torch" else paddle.nn
        m = (nn.Module if fw == "torch" else nn.Layer)()
        value = np.arange(24, dtype="float32").reshape(4, 6) * (1 if fw == src else -1)
        if fw == "torch":
            m.register_buffer("table", torch.from_numpy(value.T.copy()))
        else:
            m.register_buffer("table", paddle.to_tensor(value).transpose([1, 0]))  # a strided view
        return m

    a, b = model(src), model("paddle")
    assert not b.table.is_contiguous()
    assert ADAPTERS["paddle"].writable_view(b.table)[1] is False
    assign_weight(a, b)
    np.testing.assert_array_equal(np_of(b.table), np_of(a.table))


@pytest.mark.parametrize("src,dst", DIRECTIONS + [("torch", "torch"), ("paddle", "paddle")],
                         ids=DIRECTION_IDS + ["torch->torch", "paddle->paddle"])
@pytest.mark.parametrize("big", [False, True], ids=["small", "pooled"])
def test_dtype_changing_copy_fp32_to_fp16_keeps_the_destination_dtype(src, dst, big):
    side = int(PARALLEL_MIN_ELEMENTS ** 0.5) if big else 12
    a, b = linear_stack(src, [side, side]), linear_stack(dst, [side, side], dtype="float16")
    report = assign_weight(a, b)
    assert ADAPTERS[dst].dtype_name(b[0].weight) == "float16"
    assert report.casts == ["0.weight float32 -> 0.weight float16", "0.bias float32 -> 0.bias float16"]
    want = np_of(a[0].weight).astype("float16")
    got = np_of(b[0].weight)
    np.testing.assert_array_equal(got if src == dst else got.T, want)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_fp16_to_fp32_is_exact(src, dst):
    a, b = linear_stack(src, [7, 9], dtype="float16"), linear_stack(dst, [7, 9])
    assign_weight(a, b)
    assert ADAPTERS[dst].dtype_name(b[0].weight) == "float32"
    assert_linears_equal(a, b, src, dst)


def test_row_blocks_of_one_big_tensor_written_in_order():
    """paddle -> torch MultiHeadAttention: q/k/v write row blocks of one pooled in_proj_weight."""
    e = int(PARALLEL_MIN_ELEMENTS ** 0.5)
    a, b = paddle.nn.MultiHeadAttention(e, 4), torch.nn.MultiheadAttention(e, 4)
    assign_weight(a, b)
    w = np_of(b.in_proj_weight)
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        np.testing.assert_array_equal(w[i * e:(i + 1) * e], np_of(getattr(a, name).weight).T)


@pytest.mark.parametrize("enabled", [True, False])
def test_garbage_collector_state_is_restored(enabled):
    a, b = linear_stack("torch", [3, 4]), linear_stack("paddle", [3, 4])
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        assign_weight(a, b)
        assert gc.isenabled() is enabled
        with pytest.raises(Exception):
            assign_weight(a, linear_stack("paddle", [3, 5]))
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()


def _refuse(dsts, srcs):
    raise RuntimeError("foreach refused")


@pytest.mark.parametrize("foreach", ["torch", "missing", "refuses"])
def test_batched_small_copies_same_numbers(monkeypatch, foreach):
    """copy_all (torch._foreach_copy_ or its fallback) writes what copy_ one by one writes:
    transposed sources, casts, a non-contiguous destination."""
    from padiff_lite import execute as ex
    from padiff_lite import fastcopy

    if foreach == "missing":
        monkeypatch.setattr(fastcopy, "_foreach_copy", None)
    elif foreach == "refuses":
        monkeypatch.setattr(fastcopy, "_foreach_copy", _refuse)
    g = torch.Generator().manual_seed(3)
    srcs = [torch.randn(5, 3, generator=g).t(), torch.randn(7, generator=g), torch.randn(4, 4, generator=g),
            torch.randn(6, generator=g, dtype=torch.float64), torch.arange(5, dtype=torch.int32)]
    dsts = [torch.empty(3, 5), torch.empty(7, dtype=torch.float16), torch.empty(4, 8)[:, ::2],
            torch.empty(6), torch.empty(5, dtype=torch.int64)]
    want = [torch.empty_like(d).copy_(s) for d, s in zip(dsts, srcs)]
    ex.copy_all(dsts, srcs)
    for d, w in zip(dsts, want):
        assert d.dtype == w.dtype
        assert torch.equal(d, w)


@pytest.mark.parametrize("src,dst", DIRECTIONS + [("torch", "torch"), ("paddle", "paddle")],
                         ids=DIRECTION_IDS + ["torch->torch", "paddle->paddle"])
def test_transfer_without_foreach_same_numbers(monkeypatch, src, dst):
    """A whole transfer of small layers gives the same numbers with the one-by-one fallback."""
    from padiff_lite import fastcopy

    monkeypatch.setattr(fastcopy, "_foreach_copy", _refuse)
    a, b = linear_stack(src, [3, 5, 4, 6]), linear_stack(dst, [3, 5, 4, 6])
    assign_weight(a, b)
    assert_linears_equal(a, b, src, dst)


# -- non-contiguous sources and destinations, on either side --------------------------------------------


class TorchStrided(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 5)
        self.fc.weight = torch.nn.Parameter(torch.randn(3, 5).t())  # [5, 3] with strides of a transpose
        self.register_buffer("table", torch.randn(6, 4)[:, ::2])  # a strided slice

    def forward(self, x):
        return self.fc(x).sum(-1, keepdim=True) * self.table.sum()


class PaddleStrided(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.fc = paddle.nn.Linear(3, 5)
        self.register_buffer("table", paddle.randn([2, 6]).transpose([1, 0]))

    def forward(self, x):
        return self.fc(x).sum(-1, keepdim=True) * self.table.sum()


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_non_contiguous_tensors_on_either_side(src, dst):
    build = {"torch": TorchStrided, "paddle": PaddleStrided}
    a, b = build[src](), build[dst]()
    assert not (a.fc.weight.is_contiguous() if src == "torch" else a.table.is_contiguous())
    x = inputs_for([(2, 3)])
    assert np.abs(run(a, src, x)[0] - run(b, dst, x)[0]).max() > 1e-3
    assign_weight(a, b)
    np.testing.assert_allclose(run(a, src, x)[0], run(b, dst, x)[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(a.table.numpy()), np.asarray(b.table.numpy()))
