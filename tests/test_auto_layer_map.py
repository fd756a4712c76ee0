"""auto_layer_map marks units, it never zips by position: never worse than no layer map.

Both directions each; outputs compared after the transfer.
"""
import numpy as np
import paddle
import pytest
import torch

from helpers import DIRECTION_IDS, DIRECTIONS, LMHead
from padiff_lite import LayerMapError, assign_weight, create_model
from padiff_lite.models import run


class TorchHeadBody(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(8, 8)  # defined first here ...
        self.body = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)))


class PaddleHeadBody(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.body = paddle.nn.Linear(8, 8)  # ... and second here: same names, same shapes, other order
        self.head = paddle.nn.Linear(8, 8)

    def forward(self, x):
        return self.head(paddle.tanh(self.body(x)))


BUILD = {"torch": TorchHeadBody, "paddle": PaddleHeadBody}
X = [np.random.default_rng(0).standard_normal((3, 8)).astype("float32")]


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_same_shaped_layers_defined_in_another_order_meet_their_namesakes(src, dst):
    a, b = BUILD[src](), BUILD[dst](),
    assert np.abs(run(a, src, X)[0] - run(b, dst, X)[0]).max() > 1e-3
    base, raw = create_model(a).auto_layer_map("base"), create_model(b).auto_layer_map("raw")
    report = assign_weight(base, raw)
    np.testing.assert_allclose(run(b, dst, X)[0], run(a, src, X)[0], atol=1e-5)
    assert {(p.base_path, p.raw_path) for p in report.pairs if p.base_path} == {("head", "head"), ("body", "body")}


class TorchLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(16, 8)
        self.norm = torch.nn.LayerNorm(8)
        self.lm_head = torch.nn.Linear(8, 16, bias=False)

    def forward(self, ids):
        return self.lm_head(self.norm(self.embed(ids)))


class PaddleLM(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.embed = paddle.nn.Embedding(16, 8)
        self.norm = paddle.nn.LayerNorm(8)
        self.lm_head = LMHead(8, 16)

    def forward(self, ids):
        return self.lm_head(self.norm(self.embed(ids)))


LM = {"torch": TorchLM, "paddle": PaddleLM}
IDS = [np.array([[1, 5, 9, 15], [0, 2, 2, 7]], "int64")]


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_a_counterpart_without_a_rule_is_found_by_name(src, dst):
    """torch selects lm_head (a Linear has a rule) while paddle's LMHead has none: the two lists differ in length,
    and the pairing still finds lm_head by name (zipping the lists raised 'layer maps differ in length')."""
    a, b = LM[src](), LM[dst]()
    base, raw = create_model(a).auto_layer_map("base"), create_model(b).auto_layer_map("raw")
    assert len(base.layer_map) != len(raw.layer_map)
    assign_weight(base, raw)
    np.testing.assert_allclose(run(b, dst, IDS)[0], run(a, src, IDS)[0], atol=1e-5)


def test_auto_and_explicit_layer_maps_do_not_mix():
    a, b = TorchHeadBody(), PaddleHeadBody()
    base, raw = create_model(a).auto_layer_map("base"), create_model(b).set_layer_map([b.head, b.body])
    with pytest.raises(LayerMapError, match="use set_layer_map on both models .* or auto_layer_map on both"):
        assign_weight(base, raw)


def test_set_layer_map_keeps_its_meaning_the_order_given():
    """An explicit layer map pairs in the order given, even against the names (the user said so)."""
    a, b = TorchHeadBody(), PaddleHeadBody()
    base, raw = create_model(a).set_layer_map([a.head, a.body]), create_model(b).set_layer_map([b.body, b.head])
    assign_weight(base, raw)
    np.testing.assert_array_equal(b.body.weight.numpy(), a.head.weight.detach().numpy().T)


def test_auto_layer_map_honours_the_pool_it_is_given():
    from padiff_lite.special_init import InitPool

    empty = InitPool()
    assert create_model(TorchHeadBody()).auto_layer_map("base", pool=empty).layer_map == []
