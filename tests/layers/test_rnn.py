"""LSTM, GRU, RNN <-> SimpleRNN and the cells: layers, directions, bias, proj_size, both directions."""
import pytest

from layer_models import Case, cases_param, net, nn, run_case
from padiff_lite import TransferError, assign_weight

PADDLE = {"LSTM": "LSTM", "GRU": "GRU", "RNN": "SimpleRNN"}


def _paddle_bias_kw(bias):
    """A torch bias=False layer corresponds to a paddle layer whose biases are zero (see init_rnn.py)."""
    if bias:
        return {}
    import paddle

    zero = paddle.ParamAttr(initializer=paddle.nn.initializer.Constant(0.0))
    return {"bias_ih_attr": zero, "bias_hh_attr": zero}


def rnn(kind, layers, bidirectional, bias=True, proj=0, act="tanh"):
    def make(fw):
        n = nn(fw)
        if fw == "torch":
            kw = {"proj_size": proj} if proj else {}
            if kind == "RNN":
                kw["nonlinearity"] = act
            return getattr(n, kind)(6, 8, num_layers=layers, bias=bias, batch_first=True,
                                    bidirectional=bidirectional, **kw)
        kw = {"proj_size": proj} if proj else {}
        if kind == "RNN":
            kw["activation"] = act
        return getattr(n, PADDLE[kind])(6, 8, num_layers=layers, direction="bidirect" if bidirectional else "forward",
                                        **kw, **_paddle_bias_kw(bias))

    out = (proj or 8) * (2 if bidirectional else 1)

    def forward(self, x):
        h, _ = self.rnn(self.pre(x))
        return self.post(h)

    return lambda fw: net(fw, forward, pre=lambda f: nn(f).Linear(5, 6), rnn=make,
                          post=lambda f: nn(f).Linear(out, 3))


CASES = []
for kind in ("LSTM", "GRU", "RNN"):
    for layers in (1, 2):
        for bi in (False, True):
            for bias in (True, False):
                CASES.append(Case(f"{kind}-l{layers}-{'bi' if bi else 'uni'}-bias{bias}",
                                  rnn(kind, layers, bi, bias), [(2, 5, 5)], (kind, PADDLE[kind]), atol=1e-5))
CASES += [Case(f"LSTM-l2-{'bi' if bi else 'uni'}-proj4", rnn("LSTM", 2, bi, proj=4), [(2, 5, 5)], ("LSTM", "LSTM"))
          for bi in (False, True)]
CASES.append(Case("RNN-relu", rnn("RNN", 2, True, act="relu"), [(2, 5, 5)], ("RNN", "SimpleRNN")))


def cell(kind, bias=True):
    paddle_cls = {"LSTM": "LSTMCell", "GRU": "GRUCell", "RNN": "SimpleRNNCell"}[kind]

    def make(fw):
        if fw == "torch":
            return getattr(nn(fw), f"{kind}Cell")(6, 8, bias=bias)
        return getattr(nn(fw), paddle_cls)(6, 8, **_paddle_bias_kw(bias))

    def build(fw):
        def forward(self, x):  # unrolled over time so weight_hh takes part
            h, state, outs = self.pre(x), None, []
            for t in range(h.shape[1]):
                if fw == "torch":
                    state = self.cell(h[:, t]) if state is None else self.cell(h[:, t], state)
                    out = state[0] if kind == "LSTM" else state
                else:
                    out, state = self.cell(h[:, t], state)
                outs.append(self.post(out))
            return outs

        return net(fw, forward, pre=lambda f: nn(f).Linear(5, 6), cell=make, post=lambda f: nn(f).Linear(8, 3))

    return build, (f"{kind}Cell", paddle_cls)


for kind in ("LSTM", "GRU", "RNN"):
    for bias in (True, False):
        build, pair = cell(kind, bias)
        CASES.append(Case(f"{kind}Cell-bias{bias}", build, [(2, 4, 5)], pair))


@cases_param(CASES)
def test_recurrent(case, src, dst):
    run_case(case, src, dst)


def test_torch_bias_false_needs_zero_paddle_biases():
    a = rnn("GRU", 1, False, bias=True)("paddle")  # random, non-zero biases
    b = rnn("GRU", 1, False, bias=False)("torch")
    with pytest.raises(TransferError) as e:
        assign_weight(a, b)
    assert "rnn.bias_ih_l0 has values other than 0.0" in str(e.value)  # the state-dict name, not the cell alias


def test_nonlinearity_mismatch_is_refused():
    a, b = rnn("RNN", 1, False, act="relu")("torch"), rnn("RNN", 1, False, act="tanh")("paddle")
    with pytest.raises(TransferError, match="nonlinearity differs: torch 'relu', paddle 'tanh'"):
        assign_weight(a, b)
