"""Transformer layers: composed from the attention, Linear and LayerNorm rules.

torch's decoder cross-attention is ``multihead_attn``, paddle's ``cross_attn``; the rule names them
instead of relying on pairing by position. Settings that weights cannot carry are checked:
torch norm_first <-> paddle normalize_before, and the activation.
The containers (Transformer, TransformerEncoder, TransformerDecoder) need no rule: their children
(layers.N, norm) have the same names in both frameworks and pair by name.
"""
from dataclasses import replace

from . import init_pool
from .init_attention import CAVEAT, multihead_attention
from .init_linear import linear
from .init_norm import layer_norm
from .maps import require_same


def _prefixed(prefix_t, prefix_p, maps):
    return [replace(m, src=m.src and prefix_t + m.src, dst=m.dst and prefix_p + m.dst) for m in maps]


def _act_name(act):
    return getattr(act, "__name__", type(act).__name__).lower().lstrip("_")


def _layer(module, layer, attn_pairs, norms):
    require_same("norm placement (torch norm_first / paddle normalize_before)", bool(module.norm_first),
                 bool(layer.normalize_before), "build torch with norm_first equal to paddle's normalize_before")
    require_same("activation", _act_name(module.activation), _act_name(layer.activation),
                 "build both with the same activation")
    maps = []
    for t, p in attn_pairs:
        maps += _prefixed(t + ".", p + ".", multihead_attention(getattr(module, t), getattr(layer, p)))
    for name in ("linear1", "linear2"):
        maps += _prefixed(name + ".", name + ".", linear(getattr(module, name), getattr(layer, name)))
    for name in norms:
        maps += _prefixed(name + ".", name + ".", layer_norm(getattr(module, name), getattr(layer, name)))
    return maps


@init_pool.register_maps("torch", "TransformerEncoderLayer", "paddle", "TransformerEncoderLayer", caveat=CAVEAT,
                         caveat_when=lambda module, layer: not module.self_attn.batch_first,
                         note="self_attn as MultiheadAttention, linear1/linear2 as Linear, norm1/norm2 as LayerNorm; "
                              "norm_first <-> normalize_before and activation checked")
def encoder_layer(module, layer):
    return _layer(module, layer, [("self_attn", "self_attn")], ("norm1", "norm2"))


@init_pool.register_maps("torch", "TransformerDecoderLayer", "paddle", "TransformerDecoderLayer", caveat=CAVEAT,
                         caveat_when=lambda module, layer: not module.self_attn.batch_first,
                         note="self_attn, multihead_attn <-> cross_attn as MultiheadAttention, linear1/linear2, "
                              "norm1-3; norm_first <-> normalize_before and activation checked")
def decoder_layer(module, layer):
    return _layer(module, layer, [("self_attn", "self_attn"), ("multihead_attn", "cross_attn")],
                  ("norm1", "norm2", "norm3"))
