"""Destinations whose elements share memory (issue 28, item 7): a buffer made with ``expand`` (torch) or
``as_strided`` (both) cannot hold a value per element. torch's copy refuses it half-way through the copies (the
model was left partly written, a special init's writes kept); paddle's ``set_value`` keeps one of the values
that share a place, silently. Both are refused by validation, before anything is written, naming the path,
the shape, the strides and the fix; layouts that do not overlap (transposed, interleaved) are still written.
"""
from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch

from helpers import DIRECTION_IDS, DIRECTIONS, np_of, snapshot, write
from padiff_lite import InitError, TransferError, assign_weight, create_model
from padiff_lite.adapters.memory import overlapping


def shared(fw, shape, strides, n):
    """A tensor of ``shape`` laid out with ``strides`` over ``n`` zeros (torch or paddle)."""
    if fw == "torch":
        return torch.zeros(n).as_strided(shape, strides)
    return paddle.as_strided(paddle.zeros([n]), list(shape), list(strides))


class Gain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.g = torch.nn.Parameter(torch.randn(4, 4))


class GainP(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.g = self.create_parameter([4, 4])


def net(fw, tail=None):
    """Linear, Gain (an imperative special init), Linear, then a layer holding buffer ``b`` [3, 4]: ``tail`` (a
    tensor) or a fresh one of its own. The buffer comes last, so a copy failing on it would fail after the others."""
    nn = torch.nn if fw == "torch" else paddle.nn
    holder = nn.Module() if fw == "torch" else paddle.nn.Layer()
    b = tail if tail is not None else (torch.randn(3, 4) if fw == "torch" else paddle.randn([3, 4]))
    holder.register_buffer("b", b)
    return nn.Sequential(nn.Linear(4, 4), Gain() if fw == "torch" else GainP(), nn.Linear(4, 4), holder)


def expanded(fw):
    """torch: ``zeros(1, 4).expand(3, 4)``; paddle (its expand copies): the same layout with as_strided."""
    return torch.zeros(1, 4).expand(3, 4) if fw == "torch" else shared(fw, (3, 4), (0, 1), 4)


def raw_bits(model) -> dict:
    """Every tensor of ``model`` with its memory as it is (an expanded buffer's 4 values, not 12)."""
    out = snapshot(model)
    for k, t in model.state_dict().items():
        out[k + "@raw"] = np_of(t).copy() if isinstance(t, torch.Tensor) else np.array(t.numpy(), copy=True)
    return out


@pytest.fixture
def gain_calls(register_special_init):
    """Registers the Gain <-> GainP special init for a direction; returns the layers it was called on."""
    calls = []

    def init(module, layer):
        calls.append(layer)
        write(layer.g, np_of(module.g))

    return lambda src: (register_special_init(src, "Gain", "GainP", init), calls)[1]


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_a_destination_whose_elements_share_memory_is_refused_before_anything_is_written(src, dst, gain_calls):
    calls = gain_calls(src)
    a, b = net(src), net(dst, tail=expanded(dst))
    before = raw_bits(b)
    with pytest.raises(TransferError) as e:
        assign_weight(a, b)
    msg = str(e.value)
    assert "nothing was written (1 problem)" in msg
    assert "raw 3.b [3, 4] has strides [0, 1]: some of its elements share memory" in msg
    assert "tensor.clone()" in msg and "update_black_list" in msg
    assert calls == []  # refused by validation: not even the special init ran
    now = raw_bits(b)
    assert now.keys() == before.keys()
    assert [k for k in now if not np.array_equal(now[k], before[k])] == []


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_a_special_init_layer_holding_such_a_tensor_is_refused_before_the_init_runs(src, dst, gain_calls):
    """An imperative special init may write any tensor of its raw layer: all of them must be able to hold values."""
    calls = gain_calls(src)
    a, b = net(src), net(dst)
    b[1].register_buffer("s", expanded(dst))
    before = raw_bits(b)
    with pytest.raises(TransferError) as e:
        assign_weight(a, b)
    assert "raw 1.s [3, 4] has strides [0, 1]: some of its elements share memory" in str(e.value)
    assert calls == []
    now = raw_bits(b)
    assert [k for k in now if not np.array_equal(now[k], before[k])] == []


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_the_fixes_the_message_names_transfer_every_value(src, dst, gain_calls):
    calls = gain_calls(src)
    a = net(src)
    # 1. the buffer given memory of its own
    b = net(dst, tail=expanded(dst).clone())
    assign_weight(a, b)
    assert len(calls) == 1
    want, got = snapshot(a), snapshot(b)
    for k in want:
        w = want[k].T if dst == "paddle" and k in ("0.weight", "2.weight") else want[k]
        w = w.T if src == "paddle" and k in ("0.weight", "2.weight") else w
        assert np.array_equal(got[k], w), k
    assert np.abs(got["3.b"]).max() > 0  # the random buffer arrived (the clone was zeros)
    # 2. the layer holding it black-listed: every other tensor arrives, the buffer stays as built
    b = net(dst, tail=expanded(dst))
    pa, pb = create_model(a), create_model(b)
    pa.update_black_list([a[3]], "all")
    pb.update_black_list([b[3]], "all")
    assign_weight(pa, pb)
    got = snapshot(b)
    assert np.array_equal(got["1.g"], want["1.g"]) and np.array_equal(got["0.bias"], want["0.bias"])
    assert not got["3.b"].any()


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_paddle_and_torch_layouts_that_do_not_overlap_are_written_value_for_value(src, dst):
    """Transposed and interleaved (strides [2, 3]: offsets 0 3 6 9 2 5 8 11 4 7 10 13) layouts are not refused."""
    a = net(src)
    for layout in [((3, 4), (1, 3), 12), ((3, 4), (2, 3), 14)]:
        tail = shared(dst, *layout)
        b = net(dst, tail=tail)
        assign_weight(a, b)
        assert np.array_equal(np_of(b[3].b), np_of(a[3].b)), layout
        assert np.abs(np_of(a[3].b)).max() > 0


def test_an_init_target_whose_elements_share_memory_is_refused_and_nothing_is_initialised():
    """``init_unmatched`` writes tensors the plan leaves alone: an expanded running mean is refused too (torch only:
    paddle's norm statistics are Parameters, which no as_strided view can replace)."""
    a = torch.nn.Sequential(torch.nn.Linear(4, 4))
    b = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    b[2].running_mean = torch.zeros(1).expand(4)
    before = raw_bits(b)
    with pytest.raises(InitError) as e:
        assign_weight(a, b, strict=False, init_unmatched="bert")
    assert "2.running_mean [4] (strides [0])" in str(e.value) and "nothing was initialised" in str(e.value)
    now = raw_bits(b)
    assert [k for k in now if not np.array_equal(now[k], before[k])] == []


def test_overlap_is_told_from_the_strides_and_by_offsets_where_they_interleave():
    assert not overlapping((3, 4), (4, 1))  # contiguous
    assert not overlapping((4, 3), (1, 4))  # transposed
    assert not overlapping((2, 3, 4, 5), (60, 1, 15, 3))  # channels-last
    assert not overlapping((3, 1, 4), (4, 0, 1))  # a stride 0 on a dimension of one element
    assert not overlapping((0, 4), (0, 0))  # no elements
    assert overlapping((3, 4), (0, 1))  # expand
    assert overlapping((3, 3), (1, 1))  # sliding windows
    assert not overlapping((3, 3), (2, 3))  # interleaved, offsets all different
    assert overlapping((3, 3), (2, 4))  # interleaved, offset 4 twice
    for shape, strides, n in [((3, 4), (0, 1), 4), ((3, 3), (2, 3), 11), ((3, 3), (1, 1), 5), ((2, 6), (6, 1), 12)]:
        t = torch.zeros(n).as_strided(shape, strides)
        assert overlapping(shape, strides) == (len(set(_offsets(t))) < t.numel())


def _offsets(t):
    idx = torch.arange(t.untyped_storage().nbytes() // t.element_size()).as_strided(t.shape, t.stride())
    return idx.reshape(-1).tolist()
