"""Tied tensors (one tensor under two names) on either side of a transfer: both tensors given where the raw
model has two, the tie kept where it has one, and a refusal where one tensor cannot hold two different values.

(test_pairing.py holds the same-framework torch cases; test_special_init_faults.py an init writing a tied tensor.)
"""
import numpy as np
import paddle
import pytest

from helpers import assert_refused, tied_lm
from padiff_lite import TransferError, assign_weight
from padiff_lite.models import run


def test_tied_torch_base_into_untied_paddle_gives_both_tensors_and_equal_outputs():
    a, b = tied_lm("torch", True), tied_lm("paddle", False)
    assign_weight(a, b)
    ids = [np.array([[1, 4, 7]])]
    np.testing.assert_allclose(run(a, "torch", ids)[0], run(b, "paddle", ids)[0], atol=1e-6)
    np.testing.assert_array_equal(b.decoder.weight.numpy().T, b.embed.weight.numpy())


def test_untied_paddle_base_into_tied_torch_when_the_values_agree():
    a, b = tied_lm("paddle", False), tied_lm("torch", True)
    a.decoder.weight.set_value(a.embed.weight.numpy().T)
    report = assign_weight(a, b)
    assert b.decoder.weight is b.embed.weight
    np.testing.assert_array_equal(b.embed.weight.detach().numpy(), a.embed.weight.numpy())
    assert report.tied == ["decoder.weight is tied to embed.weight: it gets embed.weight, not decoder.weight"]


@pytest.mark.parametrize("src", ["paddle", "torch"])
def test_untied_base_into_tied_raw_with_different_values_is_refused(src):
    """The raw model has room for one tensor; copying would silently drop the base decoder weights."""
    a, b = tied_lm(src, False), tied_lm("torch", True)
    e = assert_refused(lambda: assign_weight(a, b), TransferError, b)
    msg = str(e)
    assert "raw decoder.weight is tied to embed.weight (one tensor)" in msg
    assert "base embed.weight and decoder.weight hold different values" in msg and "untie decoder.weight" in msg
    assert b.decoder.weight is b.embed.weight


def test_tied_paddle_tensors_in_a_same_framework_transfer():
    class P(paddle.nn.Layer):
        def __init__(self, tie):
            super().__init__()
            self.a, self.b = paddle.nn.Embedding(5, 3), paddle.nn.Embedding(5, 3)
            if tie:
                self.b.weight = self.a.weight

    src, dst = P(True), P(True)
    report = assign_weight(src, dst)
    assert dst.b.weight is dst.a.weight and report.tensors == 1
    np.testing.assert_array_equal(dst.a.weight.numpy(), src.a.weight.numpy())
    with pytest.raises(TransferError, match="raw b.weight is tied to a.weight"):
        assign_weight(P(False), P(True))
