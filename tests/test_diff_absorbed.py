"""auto_diff: a layer whose outputs differ while the layer enclosing it agrees returns another form of the same result
(a router's probabilities against a Linear's logits, the enclosing MoE block applying the softmax on one side only):
noted on the layer, not the first divergence; a real difference inside it (a spoiled weight) is still found, the
enclosing layer then differing too. Hand-made torch/paddle blocks, both directions."""
import numpy as np
import paddle
import pytest
import torch

from padiff_lite import assign_weight, auto_diff


class TorchRouter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(4, 8) / 3)

    def forward(self, x):
        return torch.softmax(x @ self.weight.T, -1)  # probabilities


class TorchBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gate, self.proj = TorchRouter(), torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.gate(x) * self.proj(x)


class PaddleBlock(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.gate, self.proj = paddle.nn.Linear(8, 4, bias_attr=False), paddle.nn.Linear(8, 4)  # gate: logits

    def forward(self, x):
        return paddle.nn.functional.softmax(self.gate(x), -1) * self.proj(x)


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.block, self.head = TorchBlock(), torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.block(x))


class PaddleNet(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.block, self.head = PaddleBlock(), paddle.nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.block(x))


X = np.random.default_rng(0).standard_normal((5, 8)).astype("float32")


def _pair(direction):
    torch.manual_seed(0)
    paddle.seed(1)
    t, p = TorchNet(), PaddleNet()
    return (t, p) if direction == "torch->paddle" else (p, t)


@pytest.mark.parametrize("direction", ["torch->paddle", "paddle->torch"])
def test_a_difference_the_enclosing_layer_absorbs_is_noted_not_a_divergence(direction):
    base, raw = _pair(direction)
    result = auto_diff(base, raw, X)
    assert result.ok and result.first_diff is None and result.max_abs_diff < 1e-6
    gate = next(ld for ld in result.layers if ld.base_path == "block.gate")
    assert not gate.ok and gate.max_abs_diff > 0.05  # probabilities against logits
    assert "differs, but the enclosing block -> block agrees" in gate.note
    assert any(n.startswith("1 layer(s) differ while the layer enclosing them agrees") and n.endswith(": block.gate")
               for n in result.notes), result.notes
    assert all(ld.ok for ld in result.layers if ld.base_path != "block.gate")


def _spoil(raw, owner):
    if isinstance(raw, torch.nn.Module):
        with torch.no_grad():
            owner.weight[1] *= 1.5  # torch: a row is one output feature
    else:
        w = owner.weight.numpy().copy()
        w[:, 1] *= 1.5  # paddle Linear [in, out]
        owner.weight.set_value(w)


@pytest.mark.parametrize("direction", ["torch->paddle", "paddle->torch"])
@pytest.mark.parametrize("spoiled", ["block.gate", "head"])
def test_a_spoiled_weight_is_still_the_first_divergence(direction, spoiled):
    base, raw = _pair(direction)
    assign_weight(base, raw)
    _spoil(raw, raw.block.gate if spoiled == "block.gate" else raw.head)
    result = auto_diff(base, raw, X, auto_init=False)
    f = result.first_diff
    assert not result.ok and f is not None and f.base_path == spoiled and f.inputs_agree is True
    assert next(ld for ld in result.layers if ld.base_path == "block").ok is (spoiled == "head")
    assert [w.base_param for w in result.weight_diffs] == [f"{spoiled}.weight"]


@pytest.mark.parametrize("direction", ["torch->paddle", "paddle->torch"])
def test_a_spoiled_sibling_confirms_the_other_form_too(direction):
    """What the rule cannot tell: a spoiled weight beside the layer returning another form makes the enclosing
    layer differ, which confirms both; the earlier one (the router) is named first, ``weight_diffs`` names the
    spoiled weight."""
    base, raw = _pair(direction)
    assign_weight(base, raw)
    _spoil(raw, raw.block.proj)
    result = auto_diff(base, raw, X, auto_init=False)
    assert result.first_diff.base_path == "block.gate"
    assert not next(ld for ld in result.layers if ld.base_path == "block.proj").ok
    assert [w.base_param for w in result.weight_diffs] == ["block.proj.weight"]


class TorchDiluted(torch.nn.Module):
    """The enclosing layer scales its child's contribution down, so a small difference in the child stays inside the
    enclosing layer's tolerance."""

    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Linear(8, 8)

    def forward(self, x):
        return x + 1e-4 * self.inner(x)


class PaddleDiluted(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.inner = paddle.nn.Linear(8, 8)

    def forward(self, x):
        return x + 1e-4 * self.inner(x)


@pytest.mark.parametrize("direction", ["torch->paddle", "paddle->torch"])
def test_a_small_difference_inside_an_agreeing_layer_is_still_a_divergence(direction):
    torch.manual_seed(0)
    paddle.seed(1)
    t, p = TorchDiluted(), PaddleDiluted()
    base, raw = (t, p) if direction == "torch->paddle" else (p, t)
    assign_weight(base, raw)
    w = raw.inner.weight
    if isinstance(w, torch.Tensor):
        with torch.no_grad():
            w.mul_(1.001)  # a weight spoiled by 1e-3: the child differs by ~1e-3 of its scale, its parent agrees
    else:
        w.set_value(w.numpy() * 1.001)
    result = auto_diff(base, raw, X, auto_init=False)
    root = next(ld for ld in result.layers if ld.base_path == "")
    assert root.ok  # the enclosing layer hides it
    assert not result.ok and result.first_diff is not None and result.first_diff.base_path == "inner", str(result)
    assert 1e-4 < result.first_diff.max_rel_diff < 1e-2
    assert "another form" not in result.first_diff.note
