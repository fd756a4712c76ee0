"""transformers' on-disk (Hub) layout <-> its in-memory layout, with transformers' own conversion tables.

transformers 5 stores some families on disk differently from memory: MoE experts one per expert
(``experts.N.gate_proj.weight``) where memory packs ``experts.gate_up_proj [E, ...]``, renamed tensors, VL models
as ``model.layers.*`` / ``visual.*`` where memory has ``model.language_model.*`` / ``model.visual.*``. Its tables
(``transformers.conversion_mapping.get_model_conversion_mapping``: ``WeightRenaming`` and ``WeightConverter`` entries
whose operations know their reverse) describe the mapping; this module applies them, so a family transformers adds
is read without our code changing:

- :func:`to_memory` (what ``from_pretrained`` does to a Hub state dict before loading it);
- :func:`to_disk` (what ``save_pretrained`` writes: transformers' own ``revert_weight_conversion``).

Both take the transformers model (only its class and config are read: a model without storage works) and a dict of
torch tensors, and return a new dict; nothing is written. With transformers 4.x (no conversion tables: disk and
memory agree) and for families without a table, the dict comes back as it is. Nothing here is imported by the
pipeline: checkpoint readers call it for transformers models.
"""
from __future__ import annotations

from copy import deepcopy

from .errors import CheckpointError


def _tables(model):
    """transformers' conversions for ``model`` (load direction), or None (transformers 4.x, or none registered)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
    except ImportError:  # transformers 4.x: the disk and memory layouts agree
        return None
    conversions = get_model_conversion_mapping(model, add_legacy=False)
    return conversions or None


def to_memory(model, state: dict) -> dict:
    """The Hub-layout ``state`` (tensor name -> torch tensor) in ``model``'s in-memory layout."""
    conversions = _tables(model)
    return state if conversions is None else _apply(model, conversions, state, "read")


def to_disk(model, state: dict) -> dict:
    """``model``'s in-memory ``state`` in the layout ``save_pretrained`` writes (the Hub's)."""
    if _tables(model) is None:
        return state
    from transformers.core_model_loading import revert_weight_conversion

    try:
        return dict(revert_weight_conversion(model, dict(state)))
    except Exception as exc:  # transformers' own converters refused the tensors: say which model and why
        raise CheckpointError(f"transformers could not write {type(model).__name__}'s tensors in its on-disk layout "
                              f"({type(exc).__name__}: {exc}); check that the state dict is this model's") from exc


def _apply(model, conversions, state: dict, what: str) -> dict:
    """Apply transformers' conversion entries to ``state`` the way ``revert_weight_conversion`` applies their
    reverses: each key renamed (and grouped under its converter when a converter's pattern matches), then every
    converter run on its group."""
    from transformers.core_model_loading import WeightConverter, WeightRenaming, dot_natural_key, rename_source_key

    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    by_pattern = {p: c for c in converters for p in c.source_patterns}
    groups: dict = {}
    for key, tensor in sorted(state.items(), key=lambda kv: dot_natural_key(kv[0])):
        renamed, pattern = rename_source_key(key, renamings, converters)
        if pattern is not None:
            entry = groups.setdefault(renamed, deepcopy(by_pattern[pattern]))
        else:
            entry = groups.setdefault(renamed, WeightRenaming(key, renamed))
            pattern = key
        entry.add_tensor(renamed, key, pattern, tensor)
    out = {}
    for first, entry in groups.items():
        try:
            realized = entry.convert(first, model=model, config=model.config)
        except Exception as exc:
            raise CheckpointError(f"transformers' conversion for {first} failed while reading {type(model).__name__}'s "
                                  f"on-disk layout ({type(exc).__name__}: {exc}); the file holds another model's "
                                  "tensors, or some of a group are missing") from exc
        for name, value in realized.items():
            out[name] = value[0] if isinstance(value, list) else value
    return out
