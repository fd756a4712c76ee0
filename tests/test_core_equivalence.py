"""Core issue: real model pairs transfer in both directions with matching outputs."""
import pytest

from helpers import DIRECTION_IDS, DIRECTIONS, assert_transfer_equivalent, tensors_to_write
from padiff_lite import models


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
@pytest.mark.parametrize("name", ["mlp", "conv_bn", "lstm", "attention", "transformer", "tiny"])
def test_model_pair_transfers(name, src, dst):
    build, shape = models.PAIRS[name]
    atol = 1e-4 if name == "transformer" else 1e-5
    report, a, b = assert_transfer_equivalent(build, src, dst, [shape], atol=atol, warm=True)
    assert report.tensors == tensors_to_write(b) and not report.missing and not report.unexpected


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_batchnorm_running_statistics_are_transferred(src, dst):
    report, a, b = assert_transfer_equivalent(models.conv_bn, src, dst, [(2, 3, 12, 12)], warm=True)
    import numpy as np

    mean_a = a[1].running_mean.numpy() if src == "torch" else a[1]._mean.numpy()
    mean_b = b[1].running_mean.numpy() if dst == "torch" else b[1]._mean.numpy()
    assert np.abs(mean_a).max() > 0  # the warm-up produced real statistics
    np.testing.assert_array_equal(mean_a, mean_b)
    assert any("momentum" in n for n in report.notes)


@pytest.mark.parametrize("fw", ["torch", "paddle"])
def test_same_framework_transfer(fw):
    report, a, b = assert_transfer_equivalent(models.tiny_net, fw, fw, [(2, 8, 20)], warm=True, atol=0)
    assert all(p.rule == "default" for p in report.pairs)


def test_report_is_readable():
    report, *_ = assert_transfer_equivalent(models.tiny_net, "torch", "paddle", [(2, 8, 20)])
    text = str(report)
    assert "torch:TinyNet -> paddle:TinyNet" in text
    assert "rnn" in text and "mapping torch.LSTM -> paddle.LSTM" in text
    # every parameterised layer of TinyNet (Conv1d, BatchNorm1d, LSTM, MHA, LayerNorm, Linear) has a rule
    assert "default" not in report.rules_used and report.rules_used["mapping torch.Conv1d -> paddle.Conv1D"] == 1


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_a_caveat_is_one_note_naming_its_layer_pairs(src, dst):
    def stack(fw):
        nn = models._nn(fw)
        bn = nn.BatchNorm1d if fw == "torch" else nn.BatchNorm1D
        return models._eval(nn.Sequential(*[bn(4) for _ in range(5)]))

    report, *_ = assert_transfer_equivalent(stack, src, dst, [(3, 4)], warm=True)
    notes = [n for n in report.notes if "momentum" in n]
    assert len(notes) == 1 and "(5 layer pairs: 0 (" in notes[0] and "; ..." in notes[0]
