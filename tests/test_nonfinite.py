"""NaN / Inf in the source: copied as they are and counted in the report, or refused before anything is
written with check_finite=True (special-init layers included)."""
import numpy as np
import pytest
import torch

from helpers import DIRECTION_IDS, DIRECTIONS, NN, assert_refused, assert_unchanged, headed, snapshot
from padiff_lite import TransferError, add_special_init, assign_weight


def poisoned(fw):
    m = NN[fw].Sequential(NN[fw].Linear(3, 4), NN[fw].LayerNorm(4))
    w = np.random.default_rng(1).standard_normal((4, 3) if fw == "torch" else (3, 4)).astype("float32")
    w[0, 0], w[1, 2], w[2, 1] = np.nan, np.inf, -np.inf
    b = np.ones(4, "float32")
    b[3] = np.nan
    if fw == "torch":
        with torch.no_grad():
            m[0].weight.copy_(torch.from_numpy(w))
            m[1].bias.copy_(torch.from_numpy(b))
    else:
        m[0].weight.set_value(w)
        m[1].bias.set_value(b)
    return m


def weight_np(layer):
    """A Linear weight as numpy in torch layout."""
    if isinstance(layer, torch.nn.Module):
        return layer.weight.detach().numpy()
    return layer.weight.numpy().T


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_non_finite_values_are_copied_as_they_are_and_reported(src, dst):
    a, b = poisoned(src), NN[dst].Sequential(NN[dst].Linear(3, 4), NN[dst].LayerNorm(4))
    report = assign_weight(a, b)
    assert report.nonfinite == {"0.weight": 3, "1.bias": 1}
    assert "non-finite values copied" in str(report) and "0.weight: 3" in str(report)
    np.testing.assert_array_equal(weight_np(b[0]), weight_np(a[0]))  # NaN where NaN, +-Inf where +-Inf
    got = weight_np(b[0])
    assert (np.isnan(got).sum(), np.isposinf(got).sum(), np.isneginf(got).sum()) == (1, 1, 1)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_check_finite_refuses_before_writing(src, dst):
    a, b = poisoned(src), NN[dst].Sequential(NN[dst].Linear(3, 4), NN[dst].LayerNorm(4))
    snap = snapshot(b)
    with pytest.raises(TransferError) as e:
        assign_weight(a, b, check_finite=True)
    assert e.value.problems == [
        "base 0.weight holds 3 NaN/Inf values (check_finite=True); fix the source weights or pass "
        "check_finite=False to copy them as they are",
        "base 1.bias holds 1 NaN/Inf value (check_finite=True); fix the source weights or pass "
        "check_finite=False to copy them as they are"]
    assert_unchanged(b, snap)


def test_non_finite_values_reach_special_inits_flagged_and_check_finite_covers_them(scoped_pool):
    add_special_init("torch", "Linear", "paddle", "LMHead",
                     lambda m, l: l.weight.set_value(m.weight.detach().numpy()))
    a, b = headed("torch"), headed("paddle")
    with torch.no_grad():
        a.head2.weight[0, :2] = float("nan")
    assert_refused(lambda: assign_weight(a, b, check_finite=True), TransferError, b,
                   match="base head2.weight holds 2 NaN/Inf values")
    report = assign_weight(a, b)
    assert report.nonfinite == {"head2.weight": 2}
