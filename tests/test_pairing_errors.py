"""Structures that do not pair, and layer maps given the wrong way: every unpaired layer and tensor named
on both sides, a fix suggested, and nothing written."""
import paddle
import pytest
import torch

from helpers import DIRECTION_IDS, DIRECTIONS, NN, Base, assert_refused
from padiff_lite import LayerMapError, TransferError, assign_weight, create_model


def stack(fw, n, extra_param_at=None, name="blocks"):
    nn = NN[fw]

    class Stack(Base(fw)):
        def __init__(self):
            super().__init__()
            lst = nn.ModuleList if fw == "torch" else nn.LayerList
            setattr(self, name, lst([nn.Linear(4, 4) for _ in range(n)]))
            self.out = nn.LayerNorm(4)
            if extra_param_at is not None:
                layer = getattr(self, name)[extra_param_at]
                if fw == "torch":
                    layer.gain = torch.nn.Parameter(torch.ones(4))
                else:
                    layer.gain = layer.create_parameter([4])

    return Stack()


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_different_list_lengths_name_every_extra_layer(src, dst):
    a, b = stack(src, 5), stack(dst, 3)
    e = assert_refused(lambda: assign_weight(a, b), TransferError, b)
    msg = str(e)
    assert "unpaired base blocks.3 (Linear, 2 tensors)" in msg and "unpaired base blocks.4 (Linear, 2 tensors)" in msg
    assert "nothing was written" in msg and "set_layer_map" in msg and "strict=False" in msg
    a, b = stack(src, 2), stack(dst, 4)  # and the other way round: raw layers that would get nothing
    with pytest.raises(TransferError, match=r"(?s)unpaired raw blocks\.2 .*unpaired raw blocks\.3 "):
        assign_weight(a, b)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_parameters_only_on_one_side_are_all_listed_for_both_sides(src, dst):
    a, b = stack(src, 3, extra_param_at=0), stack(dst, 3, extra_param_at=2)
    e = assert_refused(lambda: assign_weight(a, b), TransferError, b)
    msg = str(e)
    assert "raw tensors with no base partner: blocks.2.gain" in msg
    assert "base tensors with no raw partner: blocks.0.gain" in msg
    report = assign_weight(a, b, strict=False)  # the escape hatch: transfer what matches, list the rest
    assert report.missing == ["blocks.2.gain"] and report.unexpected == ["blocks.0.gain"]


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_layers_only_on_one_side_on_both_sides_are_all_listed(src, dst):
    a, b = stack(src, 2, name="blocks"), stack(dst, 3, name="layers")
    e = assert_refused(lambda: assign_weight(a, b), TransferError, b)
    msg = str(e)
    assert "unpaired base blocks (" in msg and "unpaired raw layers (" in msg
    assert len(e.problems) == 1 and "fix:" in e.problems[0]


def test_layer_map_arguments_are_checked():
    t = create_model(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)))
    other = paddle.nn.Linear(2, 2)
    with pytest.raises(LayerMapError, match=r"takes torch modules, got paddle.nn.layer.common.Linear"):
        t.set_layer_map([t.model[0], other])
    with pytest.raises(LayerMapError, match="takes a list of torch modules, got Linear"):
        t.set_layer_map(t.model[0])
    with pytest.raises(LayerMapError, match="takes a list of torch modules, got str"):
        t.update_black_list("encoder")
    stray = torch.nn.Linear(2, 2)
    with pytest.raises(LayerMapError, match=r"Sequential \(torch\) does not contain: Linear at 0x"):
        t.update_white_list([t.model[1], stray])
    assert t.layer_map == [] and t.black_list == {} and t.white_list == {}
    with pytest.raises(ValueError, match="auto_layer_map\\(\\) takes 'base' or 'raw', got 'sideways'"):
        t.auto_layer_map("sideways")
    assert isinstance(LayerMapError("x"), ValueError)  # callers may catch ValueError


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_layer_maps_of_different_lengths(src, dst):
    a, b = create_model(stack(src, 3)), create_model(stack(dst, 3))
    a.set_layer_map(list(a.model.blocks))
    b.set_layer_map(list(b.model.blocks)[:2])
    e = assert_refused(lambda: assign_weight(a, b), LayerMapError, b.model)
    assert f"Stack ({src}) has 3" in str(e) and f"Stack ({dst}) has 2" in str(e)
    assert "same number of modules" in str(e)
