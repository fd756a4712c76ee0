"""A small BERT-like encoder built the same way in torch and paddle, for partial-transfer tests and docs.

- ``bert_pretraining(fw)``: ``bert`` (embeddings with a padding row, 2 transformer blocks, a pooler)
  plus ``cls``, an MLM head whose decoder is tied to the word embeddings: torch ties a Linear's weight
  as HF does (``decoder.weight = word_embeddings.weight``); paddle shares the Parameter and multiplies
  with ``transpose_y=True`` as PaddleNLP does (``decoder_weight``, ``decoder_bias``).
- ``bert_classifier(fw)``: the same encoder without pooler or MLM head, with a new
  ``segment_embeddings`` table and a new ``classifier`` head (dense, LayerNorm, out).

``register_rules(pool)`` registers the mapping rule for the two MLM heads (torch BertLMHead <-> paddle
BertLMHead): the decoder weight is [vocab, hidden] in both, so it is copied without a transpose. Importing
this module registers nothing; a transfer between two pretraining models needs the rule registered first.
"""
from __future__ import annotations

import math

from .special_init import Map

VOCAB, HIDDEN, HEADS, FFN, MAX_POS, PAD = 100, 64, 4, 128, 32, 1
SEGMENTS, HEAD_DIM, LABELS = 32, 256, 4


class _Ops:
    """The few tensor operations whose spelling differs between the frameworks."""

    def __init__(self, fw):
        self.fw = fw
        if fw == "torch":
            import torch

            self.nn, self.F, self.lib = torch.nn, torch.nn.functional, torch
            self.Base = torch.nn.Module
        elif fw == "paddle":
            import paddle

            self.nn, self.F, self.lib = paddle.nn, paddle.nn.functional, paddle
            self.Base = paddle.nn.Layer
        else:
            raise ValueError(f"framework must be 'torch' or 'paddle', got {fw!r}")

    def layer_norm(self, n):
        return self.nn.LayerNorm(n, eps=1e-12) if self.fw == "torch" else self.nn.LayerNorm(n, epsilon=1e-12)

    def heads(self, x):  # [B, T, H] -> [B, heads, T, head_dim]
        b, t = x.shape[0], x.shape[1]
        x = x.reshape([b, t, HEADS, HIDDEN // HEADS])
        return x.permute(0, 2, 1, 3) if self.fw == "torch" else x.transpose([0, 2, 1, 3])

    def merge(self, x):  # [B, heads, T, head_dim] -> [B, T, H]
        x = x.permute(0, 2, 1, 3) if self.fw == "torch" else x.transpose([0, 2, 1, 3])
        return x.reshape([x.shape[0], x.shape[1], HIDDEN])

    def matmul_t(self, a, b):  # a @ b^T over the last two dims
        if self.fw == "torch":
            return self.lib.matmul(a, b.transpose(-1, -2))
        return self.lib.matmul(a, b, transpose_y=True)

    def positions(self, t):
        return self.lib.arange(t)


def _classes(fw):
    ops = _Ops(fw)
    nn, F = ops.nn, ops.F

    class BertEmbeddings(ops.Base):
        def __init__(self, segments=False):
            super().__init__()
            self.word_embeddings = nn.Embedding(VOCAB, HIDDEN, padding_idx=PAD)
            self.position_embeddings = nn.Embedding(MAX_POS, HIDDEN)
            if segments:
                self.segment_embeddings = nn.Embedding(SEGMENTS, HIDDEN, padding_idx=0)
            self.LayerNorm = ops.layer_norm(HIDDEN)

        def forward(self, ids, segment_ids=None):
            h = self.word_embeddings(ids) + self.position_embeddings(ops.positions(ids.shape[1]))
            if segment_ids is not None:
                h = h + self.segment_embeddings(segment_ids)
            return self.LayerNorm(h)

    class BertBlock(ops.Base):
        def __init__(self):
            super().__init__()
            self.query, self.key, self.value = nn.Linear(HIDDEN, HIDDEN), nn.Linear(HIDDEN, HIDDEN), nn.Linear(HIDDEN, HIDDEN)
            self.output = nn.Linear(HIDDEN, HIDDEN)
            self.attn_norm = ops.layer_norm(HIDDEN)
            self.ffn_in, self.ffn_out = nn.Linear(HIDDEN, FFN), nn.Linear(FFN, HIDDEN)
            self.ffn_norm = ops.layer_norm(HIDDEN)

        def forward(self, h):
            q, k, v = ops.heads(self.query(h)), ops.heads(self.key(h)), ops.heads(self.value(h))
            scores = F.softmax(ops.matmul_t(q, k) / math.sqrt(HIDDEN // HEADS), -1)
            h = self.attn_norm(h + self.output(ops.merge(ops.lib.matmul(scores, v))))
            return self.ffn_norm(h + self.ffn_out(F.gelu(self.ffn_in(h))))

    class BertPooler(ops.Base):
        def __init__(self):
            super().__init__()
            self.dense = nn.Linear(HIDDEN, HIDDEN)

        def forward(self, h):
            return ops.lib.tanh(self.dense(h[:, 0]))

    class BertEncoder(ops.Base):
        def __init__(self, layers=2):
            super().__init__()
            self.layers = (nn.ModuleList if fw == "torch" else nn.LayerList)([BertBlock() for _ in range(layers)])

        def forward(self, h):
            for layer in self.layers:
                h = layer(h)
            return h

    class BertModel(ops.Base):
        """forward(ids[, segment_ids]) -> sequence output, or (sequence output, pooled) with a pooler."""

        def __init__(self, pooler=True, segments=False):
            super().__init__()
            self.embeddings = BertEmbeddings(segments)
            self.encoder = BertEncoder()
            if pooler:
                self.pooler = BertPooler()

        def forward(self, ids, segment_ids=None):
            h = self.encoder(self.embeddings(ids, segment_ids))
            return (h, self.pooler(h)) if hasattr(self, "pooler") else h

    class BertLMHead(ops.Base):
        def __init__(self, embedding_weight=None):
            super().__init__()
            self.transform = nn.Linear(HIDDEN, HIDDEN)
            self.LayerNorm = ops.layer_norm(HIDDEN)
            if fw == "torch":
                self.decoder = nn.Linear(HIDDEN, VOCAB)
                if embedding_weight is not None:
                    self.decoder.weight = embedding_weight  # HF's tie_weights
            else:
                self.decoder_weight = embedding_weight if embedding_weight is not None else \
                    self.create_parameter([VOCAB, HIDDEN])
                self.decoder_bias = self.create_parameter([VOCAB], is_bias=True)

        def forward(self, h):
            h = self.LayerNorm(F.gelu(self.transform(h)))
            if fw == "torch":
                return self.decoder(h)
            return ops.lib.matmul(h, self.decoder_weight, transpose_y=True) + self.decoder_bias

    class BertForPreTraining(ops.Base):
        def __init__(self, tie=True):
            super().__init__()
            self.bert = BertModel(pooler=True)
            self.cls = BertLMHead(self.bert.embeddings.word_embeddings.weight if tie else None)

        def forward(self, ids):
            h, pooled = self.bert(ids)
            return self.cls(h), pooled

    class ClassifierHead(ops.Base):
        def __init__(self):
            super().__init__()
            self.dense = nn.Linear(HIDDEN, HEAD_DIM)
            self.LayerNorm = ops.layer_norm(HEAD_DIM)
            self.out = nn.Linear(HEAD_DIM, LABELS)

        def forward(self, h):
            return self.out(self.LayerNorm(ops.lib.tanh(self.dense(h))))

    class BertForClassification(ops.Base):
        def __init__(self):
            super().__init__()
            self.bert = BertModel(pooler=False, segments=True)
            self.classifier = ClassifierHead()

        def forward(self, ids, segment_ids=None):
            return self.classifier(self.bert(ids, segment_ids)[:, 0])

    return BertForPreTraining, BertForClassification


def bert_pretraining(fw="torch", tie=True):
    """The pretrained side: encoder, pooler and an MLM head tied (or not) to the word embeddings."""
    model = _classes(fw)[0](tie)
    model.eval()
    return model


def bert_classifier(fw="torch"):
    """The fine-tuning side: the same encoder without pooler/MLM head, new segment embeddings and classifier."""
    model = _classes(fw)[1]()
    model.eval()
    return model


def register_rules(pool=None):
    """Register the BertLMHead rule (both directions) in ``pool`` (default: the global ``init_pool``).

    Calling it again is harmless; a different rule already registered for these classes is a RegistryError.
    """
    from .special_init import registry

    pool = registry(pool)
    key = ("torch", "BertLMHead", "paddle", "BertLMHead")
    if key in pool and pool[key].func is bert_lm_head:
        return pool
    pool.register_maps(*key, note="transform Linear transposed; decoder [vocab, hidden] copied as is (tied to "
                       "embeddings)")(bert_lm_head)
    return pool


def bert_lm_head(module, layer):
    """The mapping rule for the two MLM heads (see :func:`register_rules`)."""
    return [
        Map("transform.weight", "transform.weight", "transpose"),
        Map("transform.bias", "transform.bias"),
        Map("LayerNorm.weight", "LayerNorm.weight"),
        Map("LayerNorm.bias", "LayerNorm.bias"),
        Map("decoder.weight", "decoder_weight"),
        Map("decoder.bias", "decoder_bias"),
    ]
