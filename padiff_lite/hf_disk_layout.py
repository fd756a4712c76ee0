"""transformers' on-disk (Hub) layout <-> its in-memory layout, with transformers' own conversion tables.

transformers 5 stores some families on disk differently from memory: MoE experts one per expert
(``experts.N.gate_proj.weight``) where memory packs ``experts.gate_up_proj [E, ...]``, renamed tensors, VL models
as ``model.layers.*`` / ``visual.*`` where memory has ``model.language_model.*`` / ``model.visual.*``. Its tables
(``transformers.conversion_mapping.get_model_conversion_mapping``: ``WeightRenaming`` and ``WeightConverter`` entries
whose operations know their reverse) describe the mapping; this module applies them, so a family transformers adds
is read without our code changing:

- :func:`to_memory` (what ``from_pretrained`` does to a Hub state dict before loading it);
- :func:`to_disk` (what ``save_pretrained`` writes: transformers' own ``revert_weight_conversion``), used by
  ``convert``'s factory form with ``out_layout="hf"`` (:func:`disk_shards` gives the output's header up front, each
  shard's tensors are reverted when the shard is complete).

Both take the transformers model (only its class and config are read: a model without storage works) and a dict of
torch tensors, and return a new dict; nothing is written. With transformers 4.x (no conversion tables: disk and
memory agree) and for families without a table, the dict comes back as it is.

:func:`reading_view` is what ``convert`` uses (:mod:`.checkpoint_plan`, at key resolution): a checkpoint in the
on-disk layout seen as the in-memory tensors, each combined from its on-disk pieces only when it is read.
"""
from __future__ import annotations

from copy import deepcopy

import torch

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


def writes_disk_layout(model) -> bool:
    """Whether ``model`` is a transformers model whose on-disk layout differs from its in-memory one (it has
    conversion tables)."""
    return _is_transformers(model) and _tables(model) is not None


def disk_shards(model, shards: list[list]) -> list[list]:
    """The entries (:class:`.formats.Entry`: name, shape, dtype) transformers' ``save_pretrained`` writes for each
    shard of in-memory entries, found by running its reverse conversion on meta tensors. CheckpointError when one of
    its converters needs tensors of two shards (the shards cannot be written one by one) or an on-disk name would
    come twice."""
    from .formats.common import Entry

    def run(entries):
        meta = {e.key: torch.empty(e.shape, dtype=e.dtype, device="meta") for e in entries}
        return {k: (tuple(t.shape), t.dtype) for k, t in to_disk(model, meta).items()}

    out, seen = [], {}
    for i, entries in enumerate(shards):
        got = run(entries)
        for k in got:
            if k in seen:
                raise CheckpointError(f"transformers' on-disk layout of {type(model).__name__} puts {k} in output "
                                      f"shards {seen[k] + 1} and {i + 1}; nothing was written. Write one file (no "
                                      "index), or the in-memory layout")
            seen[k] = i
        out.append([Entry(k, shape, dtype) for k, (shape, dtype) in got.items()])
    whole = run([e for entries in shards for e in entries])
    if whole != {e.key: (e.shape, e.dtype) for entries in out for e in entries}:
        raise CheckpointError(f"transformers' reverse conversion of {type(model).__name__} combines tensors of "
                              "different output shards; nothing was written. Write one file (no index), or the "
                              "in-memory layout")
    return out


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


# -- reading a checkpoint in the on-disk layout, tensor by tensor -----------------------------------------------
class _Group:
    """The on-disk keys that form one or more in-memory tensors, with the transformers entry that combines them."""

    __slots__ = ("entry", "sources", "first", "outputs", "mixed")

    def __init__(self, entry, first):
        self.entry, self.first = entry, first  # a template (deep-copied per use) and the renamed key (layer name)
        self.sources: list = []  # (on-disk key, source pattern)
        self.outputs: list[str] = []  # in-memory names it gives
        self.mixed: list[str] = []  # keys that give the same name in the other layout


def _group_keys(conversions, keys) -> dict:
    """renamed key -> _Group, for the on-disk ``keys``, the way ``_apply`` groups a state dict."""
    from transformers.core_model_loading import WeightConverter, WeightRenaming, dot_natural_key, rename_source_key

    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    by_pattern = {p: c for c in converters for p in c.source_patterns}
    groups: dict = {}
    for key in sorted(keys, key=dot_natural_key):
        renamed, pattern = rename_source_key(key, renamings, converters)
        entry = None if pattern is None else by_pattern[pattern]
        group = groups.setdefault(renamed, _Group(entry, renamed))
        if (group.entry is None) != (entry is None):  # a key as it is and pieces a converter combines: both layouts
            group.mixed.append(key)
            continue
        group.sources.append((key, key if pattern is None else pattern))
    return groups


def _run_group(model, group: _Group, load) -> dict:
    """Run ``group``'s converter on the tensors ``load(key)`` gives: in-memory name -> tensor."""
    entry = deepcopy(group.entry)
    for key, pattern in group.sources:
        entry.add_tensor(group.first, key, pattern, lambda k=key: load(k))
    try:
        realized = entry.convert(group.first, model=model, config=model.config)
    except Exception as exc:
        raise CheckpointError(
            f"transformers' conversion for {group.first} (from {', '.join(k for k, _ in group.sources[:4])}"
            f"{' ...' if len(group.sources) > 4 else ''}) failed while reading {type(model).__name__}'s on-disk layout "
            f"({type(exc).__name__}: {exc}); the file holds another model's tensors, or some of the group are "
            "missing; nothing was written") from exc
    return {name: (value[0] if isinstance(value, list) else value) for name, value in realized.items()}


def reading_view(ck, model, needed: list[str]):
    """``ck`` as ``model``'s in-memory tensors when it is in transformers' on-disk layout, else ``ck`` itself.

    ``needed``: the in-memory names the conversion reads. The view is used only when some of them are missing from
    the file and the file's keys, grouped and renamed by transformers' tables, give more of them; each combined tensor is
    read (its on-disk pieces only) when it is asked for, so memory holds one group at a time. CheckpointError when
    the file mixes both layouts (two groups give the same tensor)."""
    if not needed or not _is_transformers(model):
        return ck
    conversions = _tables(model)
    if conversions is None:
        return ck
    view = HubView(ck, model, conversions)  # built even when every name is there: a file mixing both is refused
    if view.changed and sum(n in view.infos for n in needed) > sum(n in ck.infos for n in needed):
        return view
    return ck


def is_transformers_model(model) -> bool:
    return _is_transformers(model)


def _is_transformers(model) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(model, PreTrainedModel)


def missing_table_hint(model) -> str:
    """What to say when a transformers base model's tensors are missing from a file and no table could read it."""
    if not _is_transformers(model) or _tables(model) is not None:
        return ""
    import transformers

    return (f"; if the file was written by transformers' save_pretrained, its on-disk layout may differ from "
            f"{type(model).__name__}'s in-memory one and transformers {transformers.__version__} has no conversion "
            "table for it: load it with from_pretrained and save model.state_dict() with safetensors' save_file, "
            "then convert that file")


class HubView:
    """A :class:`.formats.Checkpoint` in transformers' on-disk layout, seen as the model's in-memory tensors.

    Same interface as the checkpoint (``infos``, ``get``, ``forget``, ``settle``, ``release``, ...): keys that are
    only renamed are read as they are (same bytes, same fast path); tensors transformers combines (stacked experts,
    concatenated gate/up) are built from their on-disk pieces by transformers' own converter when asked for."""

    def __init__(self, ck, model, conversions):
        from dataclasses import replace

        from .formats.common import TensorInfo

        self.ck, self.model = ck, model
        self.renamed: dict[str, str] = {}  # in-memory name -> on-disk key (one-to-one)
        self.group_of: dict[str, _Group] = {}  # in-memory name -> its group (combined tensors)
        self.infos: dict = {}
        self.notes: list[str] = []
        self._done: dict[str, torch.Tensor] = {}  # computed outputs not yet asked for
        collisions = []
        combined = 0
        for first, group in _group_keys(conversions, list(ck.infos)).items():
            if group.mixed:
                collisions.append(f"{first} <- {', '.join(k for k, _ in group.sources[:3])} and "
                                  f"{', '.join(group.mixed[:3])}")
                continue
            if group.entry is None:
                key = group.sources[0][0]
                if len(group.sources) != 1:
                    collisions.append(f"{first} <- {', '.join(k for k, _ in group.sources)}")
                    continue
                self.renamed[first] = key
                self.infos[first] = replace(ck.infos[key], key=first)
                continue
            meta = {k: torch.empty(ck.infos[k].shape, dtype=ck.infos[k].dtype, device="meta") for k, _ in group.sources}
            out = _run_group(model, group, meta.__getitem__)
            file = min(ck.infos[k].file for k, _ in group.sources)
            combined += 1
            for name, t in out.items():
                if name in self.infos:
                    collisions.append(f"{name} <- {', '.join(k for k, _ in group.sources[:4])} and another key")
                    continue
                group.outputs.append(name)
                self.group_of[name] = group
                self.infos[name] = TensorInfo(name, tuple(t.shape), t.dtype, file)
        for name, key in self.renamed.items():
            if name in self.group_of:
                collisions.append(f"{name} <- {key} and {', '.join(k for k, _ in self.group_of[name].sources[:4])}")
        if collisions:
            raise CheckpointError(
                f"{ck.path}: the file mixes transformers' on-disk and in-memory layouts for {type(model).__name__}: "
                f"{'; '.join(collisions[:5])}{' ...' if len(collisions) > 5 else ''}. Nothing was written; convert a "
                "file written by save_pretrained (on-disk layout) or by save_file(model.state_dict()) (in-memory), "
                "not a mix")
        moved = sum(k != n for n, k in self.renamed.items())
        self.changed = bool(combined or moved)
        if self.changed:
            self.notes.append(f"read in transformers' on-disk layout for {type(model).__name__} (its own conversion "
                              f"tables): {combined} tensor group(s) combined, {moved} key(s) renamed")

    def __getattr__(self, name):  # path, files, fmt, index, before, sharded ...: the checkpoint's
        return getattr(self.ck, name)

    def __repr__(self):
        return f"HubView({self.ck!r})"

    def get(self, key: str, into: torch.Tensor | None = None) -> torch.Tensor:
        if key in self.renamed:
            return self.ck.get(self.renamed[key], into=into)
        if key not in self._done:
            group = self.group_of[key]
            out = _run_group(self.model, group, self.ck.get)
            for k, _ in group.sources:
                self.ck.forget(k)
            self._done.update({n: t.contiguous() for n, t in out.items()})
        return self._done[key]

    def forget(self, key: str):
        if key in self.renamed:
            self.ck.forget(self.renamed[key])
        self._done.pop(key, None)

    def settle(self, key: str, model_dtype: torch.dtype):
        if key in self.renamed:
            self.ck.settle(self.renamed[key], model_dtype)

    def release(self):
        self._done.clear()
        self.ck.release()
