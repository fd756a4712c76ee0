"""Imperative special inits (user code) are watched (issue 17): the base model they read stays as it was,
raw tensors must be written into, not replaced, and tensors an init did not write are reported, not
counted. Both directions, numbers compared."""
from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch

from helpers import DIRECTION_IDS, DIRECTIONS, LMHead, assert_unchanged, inputs_for, np_of, snapshot, write
from padiff_lite import TransferError, assign_weight
from padiff_lite.models import run


def model(fw):
    if fw == "torch":
        return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 5))
    return paddle.nn.Sequential(paddle.nn.Linear(4, 6), paddle.nn.Tanh(), LMHead(6, 5, bias=True))


def value(t):
    return np_of(t).copy()


def new_parameter(like):
    if isinstance(like, torch.Tensor):
        return torch.nn.Parameter(torch.zeros_like(like))
    p = paddle.create_parameter(list(like.shape), like.dtype)
    p.set_value(np.zeros(like.shape, "float32"))
    return p


@pytest.fixture
def register(register_special_init):
    """register(src, fn): fn(module, layer) becomes the special init of the head pair for that direction."""
    return lambda src, fn: register_special_init(src, "Linear", "LMHead", fn)


def copy_head(module, layer):
    """The correct init: weight and bias, same layout on both sides."""
    write(layer.weight, value(module.weight))
    write(layer.bias, value(module.bias))


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_the_correct_init_transfers_with_equal_outputs(src, dst, register):
    register(src, copy_head)
    a, b = model(src), model(dst)
    report = assign_weight(a, b)
    x = inputs_for([(3, 4)])
    np.testing.assert_allclose(run(a, src, x)[0], run(b, dst, x)[0], atol=1e-6)
    assert report.pairs[-1].tensors == 2 and report.tensors == 4
    assert not [n for n in report.notes if "left as built" in n]


@pytest.mark.parametrize("raises", [False, True], ids=["returns", "raises"])
@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_an_init_that_changes_its_base_is_refused_and_both_models_restored(src, dst, raises, register):
    def init(module, layer):
        copy_head(module, layer)
        write(module.weight, value(module.weight) * 2)  # "normalises" the source in place
        if raises:
            raise ValueError("after touching the base")

    register(src, init)
    a, b = model(src), model(dst)
    base_before, raw_before = snapshot(a), snapshot(b)
    with pytest.raises(TransferError) as e:
        assign_weight(a, b)
    msg = str(e.value)
    head = "Linear" if src == "torch" else "LMHead"
    assert f"special init {src}.{head} -> " in msg and "test_special_init_guards" in msg
    if raises:
        assert "raised ValueError: after touching the base" in msg and "changed base 2.weight: values changed" in msg
    else:
        assert "changed the base model it reads from; both models were restored" in msg
        assert e.value.problems == ["base 2.weight: values changed"]
    assert_unchanged(a, base_before)
    assert_unchanged(b, raw_before)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_an_init_that_replaces_a_base_parameter_is_refused_and_the_object_put_back(src, dst, register):
    def init(module, layer):
        copy_head(module, layer)
        module.bias = new_parameter(module.bias)

    register(src, init)
    a, b = model(src), model(dst)
    original = a[2].bias
    base_before, raw_before = snapshot(a), snapshot(b)
    with pytest.raises(TransferError) as e:
        assign_weight(a, b)
    assert e.value.problems == ["base 2.bias [5] -> [5] (a new tensor object of the same shape)"]
    assert a[2].bias is original
    assert_unchanged(a, base_before)
    assert_unchanged(b, raw_before)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_an_init_that_swaps_a_raw_parameter_for_one_of_the_same_shape_is_refused(src, dst, register):
    """An optimiser built on the raw model would keep updating the old object."""

    def init(module, layer):
        layer.weight = new_parameter(layer.weight)
        write(layer.weight, value(module.weight))
        write(layer.bias, value(module.bias))

    register(src, init)
    a, b = model(src), model(dst)
    original = b[2].weight
    raw_before = snapshot(b)
    with pytest.raises(TransferError) as e:
        assign_weight(a, b)
    assert "replaced tensor objects: it replaced tensors instead of writing into them" in str(e.value)
    assert e.value.problems == ["raw 2.weight [5, 6] -> [5, 6] (a new tensor object of the same shape)"]
    assert b[2].weight is original
    assert_unchanged(b, raw_before)  # the bias it wrote in place is restored too


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_tensors_an_init_skips_are_reported_as_left_as_built_not_counted(src, dst, register):
    def init(module, layer):
        write(layer.weight, value(module.weight))  # forgets the bias

    register(src, init)
    a, b = model(src), model(dst)
    bias_before = value(b[2].bias)
    report = assign_weight(a, b)
    np.testing.assert_array_equal(value(b[2].weight), value(a[2].weight))
    np.testing.assert_array_equal(value(b[2].bias), bias_before)
    assert report.pairs[-1].tensors == 1 and report.tensors == 3  # 2 by the Linear rule, 1 by the init
    key = f"{src}.{'Linear' if src == 'torch' else 'LMHead'} -> {dst}.{'LMHead' if dst == 'paddle' else 'Linear'}"
    left = [n for n in report.notes if "left as built" in n]
    assert left == [f"2.bias: left as built by special init {key} (test_special_init_guards:{_line(init)}): "
                    "the init did not write it"]
    assert "2.bias: left as built by special init" in str(report)


def _line(fn):
    return fn.__code__.co_firstlineno


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_a_tensor_rewritten_with_its_own_values_counts_as_written_in_torch(src, dst, register):
    """Torch tells a write of equal values by its version counter; paddle's set_value leaves no trace, so
    there an unchanged tensor is reported as left as built (its values are right either way)."""

    def init(module, layer):
        write(layer.weight, value(module.weight))
        write(layer.bias, value(layer.bias))

    register(src, init)
    report = assign_weight(model(src), model(dst))
    left = [n for n in report.notes if "left as built" in n]
    assert (left == []) if dst == "torch" else (len(left) == 1 and left[0].startswith("2.bias: "))


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_what_a_special_init_writes_breaks_older_graphs_as_torch_does(src, dst, register):
    """paddle's set_value does not raise the inplace version: the executor does, for what the init wrote."""
    register(src, copy_head)
    a, b = model(src), model(dst)
    x = inputs_for([(3, 6)])[0]
    if dst == "torch":
        xt = torch.from_numpy(x).requires_grad_()
        y = b[2](xt)
    else:
        xt = paddle.to_tensor(x, stop_gradient=False)
        y = b[2](xt)
    assign_weight(a, b)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    assert snapshot(b)["2.weight"].shape == (5, 6)
