"""Embedding: never transposed (square tables too), padding_idx semantics, both directions."""
import numpy as np
import pytest

from helpers import inputs_for
from layer_models import Case, cases_param, ints, net, nn, run_case
from padiff_lite import TransferError, assign_weight
from padiff_lite.models import run


def model(num, dim, padding_idx=None):
    def forward(self, ids):
        return self.head(self.emb(ids))

    return lambda fw: net(fw, forward, emb=lambda f: nn(f).Embedding(num, dim, padding_idx=padding_idx),
                          head=lambda f: nn(f).Linear(dim, 3))


CASES = [
    Case("plain", model(10, 6), [], ("Embedding", "Embedding"), inputs=ints((3, 5), 10)),
    Case("square", model(6, 6), [], ("Embedding", "Embedding"), inputs=ints((3, 5), 6)),
    Case("padding_idx", model(10, 6, padding_idx=2), [], ("Embedding", "Embedding"),
         inputs=lambda: [np.array([[2, 1, 2, 7], [0, 2, 9, 3]], "int64")]),
    Case("padding_idx-negative", model(10, 6, padding_idx=-1), [], ("Embedding", "Embedding"),
         inputs=lambda: [np.array([[9, 1, 2, 9]], "int64")]),
]


@cases_param(CASES)
def test_embedding(case, src, dst):
    report, a, b = run_case(case, src, dst)
    wa = a.emb.weight.detach().numpy() if src == "torch" else a.emb.weight.numpy()
    wb = b.emb.weight.detach().numpy() if dst == "torch" else b.emb.weight.numpy()
    np.testing.assert_array_equal(wa, wb)  # the table itself, never transposed


def test_torch_padding_row_must_be_zero_for_paddle():
    import torch

    a, b = model(10, 6, padding_idx=2)("torch"), model(10, 6, padding_idx=2)("paddle")
    with torch.no_grad():
        a.emb.weight[2] = 1.0
    with pytest.raises(TransferError) as e:
        assign_weight(a, b)
    assert "emb.weight rows [2:3] has values other than 0.0" in str(e.value)


def test_paddle_padding_row_becomes_zero_in_torch():
    import paddle

    a, b = model(10, 6, padding_idx=2)("paddle"), model(10, 6, padding_idx=2)("torch")
    w = a.emb.weight.numpy().copy()
    w[2] = 1.0  # paddle outputs zeros at padding_idx whatever the row holds
    a.emb.weight.set_value(paddle.to_tensor(w))
    assign_weight(a, b)
    assert np.abs(b.emb.weight.detach().numpy()[2]).max() == 0
    x = [np.array([[2, 3, 2]], "int64")]
    np.testing.assert_allclose(run(a, "paddle", x)[0], run(b, "torch", x)[0], atol=1e-6)
