"""BatchNorm1d/2d/3d and SyncBatchNorm: running statistics, affine on/off, track_running_stats on/off."""
import itertools

import pytest

from layer_models import SPATIAL, Case, between, cases_param, conv_between, net, nn, randomize, run_case
from padiff_lite import TransferError, assign_weight


def bn(d, affine, track):
    def make(fw):
        if fw == "torch":
            layer = getattr(nn(fw), f"BatchNorm{d}d")(6, affine=affine, track_running_stats=track)
        else:
            kw = {} if affine else {"weight_attr": False, "bias_attr": False}
            layer = getattr(nn(fw), f"BatchNorm{d}D")(6, use_global_stats=None if track else False, **kw)
        return randomize(fw, layer) if affine else layer

    return make


CASES = []
for d in (1, 2, 3):
    for affine in (True, False):
        for track in (True, False):
            ident = f"BatchNorm{d}d-affine{affine}-track{track}"
            CASES.append(Case(ident, conv_between(bn(d, affine, track), d, 6), [(4, 3) + SPATIAL[d]],
                              (f"BatchNorm{d}d", f"BatchNorm{d}D"), warm=track))
CASES.append(Case("BatchNorm1d-2d-input", between(bn(1, True, True), 5, 3, d_mid=6), [(8, 5)],
                  ("BatchNorm1d", "BatchNorm1D"), warm=True))


_NAMES = itertools.count()


def legacy_bn(d):
    """paddle's legacy ``paddle.nn.BatchNorm`` (named statistics, as paddle.vision's DenseNet builds it) against
    torch BatchNorm{d}d; the activation stays outside on both sides here (``act=`` has a test of its own)."""
    def make(fw):
        if fw == "torch":
            return randomize(fw, getattr(nn(fw), f"BatchNorm{d}d")(6))
        import paddle

        n = next(_NAMES)  # paddle refuses a parameter name used before in the process
        return randomize(fw, paddle.nn.BatchNorm(6, param_attr=paddle.ParamAttr(name=f"legacy_bn{n}_scale"),
                                                 moving_mean_name=f"legacy_bn{n}_mean",
                                                 moving_variance_name=f"legacy_bn{n}_var"))

    return make


for d in (1, 2, 3):
    CASES.append(Case(f"BatchNorm{d}d-legacy", conv_between(legacy_bn(d), d, 6), [(4, 3) + SPATIAL[d]],
                      (f"BatchNorm{d}d", "BatchNorm"), warm=True))


def _sync_bn_forward(self, x):
    # paddle's SyncBatchNorm has no CPU kernel: evaluate its own tensors with paddle's eval batch_norm,
    # which is what the layer computes in eval mode
    if hasattr(self.bn, "_mean"):
        import paddle.nn.functional as F

        h = F.batch_norm(self.pre(x), self.bn._mean, self.bn._variance, self.bn.weight, self.bn.bias,
                         training=False, epsilon=self.bn._epsilon)
    else:
        h = self.bn(self.pre(x))
    return self.post(h)


def sync_bn(fw):
    return net(fw, _sync_bn_forward, pre=lambda f: getattr(nn(f), "Conv2d" if f == "torch" else "Conv2D")(3, 6, 1),
               bn=lambda f: randomize(f, nn(f).SyncBatchNorm(6)),
               post=lambda f: getattr(nn(f), "Conv2d" if f == "torch" else "Conv2D")(6, 2, 1))


def _warm_sync(model, fw):
    """Give SyncBatchNorm running statistics without a training forward (that needs a GPU on both sides)."""
    import numpy as np

    rng = np.random.default_rng(1)
    mean, var = rng.standard_normal(6).astype("float32"), rng.uniform(0.5, 2, 6).astype("float32")
    if fw == "torch":
        import torch

        model.bn.running_mean.copy_(torch.from_numpy(mean))
        model.bn.running_var.copy_(torch.from_numpy(var))
    else:
        model.bn._mean.set_value(mean)
        model.bn._variance.set_value(var)
    return model


CASES.append(Case("SyncBatchNorm", lambda fw: _warm_sync(sync_bn(fw), fw), [(2, 3, 5, 5)],
                  ("SyncBatchNorm", "SyncBatchNorm")))


@cases_param(CASES)
def test_batchnorm(case, src, dst):
    report, a, b = run_case(case, src, dst)
    assert any("momentum" in n for n in report.notes)


@pytest.mark.parametrize("torch_tracks", [True, False])
def test_mismatched_statistics_settings_are_refused(torch_tracks):
    a = bn(2, True, torch_tracks)("torch")
    b = bn(2, True, not torch_tracks)("paddle")
    with pytest.raises(TransferError) as e:
        assign_weight(a, b)
    assert "use_global_stats" in str(e.value) and "track_running_stats" in str(e.value)


def test_legacy_batchnorm_with_act_ports_and_says_so():
    """paddle.nn.BatchNorm(act="relu") (paddle.vision's DenseNet) <-> torch BatchNorm2d followed by ReLU."""
    import numpy as np
    import paddle
    import torch

    t = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 1), torch.nn.BatchNorm2d(6), torch.nn.ReLU()).eval()
    p = paddle.nn.Sequential(paddle.nn.Conv2D(3, 6, 1), paddle.nn.BatchNorm(6, act="relu"))
    p.eval()
    randomize("paddle", p[1])
    p[1]._variance.set_value(np.random.default_rng(2).uniform(0.5, 2, 6).astype("float32"))
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype("float32")
    report = assign_weight(p, t)
    out_t, out_p = t(torch.from_numpy(x)).detach().numpy(), p(paddle.to_tensor(x)).numpy()
    assert np.abs(out_t - out_p).max() < 1e-5 and out_t.min() == 0.0  # the ReLU cut something
    assert any("applies its act= activation" in n for n in report.notes), report.notes
    assert any("momentum" in n for n in assign_weight(t, p).notes)
