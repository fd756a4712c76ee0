"""The front half every entry point starts from (padiff_lite.prepare): the models are paired once per call, and a
registry of one's own (pool=) is used everywhere, pairing by execution and checkpoint conversion included."""
from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch
from torch import nn

from ckpt_helpers import load, load_into, save, state_as_torch
from helpers import inputs_for
from padiff_lite import TransferError, assign_weight, auto_diff, pair_layers, plan_transfer
from padiff_lite import pairing as pairing_module
from padiff_lite.checkpoint import convert_checkpoint
from padiff_lite.models import run
from fixtures.bert import token_ids
from padiff_lite.models_bert import bert_pretraining, register_rules
from padiff_lite.special_init import InitPool, Map, init_pool
from test_exec_pairing import CNN_INPUT, cnn


@pytest.fixture
def pairings(monkeypatch):
    """How many times the models are paired (Pairing.run) during a call."""
    calls = []
    run_ = pairing_module.Pairing.run

    def counted(self):
        calls.append(self)
        return run_(self)

    monkeypatch.setattr(pairing_module.Pairing, "run", counted)
    return calls


X = inputs_for([CNN_INPUT])[0]


@pytest.mark.parametrize("call", [
    lambda: auto_diff(cnn("torch"), cnn("paddle"), X),  # names leave layers open: paired by execution too
    lambda: auto_diff(cnn("torch"), cnn("paddle"), X, diff_phase="both"),
    lambda: auto_diff(cnn("torch"), cnn("paddle"), X, auto_init=False),  # differs: weights looked up by the plan
    lambda: assign_weight(cnn("torch"), cnn("paddle"), example_inputs=X),
    lambda: pair_layers(cnn("torch"), cnn("paddle"), example_inputs=X),
    lambda: plan_transfer(cnn("torch"), cnn("paddle")),
], ids=["auto_diff", "auto_diff-both", "auto_diff-differs", "assign_weight", "pair_layers", "plan_transfer"])
def test_each_entry_point_pairs_the_models_once(pairings, call):
    call()
    assert len(pairings) == 1


# -- pool= in pairing by execution ---------------------------------------------------------------------------------
class TScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 4))

    def forward(self, x):
        return x @ self.w.t()


class TNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = TScale()
        self.extra = nn.Linear(3, 2)

    def forward(self, x):
        return self.extra(self.a(x))


class PScale(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.w = self.create_parameter([4, 3])

    def forward(self, x):
        return x @ self.w


class PNet(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.lin = paddle.nn.Linear(3, 2)  # defined first, runs last: names and positions do not pair them
        self.b = PScale()

    def forward(self, x):
        return self.lin(self.b(x))


def _scale_pool():
    pool = InitPool()
    pool.restore(init_pool.saved())
    pool.register_maps("torch", "TScale", "paddle", "PScale")(lambda m, l: [Map("w", "w", "transpose")])
    return pool


def test_pairing_by_execution_uses_the_pool_given():
    torch.manual_seed(0)
    a, b = TNet(), PNet()
    x = np.random.default_rng(0).standard_normal((2, 4)).astype("float32")
    with pytest.raises(TransferError, match="unpaired"):
        assign_weight(a, b, example_inputs=x)  # the global registry does not join TScale and PScale
    before = np.abs(run(a, "torch", [x])[0] - run(b, "paddle", [x])[0]).max()
    report = assign_weight(a, b, example_inputs=x, pool=_scale_pool())
    assert {(p.base_path, p.raw_path) for p in report.pairs} >= {("a", "b"), ("extra", "lin")}
    after = np.abs(run(a, "torch", [x])[0] - run(b, "paddle", [x])[0]).max()
    assert before > 1e-2 and after < 1e-6
    np.testing.assert_array_equal(b.b.w.numpy(), a.a.w.detach().numpy().T)
    assert auto_diff(a, b, x, pool=_scale_pool(), auto_init=False).ok


# -- pool= in checkpoint conversion ---------------------------------------------------------------------------------
def test_checkpoint_conversion_uses_the_pool_given(tmp_path):
    pool = InitPool()
    pool.restore(init_pool.saved())
    register_rules(pool)  # the MLM head's rule, in this registry only
    torch.manual_seed(0)
    a = bert_pretraining("torch")
    src = tmp_path / "bert.safetensors"
    save(state_as_torch(a, "torch"), src)
    with pytest.raises(TransferError, match="cls"):
        convert_checkpoint(src, tmp_path / "refused.pdparams", bert_pretraining("torch"), bert_pretraining("paddle"))
    assert not (tmp_path / "refused.pdparams").exists()
    dst = tmp_path / "bert.pdparams"
    convert_checkpoint(src, dst, bert_pretraining("torch"), bert_pretraining("paddle"), pool=pool)
    b = bert_pretraining("paddle")
    load_into(b, "paddle", load(dst))
    ids = token_ids()
    np.testing.assert_allclose(run(b, "paddle", [ids])[0], run(a, "torch", [ids])[0], atol=5e-5)


# -- the hint context: one value ------------------------------------------------------------------------------------
def test_the_context_says_what_paired_the_open_layers_and_the_refusal_offers_what_fits_it(tmp_path):
    from padiff_lite.mapping import Paired
    from padiff_lite.prepare import prepare

    a, b = cnn("torch"), cnn("paddle")
    assert prepare(a, b).context.paired is Paired.NAMES
    found = prepare(a, b, inputs=X)
    assert found.context.paired is Paired.EXECUTION and found.found.layers
    given = prepare(a, b, mapping=found.found)
    assert given.context.paired is Paired.MAPPING and given.found.layer_paths == found.found.layer_paths
    assert prepare(a, b, runnable=False).context.paired is Paired.NAMES_ONLY
    with pytest.raises(TransferError) as e:
        assign_weight(a, b)  # names leave layers open on both sides: example inputs could pair them
    assert "pass example_inputs=" in str(e.value)
    src = tmp_path / "cnn.safetensors"
    save(state_as_torch(a, "torch"), src)
    with pytest.raises(TransferError) as e:
        convert_checkpoint(src, tmp_path / "out.pdparams", cnn("torch"), cnn("paddle"))  # nothing can run here
    assert "structure differs" in str(e.value) and "example_inputs" not in str(e.value)


def test_the_default_registry_is_chosen_in_one_place():
    """Only special_init (its registry() and the plugins that register into it) names the global init_pool: every
    other module takes pool= and asks registry(pool), so a registry of one's own reaches every stage."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parent.parent / "padiff_lite"
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.parent.name == "special_init":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.ImportFrom) else
                     [node.id] if isinstance(node, ast.Name) else [])
            if "init_pool" in names:
                found.append(f"{path.relative_to(package)}:{node.lineno}")
    assert not found, f"the global registry named outside special_init (use special_init.registry(pool)): {found}"
