"""The executor: the only code that writes into a model.

Initialisation ops (padiff_lite.init) run first, as in ``from_pretrained``: initialise, then
overwrite what the source has; they only target tensors nothing else writes. Then it runs a
validated plan. Imperative special inits run first, each with a snapshot of every raw tensor it
could touch and of the base layer it reads; if one raises, replaces a tensor object or changes the
base, everything written so far is restored and a TransferError carries the original message. Then the
planned copies run, each writing straight into the destination's memory (a torch view of it, DLPack
for paddle): big ones (1 M values and more) through :mod:`.fastcopy`, copy or transpose and NaN/Inf
count in one pass, cut into one piece per thread (else torch's copy, a whole tensor per thread); small
ones in groups by address; NaN/Inf of small tensors counted in batches (see docs/performance.md).

Faults never leave a model half-written: before the copies an exception (an interrupt included)
restores the raw model; during them SIGINT/SIGTERM are held until the last write
(:mod:`.interrupts`), and any other exception makes the executor run the copies again to the end
(the sources are never written, so a second run gives the complete result), then re-raise it
(:class:`TransferInterrupted` for a KeyboardInterrupt, saying which state the model is in).
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field

import torch

from . import fastcopy, layout, nonfinite
from .fastcopy import copy_all
from .errors import InitError, TransferError, TransferInterrupted
from .interrupts import held_signals
from .ops import FILL, RESHAPE, TRANSPOSE, CallOp, CopyFacts, Fill, UndoRecord
from .plan import Plan, pair_label
from .problems import Problem
from .workers import Pool

log = logging.getLogger("padiff_lite")

# -- tuning (measured: docs/performance.md) --------------------------------------
# An interrupted or failed run of the planned copies is run again from the first copy at most this many times.
COPY_ATTEMPTS = 3
# Copies of at least this many elements run on a small thread pool, cut into one piece per thread
# where fastcopy applies (torch's own transposing copy is single-threaded and whole-matrix only).
PARALLEL_MIN_ELEMENTS = 1 << 20
# Non-finite scans of smaller tensors are batched: one torch.cat + sum per ~1M values instead of
# two torch calls per tensor.
SCAN_BATCH_ELEMENTS = 1 << 20
# Copies of fewer values than this are grouped with others of the same shapes, dtypes and transform
# and moved together: one gather of all their sources and one scatter into all their destinations
# (see adapters' gather/scatter), instead of two views and a copy per tensor.
BULK_MAX_ELEMENTS = 1 << 16
# A group smaller than this is not worth it.
BULK_MIN_GROUP = 8
# A group is moved in chunks of at most this many values: the gathered sources are a temporary copy.
BULK_CHUNK_ELEMENTS = 1 << 22
# Small direct copies not grouped are run this many at a time (fastcopy.copy_all).
COPY_BATCH = 512


@dataclass
class Stats:
    tensors: int = 0
    elements: int = 0
    bytes: int = 0
    nonfinite: dict = field(default_factory=dict)  # raw path -> count of NaN/Inf copied
    initialised: list = field(default_factory=list)  # (path, rule) of every tensor an init op wrote
    written: dict = field(default_factory=dict)  # id(pair) -> tensors its imperative special init wrote
    notes: list = field(default_factory=list)  # for report.notes (raw tensors a special init left as built)
    big_copies: dict = field(default_factory=dict)  # "kernel" | "torch" -> big copies (>= 1 M values) each path ran

    def add_nonfinite(self, path: str, count: int):
        """Record ``count`` NaN/Inf values copied into ``path`` (nothing when it is 0)."""
        if count:
            self.nonfinite[path] = self.nonfinite.get(path, 0) + count

    def add_written(self, t):
        """Count one whole torch tensor written (checkpoint conversion: one output tensor)."""
        self.tensors += 1
        self.elements += t.numel()
        self.bytes += t.numel() * t.element_size()

    def add_copies(self, other: "Stats"):
        """Add the counts of a run of the planned copies."""
        self.tensors += other.tensors
        self.elements += other.elements
        self.bytes += other.bytes
        for path, count in other.nonfinite.items():
            self.add_nonfinite(path, count)
        for path, count in other.big_copies.items():
            self.big_copies[path] = self.big_copies.get(path, 0) + count


def no_grad(proxy):
    """The framework of ``proxy`` records nothing for autograd inside this context."""
    return proxy.adapter.no_grad()


def execute(plan: Plan, init_ops=(), alike=None) -> Stats:
    """Run ``init_ops`` (for tensors the plan leaves alone), the imperative inits, then the planned copies.
    ``alike``: :attr:`.validate.Validation.alike`, the copies of whole tensors grouped by their shapes, dtypes
    and transform (small ones are moved a group at a time); without it every copy runs on its own.

    All or nothing: if an init op or an imperative init fails or is interrupted, every tensor written so
    far is restored (and the base layers the special inits were given); an exception during the copies
    is re-raised once they have all run (see :func:`_run_copies_to_the_end`).
    """
    adapters = {plan.base.adapter.name: plan.base.adapter, plan.raw.adapter.name: plan.raw.adapter}
    modes = {name: a.grad_mode() for name, a in adapters.items()}
    try:
        return _execute(plan, init_ops, alike or {})
    finally:  # an interrupt inside a framework's no_grad() exit must not leave the caller's grad mode off
        for name, a in adapters.items():
            if a.grad_mode() != modes[name]:
                a.set_grad_mode(modes[name])


def _execute(plan: Plan, init_ops, alike: dict) -> Stats:
    stats = Stats()
    saved: list[UndoRecord] = []  # raw tensors the init ops and special inits could write, as they were
    base_saved: list[UndoRecord] = []  # base tensors the special inits could reach, as they were
    inits_done = False
    try:
        stats.initialised = run_init(plan.raw.adapter, init_ops, saved)
        _run_imperative(plan, stats, saved, base_saved)
        inits_done = True
        faults, outcome = _run_copies_to_the_end(plan, stats, alike)
    except BaseException as exc:
        if not inits_done:
            with held_signals():
                _restore(plan.raw.adapter, saved)
                _restore(plan.base.adapter, base_saved)
            if isinstance(exc, KeyboardInterrupt):
                raise TransferInterrupted(_interrupted(plan, exc, False), False) from exc
            raise
        faults, outcome = _run_copies_to_the_end(plan, stats, alike)  # it arrived between the inits and the copies
        faults.insert(0, exc)
    if outcome == "undone":
        with held_signals():
            _restore(plan.raw.adapter, saved)
    if outcome == "partial":
        first = faults[0]
        raise TransferError(
            f"{_transfer(plan)}: the copies failed {len(faults)} times ({type(first).__name__}: {first}); the raw "
            "model is partly written (some tensors hold the base's values, others their own). The plan was valid, "
            "so this is a failing device or a bug in padiff_lite (please report it); rebuild or reload the raw "
            "model before using it"
        ) from first
    if faults:
        exc = faults[0]
        if isinstance(exc, KeyboardInterrupt):
            done = outcome == "done"
            raise TransferInterrupted(_interrupted(plan, exc, done), done) from exc
        state = _state(outcome == "done")
        log.warning("%s: %s arrived while copying; %s", _transfer(plan), type(exc).__name__, state)
        if hasattr(exc, "add_note"):  # Python 3.11+
            exc.add_note(f"padiff_lite: {_transfer(plan)}: {state}")
        raise exc
    return stats


def _transfer(plan: Plan) -> str:
    return f"transfer {plan.base.framework}:{plan.base.name} -> {plan.raw.framework}:{plan.raw.name}"


def _state(completed: bool) -> str:
    if completed:
        return "the copies were run to the end first: the raw model holds the complete transfer"
    return "the raw model was restored: it is exactly as it was before the transfer"


def _interrupted(plan: Plan, exc, completed: bool) -> str:
    return f"{_transfer(plan)} was interrupted ({type(exc).__name__}: {exc}); {_state(completed)}"


def _run_copies_to_the_end(plan: Plan, stats: Stats, alike: dict) -> tuple[list, str]:
    """Run the planned copies so that no fault leaves them half done; returns (exceptions met, outcome).

    SIGINT and SIGTERM are held until the last write (:func:`.interrupts.held_signals`). Any other
    exception half-way (a handler of another signal, an exception sent from another thread, a failed
    copy) leaves some destinations written and others not; as no copy reads a tensor a copy writes (the
    sources are the base model's), running every copy again gives the complete result, without keeping a
    copy of the raw model (a snapshot of 1 GB of weights would cost as much time as the copies, and 1 GB).
    Outcome "done": every copy ran. When a source is also a destination (a model copied onto one
    that shares tensors with it) the destinations are snapshotted first and, after a fault, put back:
    "undone". "partial": the copies kept failing (never seen: the plan was validated).
    """
    ra = plan.raw.adapter
    by_id = {id(op.dst.tensor): op.dst.tensor for op in plan.ops}
    rerun = by_id.keys().isdisjoint([id(op.src.tensor) for op in plan.ops if op.src is not None])
    dsts = list(by_id.values())
    undo = None if rerun else [UndoRecord(None, "", "", t, ra.torch_view(t).clone(), ra.version(t)) for t in dsts]
    faults: list = []
    for _ in range(COPY_ATTEMPTS if rerun else 1):
        run = Stats()
        done = False
        try:
            with held_signals():
                _run_copies(plan, run, alike)
                ra.wrote(dsts)
                done = True
        except BaseException as exc:  # noqa: B036 - an interrupt is exactly what this is for
            faults.append(exc)
        if done:  # (a held signal raises on leaving the block, after the last write)
            stats.add_copies(run)
            return faults, "done"
    if undo is None:
        return faults, "partial"
    with held_signals():
        _restore(ra, undo)
    return faults, "undone"


def _run_copies(plan: Plan, stats: Stats, alike: dict):
    """Run the plan's copy and fill ops: small plain copies in groups (:func:`_run_group`), the rest
    one by one (:func:`_run_ops`)."""
    dsts = {id(op.dst.tensor) for op in plan.ops}
    groups, rest = _bulk_groups(plan.ops, dsts, alike)
    _run_ops(plan, rest, stats)
    fallback: list = []
    with torch.no_grad():
        for facts, ops in groups.items():
            _run_group(plan, facts, ops, stats, fallback)
    _run_ops(plan, fallback, stats)
    stats.tensors += len(dsts)  # row blocks of one tensor count once


def _bulk_groups(ops: list, dsts: set, alike: dict):
    """``(groups, rest)``: the groups of ``alike`` worth moving together (small copies, enough of them), and the
    other ops in their order. Grouping changes the order of the writes, so it is only done when that cannot
    matter: every destination tensor (``dsts``: their ids) is written by one op and read by none."""
    if len(dsts) != len(ops) or any(op.src is not None and id(op.src.tensor) in dsts for op in ops):
        return {}, ops
    groups = {facts: group for facts, group in alike.items()
              if len(group) >= BULK_MIN_GROUP and 0 < math.prod(facts.dst_shape) < BULK_MAX_ELEMENTS}
    if not groups:
        return {}, ops
    grouped = {id(op) for group in groups.values() for op in group}
    return groups, [op for op in ops if id(op) not in grouped]


def _run_group(plan: Plan, facts: CopyFacts, ops: list, stats: Stats, fallback: list):
    """Copy a group of alike ops: gather the sources into one torch tensor, apply the transform to all
    at once, scatter into the destinations. A chunk the adapters cannot move this way (another device,
    a non-contiguous or overlapping destination) is left in ``fallback`` untouched."""
    sshape, dshape, transform = facts.src_shape, facts.dst_shape, facts.transform
    target = getattr(torch, facts.dst_dtype, None)
    if not isinstance(target, torch.dtype):
        fallback += ops
        return
    ba, ra = plan.base.adapter, plan.raw.adapter
    numel = math.prod(dshape)
    step = max(1, BULK_CHUNK_ELEMENTS // numel)
    for i in range(0, len(ops), step):
        chunk = ops[i:i + step]
        stored = ba.gather([op.src.tensor for op in chunk], sshape, facts.src_dtype)
        if stored is None:
            fallback += chunk
            continue
        value = stored
        if transform is TRANSPOSE:  # one batched transpose: the writes below then read contiguous memory
            value = stored.transpose(1, 2).contiguous()
        elif transform is RESHAPE:
            value = stored.reshape(len(chunk), *dshape)
        if value.dtype != target:
            value = value.to(target)
        if not ra.scatter([op.dst.tensor for op in chunk], value):
            fallback += chunk
            continue
        stats.elements += numel * len(chunk)
        stats.bytes += stored.numel() * stored.element_size()
        if nonfinite.count(stored):  # rare: count per tensor
            bad = (~torch.isfinite(stored)).reshape(len(chunk), -1).sum(1).tolist()
            for op, n in zip(chunk, bad):
                stats.add_nonfinite(op.dst.path, n)


def _run_ops(plan: Plan, ops: list, stats: Stats):
    """Run ``ops`` (copy and fill) in order, each writing straight into the destination's memory (:class:`_Copies`)."""
    if ops:
        _Copies(plan, stats).run(ops)


class _Copies:
    """One run of copy and fill ops, in order, each writing straight into its destination's memory.

    Big direct copies go to a pool of ``torch.get_num_threads()`` threads (torch releases the GIL
    while copying); small direct copies are collected and run together (:func:`copy_all`). An op
    that touches a tensor a pending copy writes waits for it first, so the result is the same as
    running the ops one by one. Every copy's source is scanned for NaN/Inf: big ones in their own
    thread right after the copy, small ones in batches (:class:`_FiniteScan`).
    """

    def __init__(self, plan: Plan, stats: Stats):
        self.src_view, self.ra = plan.base.adapter.torch_view, plan.raw.adapter
        self.stats = stats
        self.scan = _FiniteScan(stats)
        self.workers = max(1, min(torch.get_num_threads(), 8))
        self.pool = None  # made for the first big copy
        self.futures: list = []  # big copies running in the pool
        self.batch_dst: list = []  # small direct copies not run yet: destination regions ...
        self.batch_src: list = []  # ... and the values they get
        self.busy: set[int] = set()  # id() of tensors written by copies not finished yet (pooled or batched)

    def run(self, ops: list):
        try:
            with torch.no_grad():
                for op in ops:
                    dst = op.dst.tensor
                    if self.busy and (id(dst) in self.busy or (op.src is not None and id(op.src.tensor) in self.busy)):
                        self._settle()
                    view, direct = self.ra.writable_view(dst)
                    self._write(op, view, direct)
                    if not direct:
                        self.ra.write(dst, view)  # the view was a copy (non-contiguous or off-CPU): write it back
                self._settle()
                self.scan.flush()
        finally:
            if self.pool is not None:
                self.pool.close()  # every copy thread has ended: nothing writes after this
        if self.pool is not None and self.pool.broken is not None:
            raise self.pool.broken  # an exception sent to a copy thread after its last task: not lost either

    def _settle(self):
        """Finish every pending copy (batched and pooled)."""
        copy_all(self.batch_dst, self.batch_src)
        _drain(self.futures, self.stats)
        self.batch_dst, self.batch_src, self.futures, self.busy = [], [], [], set()

    def _write(self, op, view, direct: bool):
        regions = layout.cut(view, op.dst_part)
        if op.kind is FILL:
            for region in regions:
                region.fill_(op.value)
                self.stats.elements += region.numel()
        elif len(regions) > 1:  # a value spread over several blocks of its target (fused layouts)
            stored = layout.take(self.src_view(op.src.tensor), op.src_part)
            for region, value in layout.pieces(self.src_view(op.src.tensor), op.src_part, op.transform, view,
                                               op.dst_part):
                region.copy_(value)
                self.stats.elements += region.numel()
            self.stats.bytes += stored.numel() * stored.element_size()
            self.scan.add(stored, op.dst.path, stored.numel())
        else:
            self._copy(op, regions[0], direct)

    def _copy(self, op, region, direct: bool):
        """One source part into one destination region: big ones to the pool, small direct ones batched."""
        n = region.numel()
        stored = layout.take(self.src_view(op.src.tensor), op.src_part)
        value = layout.transformed(stored, op.transform, region.shape)
        self.stats.elements += n
        self.stats.bytes += n * stored.element_size()
        if direct and n >= PARALLEL_MIN_ELEMENTS and self._big(op, region, stored, value):
            return
        self.scan.add(stored, op.dst.path, n)  # the source as stored: a contiguous read
        if not direct:
            region.copy_(value)
            return
        self.batch_dst.append(region)
        self.batch_src.append(value)
        self.busy.add(id(op.dst.tensor))
        if len(self.batch_dst) >= COPY_BATCH:
            copy_all(self.batch_dst, self.batch_src)
            self.batch_dst, self.batch_src = [], []

    def _big(self, op, region, stored, value) -> bool:
        """A big copy: one pass (copy or transpose + NaN/Inf count) cut into one piece per thread, or else
        torch's copy and a sum, a whole tensor per thread. False: run it here (one thread, torch's copy)."""
        work = fastcopy.pieces(region, stored, op.transform is TRANSPOSE, self.workers)
        way = "torch" if work is None else "kernel"
        self.stats.big_copies[way] = self.stats.big_copies.get(way, 0) + 1
        if work is None and self.workers == 1:
            return False
        if self.pool is None:
            self.pool = Pool(self.workers)
        if work is None:
            self.futures.append(self.pool.submit(_copy_and_scan, region, value, stored, op.dst.path))
        else:
            self.futures += [self.pool.submit(_run_piece, piece, op.dst.path) for piece in work]
            fastcopy.mark_written(region)
        self.busy.add(id(op.dst.tensor))
        return True


def _run_piece(piece, path):
    return path, piece()


def _copy_and_scan(region, value, stored, path):
    with torch.no_grad():
        region.copy_(value)
    return path, nonfinite.count(stored)


def _drain(futures, stats: Stats):
    for f in futures:
        stats.add_nonfinite(*f.result())


class _FiniteScan:
    """Counts NaN/Inf of many small tensors with one reduction per batch.

    Tensors are batched by (dtype, shape[1:]) so that ``torch.cat`` joins them along dim 0 without
    a per-tensor reshape; a batch is reduced once it holds about SCAN_BATCH_ELEMENTS values.
    """

    def __init__(self, stats: Stats):
        self.stats = stats
        self.batches: dict = {}  # (dtype, shape[1:]) -> [tensors, paths, elements]

    def add(self, t, path, n):
        """Scan ``t`` (``n`` values) now if it is big, else with the next batch of its kind."""
        if not t.is_floating_point():
            return
        if n >= SCAN_BATCH_ELEMENTS:
            self.stats.add_nonfinite(path, nonfinite.count(t))
            return
        if t.dim() == 0:
            t = t.reshape(1)
        key = (t.dtype, t.shape[1:])
        batch = self.batches.get(key)
        if batch is None:
            batch = self.batches[key] = [[], [], 0]
        batch[0].append(t)
        batch[1].append(path)
        batch[2] += n
        if batch[2] >= SCAN_BATCH_ELEMENTS:
            self._flush(key)

    def flush(self):
        for key in list(self.batches):
            self._flush(key)

    def _flush(self, key):
        tensors, paths, n = self.batches.pop(key)
        if n == 0 or nonfinite.count(torch.cat(tensors)) == 0:
            return
        for t, path in zip(tensors, paths):  # rare: find which tensors hold them
            self.stats.add_nonfinite(path, nonfinite.count(t))


def _run_imperative(plan: Plan, stats: Stats, saved: list, base_saved: list):
    """Run each imperative special init on its pair; ``saved``/``base_saved`` get the undo records of every
    tensor under its raw and base layers (the caller restores them when anything fails).

    An init must read its base layer and write values into the existing tensors of its raw layer: one
    that raises, changes a base tensor or replaces a raw tensor object is refused with a TransferError.
    Raw tensors it did not write (values and version unchanged) are not counted as transferred; they are
    listed in ``stats.notes`` as left as built by that init.
    """
    ra, ba = plan.raw.adapter, plan.base.adapter
    for pair in plan.imperative:
        raw_before = _snapshot(ra, pair.raw.module)
        saved.extend(raw_before)
        base_before = _snapshot(ba, pair.base.module)
        base_saved.extend(base_before)
        init = f"special init {pair.entry.key} ({pair.entry.origin})"
        try:
            with no_grad(plan.raw), no_grad(plan.base):
                pair.entry.func(pair.base.module, pair.raw.module)
        except Exception as exc:
            changed = _changes(ba, base_before, pair.base.path, "base")
            also = f"; it had also changed {', '.join(map(str, changed))}, which was restored" if changed else ""
            raise special_init_error(pair, exc, f"the raw model was restored{also}") from exc
        changed = _changes(ba, base_before, pair.base.path, "base")
        if changed:
            raise TransferError(
                f"{pair_label(pair)}: {init} changed the base model it reads from; both models were restored. A "
                "special init must only read its base module (e.g. module.weight.detach().numpy()) and write "
                "into its raw layer",
                [c.problem() for c in changed],
            )
        replaced = [c for c in _changes(ra, raw_before, pair.raw.path, "raw") if c.replaced]
        if replaced:
            what = "replaced tensor objects" if all(c.old == c.new for c in replaced) else "changed tensor shapes"
            raise TransferError(
                f"{pair_label(pair)}: {init} {what}: it replaced tensors instead of writing into them; the raw model was "
                "restored. Optimisers and tied layers hold the original objects: a special init must write "
                "values into the existing tensors (copy_/set_value), not replace them",
                [c.problem() for c in replaced],
            )
        before = {id(s.tensor): s for s in raw_before}
        written = []
        for ref in pair.raw.subtree_tensors().values():
            s = before.get(id(ref.tensor))
            if s is not None and ra.version(ref.tensor) == s.version and _same_bits(ra.torch_view(ref.tensor), s.clone):
                stats.notes.append(f"{ref.path}: left as built by {init}: the init did not write it")
                continue
            written.append(ref)
            stats.tensors += 1
            stats.elements += math.prod(ra.shape(ref.tensor))
            stats.add_nonfinite(ref.path, nonfinite.count(ra.torch_view(ref.tensor)))  # what the init wrote, never hidden
        ra.wrote([ref.tensor for ref in written])
        stats.written[id(pair)] = len(written)


def special_init_error(pair, exc: Exception, outcome: str) -> TransferError:
    """The error of an imperative special init that raised ``exc``; ``outcome``: what became of the output."""
    return TransferError(f"{pair_label(pair)}: special init {pair.entry.key} ({pair.entry.origin}) raised "
                         f"{type(exc).__name__}: {exc}; {outcome}. Fix the special init, or register another with "
                         "add_special_init(..., override=True)")


def _snapshot(adapter, module) -> list[UndoRecord]:
    """Undo records of every tensor under ``module`` (each object once)."""
    return [UndoRecord(owner, name, path, t, adapter.torch_view(t).clone(), adapter.version(t))
            for owner, path, name, t in _tensors_under(adapter, module)]


@dataclass(frozen=True)
class Change:
    """A tensor a special init touched: ``path`` ("<side> dotted path"); ``old``/``new`` its shapes when the tensor
    object was replaced on its module (``replaced``), None when its values changed in place."""

    path: str
    old: list | None = None
    new: list | None = None

    @property
    def replaced(self) -> bool:
        return self.old is not None

    def problem(self) -> Problem:
        if not self.replaced:
            return Problem(self.path, "values changed")
        same = " (a new tensor object of the same shape)" if self.old == self.new else ""
        return Problem("", f"{self.path} {self.old} -> {self.new}{same}")

    def __str__(self):
        return str(self.problem())


def _changes(adapter, saved: list[UndoRecord], prefix: str, side: str) -> list[Change]:
    """A :class:`Change` for each tensor object replaced on its module and each whose values differ from its
    record."""
    out = []
    for s in saved:
        path = f"{side} {prefix + '.' if prefix else ''}{s.path}"
        now = adapter.get_tensor(s.owner, s.name) if s.owner is not None else s.tensor
        if now is not None and now is not s.tensor:
            out.append(Change(path, list(adapter.shape(s.tensor)), list(adapter.shape(now))))
        elif not _same_bits(adapter.torch_view(s.tensor), s.clone):
            out.append(Change(path))
    return out


def _same_bits(a, b) -> bool:
    """Whether two torch tensors hold the same bits (NaN equal to the same NaN, -0.0 not equal to 0.0)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.numel() == 0:
        return True
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def _restore(adapter, saved: list[UndoRecord]):
    """Undo, newest record first: put replaced tensor objects back on their modules and write back the values
    of the tensors that changed (only those: an untouched tensor keeps its version)."""
    written = []
    for s in reversed(saved):
        if s.owner is not None and adapter.get_tensor(s.owner, s.name) is not s.tensor:
            with contextlib.suppress(Exception):
                setattr(s.owner, s.name, s.tensor)
        if not _same_bits(adapter.torch_view(s.tensor), s.clone):
            adapter.write(s.tensor, s.clone)
            written.append(s.tensor)
    adapter.wrote(written)


# -- initialisation ops (planned by padiff_lite.init) ----------------------------
def execute_init(adapter, ops) -> list[tuple[str, str]]:
    """Run init ops on one model; on any error every tensor written is restored. Returns (path, rule) pairs."""
    saved: list[UndoRecord] = []
    try:
        return run_init(adapter, ops, saved)
    except BaseException:
        with held_signals():
            _restore(adapter, saved)
        raise


def run_init(adapter, ops, saved) -> list[tuple[str, str]]:
    """Write each InitOp's values (drawn in torch's layout) and run each CallOp; ``saved`` gets undo records.
    A target some of whose elements share memory is refused before anything is written."""
    shared = [f"{op.dst.path} {list(adapter.shape(op.dst.tensor))} (strides {list(strides)})" for op in ops
              if not isinstance(op, CallOp) and (strides := adapter.overlapping_strides(op.dst.tensor)) is not None]
    if shared:
        raise InitError(f"cannot initialise {', '.join(shared)}: some of the elements of each share memory (a tensor "
                        "made with expand or as_strided), so it cannot hold a value per element; nothing was "
                        "initialised. Give it memory of its own (register the buffer as tensor.clone(), or assign "
                        ".contiguous() to it) or leave it out with update_black_list")
    done: list[tuple[str, str]] = []
    for op in ops:
        if isinstance(op, CallOp):
            done += _run_call(adapter, op, saved)
            continue
        t = op.dst.tensor
        with torch.no_grad():
            direct = adapter.torch_view(t)
            saved.append(UndoRecord(None, "", op.dst.path, t, direct.clone(), adapter.version(t)))
            region = direct.t() if op.transpose else direct
            if op.fill is Fill.CONSTANT:
                region.fill_(op.value)
            else:
                region.copy_(_init_values(op, tuple(region.shape)))
            if not adapter.is_direct(t):
                adapter.write(t, direct)
        adapter.wrote([t])
        done.append((op.dst.path, op.rule))
    return done


def _init_values(op, shape):
    if op.fill is Fill.VALUES:
        return op.values
    v = torch.empty(shape, dtype=torch.float32)
    if op.fill is Fill.NORMAL:
        v.normal_(0.0, op.std)
    elif op.fill is Fill.XAVIER_UNIFORM:
        bound = math.sqrt(6.0 / (op.fans[0] + op.fans[1]))
        v.uniform_(-bound, bound)
    elif op.fill is Fill.ORTHOGONAL:
        rows = shape[0] // op.blocks
        for i in range(op.blocks):
            torch.nn.init.orthogonal_(v[i * rows:(i + 1) * rows])
    else:
        raise ValueError(f"unknown init fill {op.fill!r}")  # a bug in padiff_lite.init, not a user error
    for r in op.zero_rows:
        v[r] = 0
    return v


def _tensors_under(adapter, module):
    """(owner module, dotted path below ``module``, name, tensor) for every tensor under it, each object once."""
    seen, stack, out = set(), [("", module)], []
    while stack:
        prefix, mod = stack.pop()
        for name, t, _, _ in adapter.own_tensors(mod):
            if id(t) not in seen:
                seen.add(id(t))
                out.append((mod, prefix + name, name, t))
        kids = [(f"{prefix}{n}.", c) for n, c in adapter.named_children(mod) if c is not None]
        stack.extend(reversed(kids))
    return out


def _run_call(adapter, op: CallOp, saved) -> list[tuple[str, str]]:
    before = _snapshot(adapter, op.module)
    saved.extend(before)
    where = f"{op.path or '<root>'} ({type(op.module).__name__})"
    try:
        with adapter.no_grad():
            op.fn(op.module)
    except Exception as exc:
        raise InitError(f"{where}: init function {op.name} raised {type(exc).__name__}: {exc}; "
                        "the model was restored. Fix the function") from exc
    replaced = [f"{op.path + '.' if op.path else ''}{s.path}" for s in before
                if adapter.get_tensor(s.owner, s.name) is not s.tensor]
    if replaced:
        raise InitError(f"{where}: init function {op.name} replaced tensors instead of writing into "
                        f"them ({', '.join(replaced)}); the model was restored. Write in place "
                        "(torch.nn.init.*_ / tensor.copy_, paddle set_value)")
    targets = {id(r.tensor): r.path for r in op.targets}
    done, changed = [], []
    for s in before:
        if _same_bits(adapter.torch_view(s.tensor), s.clone):
            continue
        if id(s.tensor) in targets:
            done.append((targets[id(s.tensor)], op.name))
        else:
            adapter.write(s.tensor, s.clone)  # not a tensor to initialise: put it back
        changed.append(s.tensor)
    adapter.wrote(changed)
    return done
