"""Issue 3 "done when": three models a new user would port, each both ways with matching outputs.

Built the way a user writes them (framework defaults where the frameworks agree; torch
batch_first=True because paddle is batch-first), transferred with create_model + assign_weight.
"""
import pytest

from helpers import DIRECTION_IDS, DIRECTIONS, assert_transfer_equivalent, tensors_to_write
from layer_models import net, nn


def transformer(fw):
    if fw == "torch":
        t = nn(fw).Transformer(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=2,
                               dim_feedforward=64, batch_first=True)
    else:
        t = nn(fw).Transformer(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=64)
    return t.eval()


def gru_model(fw):
    def make(f):
        if f == "torch":
            return nn(f).GRU(8, 16, num_layers=2, bidirectional=True, batch_first=True)
        return nn(f).GRU(8, 16, num_layers=2, direction="bidirect")

    def forward(self, x):
        out, h = self.gru(self.embed(x))
        return self.head(out), h

    return net(fw, forward, embed=lambda f: nn(f).Linear(5, 8), gru=make, head=lambda f: nn(f).Linear(32, 4))


def conv_stack(fw):
    n = nn(fw)
    if fw == "torch":
        return n.Sequential(n.Conv2d(3, 8, 3, padding=1), n.InstanceNorm2d(8), n.PReLU(8),
                            n.Conv2d(8, 8, 3, padding=1, groups=2), n.GroupNorm(4, 8), n.PReLU(),
                            n.Conv2d(8, 4, 1)).eval()
    return n.Sequential(n.Conv2D(3, 8, 3, padding=1), n.InstanceNorm2D(8), n.PReLU(8),
                        n.Conv2D(8, 8, 3, padding=1, groups=2), n.GroupNorm(4, 8), n.PReLU(),
                        n.Conv2D(8, 4, 1)).eval()


MODELS = {
    "transformer": (transformer, [(2, 6, 32), (2, 5, 32)]),
    "gru-2layer-bidirectional": (gru_model, [(3, 7, 5)]),
    "conv-instancenorm-groupnorm-prelu": (conv_stack, [(2, 3, 10, 10)]),
}


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
@pytest.mark.parametrize("name", list(MODELS))
def test_ports_both_ways(name, src, dst):
    build, shapes = MODELS[name]
    report, a, b = assert_transfer_equivalent(build, src, dst, shapes, atol=1e-4)
    assert report.tensors == tensors_to_write(b) and not report.missing and not report.unexpected
    assert "default" not in report.rules_used  # every parameterised layer went through its rule
