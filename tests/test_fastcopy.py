"""The one-pass copy/transpose kernel (padiff_lite/_fastcopy.c via fastcopy.py) gives torch's numbers.

Unit level: every dtype it takes, odd shapes, any number of pieces, NaN/Inf counted exactly; the
cases it must refuse. Model level: big layers transferred with it and without it (PADIFF_LITE_FASTCOPY=0)
give the same weights and the same outputs, in both directions, and a conversion on disk too. Speed
lives in bench/.
"""
from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch

from helpers import DIRECTION_IDS, DIRECTIONS, bits, inputs_for, max_abs_diff
from padiff_lite import assign_weight, fastcopy
from padiff_lite.execute import PARALLEL_MIN_ELEMENTS
from padiff_lite.models import run

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool]
SHAPES = [(1, 1), (3, 5), (70, 33), (129, 1000), (64, 64)]


@pytest.fixture(autouse=True)
def _kernel_wherever_it_applies(monkeypatch, tmp_path):
    """These tests check the kernel's numbers: use it wherever it applies (tests that switch it off set 0); the
    calibration cache goes to a folder of the test's own."""
    monkeypatch.setenv("PADIFF_LITE_FASTCOPY", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def values(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 100).to(dtype)
    return torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape, generator=g).to(dtype)


def run_pieces(dst, src, transposed, parts):
    work = fastcopy.pieces(dst, src, transposed, parts)
    assert work is not None, "the one-pass path should apply here"
    return sum(p() for p in work), len(work)


def test_the_extension_is_built_here():
    # setup.py compiles it (optional for users without a compiler); CI must exercise it, not the fallback
    assert fastcopy._fastcopy is not None, "padiff_lite._fastcopy is missing: run `pip install -e .` again"
    assert fastcopy.available()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("parts", [1, 2, 3])
def test_transpose_and_copy_match_torch(dtype, shape, parts):
    src = values(shape, dtype)
    out = torch.empty(shape[::-1], dtype=dtype)
    bad, n = run_pieces(out, src, True, parts)
    assert torch.equal(out, src.t()) and bad == 0
    assert n <= parts
    flat = torch.empty(shape, dtype=dtype)
    bad, _ = run_pieces(flat, src, False, parts)
    assert torch.equal(flat, src) and bad == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("parts", [1, 2])
def test_nonfinite_values_are_counted_exactly(dtype, parts):
    src = values((200, 77), dtype)
    src[0, 0] = float("nan")
    src[199, 76] = float("inf")
    src[57, 3] = -float("inf")
    src[130, 40] = -float("nan")
    # the largest finite value and a subnormal are finite
    src[10, 10] = torch.finfo(dtype).max
    src[11, 11] = torch.finfo(dtype).tiny / 2
    want = int((~torch.isfinite(src)).sum())
    assert want == 4
    out = torch.empty(77, 200, dtype=dtype)
    bad, _ = run_pieces(out, src, True, parts)
    assert bad == want
    assert torch.equal(out.isnan(), src.t().isnan()) and torch.equal(out.nan_to_num(), src.t().nan_to_num())
    flat = torch.empty_like(src)
    bad, _ = run_pieces(flat, src, False, parts)
    assert bad == want and torch.equal(flat.nan_to_num(), src.nan_to_num())


@pytest.mark.parametrize("dtype", [torch.uint8, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_any_row_ranges_add_up_to_the_whole_transpose(dtype):
    # the kernel's tiles and register blocks must not assume aligned ranges (fastcopy cuts at multiples
    # of 64 rows, but the C function takes any)
    src = values((101, 37), dtype)
    if dtype.is_floating_point:
        src[[3, 50, 99], [0, 17, 36]] = float("nan")
    out = torch.zeros(37, 101, dtype=dtype)
    kind = fastcopy._kind(dtype)
    cuts = [0, 1, 9, 10, 47, 64, 95, 101]
    bad = sum(fastcopy._fastcopy.transpose(src.data_ptr(), out.data_ptr(), 101, 37, src.element_size(), kind, a, b)
              for a, b in zip(cuts, cuts[1:]))
    assert torch.equal(bits(out), bits(src.t().contiguous()))  # bit for bit, NaN payloads included
    assert bad == (3 if dtype.is_floating_point else 0)


def test_integers_are_never_counted_as_nonfinite():
    src = torch.full((50, 50), 0x7F800000, dtype=torch.int32)  # float32 Inf's bits, as an integer
    out = torch.empty(50, 50, dtype=torch.int32)
    assert run_pieces(out, src, True, 2)[0] == 0 and torch.equal(out, src.t())


def test_row_blocks_and_sliced_sources():
    src = values((300, 40), torch.float32)
    block = src[100:200]  # a contiguous row block (MultiheadAttention's in_proj rows)
    out = torch.zeros(40, 300)
    region = torch.zeros(100, 40)
    run_pieces(region, block, False, 2)
    assert torch.equal(region, block)
    run_pieces(out[:, :], src, True, 2)
    assert torch.equal(out, src.t())


@pytest.mark.parametrize("case", ["dtype change", "strided destination", "strided source", "complex", "float8",
                                  "overlap", "wrong shape", "3-D transpose", "empty"])
def test_cases_it_leaves_to_torch(case):
    src, dst = values((8, 6), torch.float32), torch.empty(6, 8)
    transposed = True
    if case == "dtype change":
        dst = dst.double()
    elif case == "strided destination":
        dst = torch.empty(8, 6).t()
    elif case == "strided source":
        src = values((6, 8), torch.float32).t()
    elif case == "complex":
        src, dst = torch.randn(8, 6, dtype=torch.complex64), torch.empty(6, 8, dtype=torch.complex64)
    elif case == "float8":
        if not hasattr(torch, "float8_e4m3fn"):
            pytest.skip("this torch has no float8 dtype")
        src, dst = src.to(torch.float8_e4m3fn), dst.to(torch.float8_e4m3fn)
    elif case == "overlap":
        dst, transposed = src, False
    elif case == "wrong shape":
        dst = torch.empty(8, 6)
    elif case == "3-D transpose":
        src, dst = values((2, 4, 6), torch.float32), torch.empty(6, 4, 2)
    elif case == "empty":
        src, dst = torch.empty(0, 6), torch.empty(6, 0)
    assert fastcopy.pieces(dst, src, transposed, 2) is None
    assert fastcopy.copy_counting(dst, src, transposed) is None


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("PADIFF_LITE_FASTCOPY", "0")
    assert not fastcopy.available()
    assert fastcopy.pieces(torch.empty(6, 8), values((8, 6), torch.float32), True, 2) is None


def test_bad_arguments_are_refused_by_the_extension():
    src, dst = values((4, 4), torch.float32), torch.empty(4, 4)
    with pytest.raises(ValueError, match="itemsize"):
        fastcopy._fastcopy.transpose(src.data_ptr(), dst.data_ptr(), 4, 4, 3, 0, 0, 4)
    with pytest.raises(ValueError, match="kind"):
        fastcopy._fastcopy.transpose(src.data_ptr(), dst.data_ptr(), 4, 4, 4, 1, 0, 4)
    with pytest.raises(ValueError, match="rows"):
        fastcopy._fastcopy.transpose(src.data_ptr(), dst.data_ptr(), 4, 4, 4, 3, 0, 5)


def test_a_torch_destination_written_by_it_is_marked_for_autograd():
    # like copy_: a graph that saved the old weight must not backpropagate silently through new values
    side = int(PARALLEL_MIN_ELEMENTS ** 0.5)
    a, b = torch.nn.Linear(side, side), torch.nn.Linear(side, side)
    x = torch.randn(2, side, requires_grad=True)
    y = b(x).sum()
    version = b.weight._version
    assert fastcopy.copy_counting(b.weight.detach(), a.weight.detach(), False) == 0  # what the executor passes
    assert b.weight._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


# -- whole transfers: with and without the kernel, the same numbers ------------------
def wide_mlp(fw):
    side = int(PARALLEL_MIN_ELEMENTS ** 0.5) + 16  # every weight above the threshold, not a multiple of 64
    nn = torch.nn if fw == "torch" else paddle.nn
    return nn.Sequential(nn.Linear(side, side), nn.Tanh(), nn.Linear(side, 24), nn.Tanh(), nn.Linear(24, side))


def spy_on_kernel(monkeypatch) -> list:
    """Record the name of every call into the C kernel (which still does the work)."""
    calls = []
    real = fastcopy._fastcopy

    class Counting:
        def transpose(self, *args):
            calls.append("transpose")
            return real.transpose(*args)

        def copy(self, *args):
            calls.append("copy")
            return real.copy(*args)

    monkeypatch.setattr(fastcopy, "_fastcopy", Counting())
    return calls


def weights(model, fw):
    return [p.detach().numpy() if fw == "torch" else p.numpy() for p in model.parameters()]


@pytest.mark.parametrize("src,dst", DIRECTIONS + [("torch", "torch"), ("paddle", "paddle")],
                         ids=DIRECTION_IDS + ["torch->torch", "paddle->paddle"])
def test_big_layers_transfer_the_same_with_and_without_the_kernel(src, dst, monkeypatch):
    torch.manual_seed(0)
    paddle.seed(0)
    a = wide_mlp(src)
    xs = inputs_for([(3, a[0].weight.shape[0 if src == "paddle" else 1])])
    calls = spy_on_kernel(monkeypatch)
    fast = wide_mlp(dst)
    assert max_abs_diff(run(a, src, xs), run(fast, dst, xs)) > 1e-3
    assign_weight(a, fast)
    assert calls.count("transpose" if src != dst else "copy") >= 2, f"the kernel was not used: {calls}"
    monkeypatch.setenv("PADIFF_LITE_FASTCOPY", "0")
    slow = wide_mlp(dst)
    assign_weight(a, slow)
    for x, y in zip(weights(fast, dst), weights(slow, dst)):
        assert np.array_equal(x, y)
    assert max_abs_diff(run(a, src, xs), run(fast, dst, xs)) <= 1e-5


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_nonfinite_values_in_big_tensors_are_reported_through_the_kernel(src, dst):
    a, b = wide_mlp(src), wide_mlp(dst)
    w = a[0].weight
    with torch.no_grad() if src == "torch" else paddle.no_grad():
        bad = weights(a, src)[0].copy()
        bad[1, 2], bad[5, 7], bad[-1, -1] = np.nan, np.inf, -np.inf
        if src == "torch":
            w.copy_(torch.from_numpy(bad))
        else:
            w.set_value(bad)
    report = assign_weight(a, b)
    assert report.nonfinite == {"0.weight": 3}
    got = weights(b, dst)[0]
    assert np.array_equal(np.isnan(got), np.isnan(bad.T)) and np.array_equal(np.nan_to_num(got), np.nan_to_num(bad.T))


@pytest.mark.parametrize("out_suffix", [".safetensors", "native"])  # native: the suffix of dst's framework
@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_checkpoint_conversion_with_big_tensors_is_the_same_with_and_without_the_kernel(tmp_path, monkeypatch,
                                                                                       src, dst, out_suffix):
    from ckpt_helpers import load, load_into, save, state_as_torch

    from padiff_lite import convert_checkpoint

    torch.manual_seed(1)
    paddle.seed(1)
    a = wide_mlp(src)
    state = state_as_torch(a, src)
    state["0.weight"][3, 4] = float("nan")  # counted in a big tensor, and carried as it is
    save(state, tmp_path / "src.safetensors")
    outs = {}
    if out_suffix == "native":
        out_suffix = {"paddle": ".pdparams", "torch": ".pt"}[dst]
    calls = spy_on_kernel(monkeypatch)
    for flag in ("1", "0"):
        monkeypatch.setenv("PADIFF_LITE_FASTCOPY", flag)
        out = tmp_path / f"out{flag}{out_suffix}"
        report = convert_checkpoint(tmp_path / "src.safetensors", out, wide_mlp(src), wide_mlp(dst))
        assert report.nonfinite == {"0.weight": 1}
        outs[flag] = load(out)
        if flag == "1":
            assert calls.count("transpose") >= 2, f"the kernel was not used: {calls}"
            calls.clear()
    assert not calls  # switched off: torch did every copy
    assert outs["1"].keys() == outs["0"].keys() == state.keys()
    for k in state:
        assert torch.equal(bits(outs["1"][k]), bits(outs["0"][k])), k
    want = state["0.weight"].t() if src != dst else state["0.weight"]
    assert torch.equal(bits(outs["1"]["0.weight"].contiguous()), bits(want.contiguous()))
    state["0.weight"][3, 4] = 0.0  # compare outputs on finite weights
    fixed = dict(outs["1"])
    fixed["0.weight"] = fixed["0.weight"].nan_to_num()
    b = load_into(wide_mlp(dst), dst, fixed)
    load_into(a, src, state)
    xs = inputs_for([(3, a[0].weight.shape[0 if src == "paddle" else 1])])
    assert max_abs_diff(run(a, src, xs), run(b, dst, xs)) <= 1e-5


# -- choosing the path by measurement ------------------------------------------------------------------
class _Slow:
    """The real kernel module with one function made slow (or left as it is)."""

    def __init__(self, real, slow):
        self.real, self.slow = real, slow

    def __getattr__(self, name):
        fn = getattr(self.real, name)
        if name != self.slow:
            return fn

        def slowed(*args):
            import time

            time.sleep(0.2)
            return fn(*args)

        return slowed


def test_by_default_a_transpose_uses_the_kernel_only_where_it_measured_faster(monkeypatch):
    monkeypatch.setenv("PADIFF_LITE_FASTCOPY", "auto")
    monkeypatch.setattr(fastcopy, "_FASTER", {})
    monkeypatch.setattr(fastcopy, "_fastcopy", _Slow(fastcopy._fastcopy, "transpose"))
    src = values((2048, 1024), torch.float32)
    dst = torch.empty((1024, 2048))
    assert fastcopy.pieces(dst, src, True, 2) is None  # slower here: torch does it
    assert fastcopy.choices() == {"float32 transpose": "torch"}
    monkeypatch.setenv("PADIFF_LITE_FASTCOPY", "1")  # forced: the kernel wherever it applies
    assert fastcopy.pieces(dst, src, True, 2) is not None


def test_plain_copies_always_use_the_kernel(monkeypatch):
    """A plain copy with the kernel reads its source once (copy and NaN/Inf count together), torch's twice."""
    monkeypatch.setenv("PADIFF_LITE_FASTCOPY", "auto")
    monkeypatch.setattr(fastcopy, "_FASTER", {})
    monkeypatch.setattr(fastcopy, "_calibrate", lambda d, t: pytest.fail("plain copies are not calibrated"))
    assert fastcopy.pieces(torch.empty(2048, 1024), values((2048, 1024), torch.float32), False, 2) is not None


def test_the_choice_is_measured_once_per_dtype_and_kept_per_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("PADIFF_LITE_FASTCOPY", "auto")
    monkeypatch.setattr(fastcopy, "_FASTER", {})
    calls = []
    real = fastcopy._calibrate
    monkeypatch.setattr(fastcopy, "_calibrate", lambda d, t: calls.append((d, t)) or real(d, t))
    for _ in range(3):
        fastcopy.faster(torch.bfloat16, True)
        fastcopy.faster(torch.float32, True)
    assert calls == [(torch.bfloat16, True), (torch.float32, True)]
    assert set(fastcopy.choices()) == {"bfloat16 transpose", "float32 transpose"}
    kept = fastcopy._read_cache()
    assert set(kept) == {"bfloat16", "float32"} and str(tmp_path / "cache") in fastcopy._cache_path()
    monkeypatch.setattr(fastcopy, "_FASTER", {})  # a new process on the same machine: read, not measured
    fastcopy.faster(torch.float32, True)
    assert len(calls) == 2


@pytest.mark.parametrize("flag,way", [("1", "kernel"), ("0", "torch")])
def test_the_report_says_which_path_ran_the_big_copies(monkeypatch, flag, way):
    monkeypatch.setenv("PADIFF_LITE_FASTCOPY", flag)
    a, b = wide_mlp("torch"), wide_mlp("paddle")
    report = assign_weight(a, b)
    assert report.big_copies == {way: 1} and f"big copies by: {way} 1" in str(report)  # the one weight over 1 M values
    np.testing.assert_array_equal(b[0].weight.numpy(), a[0].weight.detach().numpy().T)
