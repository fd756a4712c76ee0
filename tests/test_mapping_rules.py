"""Mapping rules (register_maps) that do not fit the layers they are given: refused before anything is
written, naming the pair and the map; a rule that fits works both ways; malformed Maps are refused."""
import numpy as np
import paddle
import pytest
import torch

from helpers import assert_refused
from padiff_lite import RegistryError, TransferError, assign_weight, init_pool
from padiff_lite.special_init import Map


class Packed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(6, 4))
        self.s = torch.nn.Parameter(torch.randn(4))


class Split(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.a = self.create_parameter([4, 3])
        self.b = self.create_parameter([4, 3])
        self.s = self.create_parameter([4])


@pytest.mark.parametrize("maps,expected", [
    (lambda m, l: [Map("w", "a", "transpose", src_rows=(0, 3)), Map("w", "b", "transpose", src_rows=(3, 9)),
                   Map("s", "s")],
     "part [3:9] does not fit base w of shape [6, 4]"),
    (lambda m, l: [Map("w", "a", "transpose", src_rows=(0, 3)), Map("w", "b", "transpose", src_rows=(3, 6)),
                   Map("s", "s", "transpose")],
     "base s is 1-D, a transpose needs 2-D"),
    (lambda m, l: [Map("w", "a", "transpose", src_rows=(0, 3), dst_rows=(2, 6)), Map("s", "s")],
     "part [2:6] does not fit raw a of shape [4, 3]"),
    (lambda m, l: [Map("w", "a", "transpose", src_rows=(0, 3)), Map("w", "b", src_rows=(3, 6)), Map("s", "s")],
     "shape mismatch: base w [6, 4] vs raw b [4, 3]"),
    (lambda m, l: [Map("s", "s"), m.missing_attribute],
     "failed: AttributeError: 'Packed' object has no attribute 'missing_attribute'; fix the rule"),
])
def test_a_mapping_rule_that_does_not_fit_is_refused_before_writing(maps, expected, scoped_pool):
    init_pool.register_maps("torch", "Packed", "paddle", "Split")(maps)
    a, b = Packed(), Split()
    e = assert_refused(lambda: assign_weight(a, b), TransferError, b)
    assert expected in str(e) and "<root> (Packed) -> <root> (Split)" in str(e)


def test_a_good_mapping_rule_for_the_same_layers_works_both_ways(scoped_pool):
    init_pool.register_maps("torch", "Packed", "paddle", "Split")(lambda m, l: [
        Map("w", "a", "transpose", src_rows=(0, 3)), Map("w", "b", "transpose", src_rows=(3, 6)), Map("s", "s")])
    a, b, c = Packed(), Split(), Packed()
    assign_weight(a, b)
    np.testing.assert_array_equal(np.concatenate([b.a.numpy().T, b.b.numpy().T]), a.w.detach().numpy())
    assign_weight(b, c)
    assert torch.equal(c.w, a.w) and torch.equal(c.s, a.s)


@pytest.mark.parametrize("kw,match", [(dict(transform="rotate"), "Map transform 'rotate' is not one of"),
                                      (dict(src=None, dst=None), "a Map needs a source, a target, or both")])
def test_malformed_maps_are_refused(kw, match):
    args = dict(src="w", dst="w")
    args.update(kw)
    with pytest.raises(RegistryError, match=match):
        Map(**args)


def test_a_source_tensor_the_raw_layer_cannot_hold_must_be_the_constant():
    """paddle BatchNorm scale -> torch BatchNorm(affine=False): only a scale of exactly 1 can be dropped."""
    a, b = paddle.nn.BatchNorm1D(4), torch.nn.BatchNorm1d(4, affine=False)
    a.weight.set_value(np.full([4], 2.0, "float32"))
    e = assert_refused(lambda: assign_weight(a, b), TransferError, b)
    assert "base weight has values other than 1.0, and the raw layer has no tensor to hold them" in str(e)
    assert "affine=True" in str(e)
    a.weight.set_value(np.ones([4], "float32"))
    assign_weight(a, b)
    np.testing.assert_array_equal(b.running_var.numpy(), a._variance.numpy())
