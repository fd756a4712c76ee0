"""MultiheadAttention <-> MultiHeadAttention: packed in_proj, separate q/k/v (kdim/vdim), bias off."""
import pytest

from layer_models import Case, cases_param, net, nn, run_case
from padiff_lite import TransferError, assign_weight


def mha(bias=True, kdim=None, vdim=None, **torch_kw):
    def make(fw):
        if fw == "torch":
            return nn(fw).MultiheadAttention(16, 4, bias=bias, batch_first=True, kdim=kdim, vdim=vdim, **torch_kw)
        return nn(fw).MultiHeadAttention(16, 4, kdim=kdim, vdim=vdim, **({} if bias else {"bias_attr": False}))

    def forward(self, q, k=None, v=None):
        h = self.pre(q)
        a = self.attn(h, h if k is None else k, h if v is None else v)
        return self.post(a[0] if isinstance(a, tuple) else a)

    return lambda fw: net(fw, forward, pre=lambda f: nn(f).Linear(16, 16), attn=make,
                          post=lambda f: nn(f).Linear(16, 3))


PAIR = ("MultiheadAttention", "MultiHeadAttention")
CASES = [Case(f"packed-bias{b}", mha(b), [(2, 5, 16)], PAIR) for b in (True, False)]
CASES += [Case(f"kdim10-vdim12-bias{b}", mha(b, 10, 12), [(2, 5, 16), (2, 6, 10), (2, 6, 12)], PAIR)
          for b in (True, False)]
CASES.append(Case("kdim=vdim=10", mha(True, 10, 10), [(2, 5, 16), (2, 6, 10), (2, 6, 10)], PAIR))


@cases_param(CASES)
def test_attention(case, src, dst):
    report, a, b = run_case(case, src, dst)
    assert not any("batch-first" in n for n in report.notes)  # torch is built batch_first=True: nothing to say


@pytest.mark.parametrize("option", ["add_bias_kv", "add_zero_attn"])
@pytest.mark.parametrize("torch_is_base", [True, False])
def test_torch_only_options_are_refused(option, torch_is_base):
    t = mha(True, **{option: True})("torch")
    p = mha(True)("paddle")
    base, raw = (t, p) if torch_is_base else (p, t)
    with pytest.raises(TransferError) as e:
        assign_weight(base, raw)
    msg = str(e.value)
    assert f"{option}=True" in msg and f"build torch with {option}=False" in msg
    assert "attn (MultiheadAttention)" in msg and "attn (MultiHeadAttention)" in msg


def test_head_count_mismatch_is_refused():
    t = nn("torch").Sequential(nn("torch").MultiheadAttention(16, 4, batch_first=True))
    p = nn("paddle").Sequential(nn("paddle").MultiHeadAttention(16, 2))
    with pytest.raises(TransferError, match="num_heads differs: torch 4, paddle 2"):
        assign_weight(t, p)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("src,dst", [("torch", "paddle"), ("paddle", "torch")])
def test_batch_first_caveat_only_where_it_applies(batch_first, src, dst):
    import paddle
    import torch

    from padiff_lite import assign_weight

    t = torch.nn.MultiheadAttention(8, 2, batch_first=batch_first)
    p = paddle.nn.MultiHeadAttention(8, 2)
    a, b = (t, p) if src == "torch" else (p, t)
    report = assign_weight(a, b)
    assert any("batch-first" in n for n in report.notes) == (not batch_first)
