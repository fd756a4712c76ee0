"""TransformerEncoderLayer/DecoderLayer (norm placement, activation) and the full Transformer."""
import pytest

from layer_models import Case, cases_param, net, nn, run_case
from padiff_lite import TransferError, assign_weight

KW = dict(dim_feedforward=24, dropout=0.0)


def encoder_layer(norm_first=False, activation="relu"):
    def make(fw):
        if fw == "torch":
            return nn(fw).TransformerEncoderLayer(16, 4, batch_first=True, norm_first=norm_first,
                                                  activation=activation, **KW)
        return nn(fw).TransformerEncoderLayer(16, 4, normalize_before=norm_first, activation=activation, **KW)

    return lambda fw: net(fw, lambda self, x: self.post(self.layer(self.pre(x))),
                          pre=lambda f: nn(f).Linear(6, 16), layer=make, post=lambda f: nn(f).Linear(16, 3))


def decoder_layer(norm_first=False, activation="relu"):
    def make(fw):
        if fw == "torch":
            return nn(fw).TransformerDecoderLayer(16, 4, batch_first=True, norm_first=norm_first,
                                                  activation=activation, **KW)
        return nn(fw).TransformerDecoderLayer(16, 4, normalize_before=norm_first, activation=activation, **KW)

    def forward(self, x, memory):
        return self.post(self.layer(self.pre(x), memory))

    return lambda fw: net(fw, forward, pre=lambda f: nn(f).Linear(6, 16), layer=make,
                          post=lambda f: nn(f).Linear(16, 3))


def transformer(fw):
    def make(f):
        if f == "torch":
            return nn(f).Transformer(16, 4, 1, 1, batch_first=True, **KW)
        return nn(f).Transformer(16, 4, 1, 1, **KW)

    return net(fw, lambda self, x, y: self.post(self.t(self.pre(x), y)), pre=lambda f: nn(f).Linear(6, 16),
               t=make, post=lambda f: nn(f).Linear(16, 3))


ENC, DEC = ("TransformerEncoderLayer",) * 2, ("TransformerDecoderLayer",) * 2
CASES = [Case(f"encoder-norm_first{nf}-{act}", encoder_layer(nf, act), [(2, 5, 6)], ENC)
         for nf in (False, True) for act in ("relu", "gelu")]
CASES += [Case(f"decoder-norm_first{nf}", decoder_layer(nf), [(2, 5, 6), (2, 7, 16)], DEC) for nf in (False, True)]
CASES.append(Case("transformer-1+1", transformer, [(2, 5, 6), (2, 4, 16)], DEC, atol=1e-4))


@cases_param(CASES)
def test_transformer_layers(case, src, dst):
    report, a, b = run_case(case, src, dst)
    assert not any("batch-first" in n for n in report.notes)  # torch is built batch_first=True: nothing to say


def test_cross_attention_is_named_not_positioned():
    report, *_ = run_case(CASES[4], "torch", "paddle")
    assert [p.how for p in report.pairs if p.base_class == "TransformerDecoderLayer"] == ["name"]


@pytest.mark.parametrize("what", ["norm_first", "activation"])
def test_settings_weights_cannot_carry_are_refused(what):
    t = encoder_layer(norm_first=what == "norm_first", activation="gelu" if what == "activation" else "relu")("torch")
    p = encoder_layer()("paddle")
    with pytest.raises(TransferError) as e:
        assign_weight(t, p)
    msg = str(e.value)
    assert ("norm placement" in msg) if what == "norm_first" else ("activation differs: torch 'gelu', paddle 'relu'" in msg)
    assert "layer (TransformerEncoderLayer) -> layer (TransformerEncoderLayer)" in msg
