"""Small model pairs built the same way in torch and paddle, for the demo, the CLI and the README's examples (models
only the tests use are in ``tests/fixtures/``).

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
def paddle_tiny_net():
    return tiny_net("paddle")


# -- a Llama-like decoder (README, bench/bench_convert.py) ------------------------------------------------
LLAMA_SMALL = dict(vocab=256, dim=64, layers=2, hidden=160, heads=4)


def llama(framework="torch", vocab=256, dim=64, layers=2, hidden=160, heads=4, eps=1e-6):
    """A Llama-like decoder: embedding, blocks of RMSNorm + q/k/v/o attention + RMSNorm + gate/up/down MLP,
    a final RMSNorm and an untied lm_head. No rotary embedding: the weights, not the model, are the point."""
    nn = _nn(framework)
    Base = _base(framework)
    pt = framework == "torch"

    def linear(i, o):
        return nn.Linear(i, o, bias=False) if pt else nn.Linear(i, o, bias_attr=False)

    class RMSNorm(Base):
        def __init__(self):
            super().__init__()
            if pt:
                import torch

                self.weight = nn.Parameter(torch.ones(dim))
            else:
                self.weight = self.create_parameter([dim], default_initializer=nn.initializer.Constant(1.0))

        def forward(self, x):
            if pt:
                import torch

                return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * self.weight
            import paddle

            return x * paddle.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * self.weight

    class Attention(Base):
        def __init__(self):
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj, self.o_proj = (linear(dim, dim) for _ in range(4))

        def forward(self, x):
            b, s, _ = x.shape
            d = dim // heads

            def split(t):
                t = t.reshape([b, s, heads, d])
                return t.transpose(1, 2) if pt else t.transpose([0, 2, 1, 3])

            q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
            if pt:
                import torch

                att = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, -1) @ v
                return self.o_proj(att.transpose(1, 2).reshape(b, s, dim))
            import paddle

            att = paddle.matmul(paddle.nn.functional.softmax(paddle.matmul(q, k, transpose_y=True) / d ** 0.5, -1), v)
            return self.o_proj(att.transpose([0, 2, 1, 3]).reshape([b, s, dim]))

    class MLP(Base):
        def __init__(self):
            super().__init__()
            self.gate_proj, self.up_proj, self.down_proj = linear(dim, hidden), linear(dim, hidden), linear(hidden, dim)

        def forward(self, x):
            act = nn.functional.silu(self.gate_proj(x))
            return self.down_proj(act * self.up_proj(x))

    class Block(Base):
        def __init__(self):
            super().__init__()
            self.input_layernorm, self.self_attn = RMSNorm(), Attention()
            self.post_attention_layernorm, self.mlp = RMSNorm(), MLP()

        def forward(self, x):
            x = x + self.self_attn(self.input_layernorm(x))
            return x + self.mlp(self.post_attention_layernorm(x))

    class LlamaLike(Base):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(vocab, dim)
            self.layers = (nn.ModuleList if pt else nn.LayerList)([Block() for _ in range(layers)])
            self.norm = RMSNorm()
            self.lm_head = linear(dim, vocab)

        def forward(self, ids):
            x = self.embed_tokens(ids)
            for block in self.layers:
                x = block(x)
            return self.lm_head(self.norm(x))

    return _eval(LlamaLike())


def llama_torch():
    return llama("torch", **LLAMA_SMALL)


def llama_paddle():
    return llama("paddle", **LLAMA_SMALL)
