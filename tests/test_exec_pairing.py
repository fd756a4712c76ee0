"""Pairing by execution (padiff_lite.align / trace) and the mapping as data (padiff_lite.mapping).

Ports whose names and nesting differ: a torchvision-named CNN against a stages/blocks one, an LSTM tagger
with other attribute names defined in another order, two identical branches call order cannot tell apart.
Every transfer is checked by outputs, in both directions.
"""
from __future__ import annotations

import json

import numpy as np
import paddle.nn as pnn
import pytest
from torch import nn

from helpers import (DIRECTION_IDS, DIRECTIONS, assert_refused, assert_transfer_equivalent, assert_unchanged,
                     inputs_for, snapshot)
from padiff_lite import AmbiguousPairingError, MappingError, TransferError, assign_weight, auto_diff, pair_layers
from padiff_lite.align import align
from padiff_lite.mapping import load


# -- the pure alignment step -----------------------------------------------------------
def _fits(base, raw):
    return lambda i, j: base[i] == raw[j]


def test_align_keeps_call_order_and_leaves_what_fits_nothing():
    got = align(4, 5, _fits("aabc", "aaxbc"))
    assert got.pairs == [(0, 0), (1, 1), (2, 3), (3, 4)] and not got.ambiguous


def test_align_pairs_what_fits_one_candidate_whatever_its_order():
    got = align(3, 3, _fits("xab", "abx"))  # x fits only x: paired although the orders cross
    assert got.pairs == [(0, 2), (1, 0), (2, 1)]


def test_align_refuses_two_candidates_that_fit_equally():
    got = align(1, 2, _fits("a", "aa"))
    assert got.pairs == [] and got.ambiguous == [("base", 0, [0, 1])]


def test_align_refuses_crossing_orders_it_cannot_decide():
    got = align(4, 4, _fits("abab", "baba"))
    assert got.pairs == [] and got.ambiguous


# -- a CNN whose blocks are named and nested differently ---------------------------------------
class TorchBlock(nn.Module):
    """torchvision's BasicBlock names; the shortcut runs after the main path, as in torchvision."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(TorchBlock(8, 8, 1), TorchBlock(8, 8, 1))
        self.layer2 = nn.Sequential(TorchBlock(8, 16, 2))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(x.mean((2, 3)))


class PaddleBlock(pnn.Layer):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv_a = pnn.Conv2D(cin, cout, 3, stride, 1, bias_attr=False)
        self.norm_a = pnn.BatchNorm2D(cout)
        self.conv_b = pnn.Conv2D(cout, cout, 3, 1, 1, bias_attr=False)
        self.norm_b = pnn.BatchNorm2D(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = pnn.Sequential(pnn.Conv2D(cin, cout, 1, stride, bias_attr=False), pnn.BatchNorm2D(cout))

    def forward(self, x):
        out = self.norm_b(self.conv_b(pnn.functional.relu(self.norm_a(self.conv_a(x)))))
        return pnn.functional.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class PaddleStage(pnn.Layer):
    def __init__(self, blocks):
        super().__init__()
        self.blocks = pnn.LayerList(blocks)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class PaddleCNN(pnn.Layer):
    def __init__(self):
        super().__init__()
        self.head = pnn.Linear(16, 5)  # defined first, runs last
        self.stem = pnn.Sequential(pnn.Conv2D(3, 8, 3, 1, 1, bias_attr=False), pnn.BatchNorm2D(8), pnn.ReLU())
        self.stages = pnn.LayerList([PaddleStage([PaddleBlock(8, 8, 1), PaddleBlock(8, 8, 1)]),
                                     PaddleStage([PaddleBlock(8, 16, 2)])])

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x.mean((2, 3)))


def cnn(fw):
    return TorchCNN() if fw == "torch" else PaddleCNN()


CNN_INPUT = (2, 3, 8, 8)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_renamed_cnn_ports_by_execution(src, dst):
    x = inputs_for([CNN_INPUT])
    report, a, b = assert_transfer_equivalent(cnn, src, dst, [CNN_INPUT], warm=True, example_inputs=x[0])
    assert not report.missing and not report.unexpected
    pairs = report.mapping.layer_paths
    torch_to_paddle = {"conv1": "stem.0", "fc": "head", "layer1.0.conv1": "stages.0.blocks.0.conv_a",
                       "layer1.1.bn2": "stages.0.blocks.1.norm_b", "layer2.0.downsample.1": "stages.1.blocks.0.shortcut.1"}
    for t, p in torch_to_paddle.items():
        assert (pairs[t] == p) if src == "torch" else (pairs[p] == t)
    assert {e.how for e in report.mapping.layers} == {"execution"}


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_auto_diff_compares_a_renamed_port_layer_by_layer(src, dst):
    a, b = cnn(src), cnn(dst)
    x = np.random.default_rng(0).standard_normal(CNN_INPUT).astype("float32")
    result = auto_diff(a, b, x, atol=1e-4, rtol=1e-4)
    assert result, str(result)
    compared = {(ld.base_path, ld.raw_path) for ld in result.layers}
    want = ("layer1.0.conv1", "stages.0.blocks.0.conv_a") if src == "torch" else ("stages.0.blocks.0.conv_a", "layer1.0.conv1")
    assert want in compared and len(compared) == 18  # the root and every layer holding tensors


def test_without_example_inputs_the_error_says_to_pass_them():
    a, b = cnn("torch"), cnn("paddle")
    err = assert_refused(lambda: assign_weight(a, b), TransferError, b)
    msg = str(err)
    assert "unpaired base layer1 (Sequential" in msg and "unpaired raw stages (LayerList" in msg
    assert "pass example_inputs=" in msg and "by the order they run" in msg


# -- an LSTM tagger with other attribute names, defined in another order -------------------------------
class TorchTagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.word_embeds = nn.Embedding(30, 8)
        self.lstm = nn.LSTM(8, 6, num_layers=2, batch_first=True, bidirectional=True)
        self.hidden2tag = nn.Linear(12, 4)

    def forward(self, ids):
        return self.hidden2tag(self.lstm(self.word_embeds(ids))[0])


class PaddleTagger(pnn.Layer):
    def __init__(self):
        super().__init__()
        self.classifier = pnn.Linear(12, 4)
        self.encoder = pnn.LSTM(8, 6, num_layers=2, direction="bidirect")
        self.embed = pnn.Embedding(30, 8)

    def forward(self, ids):
        return self.classifier(self.encoder(self.embed(ids))[0])


def tagger(fw):
    return TorchTagger() if fw == "torch" else PaddleTagger()


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_lstm_tagger_with_other_names_ports_by_execution(src, dst):
    ids = np.random.default_rng(0).integers(0, 30, size=(2, 7)).astype("int64")
    report, *_ = assert_transfer_equivalent(tagger, src, dst, [], inputs=[ids], example_inputs=ids)
    pairs = {e.base: (e.raw, e.how) for e in report.mapping.layers}
    lstm = ("lstm", "encoder") if src == "torch" else ("encoder", "lstm")
    assert pairs[lstm[0]] == (lstm[1], "execution")  # the LSTM is paired as one unit by its rule
    assert len(report.mapping.tensors) == 2 + 16 + 1


# -- ambiguity: a shared branch against two separate ones ---------------------------------------------
def branches(fw, shared, name="branch"):
    lib, Base = (nn, nn.Module) if fw == "torch" else (pnn, pnn.Layer)

    class Branches(Base):
        def __init__(self):
            super().__init__()
            self.stem = lib.Linear(4, 4)
            if shared:  # "twice": inside a Sequential, so that neither names nor positions pair it
                setattr(self, name, lib.Linear(4, 4) if name == "branch" else lib.Sequential(lib.Linear(4, 4)))
            else:
                self.left, self.right = lib.Linear(4, 4), lib.Linear(4, 4)

        def forward(self, x):
            h = self.stem(x)
            if shared:
                branch = getattr(self, name)
                return branch(h) * 2 + branch(h)
            return self.left(h) * 2 + self.right(h)

    return Branches()


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_two_candidates_that_fit_equally_are_refused_with_both_named(src, dst):
    a, b = branches(src, shared=True), branches(dst, shared=False)
    snap = snapshot(b)
    x = inputs_for([(3, 4)])[0]
    with pytest.raises(AmbiguousPairingError) as err:
        assign_weight(a, b, example_inputs=x)
    msg = str(err.value)
    assert "base branch (Linear: weight" in msg and "raw left (Linear" in msg and "raw right (Linear" in msg
    assert "do not tell them apart" in msg and "nothing was written" in msg and "mapping=" in msg
    assert err.value.candidates == [("base", "branch", ["left", "right"])]
    assert_unchanged(b, snap)
    # the same models the other way round: the shared branch is now the raw side
    with pytest.raises(AmbiguousPairingError) as err:
        assign_weight(branches(src, shared=False), branches(dst, shared=True), example_inputs=x)
    assert err.value.candidates == [("raw", "branch", ["left", "right"])]


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_layers_that_never_run_or_run_twice_are_reported(src, dst):
    a, b = branches(src, shared=True), branches(dst, shared=False)
    x = inputs_for([(3, 4)])[0]
    # the user decides (a mapping names one of the two), the other is left as unpaired, by name
    with pytest.raises(TransferError) as err:
        assign_weight(a, b, mapping={"branch": "left"})
    assert "unpaired raw right (Linear, 2 tensors)" in str(err.value)
    report = assign_weight(a, b, mapping={"branch": "left"}, strict=False)
    assert report.missing == ["right.weight", "right.bias"]
    # a layer that never runs on the example: named, and left unpaired
    c, d = renamed_with_unused(src), renamed_with_unused(dst)
    with pytest.raises(TransferError) as err:
        assign_weight(c, d, example_inputs=x)
    msg = str(err.value)
    side = "base" if src == "torch" else "raw"
    assert f"{side} layers that never ran on the example input (not paired by execution): aux" in msg
    assert "unpaired " + side + " aux (Linear, 2 tensors)" in msg
    # a shared layer on both sides, under other names: paired by its first call, and reported
    report, *_ = assert_transfer_equivalent(lambda fw: branches(fw, True, "branch" if fw == src else "twice"),
                                            src, dst, [(3, 4)], example_inputs=x)
    assert report.mapping.layer_paths["branch"] == "twice.0"
    assert "base layers that ran more than once (paired by their first call): branch (2 calls)" in report.notes
    assert "raw layers that ran more than once (paired by their first call): twice.0 (2 calls)" in report.notes


def renamed_with_unused(fw):
    """torch: inp, aux (never runs), out; paddle: first, last."""
    lib, Base = (nn, nn.Module) if fw == "torch" else (pnn, pnn.Layer)

    class WithUnused(Base):
        def __init__(self):
            super().__init__()
            if fw == "torch":
                self.inp, self.aux, self.out = lib.Linear(4, 8), lib.Linear(8, 8), lib.Linear(8, 2)
            else:
                self.first, self.last = lib.Linear(4, 8), lib.Linear(8, 2)

        def forward(self, x):
            return self.out(self.inp(x)) if fw == "torch" else self.last(self.first(x))

    return WithUnused()


# -- the mapping as data -----------------------------------------------------------------------------
@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_a_mapping_round_trips_through_a_file_and_drives_a_transfer_both_ways(src, dst, tmp_path):
    x = inputs_for([CNN_INPUT])[0]
    found = pair_layers(cnn(src), cnn(dst), example_inputs=x)
    path = found.save(tmp_path / "cnn.json")
    data = json.loads(path.read_text())
    assert data["format"] == "padiff-lite mapping 1" and data["base"]["framework"] == src
    assert load(path).to_dict() == found.to_dict()
    # fresh models of the same architecture, no example input: the file pairs them, in either direction
    for a_fw, b_fw in ((src, dst), (dst, src)):
        report, *_ = assert_transfer_equivalent(cnn, a_fw, b_fw, [CNN_INPUT], warm=True, mapping=path)
        assert {e.how for e in report.mapping.layers} == {"mapping"}


def test_a_mapping_naming_paths_the_model_lacks_is_refused_naming_them():
    a, b = cnn("torch"), cnn("paddle")
    bad = {"layer9.0.conv1": "stages.0.blocks.0.conv_a", "fc": "tail"}
    err = assert_refused(lambda: assign_weight(a, b, mapping=bad), MappingError, b)
    msg = str(err)
    assert "base layer layer9.0.conv1 (not in torch:TorchCNN)" in msg and "raw layer tail (not in paddle:PaddleCNN)" in msg
    assert "padiff-lite pair" in msg


def test_a_mapping_that_contradicts_names_is_refused():
    a, b = branches("torch", shared=False), branches("paddle", shared=False)
    with pytest.raises(MappingError) as err:
        assign_weight(a, b, mapping={"left": "right"})
    assert "base left is already paired by name with raw left (names go first)" in str(err.value)


def test_a_mapping_whose_tensors_differ_from_the_plan_is_refused():
    found = pair_layers(branches("torch", shared=False), branches("paddle", shared=False))
    assert [e.how for e in found.layers] == ["name", "name", "name"]
    data = found.to_dict()
    assert data["tensors"][0] == {"base": "stem.weight", "raw": "stem.weight", "transform": "transpose"}
    data["tensors"][0]["transform"] = "copy"  # edited by hand: paddle's Linear weight is [in, out]
    b = branches("paddle", shared=False)
    err = assert_refused(lambda: assign_weight(branches("torch", shared=False), b, mapping=data), TransferError, b)
    assert "the mapping says stem.weight -> stem.weight but the plan does not" in str(err)


def test_a_failing_example_input_is_a_pairing_error():
    from padiff_lite import PairingError

    b = cnn("paddle")
    snap = snapshot(b)
    with pytest.raises(PairingError) as err:
        assign_weight(cnn("torch"), b, example_inputs=inputs_for([(2, 5, 8, 8)])[0])  # 5 channels, not 3
    assert "cannot pair by execution: the torch model TorchCNN failed on the example input" in str(err.value)
    assert_unchanged(b, snap)


def test_malformed_mapping_files_are_refused_with_the_fix(tmp_path):
    a, b = cnn("torch"), cnn("paddle")
    with pytest.raises(MappingError, match="does not exist; write one with `padiff-lite pair`"):
        assign_weight(a, b, mapping=tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MappingError, match="is not readable JSON"):
        assign_weight(a, b, mapping=str(tmp_path / "bad.json"))
    with pytest.raises(MappingError, match=r"format 'other 2' is not 'padiff-lite mapping 1'"):
        assign_weight(a, b, mapping={"format": "other 2", "layers": []})
    with pytest.raises(MappingError, match=r"layers\[0\] = \{'base': 'fc'\}: expected the keys base, raw"):
        assign_weight(a, b, mapping={"layers": [{"base": "fc"}]})
    with pytest.raises(TypeError, match="takes mapping= or example_inputs=, not both"):
        assign_weight(a, b, mapping={}, example_inputs=inputs_for([CNN_INPUT])[0])


@pytest.mark.parametrize("direction", ["torch->paddle", "paddle->torch"])
def test_a_settings_mismatch_found_by_execution_is_named_with_both_paths(direction):
    """Layers that execution pairs but a rule refuses for a setting weights cannot carry (BatchNorm eps) are reported as
    that mismatch, naming both paths, not as two unpaired layers."""
    import paddle
    import torch

    t = torch.nn.Sequential()
    t.add_module("features", torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4, eps=1e-3)))

    class Flat(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.c, self.bn = paddle.nn.Conv2D(3, 4, 1), paddle.nn.BatchNorm2D(4)

        def forward(self, x):
            return self.bn(self.c(x))

    p = Flat()
    base, raw = (t, p) if direction == "torch->paddle" else (p, t)
    with pytest.raises(TransferError) as err:
        assign_weight(base, raw, example_inputs=np.ones((1, 3, 2, 2), "float32"))
    msg = str(err.value)
    pair = "features.1 (BatchNorm2d) -> bn (BatchNorm2D)" if direction == "torch->paddle" else \
        "bn (BatchNorm2D) -> features.1 (BatchNorm2d)"
    assert f"{pair}: BatchNorm2d.eps vs BatchNorm2D._epsilon differs: torch 0.001, paddle 1e-05" in msg
    assert "unpaired" not in msg
