"""LayerNorm, GroupNorm, InstanceNorm1d/2d/3d over the options that change their tensors, both directions."""
import numpy as np
import pytest

from layer_models import SPATIAL, Case, cases_param, conv_between, nn, randomize, run_case
from padiff_lite import TransferError, assign_weight


def layer_norm(shape, affine, bias=True):
    def make(fw):
        if fw == "torch":
            layer = nn(fw).LayerNorm(shape, elementwise_affine=affine, bias=bias)
        else:
            kw = {} if affine else {"weight_attr": False, "bias_attr": False}
            if affine and not bias:
                kw = {"bias_attr": False}
            layer = nn(fw).LayerNorm(shape, **kw)
        return randomize(fw, layer)

    return make


def _ln_model(shape, affine, bias=True):
    def build(fw):
        n = nn(fw)
        flat = int(np.prod(shape))
        return n.Sequential(n.Linear(5, flat), n.Unflatten(1, list(shape)), layer_norm(shape, affine, bias)(fw),
                            n.Flatten(), n.Linear(flat, 3)).eval()

    return build


def group_norm(affine):
    def make(fw):
        if fw == "torch":
            return randomize(fw, nn(fw).GroupNorm(2, 6, affine=affine))
        kw = {} if affine else {"weight_attr": False, "bias_attr": False}
        return randomize(fw, nn(fw).GroupNorm(2, 6, **kw))

    return make


def instance_norm(d, torch_affine, paddle_params=True):
    def make(fw):
        if fw == "torch":
            layer = getattr(nn(fw), f"InstanceNorm{d}d")(6, affine=torch_affine)
            return randomize(fw, layer)
        kw = {} if paddle_params else {"weight_attr": False, "bias_attr": False}
        layer = getattr(nn(fw), f"InstanceNorm{d}D")(6, **kw)
        return randomize(fw, layer) if torch_affine else layer  # scale=1/bias=0 stand for torch's affine=False

    return make


CASES = [Case(f"LayerNorm-{'x'.join(map(str, s))}-affine{a}", _ln_model(s, a), [(4, 5)], ("LayerNorm", "LayerNorm"))
         for s in ((8,), (2, 4)) for a in (True, False) if a]
CASES.append(Case("LayerNorm-nobias", _ln_model((8,), True, bias=False), [(4, 5)], ("LayerNorm", "LayerNorm")))
CASES += [Case(f"GroupNorm-affine{a}", conv_between(group_norm(a), 2, 6), [(2, 3, 5, 5)], ("GroupNorm", "GroupNorm"))
          for a in (True, False)]
CASES += [Case(f"InstanceNorm{d}d-affine{a}", conv_between(instance_norm(d, a), d, 6), [(2, 3) + SPATIAL[d]],
               (f"InstanceNorm{d}d", f"InstanceNorm{d}D")) for d in (1, 2, 3) for a in (True, False)]


@cases_param(CASES)
def test_norm(case, src, dst):
    run_case(case, src, dst)


def test_layer_norm_without_parameters_on_both_sides():
    """Nothing to transfer and nothing to pair: the surrounding layers still transfer, outputs match."""
    from helpers import assert_transfer_equivalent

    assert_transfer_equivalent(_ln_model((8,), False), "torch", "paddle", [(4, 5)])
    assert_transfer_equivalent(_ln_model((8,), False), "paddle", "torch", [(4, 5)])


def test_instance_norm_paddle_scale_must_be_one_for_torch_affine_false():
    a = conv_between(instance_norm(2, True), 2, 6)("paddle")  # random scale/bias
    b = conv_between(instance_norm(2, False), 2, 6)("torch")
    with pytest.raises(TransferError) as e:
        assign_weight(a, b)
    msg = str(e.value)
    assert "1.scale has values other than 1.0" in msg and "affine=True" in msg


def test_instance_norm_with_running_stats_is_refused():
    a = nn("torch").Sequential(nn("torch").InstanceNorm2d(6, affine=True, track_running_stats=True))
    b = nn("paddle").Sequential(nn("paddle").InstanceNorm2D(6))
    with pytest.raises(TransferError) as e:
        assign_weight(a, b)
    assert "track_running_stats=True" in str(e.value) and "0 (InstanceNorm2d) -> 0 (InstanceNorm2D)" in str(e.value)


def test_group_norm_with_other_groups_is_refused():
    a = nn("torch").Sequential(nn("torch").GroupNorm(2, 6))
    b = nn("paddle").Sequential(nn("paddle").GroupNorm(3, 6))
    with pytest.raises(TransferError, match="num_groups differs: torch 2, paddle 3"):
        assign_weight(a, b)


@pytest.mark.parametrize("torch_is_base", [True, False])
def test_epsilon_mismatch_is_refused(torch_is_base):
    t = nn("torch").Sequential(nn("torch").LayerNorm(8, eps=1e-6))
    p = nn("paddle").Sequential(nn("paddle").LayerNorm(8))
    base, raw = (t, p) if torch_is_base else (p, t)
    with pytest.raises(TransferError) as e:
        assign_weight(base, raw)
    msg = str(e.value)
    assert "LayerNorm.eps vs LayerNorm._epsilon differs: torch 1e-06, paddle 1e-05" in msg
    assert "build both with the same epsilon" in msg and "(rule " in msg


def test_filled_parameters_are_listed_in_the_report():
    from helpers import assert_transfer_equivalent

    build = conv_between(instance_norm(2, False), 2, 6)
    report, *_ = assert_transfer_equivalent(build, "torch", "paddle", [(2, 3, 6, 6)])
    assert report.filled == ["1.0 -> 1.scale", "0.0 -> 1.bias"] and report.initialised == []
    assert "set to a constant" in str(report)
