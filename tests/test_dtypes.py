"""Dtypes: same dtype bit-exact (bf16 included), exact upcasts, narrowing casts only when reported,
integers stay integers, and casts that would lose values refused before anything is written."""
import numpy as np
import paddle
import pytest
import torch

from helpers import DIRECTION_IDS, DIRECTIONS, as_torch, assert_refused, bits
from padiff_lite import TransferError, assign_weight


class TorchNet(torch.nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.fc = torch.nn.Linear(5, 4)
        self.norm = torch.nn.LayerNorm(4)
        self.to(dtype)
        self.register_buffer("steps", torch.arange(7, dtype=torch.int64) * 3)
        with torch.no_grad():  # values that are not exactly representable in 16 bits
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, dtype=torch.float64).to(dtype) / 3)


class PaddleNet(paddle.nn.Layer):
    def __init__(self, dtype):
        super().__init__()
        self.fc = paddle.nn.Linear(5, 4)
        self.norm = paddle.nn.LayerNorm(4)
        self.to(dtype=dtype)  # paddle's to() casts integer buffers too: register them afterwards
        self.register_buffer("steps", paddle.arange(7, dtype="int64") * 5)
        with paddle.no_grad():
            for p in self.parameters():
                p.set_value((paddle.randn(p.shape, dtype="float32") / 3).astype(dtype))


def net(fw, dtype):
    return TorchNet(getattr(torch, dtype)) if fw == "torch" else PaddleNet(dtype)


def tensors(model, fw):
    """fc.weight in torch layout ([out, in]), the others as they are, all as torch tensors."""
    w = as_torch(model.fc.weight)
    return {"fc.weight": w if fw == "torch" else w.t(), "fc.bias": as_torch(model.fc.bias),
            "norm.weight": as_torch(model.norm.weight), "norm.bias": as_torch(model.norm.bias),
            "steps": as_torch(model.steps)}


@pytest.mark.parametrize("src,dst", DIRECTIONS + [("torch", "torch"), ("paddle", "paddle")],
                         ids=DIRECTION_IDS + ["torch->torch", "paddle->paddle"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_same_dtype_is_bit_exact(src, dst, dtype):
    a, b = net(src, dtype), net(dst, dtype)
    report = assign_weight(a, b)
    assert report.casts == []
    ta, tb = tensors(a, src), tensors(b, dst)
    for name in ta:
        assert tb[name].dtype == ta[name].dtype
        assert torch.equal(bits(ta[name]), bits(tb[name])), f"{name}: bits differ"
    assert tb["steps"].dtype == torch.int64


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_into_float32_is_an_exact_upcast(src, dst, dtype):
    a, b = net(src, dtype), net(dst, "float32")
    report = assign_weight(a, b)
    assert report.casts == []  # widening loses nothing: nothing to report
    ta, tb = tensors(a, src), tensors(b, dst)
    for name in ("fc.weight", "fc.bias", "norm.weight"):
        assert tb[name].dtype == torch.float32
        assert torch.equal(tb[name], ta[name].float())
    assert tb["steps"].dtype == torch.int64 and torch.equal(tb["steps"], ta["steps"])


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_float32_into_half_precision_is_rounded_and_reported(src, dst, dtype):
    a, b = net(src, "float32"), net(dst, dtype)
    report = assign_weight(a, b)
    assert sorted(report.casts) == sorted(f"{n} float32 -> {m} {dtype}" for n, m in [
        ("fc.weight", "fc.weight"), ("fc.bias", "fc.bias"), ("norm.weight", "norm.weight"),
        ("norm.bias", "norm.bias")])
    assert "narrowing casts" in str(report)
    ta, tb = tensors(a, src), tensors(b, dst)
    for name in ("fc.weight", "fc.bias", "norm.weight"):
        assert tb[name].dtype == getattr(torch, dtype)
        assert torch.equal(bits(tb[name]), bits(ta[name].to(getattr(torch, dtype))))  # round to nearest
    assert tb["steps"].dtype == torch.int64 and torch.equal(tb["steps"], ta["steps"])


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_float32_values_beyond_float16_range_are_refused(src, dst):
    a, b = net(src, "float32"), net(dst, "float16")
    if src == "torch":
        with torch.no_grad():
            a.fc.bias[2] = 1e6
    else:
        a.fc.bias.set_value(paddle.to_tensor([0, 0, 1e6, 0], dtype="float32"))
    e = assert_refused(lambda: assign_weight(a, b), TransferError, b)
    msg = str(e)
    assert "base fc.bias (float32) holds values in" in msg and "outside the range of raw fc.bias (float16" in msg
    assert "turn them into Inf" in msg and "build the raw model with dtype float32" in msg


class IntHolder(torch.nn.Module):
    def __init__(self, dtype, values):
        super().__init__()
        self.register_buffer("ids", torch.tensor(values, dtype=dtype))


class IntHolderP(paddle.nn.Layer):
    def __init__(self, dtype, values):
        super().__init__()
        self.register_buffer("ids", paddle.to_tensor(values, dtype=dtype))


def holder(fw, dtype, values):
    return IntHolder(getattr(torch, dtype), values) if fw == "torch" else IntHolderP(dtype, values)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_integer_narrowing_is_reported_and_out_of_range_refused(src, dst):
    a, b = holder(src, "int64", [1, -2, 3]), holder(dst, "int32", [0, 0, 0])
    report = assign_weight(a, b)
    assert report.casts == ["ids int64 -> ids int32"]
    assert as_torch(b.ids).dtype == torch.int32 and as_torch(b.ids).tolist() == [1, -2, 3]
    a, b = holder(src, "int64", [1, 2**40, 3]), holder(dst, "int32", [7, 8, 9])
    with pytest.raises(TransferError, match=r"base ids \(int64\) holds values in \[1, 1\.09951e\+12\].*wrap them around"):
        assign_weight(a, b)
    assert as_torch(b.ids).tolist() == [7, 8, 9]


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_float_and_integer_tensors_never_convert(src, dst):
    a, b = holder(src, "int64", [1, 2, 3]), holder(dst, "float32", [0.5, 0.5, 0.5])
    e = assert_refused(lambda: assign_weight(a, b), TransferError, b)
    assert "base ids is int64 but raw ids is float32" in str(e)
    assert "build the raw model with a matching dtype" in str(e)
    with pytest.raises(TransferError, match="base ids is float32 but raw ids is int64"):
        assign_weight(holder(src, "float32", [1.0, 2.0, 3.0]), holder(dst, "int64", [0, 0, 0]))


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_bfloat16_non_contiguous_paddle_tensors_keep_their_bits(src, dst):
    """Non-contiguous paddle tensors go through a copy; it must not pass bf16 through numpy (uint16)."""

    class T(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("b", torch.randn(4, 3).to(torch.bfloat16))

    class P(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.register_buffer("b", paddle.randn([3, 4]).astype("bfloat16").transpose([1, 0]))

    a = T() if src == "torch" else P()
    b = T() if dst == "torch" else P()
    if dst == "paddle":
        assert not b.b.is_contiguous()  # the case under test
    assign_weight(a, b)
    assert torch.equal(bits(a.b), bits(b.b))
    assert np.array_equal(as_torch(a.b).float().numpy(), as_torch(b.b).float().numpy())
