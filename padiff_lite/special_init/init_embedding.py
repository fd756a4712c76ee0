"""Embedding: the table is [num_embeddings, dim] in both frameworks and is never transposed,
square or not.

padding_idx differs in meaning: torch only zeroes that row at construction and reads it like any
other; paddle outputs zeros for padding_idx whatever the row holds. So torch -> paddle requires
the torch row to be zero (else the outputs would differ), and paddle -> torch writes zeros into
torch's row (that is what paddle computes).
"""
from . import Map, init_pool


def _padding_row(layer):
    p = getattr(layer, "_padding_idx", None)
    if p is None:
        return None
    return p + layer._num_embeddings if p < 0 else p


@init_pool.register_maps(
    "torch", "Embedding", "paddle", "Embedding",
    note="weight [num, dim] copied as it is (never transposed); with a paddle padding_idx the row must be zero "
         "in torch (paddle -> torch writes zeros there)",
    caveat="torch max_norm/scale_grad_by_freq/sparse are not weights; paddle outputs zeros at padding_idx "
           "whatever the table row holds",
    caveat_when=lambda module, layer: (module.padding_idx is not None or _padding_row(layer) is not None
                                       or module.max_norm is not None or module.scale_grad_by_freq or module.sparse),
)
def embedding(module, layer):
    maps = [Map("weight", "weight")]
    row = _padding_row(layer)
    if row is not None:
        maps.append(Map("weight", None, value=0.0, src_rows=(row, row + 1)))
    return maps
