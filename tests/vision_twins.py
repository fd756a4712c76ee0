"""torchvision <-> paddle.vision twins (issue 25): the pairs, how their weights are randomised, the port and its
measurement; used by tests/test_vision_twins.py and by tests/supported_models.py (the table of
docs/supported_models.md; ``python tests/vision_twins.py`` prints that section alone).

torchvision comes from the registry's 0.28.0 wheel (a CUDA build): the Makefile installs it with ``--no-deps`` into
``.venv/torchvision-py`` (``PADIFF_LITE_TORCHVISION`` names another folder). Installed next to the CPU torch it
would break ``import transformers`` (../shared/TRAPS.md), so :func:`torchvision_models` puts the folder on
``sys.path`` only inside its ``with`` block, with an empty ``torchvision._meta_registrations`` (its operator
registrations need torchvision's C++ library, which does not load against the CPU torch; only the Python model code
is used), and takes both out of ``sys.path`` and ``sys.modules`` again afterwards.
"""
from __future__ import annotations

import contextlib
import os
import sys
import types
from pathlib import Path

import numpy as np
import paddle
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

NOT_PORTS = ("Not ports (different functions; checked with the same versions): AlexNet and SqueezeNet "
             "(paddle's `Dropout(mode=\"downscale_in_infer\")` scales by 0.5 in eval; SqueezeNet's max pools have "
             "`padding=0` without torchvision's `ceil_mode=True`; paddle's AlexNet has no adaptive pool, so it takes "
             "224x224 only). Their convolutions and linears pair with `example_inputs=`, but `assign_weight` refuses them, "
             "naming the dropout and pool pairs whose settings differ (tests/test_weightless_settings.py); with those "
             "layers black-listed the weights transfer and the logits differ (default random weights: AlexNet at "
             "224x224: 0.011 on logits up to 0.029; SqueezeNet at 64x64: 0.39 on 0.78), and `auto_diff` reports the "
             "mismatch (SqueezeNet: pooled maps 7x7 against 6x6). Inception-v3: "
             "torchvision's BatchNorm eps is 1e-3, paddle's 1e-5; pairing by execution refuses every such BatchNorm "
             "pair, naming both paths and both eps values.")


@contextlib.contextmanager
def torchvision_models():
    """``torchvision.models`` from ``TV_DIR``, importable only inside the block; FileNotFoundError when absent."""
    if not (TV_DIR / "torchvision").is_dir():
        raise FileNotFoundError(f"torchvision is not installed in {TV_DIR}: run `make setup` (it installs "
                                f"torchvision==0.28.0 with --no-deps there) or set PADIFF_LITE_TORCHVISION")
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


def build(tv_models, name):
    """The pair (torch, paddle) in eval mode, and a random image batch both accept."""
    tv_name, pd_name, side, _ = TWINS[name]
    torch.manual_seed(0)
    paddle.seed(0)
    t = getattr(tv_models, tv_name)().eval()
    p = getattr(paddle.vision.models, pd_name)()
    p.eval()
    return t, p, np.random.default_rng(0).standard_normal((1, 3, side, side)).astype("float32")


def _noised(name, value, rng):
    """BatchNorm statistics and affine parameters (1-D) moved away from 0/1 elementwise; other weights (random
    already, different on the two sides) scaled by one factor per tensor, so a tensor left uncopied in the
    second direction still differs (elementwise noise on VGG's 138M weights would take seconds)."""
    if name.endswith(("running_var", "_variance")):
        return value * rng.uniform(0.5, 1.5, value.shape).astype("float32")
    if value.ndim == 1:
        return value + rng.normal(0, 0.1, value.shape).astype("float32")
    return value * np.float32(rng.uniform(0.8, 1.2))


def noise(model, seed):
    rng = np.random.default_rng(seed)
    if isinstance(model, torch.nn.Module):
        with torch.no_grad():
            for name, v in model.state_dict().items():
                if v.is_floating_point():
                    v.copy_(torch.as_tensor(_noised(name, v if v.ndim > 1 else v.numpy(), rng)))
    else:
        for name, v in model.state_dict().items():
            v.set_value(_noised(name, v if v.ndim > 1 else v.numpy(), rng))


def logits(model, x):
    if isinstance(model, torch.nn.Module):
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()
    with paddle.no_grad():
        return model(paddle.to_tensor(x)).numpy()


def port(src, dst, x, by_names):
    """Transfer src -> dst: by names, or by execution (``example_inputs``) for the renamed twins, after checking
    that names alone refuse them. Returns (max |diff| of the logits after, their scale, max |diff| before)."""
    before = float(np.abs(logits(src, x) - logits(dst, x)).max())
    if by_names:
        assign_weight(src, dst)
    else:
        try:
            assign_weight(src, dst)
        except TransferError as exc:
            if "unpaired base" not in str(exc):
                raise
        else:
            raise AssertionError("names alone paired a renamed twin")
        assign_weight(src, dst, example_inputs=x)
    a, b = logits(src, x), logits(dst, x)
    return float(np.abs(a - b).max()), float(np.abs(a).max()), before


def markdown() -> list[str]:
    out = ["## torchvision <-> paddle.vision", "",
           "torchvision 0.28.0, paddlepaddle 3.3.1, CPU, float32, `tests/test_vision_twins.py`. Each pair: default "
           "constructors (1000 classes), random weights with noise on every BatchNorm's running statistics and "
           "affine parameters, eval mode, `assign_weight` in each direction (the renamed twins with "
           "`example_inputs=`: names alone refuse them), logits compared on one random image.", "",
           "| twin | parameters | input | paired by | torch -> paddle max abs / rel diff | "
           "paddle -> torch max abs / rel diff |", "|---|---|---|---|---|---|"]
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torchvision_models() as tvm:
            for name, (_, _, side, by_names) in TWINS.items():
                t, p, x = build(tvm, name)
                noise(t, 1)
                d1, s1, _ = port(t, p, x, by_names)
                noise(p, 2)
                d2, s2, _ = port(p, t, x, by_names)
                n = sum(v.numel() for v in t.parameters())
                out.append(f"| {name} | {n / 1e6:.1f}M | 1x3x{side}x{side} | "
                           f"{'names' if by_names else '`example_inputs`'} | {d1:.2g} / {d1 / s1:.2g} | "
                           f"{d2:.2g} / {d2 / s2:.2g} |")
    finally:
        torch.set_num_threads(torch_threads)
    return out + ["", NOT_PORTS, ""]


if __name__ == "__main__":
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    sys.stdout.write("\n".join(markdown()))
