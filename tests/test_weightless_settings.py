"""Settings of weightless layers compared while pairing by execution (issue 25 item 5, padiff_lite/settings.py):
paddle's ``Dropout(mode="downscale_in_infer")`` and pools with another ``ceil_mode`` / padding compute other functions
than their torch twins; ``assign_weight(..., example_inputs=...)`` refuses them with both paths, both classes, the
setting and both values, and writes nothing. torchvision's AlexNet and SqueezeNet against paddle.vision's (the
twins that are not ports, tests/vision_twins.py) are refused both ways; our own small pairs are refused or ported
with outputs equal."""
from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch

import vision_twins as vt
from padiff_lite import PairingError, assign_weight, create_model


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TorchNet(torch.nn.Module):
    def __init__(self, ceil_mode=False, padding=0):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.pool = torch.nn.MaxPool2d(2, ceil_mode=ceil_mode, padding=padding)
        self.fc = torch.nn.Linear(4 * 3 * 3, 5)
        self.drop = torch.nn.Dropout(0.5)
        self.out = torch.nn.Linear(5, 2)

    def forward(self, x):
        return self.out(self.drop(self.fc(self.pool(self.conv(x)).flatten(1))))


class PaddleNet(paddle.nn.Layer):
    """TorchNet with other names (so pairing by names alone would not apply) and paddle's settings."""

    def __init__(self, mode="upscale_in_train", ceil_mode=False, padding=0):
        super().__init__()
        self.c1 = paddle.nn.Conv2D(3, 4, 3)
        self.p1 = paddle.nn.MaxPool2D(2, ceil_mode=ceil_mode, padding=padding)
        self.f1 = paddle.nn.Linear(4 * 3 * 3, 5)
        self.d1 = paddle.nn.Dropout(0.5, mode=mode)
        self.f2 = paddle.nn.Linear(5, 2)

    def forward(self, x):
        return self.f2(self.d1(self.f1(self.p1(self.c1(x)).flatten(1))))


X = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype("float32")  # 8 -> conv 6 -> pool 3 either mode


def _pair(**paddle_kw):
    torch.manual_seed(0)
    paddle.seed(1)
    t = TorchNet().eval()
    p = PaddleNet(**paddle_kw)
    p.eval()
    return t, p


def _out(model, x=X):
    if isinstance(model, torch.nn.Module):
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()
    with paddle.no_grad():
        return model(paddle.to_tensor(x)).numpy()


def _state(model):
    return {k: np.array(v.detach().numpy() if isinstance(model, torch.nn.Module) else v.numpy())
            for k, v in model.state_dict().items()}


def _refused(src, dst, x, *expect):
    before = _state(dst)
    with pytest.raises(PairingError) as err:
        assign_weight(src, dst, example_inputs=x)
    msg = str(err.value)
    for part in expect:
        assert part in msg, msg
    assert "nothing was written" in msg and "black-list" in msg
    after = _state(dst)
    assert all(np.array_equal(before[k], after[k]) for k in before), "the target was written"
    return msg


@pytest.mark.parametrize("direction", ["torch->paddle", "paddle->torch"])
def test_dropout_downscale_in_infer_is_refused_with_both_paths(direction):
    t, p = _pair(mode="downscale_in_infer")
    src, dst = (t, p) if direction == "torch->paddle" else (p, t)
    msg = _refused(src, dst, X, "mode='downscale_in_infer'", "(Dropout)")
    b, r = ("drop", "d1") if direction == "torch->paddle" else ("d1", "drop")
    assert f"base {b} (Dropout)" in msg and f"raw {r} (Dropout)" in msg, msg


@pytest.mark.parametrize("direction", ["torch->paddle", "paddle->torch"])
def test_dropout_upscale_in_train_ports_with_outputs_equal(direction):
    t, p = _pair(mode="upscale_in_train")
    src, dst = (t, p) if direction == "torch->paddle" else (p, t)
    assert np.abs(_out(src) - _out(dst)).max() > 1e-2  # different weights before
    assign_weight(src, dst, example_inputs=X)
    assert np.abs(_out(src) - _out(dst)).max() <= 1e-6


@pytest.mark.parametrize("direction", ["torch->paddle", "paddle->torch"])
def test_max_pool_ceil_mode_mismatch_is_refused(direction):
    t, p = _pair(ceil_mode=True)
    src, dst = (t, p) if direction == "torch->paddle" else (p, t)
    b, r = ("pool", "p1") if direction == "torch->paddle" else ("p1", "pool")
    msg = _refused(src, dst, X, f"base {b} (MaxPool2", f"raw {r} (MaxPool2")
    assert "ceil_mode=False" in msg and "ceil_mode=True" in msg, msg
    assert "Dropout" not in msg, msg  # the dropouts agree


def test_max_pool_padding_mismatch_is_refused():
    t, p = _pair(padding=1)
    x = np.random.default_rng(1).standard_normal((2, 3, 7, 7)).astype("float32")  # 7 -> 5 -> pool 2 or 3
    # the shapes after the pool differ, so the first Linear does not fit either: pair it by execution anyway
    t.fc, p.f1 = torch.nn.Linear(4, 5), paddle.nn.Linear(4, 5)
    t.pool.kernel_size = t.pool.stride = 4
    p.p1 = paddle.nn.MaxPool2D(4, padding=1)  # 5 -> 1 with padding 1, 5 -> 1 without: only the setting differs
    _refused(t, p, x, "base pool (MaxPool2d) padding=0", "raw p1 (MaxPool2D) padding=1")


def test_a_black_listed_layer_accepts_the_difference():
    t, p = _pair(mode="downscale_in_infer")
    raw = create_model(p).update_black_list([p.d1])
    assign_weight(t, raw, example_inputs=X)
    assert np.abs(_out(t) - _out(p)).max() > 1e-3  # ported, and paddle's dropout still scales in eval, as accepted
    p.d1.mode = "upscale_in_train"  # the weights are the same: with torch's behaviour the outputs are equal
    assert np.abs(_out(t) - _out(p)).max() <= 1e-6


# -- torchvision twins that are not ports ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tv_models():
    if not (vt.TV_DIR / "torchvision").is_dir():
        pytest.skip(f"torchvision is not installed in {vt.TV_DIR}: `make setup` installs it there "
                    f"(or set PADIFF_LITE_TORCHVISION to a folder holding it)")
    with vt.torchvision_models() as models:
        yield models


@pytest.mark.parametrize("name, side, lines", [
    # paddle's AlexNet takes 224x224 only (no adaptive pool); its first dropout shares a stretch with torchvision's
    # adaptive pool, which paddle lacks, so only the second is aligned and named
    ("alexnet", 224, [("classifier.3 (Dropout) no mode", "_drop2 (Dropout) mode='downscale_in_infer'")]),
    ("squeezenet1_0", 64, [(f"features.{i} (MaxPool2d) ceil_mode=True", "_pool (MaxPool2D) ceil_mode=False")
                           for i in (2, 6, 11)] + [("classifier.0 (Dropout) no mode",
                                                    "_drop (Dropout) mode='downscale_in_infer'")]),
])
@pytest.mark.parametrize("direction", ["torch->paddle", "paddle->torch"])
def test_torchvision_twins_that_compute_other_functions_are_refused(tv_models, name, side, lines, direction):
    torch.manual_seed(0)
    paddle.seed(0)
    t = getattr(tv_models, name)().eval()
    p = getattr(paddle.vision.models, name)()
    p.eval()
    x = np.random.default_rng(0).standard_normal((1, 3, side, side)).astype("float32")
    src, dst = (t, p) if direction == "torch->paddle" else (p, t)
    msg = _refused(src, dst, x, f"{len(lines)} setting")
    for torch_part, paddle_part in lines:
        b, r = (torch_part, paddle_part) if direction == "torch->paddle" else (paddle_part, torch_part)
        assert f"base {b}" in msg and f"raw {r}" in msg, msg


class TorchAvg(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.pool = torch.nn.AvgPool2d(3, stride=2, padding=1)  # count_include_pad=True by default
        self.fc = torch.nn.Linear(4 * 3 * 3, 2)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).flatten(1))


class PaddleAvg(paddle.nn.Layer):
    def __init__(self, exclusive):
        super().__init__()
        self.c = paddle.nn.Conv2D(3, 4, 3)
        self.a = paddle.nn.AvgPool2D(3, stride=2, padding=1, exclusive=exclusive)  # exclusive=True by default
        self.f = paddle.nn.Linear(4 * 3 * 3, 2)

    def forward(self, x):
        return self.f(self.a(self.c(x)).flatten(1))


@pytest.mark.parametrize("direction", ["torch->paddle", "paddle->torch"])
def test_avg_pool_counting_the_padding_is_compared_as_exclusive(direction):
    """torch's count_include_pad=True is paddle's exclusive=False: the defaults differ where there is padding."""
    x = np.random.default_rng(2).standard_normal((2, 3, 7, 7)).astype("float32")  # 7 -> 5 -> pool 3
    torch.manual_seed(0)
    paddle.seed(1)
    t, p = TorchAvg().eval(), PaddleAvg(exclusive=True)
    p.eval()
    src, dst = (t, p) if direction == "torch->paddle" else (p, t)
    b, r = ("pool", "a") if direction == "torch->paddle" else ("a", "pool")
    _refused(src, dst, x, f"base {b} (AvgPool2", f"raw {r} (AvgPool2", "exclusive=True")
    p2 = PaddleAvg(exclusive=False)
    p2.eval()
    src, dst = (t, p2) if direction == "torch->paddle" else (p2, t)
    assign_weight(src, dst, example_inputs=x)
    assert np.abs(_out(t, x) - _out(p2, x)).max() <= 1e-6
