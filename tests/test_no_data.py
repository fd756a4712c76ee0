"""Models whose tensors hold no data (torch's meta device, paddle's LazyGuard): refused before anything is
written, on the base side and on the raw side, with the way to materialise them."""
import paddle
import pytest
import torch

from helpers import DIRECTION_IDS, DIRECTIONS, NN, assert_refused
from padiff_lite import TransferError, assign_weight


def lazy(fw, build):
    if fw == "torch":
        with torch.device("meta"):
            return build(fw)
    with paddle.LazyGuard():
        return build(fw)


def small(fw):
    nn = NN[fw]
    bn = nn.BatchNorm1d(4) if fw == "torch" else nn.BatchNorm1D(4)
    return nn.Sequential(nn.Linear(3, 4), bn)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
@pytest.mark.parametrize("check_finite", [False, True])
def test_a_base_model_without_data_is_refused_before_writing(src, dst, check_finite):
    a, b = lazy(src, small), small(dst)
    e = assert_refused(lambda: assign_weight(a, b, check_finite=check_finite), TransferError, b)
    msg = str(e)
    for path in ("0.weight", "0.bias", "1.weight", "1.bias"):
        assert f"base {path} holds no data" in msg
    assert "meta" in msg if src == "torch" else "undefined" in msg
    assert "load real weights into the base model" in msg and "nothing was written" in msg


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_a_raw_model_without_data_is_refused(src, dst):
    a, b = small(src), lazy(dst, small)
    e = assert_refused(lambda: assign_weight(a, b), TransferError, a)
    assert "raw 0.weight holds no data" in str(e) and "materialise the raw model first" in str(e)
