"""torchvision <-> paddle.vision twins (issue 25): ResNet-50, VGG-16, MobileNet v2, MobileNet v3 small,
ShuffleNet v2 x1.0 and DenseNet-121 port both ways with ``assign_weight``; the renamed ones (MobileNet v3,
ShuffleNet v2, DenseNet-121) pair by execution with ``example_inputs=`` and are refused without it. Each pair:
random weights with noise on every BatchNorm's running statistics and affine parameters (so 0/1 initialisations
cannot hide a swapped or dropped tensor), eval mode, logits compared on a random image batch.

torchvision comes from the registry's 0.28.0 wheel (a CUDA build): the Makefile installs it with ``--no-deps`` into
``.venv/torchvision-py`` (``PADIFF_LITE_TORCHVISION`` names another folder). Installed next to the CPU torch it
would break ``import transformers`` (../shared/TRAPS.md), so the folder is on ``sys.path`` only while this module
runs, with an empty ``torchvision._meta_registrations`` (its operator registrations need torchvision's C++
library, which does not load against the CPU torch; only the Python model code is used); both are taken out of
``sys.path`` and ``sys.modules`` again afterwards.
"""
from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np
import paddle
import pytest
import torch

from padiff_lite import TransferError, assign_weight

TV_DIR = Path(os.environ.get("PADIFF_LITE_TORCHVISION", Path(sys.prefix) / "torchvision-py"))

# name: (torchvision builder, paddle.vision builder, input side, pairs by names alone)
TWINS = {
    "resnet50": ("resnet50", "resnet50", 64, True),
    # VGG-16 is ~138M parameters whatever the input (its classifier follows an adaptive 7x7 pool): one pair, a
    # 32x32 input (five 2x2 pools leave 1x1, which the pool spreads to 7x7) keeps the convolutions cheap
    "vgg16": ("vgg16", "vgg16", 32, True),
    "mobilenet_v2": ("mobilenet_v2", "mobilenet_v2", 64, True),
    "mobilenet_v3_small": ("mobilenet_v3_small", "mobilenet_v3_small", 64, False),
    "shufflenet_v2": ("shufflenet_v2_x1_0", "shufflenet_v2_x1_0", 64, False),
    "densenet121": ("densenet121", "densenet121", 64, False),
}

# float32 depth: a correct port of these nets differs by ~1e-7..1e-6 of the logits' scale (measured:
# docs/supported_models.md); a dropped BatchNorm statistic or a wrongly oriented weight gives O(1)
REL_TOL = 2e-5


@pytest.fixture(scope="module")
def tv_models():
    if not (TV_DIR / "torchvision").is_dir():
        pytest.skip(f"torchvision is not installed in {TV_DIR}: run `make setup` (it installs torchvision==0.28.0 "
                    f"with --no-deps there) or set PADIFF_LITE_TORCHVISION to such a folder")
    saved_path = list(sys.path)
    before = set(sys.modules)
    sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
    sys.path.append(str(TV_DIR))
    try:
        import torchvision.models
        yield torchvision.models
    finally:
        sys.path[:] = saved_path
        for name in set(sys.modules) - before:
            if name == "torchvision" or name.startswith("torchvision."):
                del sys.modules[name]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """torch's threads spin against each other on a loaded 2-core machine; results do not depend on it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", params=list(TWINS))
def twin(request, tv_models):
    """One pair at a time (pytest groups the tests by this module-scoped parameter): built once, eval mode."""
    tv_name, pd_name, side, by_names = TWINS[request.param]
    torch.manual_seed(0)
    paddle.seed(0)
    t = getattr(tv_models, tv_name)().eval()
    p = getattr(paddle.vision.models, pd_name)()
    p.eval()
    x = np.random.default_rng(0).standard_normal((1, 3, side, side)).astype("float32")
    return request.param, t, p, x, by_names


def _noised(name, value, rng):
    """BatchNorm statistics and affine parameters (1-D) moved away from 0/1 elementwise; other weights (random
    already, different on the two sides) scaled by one factor per tensor, so a tensor left uncopied in the
    second direction still differs (elementwise noise on VGG's 138M weights would take seconds)."""
    if name.endswith(("running_var", "_variance")):
        return value * rng.uniform(0.5, 1.5, value.shape).astype("float32")
    if value.ndim == 1:
        return value + rng.normal(0, 0.1, value.shape).astype("float32")
    return value * np.float32(rng.uniform(0.8, 1.2))


def noise_torch(model, seed):
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, v in model.state_dict().items():
            if v.is_floating_point():
                v.copy_(torch.as_tensor(_noised(name, v if v.ndim > 1 else v.numpy(), rng)))


def noise_paddle(model, seed):
    rng = np.random.default_rng(seed)
    for name, v in model.state_dict().items():
        v.set_value(_noised(name, v if v.ndim > 1 else v.numpy(), rng))


def logits(model, x):
    if isinstance(model, torch.nn.Module):
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()
    with paddle.no_grad():
        return model(paddle.to_tensor(x)).numpy()


def port(src, dst, x, by_names):
    """Transfer src -> dst (by names, or by execution for the renamed twins, which names alone refuse) and
    return (max |diff| of the logits, their scale, the logits' max |diff| before the transfer)."""
    before = np.abs(logits(src, x) - logits(dst, x)).max()
    if by_names:
        assign_weight(src, dst)
    else:
        with pytest.raises(TransferError, match="unpaired base"):
            assign_weight(src, dst)
        assign_weight(src, dst, example_inputs=x)
    a, b = logits(src, x), logits(dst, x)
    return float(np.abs(a - b).max()), float(np.abs(a).max()), float(before)


@pytest.mark.parametrize("direction", ["torch->paddle", "paddle->torch"])
def test_torchvision_twin_ports(twin, direction):
    name, t, p, x, by_names = twin
    if direction == "torch->paddle":
        noise_torch(t, 1)
        diff, scale, before = port(t, p, x, by_names)
    else:
        noise_paddle(p, 2)
        diff, scale, before = port(p, t, x, by_names)
    assert before > 100 * REL_TOL * scale, f"{name}: the two models agreed before the transfer"
    assert diff <= REL_TOL * max(scale, 1.0), f"{name} {direction}: max |diff| {diff:.3g} (logits up to {scale:.3g})"
