"""Issue 15: outputs of another form are aligned, never blamed; unalignable calls are "not comparable";
memory held by a comparison is bounded by about one layer's outputs when the runs are interleaved.

Small real torch/paddle models that mimic what HF transformers and PaddleFormers do differently
(rotary tables broadcast or not, routers returning more on one side, ModelOutput against tuple).
"""
import dataclasses

import numpy as np
import paddle
import pytest
import torch

from helpers import DIRECTION_IDS, DIRECTIONS, inputs_for
from padiff_lite import DiffError, assign_weight, auto_diff, models
from padiff_lite.verify import compare_arrays
from padiff_lite.verify import numerics

X = inputs_for([(3, 5, 8)])[0]  # [batch, seq, hidden]


def _ops(framework):
    return torch if framework == "torch" else paddle


class Rotary:
    """Returns cos/sin tables [1, S, D] (torch style) or already broadcast to [B, S, D] (paddle style)."""

    @staticmethod
    def make(framework, broadcast, shift=0.0):
        fw = _ops(framework)

        class RotaryEmb(models._base(framework)):
            def forward(self, x):
                pos = fw.arange(x.shape[1], dtype="float32" if framework == "paddle" else torch.float32)
                table = (pos[:, None] * 0.1 + shift) * fw.ones([1, x.shape[-1]])
                table = table[None]  # [1, S, D]
                if broadcast:
                    table = table.expand([x.shape[0], -1, -1]) if framework == "paddle" else table.expand(
                        x.shape[0], -1, -1)
                return fw.cos(table), fw.sin(table)

        return RotaryEmb()


class Router:
    """torch style returns (logits, scores, top indices); paddle style (scores, top indices)."""

    @staticmethod
    def make(framework, full):
        nn, fw = models._nn(framework), _ops(framework)

        class TopKRouter(models._base(framework)):
            def __init__(self):
                super().__init__()
                self.gate = nn.Linear(8, 4)

            def forward(self, x):
                logits = self.gate(x.reshape([-1, 8]))
                scores = fw.nn.functional.softmax(logits, -1) if framework == "torch" else \
                    paddle.nn.functional.softmax(logits, -1)
                idx = fw.topk(scores, 2, -1)[1]
                return (logits, scores[:, :2] * 1.0, idx) if full else (scores, idx)

        return TopKRouter()


@dataclasses.dataclass
class LMOut:
    logits: object
    hidden: object = None


@dataclasses.dataclass
class LMOUT:  # the same fields, the class name differs only in case
    logits: object
    hidden: object = None


def lm(framework, style, act_scale=1.0):
    """A small "language model": rotary tables, a block, a router (not comparable), a head.

    style "hf": LMOut dataclass, rotary [1, S, D], full router; "tuple": (logits,) with broadcast rotary and
    the short router; "case": LMOUT, like "hf" in every other way.
    """
    nn = models._nn(framework)

    class LM(models._base(framework)):
        def __init__(self):
            super().__init__()
            self.rotary_emb = Rotary.make(framework, broadcast=style == "tuple")
            self.proj = nn.Linear(8, 8)
            self.router = Router.make(framework, full=style != "tuple")
            self.act = nn.Tanh()
            self.head = nn.Linear(8, 6)

        def forward(self, x):
            cos, sin = self.rotary_emb(x)
            h = self.proj(x * cos + x * sin)
            self.router(h)
            h = self.act(h * act_scale)
            logits = self.head(h)
            if style == "tuple":
                return (logits,)
            return (LMOut if style == "hf" else LMOUT)(logits, h)

    return LM().eval()


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_a_correct_port_of_another_output_form_is_ok(src, dst):
    result = auto_diff(lm(src, "hf"), lm(dst, "tuple"), X)
    assert result.ok, str(result)
    rot = next(ld for ld in result.layers if ld.base_path == "rotary_emb")
    assert rot.ok and "compared after broadcasting" in rot.note and rot.total == 2 * 3 * 5 * 8
    assert [nc.base_path for nc in result.not_comparable] == ["router"]
    assert "no telling which tensor matches which" in result.not_comparable[0].reason
    final = next(n for n in result.notes if n.startswith("final outputs of a different form"))
    assert "compared out.logits with out[0]" in final and "only the base side returns out.hidden" in final
    assert result.total == 3 * 5 * 6 and "1 calls not comparable" in str(result)
    assert "not comparable: base router (TopKRouter) returns tuple(Tensor[15, 4], Tensor[15, 2], Tensor[15, 2])" \
        in str(result)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_class_names_differing_in_case_are_aligned_by_field(src, dst):
    result = auto_diff(lm(src, "hf"), lm(dst, "case"), X)
    assert result.ok and result.total == 3 * 5 * 6 + 3 * 5 * 8  # logits and hidden, by name
    assert any("the class names differ only in case" in n for n in result.notes)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_first_diff_is_the_first_comparable_divergence(src, dst):
    """A wrong layer after the router: the router (not comparable) is never named, the layer is."""
    result = auto_diff(lm(src, "hf"), lm(dst, "tuple", act_scale=1.5), X)
    f = result.first_diff
    assert (f.base_path, f.raw_path) == ("act", "act") and f.inputs_agree is False  # scaled before the act
    assert all(ld.ok for ld in result.layers if ld.order < f.order)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_broadcast_tables_that_differ_are_found(src, dst):
    a, b = lm(src, "hf"), lm(dst, "tuple")
    b.rotary_emb = Rotary.make(dst, broadcast=True, shift=0.01)
    result = auto_diff(a, b, X)
    f = result.first_diff
    assert f.base_path == "rotary_emb" and "broadcasting" in f.note and f.mismatched > 0


def test_compare_arrays_in_blocks_equals_one_pass(monkeypatch):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 33)).astype("float32")
    b = a + rng.standard_normal(a.shape).astype("float32") * 1e-4
    b[50, 3] = np.nan
    a[60, 1] = b[60, 1] = np.inf
    whole = compare_arrays(a, b, 1e-5, 1e-5)
    finite = compare_arrays(a[:40], b[:40], 1e-5, 1e-5)
    monkeypatch.setattr(numerics, "_CHUNK", 100)  # 3 rows per block
    assert compare_arrays(a, b, 1e-5, 1e-5) == whole
    assert compare_arrays(a[:40], b[:40], 1e-5, 1e-5) == finite and finite[2] > 0 and np.isfinite(finite[0])


def test_the_finite_fast_path_gives_the_general_results():
    rng = np.random.default_rng(1)
    for dtype in ("float32", "float64", "int64", "float16"):
        a = (rng.standard_normal((50, 7)) * 3).astype(dtype)
        b = (a + rng.standard_normal(a.shape) * 1e-3).astype(dtype)
        b[3] = a[3]
        a[4, :] = b[4, :] = 0  # zeros on both sides: relative difference 0
        scale = float(np.abs(np.concatenate([a, b]).astype("float64")).max())
        for atol, rtol in ((1e-5, 1e-5), (1e-2, 0.0), (0.0, 1e-1)):
            assert numerics.compare_finite(a, b, atol, rtol, scale) == \
                numerics.compare_general(a, b, atol, rtol, scale)


def tall(framework, blocks=12, fail_at=None):
    nn = models._nn(framework)

    class Fail(models._base(framework)):
        def forward(self, x):
            raise RuntimeError("raw broke here")

    layers = []
    for i in range(blocks):
        layers += [nn.Linear(16, 16), nn.ReLU()]
        if i == fail_at:
            layers.append(Fail())
    return nn.Sequential(*layers).eval()


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_interleaved_runs_hold_about_one_layer(src, dst):
    x = inputs_for([(64, 16)])[0]
    one = 64 * 16 * 4
    inter = auto_diff(tall(src), tall(dst), x)
    seq = auto_diff(tall(src), tall(dst), x, interleave=False)
    assert inter.ok and seq.ok and inter.interleaved and not seq.interleaved
    assert inter.peak_held_bytes <= 2 * one
    assert seq.peak_held_bytes == (12 * 2 + 1) * one  # every hooked output of the base, held at once
    assert [ld.base_path for ld in inter.layers] == [ld.base_path for ld in seq.layers]


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_a_raw_failure_while_base_waits_is_reported_not_hung(src, dst):
    x = inputs_for([(4, 16)])[0]
    a, b = tall(src), tall(dst, fail_at=5)
    assign_weight(a, tall(dst))  # same weights in a; b fails in its own extra layer
    with pytest.raises(DiffError, match=f"the {dst} model Sequential failed on the given inputs: RuntimeError: raw "
                                        "broke here"):
        auto_diff(a, b, x, auto_init=False)


def twice(framework, calls):
    """``fc`` called ``calls`` times: extra calls on one side are noted, the shared ones compared."""
    nn = models._nn(framework)

    class Twice(models._base(framework)):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 16)

        def forward(self, x):
            for _ in range(calls):
                x = self.fc(x)
            return x[:, :4] * 0.0  # the same final output whatever the number of calls

    return Twice().eval()


@pytest.mark.parametrize("interleave", [True, False], ids=["interleaved", "sequential"])
@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_calls_only_one_side_makes_are_noted_not_compared(src, dst, interleave):
    x = inputs_for([(4, 16)])[0]
    for base_calls, raw_calls, side in ((3, 1, "base"), (1, 3, "raw")):
        result = auto_diff(twice(src, base_calls), twice(dst, raw_calls), x, interleave=interleave)
        assert [(ld.base_path, ld.call) for ld in result.layers] == [("fc", 0), ("", 0)]
        assert result.ok and any(f"fc -> fc: called more often on the {side} side" in n for n in result.notes)
