"""Building blocks for the layer tests: a Case is one layer configuration inside a small model.

``Case.build(framework)`` returns the model for "torch" or "paddle"; ``pair`` names the torch and
paddle classes whose rule the case exercises; ``run_case`` checks outputs and that the rule ran.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest

from helpers import DIRECTION_IDS, DIRECTIONS, assert_transfer_equivalent


def nn(fw):
    if fw == "torch":
        import torch

        return torch.nn
    import paddle

    return paddle.nn


def net(fw, forward, **makers):
    """A model holding ``makers[name](fw)`` as attributes (in that order) and calling ``forward(self, *xs)``."""
    base = nn(fw).Module if fw == "torch" else nn(fw).Layer

    class Net(base):
        def __init__(self):
            super().__init__()
            for name, make in makers.items():
                setattr(self, name, make(fw))

        def forward(self, *xs):
            return forward(self, *xs)

    return Net().eval()


def between(layer, d_in, d_out=None, d_mid=None):
    """pre Linear(d_in, d_mid) -> layer -> post Linear(d_mid, d_out): the layer paired inside a model."""
    d_mid = d_mid or d_in

    def build(fw):
        items = [nn(fw).Linear(d_in, d_mid), layer(fw)]
        if d_out:
            items.append(nn(fw).Linear(d_mid, d_out))
        return nn(fw).Sequential(*items).eval()

    return build


def bias_kw(fw, bias: bool) -> dict:
    """torch bias=False <-> paddle bias_attr=False."""
    if fw == "torch":
        return {"bias": bias}
    return {} if bias else {"bias_attr": False}


@dataclass
class Case:
    id: str
    build: Callable
    shapes: list
    pair: tuple  # (torch class name, paddle class name)
    atol: float = 1e-5
    warm: bool = False
    inputs: Callable | None = None  # () -> list of numpy arrays, when random floats do not fit
    extra: dict = field(default_factory=dict)


def cases_param(cases):
    """Parametrise a test over ``cases`` and both directions (the coverage test checks for this)."""
    ids = [c.id for c in cases]

    def deco(func):
        func = pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)(func)
        return pytest.mark.parametrize("case", cases, ids=ids)(func)

    return deco


def run_case(case: Case, src: str, dst: str):
    inputs = case.inputs() if case.inputs else None
    report, a, b = assert_transfer_equivalent(case.build, src, dst, case.shapes, atol=case.atol, warm=case.warm,
                                              inputs=inputs)
    names = dict(zip(("torch", "paddle"), case.pair))
    rule = f"mapping {src}.{names[src]} -> {dst}.{names[dst]}"
    assert rule in report.rules_used, f"{rule} was not used: {report.rules_used}"
    assert not report.missing and not report.unexpected
    return report, a, b


def ints(shape, high, seed=0):
    return lambda: [np.random.default_rng(seed).integers(0, high, shape).astype("int64")]


def randomize(fw, layer, low=0.1, high=0.9):
    """Fill every parameter of ``layer`` with uniform random values (for layers initialised to constants)."""
    if fw == "torch":
        import torch

        with torch.no_grad():
            for p in layer.parameters():
                p.uniform_(low, high)
    else:
        import paddle

        for p in layer.parameters():
            p.set_value(paddle.uniform(p.shape, p.dtype, low, high))
    return layer


def conv_between(layer, d, c, c_in=3):
    """pre Conv(c_in -> c, 1x1) -> layer -> post Conv(c -> 2, 1x1), in ``d`` spatial dimensions."""

    def build(fw):
        conv = getattr(nn(fw), f"Conv{d}d" if fw == "torch" else f"Conv{d}D")
        return nn(fw).Sequential(conv(c_in, c, 1), layer(fw), conv(c, 2, 1)).eval()

    return build


SPATIAL = {1: (9,), 2: (6, 6), 3: (4, 4, 4)}
