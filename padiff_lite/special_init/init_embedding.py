"""Embedding: the table is [num_embeddings, dim] in both frameworks and is never transposed,
square or not.

padding_idx differs in meaning: torch only zeroes that row at construction and reads it like any
other; paddle outputs zeros for padding_idx whatever the row holds. The row is copied like every
other row, in both directions (pretrained tables often carry a non-zero padding row that was never
zeroed); when the paddle layer has a padding_idx and the row is not zero, the report says that the
two models' outputs differ for that token.
"""
from . import Map, init_pool

_WEIGHT = Map("weight", "weight")


def _padding_row(layer):
    p = getattr(layer, "_padding_idx", None)
    if p is None:
        return None
    return p + layer._num_embeddings if p < 0 else p


def _row_nonzero(table, row) -> bool:
    """Whether ``table[row]`` holds anything but zeros; True when it cannot be read (no storage yet)."""
    try:
        import numpy as np

        return bool(np.any(np.asarray(table[row].numpy()) != 0))
    except Exception:  # a meta-device / LazyGuard table (checkpoint conversion): the values are unknown
        return True


def _caveat_applies(module, layer) -> bool:
    if module.max_norm is not None or module.scale_grad_by_freq or module.sparse:
        return True
    row = _padding_row(layer)
    if row is None:
        return False
    return _row_nonzero(module.weight.detach(), row) or _row_nonzero(layer.weight, row)


@init_pool.register_maps(
    "torch", "Embedding", "paddle", "Embedding",
    note="weight [num, dim] copied as it is (never transposed), the padding row included",
    caveat="paddle outputs zeros at its padding_idx whatever the table row holds, torch outputs the row: the row is "
           "not zero (or, in a checkpoint conversion, its values were not at hand to check), so the outputs differ for that token (zero the row on both sides to make them agree; with an "
           "attention mask, outputs at real tokens do not depend on it); torch max_norm/scale_grad_by_freq/sparse "
           "are not weights",
    caveat_when=_caveat_applies,
)
def embedding(module, layer):
    return [_WEIGHT]
