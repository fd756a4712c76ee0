"""Checkpoint conversion, first half: resolving. Nothing here writes a file.

From the two models (built without storage when given as classes, factories or ``"module:callable"``) and
the opened source checkpoint, this works out everything the run (:mod:`.checkpoint`) needs and checks it all
first: which file key each base tensor is (by any of its names, or a legacy one such as ``LayerNorm.gamma``),
the file's shapes and dtypes against the plan, keys the models do not know, constants the raw side cannot
hold. Problems join validation's (:func:`.validate.check`) in one list, raised once. What comes back is a
:class:`FilePlan`: the :class:`Unit` s to compute (one target tensor each, or one imperative pair), grouped by
the source file they read, with the output entries each writes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from . import hf_disk_layout
from .formats.common import Entry, dtype_name
from .formats.files import Checkpoint
from .plan import Plan
from .problems import Problem
from .tree import ModelTree
from .validate import expect_problem, kind_problem, refuse


# names old checkpoints used for normalisation layers' weight/bias (TF-era BERT: LayerNorm.gamma/beta)
LEGACY_NAMES = {"weight": "gamma", "bias": "beta"}


# -- what to compute -----------------------------------------------------------
@dataclass(eq=False)
class Unit:
    """What one step writes: one target from planned copies/fills, or every target of an imperative pair."""

    ops: list
    pair: object = None  # LayerPair of an imperative special init
    file: int = 0  # the source file it reads (output file i is made from source file i)
    dtype: torch.dtype | None = None
    entries: list = field(default_factory=list)  # output names, tied names after their tensor
    targets: list = field(default_factory=list)  # (canonical key, TensorRef) written by this unit
    keys: list = field(default_factory=list)  # file keys it reads


@dataclass(eq=False)
class FilePlan:
    """A plan resolved against a checkpoint: the units to compute and what the report must add."""

    ck: Checkpoint
    plan: Plan
    key: dict = field(default_factory=dict)  # id(base tensor) -> its key in the file
    units: list[Unit] = field(default_factory=list)
    uses: dict = field(default_factory=dict)  # file key -> units that read it (then its memory can go)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    total_bytes: int = 0

    def groups(self) -> list[list[Unit]]:
        """Units by the input file they read from, in file order; empty groups dropped."""
        out: dict[int, list[Unit]] = {}
        for unit in self.units:
            out.setdefault(unit.file, []).append(unit)
        return [out[i] for i in sorted(out)] or [[]]


def resolve(ck: Checkpoint, plan: Plan, strict: bool, problems: list[str]) -> FilePlan:
    """The plan against the file: file keys, units and entries; TransferError with ``problems`` (validation's)
    and the file's own, once, when anything is wrong."""
    base, raw = plan.base, plan.raw
    bnames = names_by_tensor(base)
    needed = list(_needed(plan))
    if base.framework == "torch":  # transformers' on-disk layout (save_pretrained) read as the in-memory one
        first = [bnames.get(id(ref.tensor), [ref.path])[0] for ref in needed]
        ck = hf_disk_layout.reading_view(ck, base.model, first)
    fp = FilePlan(ck, plan)
    fp.notes += getattr(ck, "notes", [])
    problems = list(problems)
    legacy: list[str] = []
    absent: list[str] = []  # base paths the plan reads that the file lacks
    for ref in needed:
        key = _find_key(ck, bnames.get(id(ref.tensor), [ref.path]), legacy)
        if key is None:
            absent.append(ref.path)
            continue
        fp.key[id(ref.tensor)] = key
        ck.settle(key, getattr(torch, base.adapter.dtype_name(ref.tensor)))  # .pdparams uint16: bf16 or uint16
        problem = _shape_problem(ck, key, ref, base)
        if problem:
            problems.append(problem)
    if legacy:
        fp.notes.append("legacy key names recognised in the checkpoint: " + ", ".join(legacy))
    known = {n for names in bnames.values() for n in names}
    known |= {legacy_name(n) for n in known if legacy_name(n)}
    extra = [k for k in ck.infos if k not in known]
    if strict:
        fix = "check that --base is the model the checkpoint was saved from, or pass {} to"
        api, cli = "strict=False (--no-strict)", "--no-strict"
        if absent:
            rest = f" convert what is there{hf_disk_layout.missing_table_hint(base.model)}"
            problems.append(Problem(str(ck.path), f"{len(absent)} tensor(s) the base model {base.name} needs are not "
                                    f"in the checkpoint: {_some(absent)}", fix.format(api) + rest,
                                    fix.format(cli) + rest))
        if extra:
            problems.append(Problem(str(ck.path), f"{len(extra)} key(s) in the checkpoint are not tensors of the base "
                                    f"model {base.name}: {_some(extra)}", fix.format(api) + " leave them out",
                                    fix.format(cli) + " leave them out"))
    else:
        fp.unexpected += extra
        if absent:
            fp.notes.append(f"not in the checkpoint, so their targets were left out: {', '.join(absent)}")
    problems += _build_units(fp, names_by_tensor(raw))
    for op in plan.checks:  # a base tensor the raw side cannot hold must be the constant: read it from the file
        key = fp.key.get(id(op.src.tensor))
        if key is not None:
            problem = expect_problem(op, ck.get(key), f"{ck.path}: {key}", "convert with another raw model")
            if problem:
                problems.append(problem)
    ck.release()
    refuse(f"cannot convert {ck.path} ({base.framework}:{base.name} -> {raw.framework}:{raw.name}); nothing was "
           "written", problems)
    return fp


def _some(names: list[str], n: int = 20) -> str:
    return ", ".join(names[:n]) + (" ..." if len(names) > n else "")


def _needed(plan: Plan):
    """Every base tensor the plan reads (copies, expectations, special-init layers), once."""
    seen = set()
    refs = [op.src for op in plan.ops if op.src is not None] + [op.src for op in plan.checks]
    for pair in plan.imperative:
        refs += list(pair.base.subtree_tensors().values())
    for ref in refs:
        if id(ref.tensor) not in seen:
            seen.add(id(ref.tensor))
            yield ref


def _find_key(ck: Checkpoint, names: list[str], legacy: list) -> str | None:
    """The file key of a tensor known by ``names``: one of them, else one of their legacy names (noted)."""
    for n in names:
        if n in ck.infos:
            return n
    for n in names:
        old = legacy_name(n)
        if old in ck.infos:
            legacy.append(f"{old} -> {n}")
            return old
    return None


def _shape_problem(ck: Checkpoint, key: str, ref, base) -> Problem | None:
    fshape, mshape = ck.infos[key].shape, tuple(base.adapter.shape(ref.tensor))
    if fshape == mshape:
        return None
    fix = ("build the base model with the sizes the checkpoint was saved with" if len(fshape) != 2 or
           fshape[::-1] != mshape else f"the layout looks transposed: if {ck.path.name} was saved from the other "
           "framework's model, swap the base and raw models (--base/--raw)")
    return Problem(str(ck.files[ck.infos[key].file]), f"{key} is {list(fshape)} in the checkpoint but {ref.path} is "
                   f"{list(mshape)} in the base model {base.name}", fix)


def _build_units(fp: FilePlan, rnames: dict) -> list[Problem]:
    """``fp.units`` from the plan (a target left with a gap or a source absent from the file is left out and
    listed as missing); the problems found: a file tensor of another dtype kind than its target."""
    plan, ck, ra = fp.plan, fp.ck, fp.plan.raw.adapter
    problems: list[Problem] = []
    units: list[Unit] = []
    by_dst: dict[int, Unit] = {}
    for op in plan.ops:
        unit = by_dst.get(id(op.dst.tensor))
        if unit is None:
            unit = by_dst[id(op.dst.tensor)] = Unit([], targets=[(op.dst.path, op.dst)])
            units.append(unit)
        unit.ops.append(op)
    for pair in plan.imperative:
        units.append(Unit([], pair=pair, targets=[
            (r.path, r) for r in pair.raw.subtree_tensors().values() if r.persistent and not r.alias_of]))
    partly = set(plan.missing)  # written in parts that leave a gap (non-strict): left out, never half-filled
    for unit in units:
        if unit.pair is None and unit.targets[0][0] in partly:
            continue
        srcs = [op.src for op in unit.ops if op.src is not None]
        if unit.pair is not None:
            srcs = list(unit.pair.base.subtree_tensors().values())
        keys = [fp.key.get(id(r.tensor)) for r in srcs]
        if None in keys:  # non-strict: a source is not in the file, so its targets are left out
            fp.missing += [k for k, _ in unit.targets]
            continue
        infos = [ck.infos[k] for k in keys]
        pair_keys = [fp.key.get(id(r.tensor)) for r in (unit.pair or unit.ops[0].pair).base.own]
        near = infos or [ck.infos[k] for k in pair_keys if k]
        unit.file = min((i.file for i in near), default=0)
        floats = {i.dtype for i in near if i.dtype.is_floating_point}
        unit.dtype = infos[0].dtype if infos and unit.pair is None else (floats.pop() if len(floats) == 1 else None)
        for key, ref in unit.targets:
            raw_dtype = getattr(torch, ra.dtype_name(ref.tensor))
            dtype = unit.dtype if unit.dtype is not None and (unit.pair is None or raw_dtype.is_floating_point) \
                else raw_dtype
            for op in unit.ops:
                if op.src is not None:
                    src_key = fp.key[id(op.src.tensor)]
                    problem = kind_problem(src_key, dtype_name(ck.infos[src_key].dtype), f"raw {op.dst.path}",
                                           dtype_name(raw_dtype), "a conversion", where=str(ck.path))
                    if problem:
                        problems.append(problem)
            shape = tuple(ra.shape(ref.tensor))
            unit.entries.append(Entry(key, shape, dtype))
            unit.entries += [Entry(a, shape, dtype, alias_of=key) for a in rnames.get(id(ref.tensor), []) if a != key]
            fp.total_bytes += nbytes(shape, dtype)
        fp.units.append(unit)
        for k in set(keys):
            fp.uses[k] = fp.uses.get(k, 0) + 1
        unit.keys = sorted(set(keys))
    return problems


def names_by_tensor(proxy) -> dict[int, list[str]]:
    """id(tensor) -> every dotted name it has in the model (tied tensors and paddle's RNN cells have several)."""
    out: dict[int, list[str]] = {}
    stack = [ModelTree(proxy).build(proxy.model)]
    while stack:
        node = stack.pop()
        for ref in node.own:
            out.setdefault(id(ref.tensor), []).append(ref.path)
        stack.extend(child for _, child in reversed(node.children))
    return out


def legacy_name(name: str) -> str | None:
    """The name an old checkpoint gave tensor ``name`` (``LayerNorm.weight`` -> ``LayerNorm.gamma``), or None."""
    head, _, last = name.rpartition(".")
    old = LEGACY_NAMES.get(last)
    return None if old is None else (f"{head}.{old}" if head else old)


def nbytes(shape, dtype: torch.dtype) -> int:
    return math.prod(shape) * dtype.itemsize
