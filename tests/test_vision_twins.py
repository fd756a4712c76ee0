"""torchvision <-> paddle.vision twins (issue 25): ResNet-50, VGG-16, MobileNet v2, MobileNet v3 small,
ShuffleNet v2 x1.0 and DenseNet-121 (paddle's legacy ``BatchNorm(act="relu")``) port both ways with
``assign_weight``; the renamed ones (MobileNet v3, ShuffleNet v2, DenseNet-121) pair by execution with
``example_inputs=`` and are refused by names alone. Random weights with noise on every BatchNorm's statistics and
affine parameters, eval mode, logits compared on a random image batch. torchvision is importable only while this
module runs (see tests/vision_twins.py: its CUDA wheel would break ``import transformers`` elsewhere)."""
from __future__ import annotations

import pytest
import torch

import vision_twins as vt


@pytest.fixture(scope="module")
def tv_models():
    if not (vt.TV_DIR / "torchvision").is_dir():
        pytest.skip(f"torchvision is not installed in {vt.TV_DIR}: `make setup` installs it there "
                    f"(or set PADIFF_LITE_TORCHVISION to a folder holding it)")
    with vt.torchvision_models() as models:
        yield models


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=list(vt.TWINS))
def twin(request, tv_models):
    """One pair at a time (pytest groups the tests by this module-scoped parameter), built once."""
    return (request.param, *vt.build(tv_models, request.param), vt.TWINS[request.param][3])


@pytest.mark.parametrize("direction", ["torch->paddle", "paddle->torch"])
def test_torchvision_twin_ports(twin, direction):
    name, t, p, x, by_names = twin
    src, dst = (t, p) if direction == "torch->paddle" else (p, t)
    vt.noise(src, 1 if direction == "torch->paddle" else 2)
    diff, scale, before = vt.port(src, dst, x, by_names)
    assert before > 100 * vt.REL_TOL * scale, f"{name}: the two models agreed before the transfer"
    assert diff <= vt.REL_TOL * max(scale, 1.0), f"{name} {direction}: max |diff| {diff:.3g} (logits up to {scale:.3g})"


def test_supported_models_doc_lists_every_twin():
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "supported_models.md").read_text()
    missing = [name for name in vt.TWINS if f"| {name} |" not in doc]
    assert not missing, f"regenerate docs/supported_models.md (python tests/supported_models.py): {missing}"
