"""Imperative special inits that fail half-way, replace tensors, write a tied tensor or meet a layer with no
data: a TransferError naming the init and the place, and the raw model restored.

(test_registry.py and test_special_init_guards.py hold the first cases: an init raising on a paddle raw
model, an init replacing a torch tensor, an init changing its base model.)
"""
import numpy as np
import paddle
import pytest
import torch

from helpers import DIRECTION_IDS, DIRECTIONS, assert_refused, assert_unchanged, headed, snapshot, write
from padiff_lite import TransferError, add_special_init, assign_weight


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_second_special_init_raising_restores_what_the_first_wrote(src, dst, scoped_pool):
    key = ("torch", "Linear", "paddle", "LMHead") if src == "torch" else ("paddle", "LMHead", "torch", "Linear")
    calls = []

    def init(module, layer):
        calls.append(layer)
        write(layer.weight, np.full([11, 6], 7.0, "float32"))
        if len(calls) == 2:
            raise ValueError("second head: vocab mismatch")

    add_special_init(*key, init)
    a, b = headed(src), headed(dst)
    snap = snapshot(b)
    with pytest.raises(TransferError) as e:
        assign_weight(a, b)
    msg = str(e.value)
    assert len(calls) == 2
    assert "ValueError: second head: vocab mismatch" in msg and "head2 (" in msg and "the raw model was restored" in msg
    assert "add_special_init(..., override=True)" in msg and "test_special_init_faults" in msg  # where it was registered
    assert_unchanged(b, snap)  # both heads, and the planned tensors (embed, mid) never written


def test_special_init_writing_a_tied_tensor_outside_its_pair_is_restored(scoped_pool):
    """torch raw head.weight is embed.weight: the init writes embed's values through it, then fails."""

    def init(layer, module):
        module.weight.fill_(3.0)
        raise RuntimeError("half-way")

    add_special_init("paddle", "LMHead", "torch", "Linear", init)
    a, b = headed("paddle"), headed("torch", tie=True)
    before = b.embed.weight.detach().clone()
    with pytest.raises(TransferError, match="half-way"):
        assign_weight(a, b)
    assert b.head.weight is b.embed.weight
    assert torch.equal(b.embed.weight, before)


def test_special_init_replacing_a_paddle_parameter_with_another_shape_is_undone(scoped_pool):

    def init(module, layer):
        layer.weight = layer.create_parameter([3, 3])

    add_special_init("torch", "Linear", "paddle", "LMHead", init)
    a, b = headed("torch"), headed("paddle")
    original = b.head.weight
    e = assert_refused(lambda: assign_weight(a, b), TransferError, b)
    assert "head.weight [11, 6] -> [3, 3]" in str(e) and "copy_/set_value" in str(e)
    assert b.head.weight is original


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_special_init_is_not_run_when_its_layer_holds_no_data(src, dst, scoped_pool):
    key = ("torch", "Linear", "paddle", "LMHead") if src == "torch" else ("paddle", "LMHead", "torch", "Linear")
    calls = []
    add_special_init(*key, lambda m, l: calls.append(1))
    if src == "torch":
        with torch.device("meta"):
            a = headed("torch")
    else:
        with paddle.LazyGuard():
            a = headed("paddle")
    b = headed(dst)
    e = assert_refused(lambda: assign_weight(a, b), TransferError, b)
    assert "base head.weight holds no data" in str(e) and "base head2.weight holds no data" in str(e)
    assert calls == []
