"""What a transfer tells autograd, and tensors with no values (issue 17).

A graph built before a transfer saved the old weights: its backward must refuse (as torch's does after
any in-place write) and a graph built afterwards must give the gradients of the new weights. Paddle's
writes through DLPack views, by address and with set_value do not raise its inplace version; the
executor does. Zero-size tensors (a Linear(16, 0)) transfer in every direction: nothing to copy.
"""
from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch

from helpers import DIRECTION_IDS, DIRECTIONS, NN, Base, inputs_for, max_abs_diff
from padiff_lite import assign_weight, init_weights
from padiff_lite.execute import BULK_MIN_GROUP, PARALLEL_MIN_ELEMENTS
from padiff_lite.models import run


def layers(fw):
    """Small alike Linears (moved as a group, by address), one big Linear (the thread pool / C kernel)."""
    nn = NN[fw]
    small = [nn.Linear(8, 8) for _ in range(BULK_MIN_GROUP)]
    big = nn.Linear(1024, 1024)
    assert 1024 * 1024 >= PARALLEL_MIN_ELEMENTS
    return nn.Sequential(*small, big)


def tensor(fw, x):
    if fw == "torch":
        return torch.from_numpy(x).requires_grad_()
    return paddle.to_tensor(x, stop_gradient=False)


def input_grad(fw, layer, x):
    """d sum(layer(x)) / dx, as numpy."""
    xt = tensor(fw, x)
    layer(xt).sum().backward()
    return xt.grad.numpy()


@pytest.mark.parametrize("src,dst", DIRECTIONS + [("torch", "torch"), ("paddle", "paddle")],
                         ids=DIRECTION_IDS + ["torch->torch", "paddle->paddle"])
def test_a_graph_built_before_the_transfer_refuses_backward_and_a_new_one_uses_the_new_weights(src, dst):
    a, b = layers(src), layers(dst)
    xs = [inputs_for([(2, 1024 if i == len(b) - 1 else 8)], seed=i)[0] for i in range(len(b))]
    old = [b[i](tensor(dst, x)) for i, x in enumerate(xs)]  # one graph per layer: every path is checked
    assign_weight(a, b)
    for i, y in enumerate(old):
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()
    for i, x in enumerate(xs):  # recomputed: the base's gradients
        np.testing.assert_allclose(input_grad(dst, b[i], x), input_grad(src, a[i], x), rtol=1e-5, atol=1e-5)


def test_init_weights_on_paddle_breaks_older_graphs_as_on_torch():
    for fw in ("torch", "paddle"):
        m = NN[fw].Linear(4, 3)
        y = m(tensor(fw, inputs_for([(2, 4)])[0]))
        init_weights(m, "xavier")
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()


def with_empty(fw):
    """Linear(4, 3), then Linear(3, 0) (zero-size weight and bias) and Linear(0, 3) (zero-size weight): the
    output concatenates the first and the last, so it depends on every tensor that holds values."""
    nn = NN[fw]

    class WithEmpty(Base(fw)):
        def __init__(self):
            super().__init__()
            self.fc, self.empty, self.from_empty = nn.Linear(4, 3), nn.Linear(3, 0), nn.Linear(0, 3)
            bias = self.from_empty.bias
            if fw == "torch":
                with torch.no_grad():
                    bias.copy_(torch.randn(3))
            else:
                bias.set_value(paddle.randn([3]))

        def forward(self, x):
            h = self.fc(x)
            e = self.empty(h)  # [batch, 0]
            out = self.from_empty(e)  # the bias, for every row
            return torch.cat([h, e, out], -1) if fw == "torch" else paddle.concat([h, e, out], -1)

    return WithEmpty()


@pytest.mark.parametrize("src,dst", DIRECTIONS + [("torch", "torch"), ("paddle", "paddle")],
                         ids=DIRECTION_IDS + ["torch->torch", "paddle->paddle"])
def test_zero_size_tensors_transfer_in_every_direction(src, dst):
    a, b = with_empty(src), with_empty(dst)
    x = inputs_for([(2, 4)])
    assert max_abs_diff(run(a, src, x), run(b, dst, x)) > 1e-3
    report = assign_weight(a, b)
    assert report.tensors == 6
    assert max_abs_diff(run(a, src, x), run(b, dst, x)) <= 1e-6
    shapes = {k: list(v.shape) for k, v in b.state_dict().items()}
    assert shapes["empty.weight"] == ([0, 3] if dst == "torch" else [3, 0]) and shapes["empty.bias"] == [0]
