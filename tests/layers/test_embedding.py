"""Embedding: never transposed (square tables too), padding_idx semantics, both directions."""
import numpy as np
import pytest

from layer_models import Case, cases_param, ints, net, nn, run_case
from padiff_lite import assign_weight
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


def _set_row(model, fw, row, value):
    if fw == "torch":
        import torch

        with torch.no_grad():
            model.emb.weight[row] = value
    else:
        import paddle

        w = model.emb.weight.numpy().copy()
        w[row] = value
        model.emb.weight.set_value(paddle.to_tensor(w))


def _table(model, fw):
    return model.emb.weight.detach().numpy() if fw == "torch" else model.emb.weight.numpy()


@pytest.mark.parametrize("src,dst", [("torch", "paddle"), ("paddle", "torch")])
def test_a_non_zero_padding_row_is_copied_and_noted(src, dst):
    """Pretrained tables often have a padding row that was never zeroed: it is copied like any row (no refusal);
    paddle outputs zeros for that token while torch outputs the row, and the report says so."""
    a, b = model(10, 6, padding_idx=2)(src), model(10, 6, padding_idx=2)(dst)
    _set_row(a, src, 2, 0.5)
    report = assign_weight(a, b)
    np.testing.assert_array_equal(_table(a, src), _table(b, dst))
    assert any("padding_idx" in n and "differ for that token" in n for n in report.notes), report.notes
    x = [np.array([[1, 3, 2, 7]], "int64")]
    out_a, out_b = run(a, src, x)[0], run(b, dst, x)[0]
    np.testing.assert_allclose(out_a[0, [0, 1, 3]], out_b[0, [0, 1, 3]], atol=1e-6)  # real tokens agree
    assert np.abs(out_a[0, 2] - out_b[0, 2]).max() > 1e-3  # the padding token is where paddle outputs zeros


@pytest.mark.parametrize("src,dst", [("torch", "paddle"), ("paddle", "torch")])
def test_a_zero_padding_row_gives_equal_outputs_and_no_note(src, dst):
    a, b = model(10, 6, padding_idx=2)(src), model(10, 6, padding_idx=2)(dst)
    report = assign_weight(a, b)
    assert not any("padding_idx" in n for n in report.notes), report.notes
    x = [np.array([[2, 3, 2, 7]], "int64")]
    np.testing.assert_allclose(run(a, src, x)[0], run(b, dst, x)[0], atol=1e-6)


@pytest.mark.parametrize("src,dst", [("torch", "paddle"), ("paddle", "torch")])
def test_convert_copies_the_padding_row_like_assign_weight(src, dst, tmp_path):
    """A table with padding_idx whose pad row was never zeroed converts in both directions (it was refused)."""
    from ckpt_helpers import load, save, state_as_torch
    from padiff_lite import convert_checkpoint

    a = model(10, 6, padding_idx=2)(src)
    _set_row(a, src, 2, 0.5)
    first = tmp_path / ("a.pt" if src == "torch" else "a.pdparams")
    out = tmp_path / ("b.pdparams" if dst == "paddle" else "b.safetensors")
    save(state_as_torch(a, src), first)
    convert_checkpoint(first, out, model(10, 6, padding_idx=2)(src), model(10, 6, padding_idx=2)(dst))
    np.testing.assert_array_equal(load(out)["emb.weight"].numpy(), _table(a, src))  # no refusal, the row as it was
