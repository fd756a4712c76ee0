"""Pairing of modules without tensors: torch's InstanceNorm(affine=False) holds nothing, paddle's holds
scale/bias, and parameterless activations exist on one side only (PaDiff issue #100)."""
import pytest

from helpers import DIRECTION_IDS, DIRECTIONS, assert_transfer_equivalent
from layer_models import net, nn


def model(fw):
    """Same layers, different names and an activation module only on the torch side."""
    conv = (lambda f: nn(f).Conv2d(3, 6, 3)) if fw == "torch" else (lambda f: nn(f).Conv2D(3, 6, 3))
    head = (lambda f: nn(f).Conv2d(6, 2, 1)) if fw == "torch" else (lambda f: nn(f).Conv2D(6, 2, 1))
    if fw == "torch":
        return net(fw, lambda self, x: self.head(self.inorm(self.act(self.conv(x)))), conv=conv,
                   act=lambda f: nn(f).ReLU(), inorm=lambda f: nn(f).InstanceNorm2d(6), head=head)
    import paddle.nn.functional as F

    return net(fw, lambda self, x: self.head(self.norm(F.relu(self.conv(x)))), conv=conv,
               norm=lambda f: nn(f).InstanceNorm2D(6), head=head)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_renamed_instance_norm_without_tensors_pairs_by_position(src, dst):
    report, a, b = assert_transfer_equivalent(model, src, dst, [(2, 3, 7, 7)])
    pair = [p for p in report.pairs if "InstanceNorm" in p.base_class]
    assert len(pair) == 1 and pair[0].how == "order" and pair[0].rule.startswith("mapping")
    assert not report.missing and not report.unexpected
