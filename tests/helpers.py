"""The one equivalence helper every transfer test uses.

build pair -> (optionally warm up BatchNorm) -> check outputs differ -> transfer -> compare outputs.
"""
from __future__ import annotations

import numpy as np
import paddle
import torch

from padiff_lite import assign_weight
from padiff_lite.models import run, warm_up

DIRECTIONS = [("torch", "paddle"), ("paddle", "torch")]
DIRECTION_IDS = ["torch->paddle", "paddle->torch"]
NN = {"torch": torch.nn, "paddle": paddle.nn}


def Base(fw):
    """The model base class of framework ``fw``: torch.nn.Module or paddle.nn.Layer."""
    return torch.nn.Module if fw == "torch" else paddle.nn.Layer


def max_abs_diff(a_list, b_list) -> float:
    assert len(a_list) == len(b_list), f"output structures differ: {len(a_list)} vs {len(b_list)} arrays"
    worst = 0.0
    for a, b in zip(a_list, b_list):
        assert a.shape == b.shape, f"output shapes differ: {a.shape} vs {b.shape}"
        worst = max(worst, float(np.abs(a.astype("float64") - b.astype("float64")).max()) if a.size else 0.0)
    return worst


def inputs_for(shapes, seed=0, dtype="float32"):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def assert_transfer_equivalent(build, src, dst, input_shapes, atol=1e-5, warm=False, inputs=None,
                               must_differ=True, **transfer_kw):
    """Build ``build(src)`` and ``build(dst)``, transfer src -> dst, assert outputs agree within atol.

    ``build`` takes a framework name and returns a model. Returns (report, src_model, dst_model).
    """
    a, b = build(src), build(dst)
    if warm:
        warm_up(a, src, input_shapes[0])
    a.eval()
    b.eval()
    xs = inputs if inputs is not None else inputs_for(input_shapes)
    if must_differ:
        before = max_abs_diff(run(a, src, xs), run(b, dst, xs))
        assert before > atol, f"outputs already agree before the transfer ({before}); the test proves nothing"
    report = assign_weight(a, b, **transfer_kw)
    after = max_abs_diff(run(a, src, xs), run(b, dst, xs))
    assert after <= atol, f"{src} -> {dst}: max abs diff {after:.3g} > {atol:g}\n{report}"
    return report, a, b


def snapshot(model) -> dict:
    """Every tensor of a torch or paddle model as numpy, by name (for 'nothing was written' checks)."""
    return {k: np.array(v.detach().cpu().numpy() if hasattr(v, "cpu") else v.numpy(), copy=True)
            for k, v in model.state_dict().items()}


def assert_unchanged(model, snap):
    now = snapshot(model)
    assert now.keys() == snap.keys()
    for k in snap:
        assert np.array_equal(now[k], snap[k], equal_nan=True), f"{k} was changed"


# -- small models shared by several test files --------------------------------------------------------------
class Head(paddle.nn.Layer):
    """Paddle head with a torch-layout weight [out, in] (no registered rule: needs a special init)."""

    def __init__(self, i, o):
        super().__init__()
        self.weight = self.create_parameter([o, i])

    def forward(self, x):
        return paddle.matmul(x, self.weight, transpose_y=True)


def headed(fw, tie=False):
    """embed [11, 6] -> mid Linear(6, 6) -> two heads to 11 (torch Linear, paddle ``Head``); ``tie`` ties the
    torch head to the embedding."""

    class Headed(Base(fw)):
        def __init__(self):
            super().__init__()
            nn = NN[fw]
            self.embed = nn.Embedding(11, 6)
            self.mid = nn.Linear(6, 6)
            self.head = nn.Linear(6, 11, bias=False) if fw == "torch" else Head(6, 11)
            self.head2 = nn.Linear(6, 11, bias=False) if fw == "torch" else Head(6, 11)
            if tie:
                self.head.weight = self.embed.weight

        def forward(self, ids):
            h = self.mid(self.embed(ids))
            return self.head(h) + self.head2(h)

    return Headed()
