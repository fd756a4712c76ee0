"""Many small tensors are moved in groups: one gather of their sources, one scatter into their
destinations (execute._run_group; paddle reads and writes by address, adapters/memory.py).

Every test here compares numbers with what the one-by-one path gives, or with the source, in all
four directions, and checks the grouped path really ran (a spy on _run_group's scatters).
"""
from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch

from helpers import assert_unchanged, inputs_for, max_abs_diff, snapshot
from padiff_lite import assign_weight
from padiff_lite import execute as ex
from padiff_lite.adapters import ADAPTERS, memory
from padiff_lite.models import run

FOUR = [("torch", "paddle"), ("paddle", "torch"), ("torch", "torch"), ("paddle", "paddle")]
FOUR_IDS = ["torch->paddle", "paddle->torch", "torch->torch", "paddle->paddle"]


def blocks(fw, n=12, width=6, dtype="float32", seed=0):
    """n x [Linear(w, 2w), GELU, Linear(2w, w), LayerNorm(w)]: groups of n alike tensors."""
    nn = torch.nn if fw == "torch" else paddle.nn
    (torch.manual_seed if fw == "torch" else paddle.seed)(seed)
    layers = []
    for _ in range(n):
        layers += [nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width), nn.LayerNorm(width)]
    model = nn.Sequential(*layers)
    if dtype == "float64":
        model = model.double() if fw == "torch" else model.to(dtype="float64")
    model.eval()
    return model


@pytest.fixture
def scatters(monkeypatch):
    """Counts the tensors each framework's scatter wrote (the grouped path's writes)."""
    counts = {"torch": 0, "paddle": 0}
    for name, adapter in ADAPTERS.items():
        original = adapter.scatter

        def spy(tensors, values, _original=original, _name=name):
            done = _original(tensors, values)
            if done:
                counts[_name] += len(tensors)
            return done

        monkeypatch.setattr(adapter, "scatter", spy)
    return counts


@pytest.mark.parametrize("src,dst", FOUR, ids=FOUR_IDS)
def test_grouped_copies_give_the_same_outputs(scatters, src, dst):
    a, b = blocks(src, seed=1), blocks(dst, seed=2)
    xs = inputs_for([(3, 6)])
    assert max_abs_diff(run(a, src, xs), run(b, dst, xs)) > 1e-3
    report = assign_weight(a, b)
    assert max_abs_diff(run(a, src, xs), run(b, dst, xs)) <= 1e-5
    assert scatters[dst] == 12 * 6  # every tensor went through a group
    assert report.tensors == 72
    assert report.bytes == sum(np.asarray(p.detach().numpy() if src == "torch" else p.numpy()).nbytes
                               for p in a.parameters())


@pytest.mark.parametrize("src,dst", FOUR, ids=FOUR_IDS)
def test_grouped_copies_cast_like_the_one_by_one_path(scatters, src, dst):
    """float64 sources into float32 destinations: the same values as copying one at a time (reported as casts)."""
    a = blocks(src, dtype="float64", seed=1)
    grouped, single = blocks(dst, seed=2), blocks(dst, seed=2)
    report = assign_weight(a, grouped)
    assert scatters[dst] == 72 and report.casts == [f"{k} float64 -> {k} float32" for k in grouped.state_dict()]
    scatters[dst] = 0
    ex_min = ex.BULK_MIN_GROUP
    try:
        ex.BULK_MIN_GROUP = 10 ** 9  # no group is big enough: one by one
        assign_weight(a, single)
    finally:
        ex.BULK_MIN_GROUP = ex_min
    assert scatters[dst] == 0
    for (k, p), (_, q) in zip(grouped.state_dict().items(), single.state_dict().items()):
        assert np.array_equal(np.asarray(p.numpy() if dst == "paddle" else p.detach().numpy()),
                              np.asarray(q.numpy() if dst == "paddle" else q.detach().numpy())), k


@pytest.mark.parametrize("src,dst", FOUR, ids=FOUR_IDS)
def test_nonfinite_values_in_a_group_are_counted_per_tensor(scatters, src, dst):
    a, b = blocks(src, seed=1), blocks(dst, seed=2)
    w = a[4].weight  # the second block's first Linear
    values = np.array(w.detach().numpy() if src == "torch" else w.numpy())
    values[0, :3] = np.nan
    values[1, 0] = np.inf
    if src == "torch":
        with torch.no_grad():
            w.copy_(torch.from_numpy(values))
    else:
        w.set_value(values)
    report = assign_weight(a, b)
    assert scatters[dst] == 72
    assert report.nonfinite == {"4.weight": 4}


@pytest.mark.parametrize("src,dst", FOUR, ids=FOUR_IDS)
def test_a_refused_scatter_falls_back_to_one_by_one(monkeypatch, src, dst):
    """When the grouped write does not apply (here: forced), every tensor is still copied, exactly."""
    monkeypatch.setattr(ADAPTERS[dst], "scatter", lambda tensors, values: False)
    a, b = blocks(src, seed=1), blocks(dst, seed=2)
    xs = inputs_for([(3, 6)])
    report = assign_weight(a, b)
    assert max_abs_diff(run(a, src, xs), run(b, dst, xs)) <= 1e-5
    assert report.tensors == 72


@pytest.mark.parametrize("fw", ["torch", "paddle"])
def test_a_model_into_itself_is_not_grouped(scatters, fw):
    """A destination that is also a source: grouping would reorder reads and writes, so it is not done."""
    a = blocks(fw, seed=1)
    snap = snapshot(a)
    assign_weight(a, a)
    assert scatters[fw] == 0
    assert_unchanged(a, snap)


# -- adapters/memory.py ------------------------------------------------------------
def _pointers(tensors):
    return [t.data_ptr() for t in tensors]


@pytest.mark.parametrize("numel", [1, 3, 16, 40, 512])
def test_gather_and_scatter_by_address_touch_only_the_tensors(numel):
    """Slices of one buffer stand in for scattered tensors; the values between them must stay as they were."""
    buf = torch.arange(4000, dtype=torch.float32)
    starts = [7, 600, 1203, 1800, 2422, 3001]  # offsets that share no divisor with numel: narrow rows
    parts = [buf[s:s + numel] for s in starts]
    got = memory.gather(_pointers(parts), numel, torch.float32)
    assert torch.equal(got, torch.stack(parts))
    before = buf.clone()
    new = -torch.rand(len(parts), numel)
    assert memory.scatter(_pointers(parts), new)
    for s, row in zip(starts, new):
        assert torch.equal(buf[s:s + numel], row)
        before[s:s + numel] = row
    assert torch.equal(buf, before)  # nothing else changed


def test_overlapping_or_misaligned_tensors_are_refused_untouched():
    buf = torch.arange(100, dtype=torch.float32)
    before = buf.clone()
    overlapping = [buf[0:10], buf[5:15]]
    assert memory.gather(_pointers(overlapping), 10, torch.float32) is None
    assert memory.scatter(_pointers(overlapping), torch.zeros(2, 10)) is False
    misaligned = [buf.data_ptr() + 2, buf.data_ptr() + 64]
    assert memory.scatter(misaligned, torch.zeros(2, 4)) is False
    assert torch.equal(buf, before)


def test_paddle_scatter_writes_bfloat16_bit_exact():
    ps = [paddle.zeros([4, 5], dtype="bfloat16") for _ in range(9)]
    values = torch.randn(9, 4, 5).to(torch.bfloat16)
    assert ADAPTERS["paddle"].scatter(ps, values)
    for p, v in zip(ps, values):
        got = torch.from_dlpack(paddle.utils.dlpack.to_dlpack(p))
        assert torch.equal(got.view(torch.int16), v.view(torch.int16))
    back = ADAPTERS["paddle"].gather(ps, (4, 5), "bfloat16")
    assert torch.equal(back.view(torch.int16), values.view(torch.int16))


@pytest.mark.parametrize("src", ["torch", "paddle"])
def test_torch_destinations_written_by_address_are_marked_for_autograd(scatters, src):
    # the grouped path writes torch tensors by address; like copy_, it must bump their version counters so
    # that a graph which saved the old weights refuses to backpropagate instead of using the new values
    a, b = blocks(src, seed=1), blocks("torch", seed=2)
    y = b(torch.randn(2, 6, requires_grad=True)).sum()
    versions = [p._version for p in b.parameters()]
    assign_weight(a, b)
    assert scatters["torch"] == 72
    assert all(p._version > v for p, v in zip(b.parameters(), versions))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


@pytest.mark.parametrize("src", ["torch", "paddle"])
def test_non_contiguous_torch_destinations_in_a_group_are_written_in_place(src):
    a, b = blocks(src, seed=1), blocks("torch", seed=2)
    for layer in b:
        if isinstance(layer, torch.nn.Linear):  # same values and shape, column-major storage
            layer.weight = torch.nn.Parameter(layer.weight.detach().t().contiguous().t())
    objects = [id(p) for p in b.parameters()]
    xs = inputs_for([(3, 6)])
    assign_weight(a, b)
    assert [id(p) for p in b.parameters()] == objects
    assert not b[0].weight.is_contiguous()  # layout kept
    assert max_abs_diff(run(a, src, xs), run(b, "torch", xs)) <= 1e-5
