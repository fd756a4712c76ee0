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


def test_pairing_problems_are_records_too():
    from padiff_lite import AmbiguousPairingError, MappingError
    from test_exec_pairing import branches
    from helpers import inputs_for

    with pytest.raises(MappingError) as e:
        assign_weight(branches("torch", shared=False), branches("paddle", shared=False), mapping={"left": "right"})
    p = e.value.problems[0]
    assert (p.where, p.fix) == ("base left", "remove this entry, or rename the layers so that their names differ")
    assert str(p) == "base left is already paired by name with raw left (names go first); " + p.fix
    assert str(p) in str(e.value)
    with pytest.raises(AmbiguousPairingError) as e:
        assign_weight(branches("torch", shared=True), branches("paddle", shared=False),
                      example_inputs=inputs_for([(3, 4)])[0])
    p = e.value.problems[0]
    assert p.where.startswith("base branch (Linear: weight") and p.what.startswith("fits raw left (Linear")
    assert " and raw right (Linear" in p.what  # each candidate named once with its side
