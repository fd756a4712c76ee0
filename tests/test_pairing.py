"""Pairing: by name, by order within a parent, by layer map; black and white lists; tied weights."""
import numpy as np
import paddle
import pytest
import torch

from helpers import (DIRECTION_IDS, DIRECTIONS, NN, Base, assert_refused, assert_transfer_equivalent, assert_unchanged,
                     inputs_for, snapshot, tied_lm)
from padiff_lite import TransferError, assign_weight, create_model
from padiff_lite.models import run


def two_part(fw, head_first):
    """head and body defined in different orders; forward is the same."""
    nn = NN[fw]

    class TwoPart(Base(fw)):
        def __init__(self):
            super().__init__()
            if head_first:
                self.head = nn.Linear(8, 3)
                self.body = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8))
            else:
                self.body = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8))
                self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.body(x))

    return TwoPart()


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_definition_order_does_not_matter_when_names_agree(src, dst):
    build = lambda fw: two_part(fw, head_first=(fw == "torch"))  # noqa: E731
    report, *_ = assert_transfer_equivalent(build, src, dst, [(4, 5)])
    assert {p.how for p in report.pairs} == {"name"}


def renamed(fw):
    """torch calls the classifier 'classifier', paddle 'fc'; the rest agrees."""
    nn = NN[fw]

    class Renamed(Base(fw)):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Linear(6, 6)
            setattr(self, "classifier" if fw == "torch" else "fc", nn.Linear(6, 2))

        def forward(self, x):
            head = self.classifier if fw == "torch" else self.fc
            return head(self.encoder(x))

    return Renamed()


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_one_renamed_layer_pairs_by_order_within_its_parent(src, dst):
    report, *_ = assert_transfer_equivalent(renamed, src, dst, [(3, 6)])
    hows = {p.raw_path: p.how for p in report.pairs}
    assert hows["encoder"] == "name" and hows[("fc" if dst == "paddle" else "classifier")] == "order"


def nested(fw):
    nn = NN[fw]
    if fw == "torch":
        class Nested(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.features = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8))
                self.aux = nn.Linear(8, 8)
                self.out = nn.Linear(8, 2)

            def forward(self, x):
                return self.out(self.features(x))
    else:
        class Nested(paddle.nn.Layer):
            def __init__(self):
                super().__init__()
                self.l1 = nn.Linear(4, 8)
                self.l2 = nn.Linear(8, 8)
                self.out = nn.Linear(8, 2)

            def forward(self, x):
                return self.out(self.l2(paddle.nn.functional.relu(self.l1(x))))
    return Nested()


def _mapped(model):
    proxy = create_model(model)
    if proxy.framework == "torch":
        proxy.set_layer_map([model.features[0], model.features[2]])
        proxy.update_black_list([model.aux], "all")
    else:
        proxy.set_layer_map([model.l1, model.l2])
    return proxy


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_set_layer_map_pairs_differently_structured_models(src, dst):
    a, b = nested(src), nested(dst)
    x = inputs_for([(3, 4)])
    report = assign_weight(_mapped(a), _mapped(b))
    np.testing.assert_allclose(run(a, src, x)[0], run(b, dst, x)[0], atol=1e-6)
    assert sorted(p.how for p in report.pairs) == ["layer_map", "layer_map", "name"]


def test_without_layer_map_the_structure_error_lists_every_unpaired_path():
    a, b = nested("torch"), nested("paddle")
    e = assert_refused(lambda: assign_weight(a, b), TransferError, b)
    msg = str(e)
    for path in ("base features (Sequential", "base aux (Linear", "raw l1 (Linear", "raw l2 (Linear"):
        assert path in msg
    assert "set_layer_map" in msg and "nothing was written" in msg


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_auto_layer_map_on_both_sides(src, dst):
    a, b = two_part(src, True), two_part(dst, True)
    pa, pb = create_model(a), create_model(b)
    pa.auto_layer_map("base")
    pb.auto_layer_map("raw")
    assert len(pa.layer_map) == 3
    assign_weight(pa, pb)
    x = inputs_for([(2, 5)])
    np.testing.assert_allclose(run(a, src, x)[0], run(b, dst, x)[0], atol=1e-6)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_white_list_transfers_only_the_listed_part(src, dst):
    a, b = two_part(src, True), two_part(dst, True)
    head_before = snapshot(b.head)
    pa, pb = create_model(a), create_model(b)
    pa.update_white_list([a.body], "all")
    pb.update_white_list([b.body], "all")
    assign_weight(pa, pb)
    x = inputs_for([(2, 5)])
    np.testing.assert_allclose(run(a.body, src, x)[0], run(b.body, dst, x)[0], atol=1e-6)
    assert_unchanged(b.head, head_before)


@pytest.mark.parametrize("mode,own_moves,kids_move", [("self", False, True), ("sublayers", True, False),
                                                      ("all", False, False)])
def test_black_list_modes(mode, own_moves, kids_move):
    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.randn(3))
            self.inner = torch.nn.Linear(3, 3)

    a, b = Holder(), Holder()
    pa, pb = create_model(a), create_model(b)
    pa.update_black_list([a], mode)
    pb.update_black_list([b], mode)
    assign_weight(pa, pb)
    assert torch.equal(a.scale, b.scale) == own_moves
    assert torch.equal(a.inner.weight, b.inner.weight) == kids_move


def test_tied_weights_stay_tied_in_a_same_framework_transfer():
    a, b = tied_lm("torch", True), tied_lm("torch", True)
    with torch.no_grad():
        a.embed.weight.mul_(3)
    report = assign_weight(a, b)
    assert b.decoder.weight is b.embed.weight
    assert torch.equal(b.embed.weight, a.embed.weight)
    assert report.tensors == 1


def test_tied_base_into_untied_raw_gives_both_the_same_values():
    a, b = tied_lm("torch", True), tied_lm("torch", False)
    assign_weight(a, b)
    assert torch.equal(b.decoder.weight, a.embed.weight) and torch.equal(b.embed.weight, a.embed.weight)
    assert b.decoder.weight is not b.embed.weight


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_shape_mismatch_names_both_paths_and_shapes_and_writes_nothing(src, dst):
    a = NN[src].Sequential(NN[src].Linear(4, 5), NN[src].Linear(5, 6))
    b = NN[dst].Sequential(NN[dst].Linear(4, 5), NN[dst].Linear(5, 7))
    e = assert_refused(lambda: assign_weight(a, b), TransferError, b)
    msg = str(e)
    base_shape, raw_shape = ("[6, 5]", "[5, 7]") if src == "torch" else ("[5, 6]", "[7, 5]")  # each side's layout
    assert f"base 1.weight {base_shape} (transpose) vs raw 1.weight {raw_shape}" in msg
    assert "base 1.bias [6] vs raw 1.bias [7]" in msg


# -- a layer with no tensors on one side, alone inside a list ----------------------------------------------
def _listed(fw, kind):
    import paddle
    import torch

    if fw == "torch":
        norm = (torch.nn.BatchNorm1d(4, affine=False, track_running_stats=False) if kind == "batchnorm"
                else torch.nn.InstanceNorm1d(4))
        lin, blocks, base = torch.nn.Linear(4, 4), torch.nn.ModuleList([norm]), torch.nn.Module
    else:
        norm = (paddle.nn.BatchNorm1D(4, weight_attr=False, bias_attr=False, use_global_stats=False)
                if kind == "batchnorm" else paddle.nn.InstanceNorm1D(4))
        lin, blocks, base = paddle.nn.Linear(4, 4), paddle.nn.LayerList([norm]), paddle.nn.Layer

    class Listed(base):
        def __init__(self):
            super().__init__()
            self.lin, self.blocks = lin, blocks

        def forward(self, x):
            x = self.lin(x)
            for block in self.blocks:
                x = block(x)
            return x

    return Listed()


@pytest.mark.parametrize("kind", ["batchnorm", "instancenorm"])
@pytest.mark.parametrize("src,dst", [("torch", "paddle"), ("paddle", "torch")])
def test_a_tensorless_layer_alone_in_a_list_pairs_like_anywhere_else(kind, src, dst):
    from helpers import assert_transfer_equivalent

    shape = (3, 4, 4) if kind == "instancenorm" else (5, 4)
    assert_transfer_equivalent(lambda fw: _listed(fw, kind), src, dst, [shape])
