"""Small model pairs built the same way in torch and paddle, for the demo, the CLI and the tests.

Each builder takes a framework name ("torch" or "paddle") and returns an untrained model in
eval mode. ``PAIRS`` lists them with an input shape.
"""
from __future__ import annotations

import numpy as np


def _nn(framework):
    if framework == "torch":
        import torch

        return torch.nn
    if framework == "paddle":
        import paddle

        return paddle.nn
    raise ValueError(f"framework must be 'torch' or 'paddle', got {framework!r}")


def _base(framework):
    return _nn(framework).Module if framework == "torch" else _nn(framework).Layer


def _eval(model):
    model.eval()
    return model


def mlp(framework="torch"):
    nn = _nn(framework)
    return _eval(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4)))


def conv_bn(framework="torch"):
    nn = _nn(framework)
    conv = nn.Conv2d if framework == "torch" else nn.Conv2D
    bn = nn.BatchNorm2d if framework == "torch" else nn.BatchNorm2D
    pool = nn.AdaptiveAvgPool2d(1) if framework == "torch" else nn.AdaptiveAvgPool2D(1)
    return _eval(nn.Sequential(conv(3, 8, 3, padding=1), bn(8), nn.ReLU(), conv(8, 8, 3, stride=2), bn(8), nn.ReLU(),
                               pool, nn.Flatten(), nn.Linear(8, 5)))


def _lstm(framework, inp, hidden, layers, bidirectional):
    nn = _nn(framework)
    if framework == "torch":
        return nn.LSTM(inp, hidden, num_layers=layers, bidirectional=bidirectional, batch_first=True)
    return nn.LSTM(inp, hidden, num_layers=layers, direction="bidirect" if bidirectional else "forward")


def lstm_net(framework="torch"):
    class LSTMNet(_base(framework)):
        def __init__(self):
            super().__init__()
            nn = _nn(framework)
            self.embed = nn.Linear(6, 12)
            self.rnn = _lstm(framework, 12, 10, 2, True)
            self.head = nn.Linear(20, 3)

        def forward(self, x):
            out, _ = self.rnn(self.embed(x))
            return self.head(out)

    return _eval(LSTMNet())


def _mha(framework, e, heads):
    nn = _nn(framework)
    if framework == "torch":
        return nn.MultiheadAttention(e, heads, batch_first=True)
    return nn.MultiHeadAttention(e, heads)


def attention_net(framework="torch"):
    class AttentionNet(_base(framework)):
        def __init__(self):
            super().__init__()
            nn = _nn(framework)
            self.attn = _mha(framework, 16, 4)
            self.norm = nn.LayerNorm(16)
            self.out = nn.Linear(16, 16)

        def forward(self, x):
            a = self.attn(x, x, x)
            a = a[0] if isinstance(a, tuple) else a
            return self.out(self.norm(x + a))

    return _eval(AttentionNet())


def transformer(framework="torch"):
    class Seq2Seq(_base(framework)):
        def __init__(self):
            super().__init__()
            nn = _nn(framework)
            kw = dict(num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=32, dropout=0.0)
            if framework == "torch":
                self.transformer = nn.Transformer(16, 4, batch_first=True, **kw)
            else:
                self.transformer = nn.Transformer(16, 4, **kw)

        def forward(self, x):
            return self.transformer(x, x)

    return _eval(Seq2Seq())


def tiny_net(framework="torch"):
    """The demo model: convolution, batch norm, an LSTM, attention and a linear head."""

    class TinyNet(_base(framework)):
        def __init__(self):
            super().__init__()
            nn = _nn(framework)
            conv = nn.Conv1d if framework == "torch" else nn.Conv1D
            bn = nn.BatchNorm1d if framework == "torch" else nn.BatchNorm1D
            self.stem = nn.Sequential(conv(8, 32, 3, padding=1), bn(32), nn.ReLU())
            self.rnn = _lstm(framework, 32, 32, 2, True)
            self.attn = _mha(framework, 64, 4)
            self.norm = nn.LayerNorm(64)
            self.head = nn.Linear(64, 10)

        def forward(self, x):  # x: [batch, channels=8, time]
            h = self.stem(x)
            h = h.transpose(1, 2) if framework == "torch" else h.transpose([0, 2, 1])
            h, _ = self.rnn(h)
            a = self.attn(h, h, h)
            a = a[0] if isinstance(a, tuple) else a
            return self.head(self.norm(h + a))

    return _eval(TinyNet())


PAIRS = {
    "mlp": (mlp, (4, 16)),
    "conv_bn": (conv_bn, (2, 3, 12, 12)),
    "lstm": (lstm_net, (2, 7, 6)),
    "attention": (attention_net, (2, 5, 16)),
    "transformer": (transformer, (2, 5, 16)),
    "tiny": (tiny_net, (2, 8, 20)),
}


def warm_up(model, framework, shape, steps=3, seed=0):
    """Run a few training-mode forwards so BatchNorm layers hold real running statistics."""
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        x = (rng.standard_normal(shape) * 2 + 0.5).astype("float32")
        run(model, framework, [x])
    model.eval()
    return model


def run(model, framework, arrays):
    """Forward numpy inputs through a model without gradients; outputs as numpy arrays (flattened)."""
    if framework == "torch":
        import torch

        with torch.no_grad():
            out = model(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
    else:
        import paddle

        with paddle.no_grad():
            out = model(*[paddle.to_tensor(a) for a in arrays])
    return _flatten(out)


def _flatten(out):
    if isinstance(out, (tuple, list)):
        return [a for o in out for a in _flatten(o)]
    if isinstance(out, dict):
        return [a for k in out for a in _flatten(out[k])]
    return [out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)]


# no-argument builders for `python -m padiff_lite check --base ... --raw ...` (the builders above default to torch)
def paddle_mlp():
    return mlp("paddle")


def paddle_tiny_net():
    return tiny_net("paddle")
