"""HuggingFace's BertModel (torch, tiny config) and a PaddleNLP-style port of it on paddle.nn.TransformerEncoder.

The port computes the same function with other names, other nesting and another definition order
(``linear1``/``linear2`` before ``norm1``/``norm2``, ``q_proj``... inside ``MultiHeadAttention``); only the
order in which the layers run is the same. Import transformers before paddleformers if both are needed.
"""
from __future__ import annotations

import numpy as np
import paddle
import paddle.nn as pnn

VOCAB, HIDDEN, LAYERS, HEADS, FFN, MAX_POS, TYPES, LABELS = 100, 32, 2, 4, 64, 64, 2, 3


def hf_config():
    from transformers import BertConfig

    return BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                      intermediate_size=FFN, max_position_embeddings=MAX_POS, type_vocab_size=TYPES,
                      attn_implementation="eager", return_dict=False)


def hf_bert():
    """transformers.BertModel, eval mode, returning (sequence output, pooled output)."""
    from transformers import BertModel

    model = BertModel(hf_config())
    model.eval()
    return model


class PaddleBertEmbeddings(pnn.Layer):
    def __init__(self):
        super().__init__()
        self.word_embeddings = pnn.Embedding(VOCAB, HIDDEN)
        self.position_embeddings = pnn.Embedding(MAX_POS, HIDDEN)
        self.token_type_embeddings = pnn.Embedding(TYPES, HIDDEN)
        self.layer_norm = pnn.LayerNorm(HIDDEN, epsilon=1e-12)
        self.dropout = pnn.Dropout(0.1)

    def forward(self, input_ids, token_type_ids=None):
        if token_type_ids is None:
            token_type_ids = paddle.zeros_like(input_ids)
        positions = paddle.arange(input_ids.shape[1], dtype="int64").unsqueeze(0)
        h = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        h = h + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.layer_norm(h))


class PaddleBertPooler(pnn.Layer):
    def __init__(self):
        super().__init__()
        self.dense = pnn.Linear(HIDDEN, HIDDEN)
        self.activation = pnn.Tanh()

    def forward(self, h):
        return self.activation(self.dense(h[:, 0]))


class PaddleBertModel(pnn.Layer):
    """PaddleNLP's BertModel layout: embeddings, encoder (paddle.nn.TransformerEncoder), pooler."""

    def __init__(self):
        super().__init__()
        self.embeddings = PaddleBertEmbeddings()
        layer = pnn.TransformerEncoderLayer(HIDDEN, HEADS, FFN, dropout=0.1, activation="gelu", attn_dropout=0.1,
                                            act_dropout=0.0, layer_norm_eps=1e-12)
        self.encoder = pnn.TransformerEncoder(layer, LAYERS)
        self.pooler = PaddleBertPooler()

    def forward(self, input_ids, token_type_ids=None):
        h = self.encoder(self.embeddings(input_ids, token_type_ids))
        return h, self.pooler(h)


class PaddleBertForSequenceClassification(pnn.Layer):
    def __init__(self):
        super().__init__()
        self.bert = PaddleBertModel()
        self.dropout = pnn.Dropout(0.1)
        self.classifier = pnn.Linear(HIDDEN, LABELS)

    def forward(self, input_ids, token_type_ids=None):
        _, pooled = self.bert(input_ids, token_type_ids)
        return self.classifier(self.dropout(pooled))


def paddle_bert():
    model = PaddleBertModel()
    model.eval()
    return model


def paddle_bert_classifier():
    model = PaddleBertForSequenceClassification()
    model.eval()
    return model


def torch_bert_classifier():
    """HF BertForSequenceClassification (torch), tiny: the classifier head on the torch side."""
    from transformers import BertForSequenceClassification

    config = hf_config()
    config.num_labels = LABELS
    model = BertForSequenceClassification(config)
    model.eval()
    return model


def token_ids(batch=2, length=9, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, size=(batch, length)).astype("int64")


def outputs(model, ids) -> list[np.ndarray]:
    """Every output tensor of a torch or paddle BERT on ``ids`` as numpy, in order."""
    if isinstance(model, pnn.Layer):
        out = model(paddle.to_tensor(ids))
    else:
        import torch

        with torch.no_grad():
            out = model(torch.from_numpy(ids))
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [o.numpy() if isinstance(o, paddle.Tensor) else o.detach().numpy() for o in out]
