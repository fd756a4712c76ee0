"""Wrong arguments at the entry points: things that are not models, flags of the wrong type, unknown framework
names. A TypeError or ValueError that says what was expected, and nothing written."""
import numpy as np
import paddle
import pytest
import torch

from helpers import assert_unchanged, snapshot
from padiff_lite import assign_weight, create_model


@pytest.mark.parametrize("bad", [np.zeros(3), None, "model.pt", {"weight": torch.zeros(2)}, torch.zeros(2)])
def test_create_model_and_assign_weight_refuse_non_models(bad):
    with pytest.raises(TypeError, match="takes a torch.nn.Module or a paddle.nn.Layer, got"):
        create_model(bad)
    good = torch.nn.Linear(2, 2)
    snap = snapshot(good)
    with pytest.raises(TypeError, match="build the model first"):
        assign_weight(bad, good)
    with pytest.raises(TypeError, match="build the model first"):
        assign_weight(good, bad)
    assert_unchanged(good, snap)


@pytest.mark.parametrize("kw", [{"strict": "no"}, {"strict": None}, {"check_finite": 1}, {"check_finite": "yes"}])
def test_flags_of_the_wrong_type_are_refused(kw):
    a, b = torch.nn.Linear(2, 2), paddle.nn.Linear(2, 2)
    snap = snapshot(b)
    name = next(iter(kw))
    with pytest.raises(TypeError, match=f"assign_weight\\({name}=...\\) takes True or False"):
        assign_weight(a, b, **kw)
    assert_unchanged(b, snap)


def test_internal_framework_names_are_checked():
    from padiff_lite import models

    with pytest.raises(ValueError, match="framework must be 'torch' or 'paddle', got 'jax'"):
        models.mlp("jax")
