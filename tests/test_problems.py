"""Problems are records (where, what, fix) that errors carry; a message, the Python API's or the command line's, is
a rendering of them, never text rewritten."""
from __future__ import annotations

import pickle

import paddle
import pytest
import torch
from torch import nn

from helpers import assert_unchanged, snapshot
from padiff_lite import TransferError, assign_weight
from padiff_lite.problems import Problem


class TNet(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(4, width)


class PNet(paddle.nn.Layer):
    def __init__(self, width):
        super().__init__()
        self.fc = paddle.nn.Linear(4, width)


def test_a_refusal_carries_records_and_renders_them_for_the_api_and_the_command_line():
    torch.manual_seed(0)
    a, b = TNet(3), PNet(5)
    snap = snapshot(b)
    with pytest.raises(TransferError) as e:
        assign_weight(a, b)
    assert_unchanged(b, snap)
    shape = [p for p in e.value.problems if isinstance(p, Problem) and p.what.startswith("shape mismatch")]
    assert len(shape) == 2  # weight and bias
    p = shape[0]
    assert p.where == "fc (Linear) -> fc (Linear)"
    assert p.what == "shape mismatch: base fc.weight [3, 4] (transpose) vs raw fc.weight [4, 5]"
    assert p.fix == "build both models with the same sizes, or pair these layers differently with set_layer_map"
    assert str(p) == f"{p.where}: {p.what}; {p.fix}" and str(p) in str(e.value)
    cli = e.value.render(cli=True)
    assert "build both models with the same sizes" in cli and "set_layer_map" not in cli
    assert e.value.render() == str(e.value)


def test_a_problem_survives_pickling_with_its_fields():
    p = Problem("a (Linear) -> b (Linear)", "shape mismatch", "fix it", cli_fix="--fix-it")
    q = pickle.loads(pickle.dumps(p))
    assert (q.where, q.what, q.fix, q.cli_fix, str(q)) == (p.where, p.what, p.fix, p.cli_fix, str(p))
    assert q.render(cli=True) == "a (Linear) -> b (Linear): shape mismatch; --fix-it"
