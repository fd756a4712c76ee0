"""convert_checkpoint: a checkpoint file of one framework -> a checkpoint file of the other.

The same pipeline as :func:`padiff_lite.assign_weight` - pair -> plan -> validate -> execute ->
report - with the same rules and the same errors; only the executor differs. The two models
give structure and shapes only (built on torch's meta device / under ``paddle.LazyGuard`` when
classes or factories are passed); source tensors are read by key from the file, shard by shard,
and each target tensor is written to the output as soon as it is complete, so memory holds about
one shard (safetensors: about one tensor), never the model.

Output goes to temporary files in the destination folder and is committed only when every file is
complete (:mod:`.atomic`); a failure or an interruption (Ctrl-C, SIGTERM, SIGHUP) removes them. The
source is only read, and only with the safe readers of :mod:`.formats`: no file runs code.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from . import fastcopy, layout, nonfinite
from .adapters import adapter_for
from .atomic import NAME_MAX, AtomicOutput, output_error, terminate_like_interrupt
from .errors import CheckpointError, FactoryError, TransferError
from .factories import load_callable
from .execute import PARALLEL_MIN_ELEMENTS, Stats, no_grad
from .formats import (INDEX_SUFFIX, Checkpoint, Entry, dtype_name, format_of, open_checkpoint, streams,
                      write_index, writer_for)
from .mapping import prepare as prepare_mapping
from .plan import build_plan, pair_label
from .proxy import ProxyModel, create_model
from .report import TransferReport, build_report
from .validate import check, dtype_family, unpaired_problem
from .tree import ModelTree

log = logging.getLogger("padiff_lite.checkpoint")

# names old checkpoints used for normalisation layers' weight/bias (TF-era BERT: LayerNorm.gamma/beta)
LEGACY_NAMES = {"weight": "gamma", "bias": "beta"}


@dataclass
class CheckpointReport(TransferReport):
    source: str = ""
    outputs: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        """One line that cannot be missed when not every tensor was converted ('' when every one was)."""
        if not self.missing and not self.unexpected:
            return ""
        parts = [f"wrote {self.tensors} of {self.tensors + len(self.missing)} raw tensors"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} checkpoint tensor{'s' * (len(self.unexpected) != 1)} not used")
        return "; ".join(parts)

    def __str__(self):
        outs = self.outputs if len(self.outputs) <= 3 else self.outputs[:2] + [f"... {len(self.outputs) - 2} more"]
        head = f"checkpoint {self.source} -> {', '.join(outs)}\n"
        if self.summary:
            head += f"WARNING: {self.summary}\n"
        return head + super().__str__()


# -- models from classes, factories or "module:callable" -------------------------
def load_factory(spec: str, what: str = "model"):
    """The callable named by ``"package.module:callable"`` or ``"path/to/file.py:callable"`` (see factories.py)."""
    try:
        return load_callable(spec, what)
    except FactoryError as exc:
        raise CheckpointError(str(exc)) from exc


def _build_contexts():
    import paddle

    yield "without storage", lambda: _all(torch.device("meta"), _no_torch_init(), paddle.LazyGuard())
    # some paddle layers (LSTM's flatten_parameters) cannot be built lazily: those get real storage
    yield "torch on meta, paddle with storage", lambda: _all(torch.device("meta"), _no_torch_init())
    yield "with storage", contextlib.nullcontext


@contextlib.contextmanager
def _all(*contexts):
    with contextlib.ExitStack() as stack:
        for c in contexts:
            stack.enter_context(c)
        yield


class _NoTorchInit(torch.overrides.TorchFunctionMode):
    """torch.nn.init's in-place initialisers as no-ops while a model is built on the meta device: there is
    nothing to initialise, and on meta tensors they import torch._dynamo (seconds, ~100 MB) the first time.

    A torch function mode: it applies to this thread's calls inside the ``with`` only (torch.nn.init's
    functions dispatch to an active mode before doing anything), so nothing global is rebound."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__module__", None) == "torch.nn.init" and getattr(func, "__name__", "").endswith("_"):
            return args[0] if args else next(iter((kwargs or {}).values()), None)
        return func(*args, **(kwargs or {}))


def _no_torch_init():
    return _NoTorchInit()


def _name_of(spec) -> str:
    inner = getattr(spec, "func", spec)  # functools.partial
    return getattr(inner, "__qualname__", type(inner).__name__)


def build_model(spec, role: str) -> tuple[ProxyModel, bool]:
    """(ProxyModel, built here?) from a model, a ProxyModel, a class, a factory or "module:callable"."""
    name = spec if isinstance(spec, str) else _name_of(spec)
    if isinstance(spec, str):
        spec = load_factory(spec)
    if isinstance(spec, ProxyModel):
        return spec, False
    adapter = adapter_for(spec)
    if adapter is not None and adapter.is_module(spec):
        return create_model(spec), False
    if not callable(spec):
        raise CheckpointError(f"{role}_model must be a model, a class or a zero-argument factory, got "
                              f"{type(spec).__name__}")
    last = None
    for how, ctx in _build_contexts():
        try:
            with ctx():
                model = spec()
            break
        except Exception as exc:  # try the next, less frugal way; the last failure is reported
            log.debug("building %s %s failed: %s: %s", name, how, type(exc).__name__, exc)
            last = exc
    else:
        raise CheckpointError(f"{role} model factory {name}() raised {type(last).__name__}: {last}; "
                              "it must build the model with no arguments") from last
    adapter = adapter_for(model)
    if adapter is None or not adapter.is_module(model):
        raise CheckpointError(f"{role} model factory {name}() returned {type(model).__name__}, not a "
                              "torch.nn.Module or paddle.nn.Layer")
    if how != "without storage":
        log.info("%s model %s was built %s (%s cannot be built without it)", role, name, how, adapter.name)
    return create_model(model), True


# -- the conversion ----------------------------------------------------------
def convert_checkpoint(src, dst, base_model, raw_model, strict: bool = True, progress=None,
                       mapping=None) -> CheckpointReport:
    """Convert the checkpoint ``src`` of ``base_model`` into ``dst`` for ``raw_model``.

    src: a .pt/.pth/.bin, .safetensors or .pdparams file, an HF index ``*.<suffix>.index.json`` or a
        folder holding one. dst: the output file; its suffix picks the format. A sharded source gives
        sharded output: ``dst`` names the index (``model.safetensors`` -> ``model.safetensors.index.json``
        with ``model-00001-of-0000N.safetensors`` beside it).
    base_model, raw_model: models, ProxyModels, classes, zero-argument factories or "module:callable";
        they give the structure only. Tensors keep the checkpoint's dtype.
    strict: when False, tensors without a partner (in the models or in the file) are listed in the
        report's ``missing``/``unexpected`` instead of being an error.
    progress: a bar on stderr: None = when stderr is a terminal, True/False to force.
    mapping: a mapping file (JSON), dict or Mapping pairing the layers names leave open (found once on small
        random-weight models of the same architecture: ``padiff-lite pair`` or ``report.mapping.save``); its
        paths must exist in both models and its tensors must match what the plan does.

    Raises CheckpointError (file missing, corrupt, unknown suffix) or TransferError (the checkpoint does
    not fit the models); no output is left behind then, and the source is never written.
    """
    t0 = time.perf_counter()
    ck = open_checkpoint(src)
    dst = Path(dst)
    if len(dst.name.encode("utf-8")) > NAME_MAX:
        raise CheckpointError(f"{dst}: the file name is {len(dst.name.encode('utf-8'))} bytes, more than filesystems "
                              f"allow ({NAME_MAX}); choose a shorter output name")
    if dst.is_dir():
        raise CheckpointError(f"{dst} is a folder; name the output file so its format is known, "
                              f"e.g. {dst / 'model.safetensors'}")
    out_fmt = format_of(dst)
    base, base_built = build_model(base_model, "base")
    raw, raw_built = build_model(raw_model, "raw")
    _check_frameworks(ck, base, dst, out_fmt, raw)
    found = prepare_mapping(mapping, base, raw) if mapping is not None else None
    plan = build_plan(base, raw, mapping=found)
    checked = check(plan, need_data=False, strict=False, found=found, mapping_given=found is not None)
    job = _Job(ck, plan, base, raw, strict, base_built, raw_built)
    job.prepare(checked.problems)
    groups = job.groups()
    files, index = _layout(dst, out_fmt, ck, len(groups))
    stats = Stats()
    finals = files + ([index] if index else [])
    try:
        # SIGTERM/SIGHUP clean up like Ctrl-C (set here, after the models are built: paddle sets its own handlers)
        with terminate_like_interrupt(), \
                AtomicOutput(finals, ck.files + ([ck.index] if ck.index else []), index, job.total_bytes) as out, \
                _progress(job.total_bytes, progress) as bar, contextlib.closing(job):
            weight_map = {}
            for path, group in zip(files, groups):
                entries = [e for unit in group for e in unit.entries]
                writer = writer_for(out.tmp(path), out_fmt, entries, raw.framework)
                out.opened(writer)
                reuse = streams(out_fmt)  # the writer copies each tensor out before the next is made
                for unit in group:
                    for key, tensor in job.compute(unit, stats, reuse).items():
                        writer.add(key, tensor)
                        bar.update(tensor.numel() * tensor.element_size())
                if not reuse:
                    job.bufs.clear()  # a whole-dict writer's peak is while it serialises: no scratch held then
                writer.close()
                ck.release()
                weight_map.update({e.key: path.name for e in entries if not (out_fmt == "safetensors" and e.alias_of)})
            if index:
                write_index(out.tmp(index), weight_map, stats.bytes)
            out.commit()
    except (OSError, RuntimeError, BufferError) as exc:
        err = output_error(exc, dst)
        if err is None:
            raise
        raise err from exc
    report = build_report(plan, stats, time.perf_counter() - t0)
    report = CheckpointReport(**{f.name: getattr(report, f.name) for f in fields(TransferReport)},
                              source=str(ck.path), outputs=[str(p) for p in finals])
    report.missing += job.missing
    report.unexpected += job.unexpected
    report.notes += job.notes
    if out_fmt == "safetensors":
        dropped = [f"{e.key} (same tensor as {e.alias_of})" for u in job.units for e in u.entries if e.alias_of]
        if dropped:
            report.notes.append("tied names not stored (safetensors holds no aliases; the model's own tying "
                                "restores them): " + ", ".join(dropped))
    if report.summary:
        log.warning("%s -> %s: %s", ck.path, dst, report.summary)
    log.info("converted %s -> %s: %d tensors, %.1f MB in %.2f s", ck.path, dst, report.tensors,
             report.bytes / 1e6, report.seconds)
    return report


def _check_frameworks(ck: Checkpoint, base, dst: Path, out_fmt: str, raw):
    """The suffix says which framework a file belongs to: .pdparams is paddle's, .pt/.pth/.bin torch's."""
    suffixes = {"torch": ".pt/.pth/.bin", "paddle": ".pdparams"}
    if ck.fmt in suffixes and ck.fmt != base.framework:
        raise CheckpointError(f"{ck.path} is a {ck.fmt} checkpoint ({suffixes[ck.fmt]}) but the base model "
                              f"{base.name} is a {base.framework} model; the base model is the one the checkpoint was "
                              f"saved from: pass the {ck.fmt} model as the base (--base) and the "
                              f"{raw.framework if raw.framework != ck.fmt else base.framework} model as the raw one "
                              "(--raw)")
    if out_fmt in suffixes and out_fmt != raw.framework:
        raise CheckpointError(f"{dst} is a {out_fmt} checkpoint name ({suffixes[out_fmt]}) but the raw model "
                              f"{raw.name} is a {raw.framework} model; name the output for the raw model's framework "
                              f"({suffixes[raw.framework]} or .safetensors), or swap --base and --raw")


@dataclass(eq=False)
class _Unit:
    """What one step writes: one target from planned copies/fills, or every target of an imperative pair."""
    ops: list
    pair: object = None  # LayerPair of an imperative special init
    file: int = 0
    dtype: torch.dtype | None = None
    entries: list = field(default_factory=list)  # output names, tied names after their tensor
    targets: list = field(default_factory=list)  # (canonical key, TensorRef) written by this unit
    keys: list = field(default_factory=list)  # file keys it reads


class _Job:
    def __init__(self, ck: Checkpoint, plan, base, raw, strict, base_built, raw_built):
        self.ck, self.plan, self.base, self.raw, self.strict = ck, plan, base, raw, strict
        self.base_built, self.raw_built = base_built, raw_built
        self.bnames = _names_by_tensor(base)
        self.rnames = _names_by_tensor(raw)
        self.key: dict[int, str] = {}  # id(base tensor) -> key in the file
        self.units: list[_Unit] = []
        self.missing: list[str] = []
        self.unexpected: list[str] = []
        self.notes: list[str] = []
        self.total_bytes = 0
        self.uses: dict[str, int] = {}  # file key -> units still to read it (then its memory can go)
        self.bufs: dict[str, torch.Tensor] = {}  # reused byte buffers: "in" (a source), "out" (a target)
        self.workers = max(1, min(torch.get_num_threads(), 8))
        self.pool = None  # see _pool

    # -- checking everything before writing anything ---------------------------
    def prepare(self, problems: list):
        plan, ck, ba = self.plan, self.ck, self.base.adapter
        problems = list(problems)
        legacy = []
        absent: dict[str, str] = {}  # base path -> what needs it
        for ref in self._needed():
            key = self._resolve(ref, legacy)
            if key is None:
                absent[ref.path] = ref.path
                continue
            self.key[id(ref.tensor)] = key
            ck.settle(key, getattr(torch, ba.dtype_name(ref.tensor)))  # .pdparams uint16: bf16 or uint16
            fshape, mshape = ck.infos[key].shape, tuple(ba.shape(ref.tensor))
            if fshape != mshape:
                fix = ("build the base model with the sizes the checkpoint was saved with" if len(fshape) != 2 or
                       fshape[::-1] != mshape else f"the layout looks transposed: if {ck.path.name} was saved from "
                       f"the other framework's model, swap the base and raw models (--base/--raw)")
                problems.append(f"{ck.files[ck.infos[key].file]}: {key} is {list(fshape)} in the checkpoint but "
                                f"{ref.path} is {list(mshape)} in the base model {self.base.name}; {fix}")
        if legacy:
            self.notes.append("legacy key names recognised in the checkpoint: " + ", ".join(legacy))
        known = {n for names in self.bnames.values() for n in names}
        known |= {_legacy(n) for n in known if _legacy(n)}
        extra = [k for k in ck.infos if k not in known]
        if self.strict:
            if plan.missing or plan.unexpected:
                problems.insert(0, unpaired_problem(plan))
            if absent:
                problems.append(f"{ck.path}: {len(absent)} tensor(s) the base model {self.base.name} needs are not in "
                                f"the checkpoint: {', '.join(list(absent)[:20])}{' ...' if len(absent) > 20 else ''}; "
                                "check that --base is the model the checkpoint was saved from, or pass strict=False "
                                "(--no-strict) to convert what is there")
            if extra:
                problems.append(f"{ck.path}: {len(extra)} key(s) in the checkpoint are not tensors of the base model "
                                f"{self.base.name}: {', '.join(extra[:20])}{' ...' if len(extra) > 20 else ''}; "
                                "check that --base is the model the checkpoint was saved from, or pass strict=False "
                                "(--no-strict) to leave them out")
        else:
            self.unexpected += extra
            if absent:
                self.notes.append(f"not in the checkpoint, so their targets were left out: {', '.join(absent)}")
        self._build_units(problems)
        for op in plan.checks:
            key = self.key.get(id(op.src.tensor))
            if key is not None and not bool(torch.all(layout.take(ck.get(key), op.src_part) == op.value)):
                problems.append(f"{pair_label(op.pair)}: {ck.path}: {key} has values other than {op.value}, and the raw "
                                f"layer has no tensor to hold them; give the raw layer that parameter (e.g. "
                                f"affine=True / weight_attr) or convert with another raw model")
        ck.release()
        if problems:
            raise TransferError(
                f"cannot convert {ck.path} ({self.base.framework}:{self.base.name} -> "
                f"{self.raw.framework}:{self.raw.name}); nothing was written "
                f"({len(problems)} problem{'s' * (len(problems) != 1)}):", problems)

    def _needed(self):
        seen = set()
        refs = [op.src for op in self.plan.ops if op.src is not None] + [op.src for op in self.plan.checks]
        for pair in self.plan.imperative:
            refs += list(pair.base.subtree_tensors().values())
        for ref in refs:
            if id(ref.tensor) not in seen:
                seen.add(id(ref.tensor))
                yield ref

    def _resolve(self, ref, legacy: list) -> str | None:
        names = self.bnames.get(id(ref.tensor), [ref.path])
        for n in names:
            if n in self.ck.infos:
                return n
        for n in names:
            old = _legacy(n)
            if old in self.ck.infos:
                legacy.append(f"{old} -> {n}")
                return old
        return None

    def _build_units(self, problems):
        plan, ck, ra = self.plan, self.ck, self.raw.adapter
        by_dst: dict[int, _Unit] = {}
        for op in plan.ops:
            unit = by_dst.get(id(op.dst.tensor))
            if unit is None:
                unit = by_dst[id(op.dst.tensor)] = _Unit([], targets=[(op.dst.path, op.dst)])
                self.units.append(unit)
            unit.ops.append(op)
        for pair in plan.imperative:
            self.units.append(_Unit([], pair=pair, targets=[
                (r.path, r) for r in pair.raw.subtree_tensors().values() if r.persistent and not r.alias_of]))
        kept = []
        partly = set(plan.missing)  # written in parts that leave a gap (non-strict): left out, never half-filled
        for unit in self.units:
            if unit.pair is None and unit.targets[0][0] in partly:
                continue
            srcs = [op.src for op in unit.ops if op.src is not None]
            if unit.pair is not None:
                srcs = list(unit.pair.base.subtree_tensors().values())
            keys = [self.key.get(id(r.tensor)) for r in srcs]
            if None in keys:  # non-strict: a source is not in the file, so its targets are left out
                self.missing += [k for k, _ in unit.targets]
                continue
            infos = [ck.infos[k] for k in keys]
            pair_keys = [self.key.get(id(r.tensor)) for r in (unit.pair or unit.ops[0].pair).base.own]
            near = infos or [ck.infos[k] for k in pair_keys if k]
            unit.file = min((i.file for i in near), default=0)
            floats = {i.dtype for i in near if i.dtype.is_floating_point}
            unit.dtype = infos[0].dtype if infos and unit.pair is None else (floats.pop() if len(floats) == 1 else None)
            for key, ref in unit.targets:
                raw_dtype = getattr(torch, ra.dtype_name(ref.tensor))
                dtype = unit.dtype if unit.dtype is not None and (unit.pair is None or raw_dtype.is_floating_point) \
                    else raw_dtype
                for op in unit.ops:
                    if op.src is not None and dtype_family(dtype_name(ck.infos[self.key[id(op.src.tensor)]].dtype)) \
                            != dtype_family(dtype_name(raw_dtype)):
                        problems.append(f"{ck.path}: {self.key[id(op.src.tensor)]} is "
                                        f"{dtype_name(ck.infos[self.key[id(op.src.tensor)]].dtype)} but raw "
                                        f"{op.dst.path} is {dtype_name(raw_dtype)}; a conversion does not change "
                                        "the kind of a tensor: build the raw model with a matching dtype")
                shape = tuple(ra.shape(ref.tensor))
                unit.entries.append(Entry(key, shape, dtype))
                unit.entries += [Entry(a, shape, dtype, alias_of=key)
                                 for a in self.rnames.get(id(ref.tensor), []) if a != key]
                self.total_bytes += _nbytes(shape, dtype)
            kept.append(unit)
            for k in set(keys):
                self.uses[k] = self.uses.get(k, 0) + 1
            unit.keys = sorted(set(keys))
        self.units = kept

    def groups(self) -> list[list[_Unit]]:
        """Units by the input file they read from, in file order; empty groups dropped."""
        out: dict[int, list[_Unit]] = {}
        for unit in self.units:
            out.setdefault(unit.file, []).append(unit)
        return [out[i] for i in sorted(out)] or [[]]

    # -- executing -------------------------------------------------------------
    def compute(self, unit: _Unit, stats: Stats, reuse: bool = False) -> dict[str, torch.Tensor]:
        """The unit's target tensors. ``reuse``: a planned target may live in a buffer that the next call
        overwrites (right when the writer copies it out at once)."""
        out = self._imperative(unit, stats) if unit.pair is not None else self._planned(unit, stats, reuse)
        for k in unit.keys:
            self.uses[k] -= 1
            if not self.uses[k]:
                self.ck.forget(k)
        return out

    def _pool(self):
        """Threads for the pieces of big copies (:mod:`.fastcopy`), made when first needed."""
        if self.pool is None and self.workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="padiff_lite")
        return self.pool

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None

    def _buf(self, name: str, nbytes: int) -> torch.Tensor:
        """A reused uint8 buffer of at least ``nbytes`` (memory touched once, not once per tensor)."""
        buf = self.bufs.get(name)
        if buf is None or buf.numel() < nbytes:
            self.bufs.pop(name, None)
            buf = self.bufs[name] = torch.empty(nbytes, dtype=torch.uint8)
        return buf

    def _planned(self, unit: _Unit, stats: Stats, reuse: bool = False) -> dict[str, torch.Tensor]:
        entry = unit.entries[0]
        ops = unit.ops
        nbytes = _nbytes(entry.shape, entry.dtype)
        if len(ops) == 1 and ops[0].kind == "copy" and ops[0].transform == "copy" and ops[0].src_part is None \
                and ops[0].dst_part is None:
            key = self.key[id(ops[0].src.tensor)]
            info = self.ck.infos[key]
            if info.dtype == entry.dtype and tuple(info.shape) == entry.shape:
                src = self.ck.get(key, into=self._buf("out", nbytes) if reuse else None)
                if src.is_contiguous() and src.untyped_storage().nbytes() == src.numel() * src.element_size() \
                        or reuse and src.is_contiguous():
                    stats.add_nonfinite(entry.key, nonfinite.count(src))
                    self._count(stats, src)
                    return {entry.key: src}  # unchanged: written as read, no copy
        if reuse:
            out = self._buf("out", nbytes)[:nbytes].view(entry.dtype).reshape(entry.shape)
        else:
            out = torch.empty(entry.shape, dtype=entry.dtype)
        for op in ops:
            regions = layout.cut(out, op.dst_part)
            if op.kind == "fill":
                for region in regions:
                    region.fill_(op.value)
                continue
            key = self.key[id(op.src.tensor)]
            src = self.ck.get(key, into=self._buf("in", self.ck.infos[key].nbytes))  # used up within this op
            if len(regions) == 1 and regions[0].numel() >= PARALLEL_MIN_ELEMENTS:  # big: one pass, copy and count
                bad = fastcopy.copy_counting(regions[0], layout.take(src, op.src_part), op.transform == "transpose",
                                             self._pool(), self.workers)
                if bad is not None:
                    stats.add_nonfinite(entry.key, bad)
                    continue
            for region, value in layout.pieces(src, op.src_part, op.transform, out, op.dst_part):
                region.copy_(value)
                # scanned where it was written: contiguous, so faster than the (transposed) source view
                stats.add_nonfinite(entry.key, nonfinite.count(region if region.dtype == value.dtype else value))
        self._count(stats, out)
        return {entry.key: out}

    @staticmethod
    def _count(stats, t):
        stats.tensors += 1
        stats.elements += t.numel()
        stats.bytes += t.numel() * t.element_size()

    def _imperative(self, unit: _Unit, stats: Stats) -> dict[str, torch.Tensor]:
        """Run a PaDiff-style init on just this pair: base filled from the file, raw with real storage."""
        pair, ba, ra = unit.pair, self.base.adapter, self.raw.adapter
        bmod = _scratch(pair.base.module, self.base_built)
        rmod = _scratch(pair.raw.module, self.raw_built)
        for local, ref in pair.base.subtree_tensors().items():
            _fill(ba, ba.get_tensor(bmod, local), self.ck.get(self.key[id(ref.tensor)]))
        for local in pair.raw.subtree_tensors():
            t = ra.get_tensor(rmod, local)
            if ra.name == "paddle" and not t._is_initialized():
                t.initialize()
        try:
            with no_grad(self.raw), no_grad(self.base):
                pair.entry.func(bmod, rmod)
        except Exception as exc:
            raise TransferError(f"{pair_label(pair)}: special init {pair.entry.key} ({pair.entry.origin}) raised "
                                f"{type(exc).__name__}: {exc}; no output was written. Fix the special init, or "
                                "register another with add_special_init(..., override=True)") from exc
        out = {}
        for entry in unit.entries:
            if entry.alias_of:
                continue
            local = pair.raw.local(next(r for k, r in unit.targets if k == entry.key))
            t = ra.get_tensor(rmod, local)
            if t is None or tuple(ra.shape(t)) != entry.shape:
                raise TransferError(f"{pair_label(pair)}: special init {pair.entry.key} ({pair.entry.origin}) left "
                                    f"{entry.key} as {None if t is None else list(ra.shape(t))}, expected "
                                    f"{list(entry.shape)}; a special init must write values into the existing tensors "
                                    "(copy_/set_value), not replace them")
            value = ra.torch_view(t).to(entry.dtype, copy=True).contiguous()
            stats.add_nonfinite(entry.key, nonfinite.count(value))
            self._count(stats, value)
            out[entry.key] = value
        if self.base_built and ba.name == "torch":
            bmod.to("meta")  # give the memory back
        if self.raw_built and ra.name == "torch":
            rmod.to("meta")
        return out


def _scratch(module, built_here: bool):
    """A module that may be given real storage: ours in place, a caller's model as a copy."""
    if built_here:
        if adapter_for(module).name == "torch" and any(t.is_meta for t in list(module.parameters()) +
                                                       list(module.buffers())):
            module.to_empty(device="cpu")
        return module
    return copy.deepcopy(module)


def _fill(adapter, t, value: torch.Tensor):
    if adapter.name == "paddle":
        if not t._is_initialized():
            t.initialize()
        adapter.write(t, value.to(getattr(torch, adapter.dtype_name(t))))
    else:
        adapter.write(t, value)


def _names_by_tensor(proxy) -> dict[int, list[str]]:
    """id(tensor) -> every dotted name it has in the model (tied tensors and paddle's RNN cells have several)."""
    out: dict[int, list[str]] = {}
    stack = [ModelTree(proxy).build(proxy.model)]
    while stack:
        node = stack.pop()
        for ref in node.own:
            out.setdefault(id(ref.tensor), []).append(ref.path)
        stack.extend(child for _, child in reversed(node.children))
    return out


def _legacy(name: str) -> str | None:
    head, _, last = name.rpartition(".")
    old = LEGACY_NAMES.get(last)
    return None if old is None else (f"{head}.{old}" if head else old)


def _nbytes(shape, dtype) -> int:
    n = 1
    for s in shape:
        n *= s
    return n * dtype.itemsize


# -- output files ------------------------------------------------------------
def _layout(dst: Path, fmt: str, ck: Checkpoint, n: int) -> tuple[list[Path], Path | None]:
    """The output files: ``[dst]``, or shards plus an index when the source is sharded or dst names an index."""
    name = dst.name
    if name.endswith(INDEX_SUFFIX):
        index, name = dst, name[: -len(INDEX_SUFFIX)]
    elif ck.sharded:
        index = dst.with_name(name + INDEX_SUFFIX)
    else:
        return [dst], None
    stem, suffix = os.path.splitext(name)
    return [dst.parent / f"{stem}-{i + 1:05d}-of-{n:05d}{suffix}" for i in range(n)], index


PROGRESS_EVERY = 5.0  # seconds between progress log lines when stderr is not a terminal


def _progress(total: int, progress):
    """A tqdm bar on a terminal; elsewhere (a log file, CI) an INFO line every PROGRESS_EVERY seconds.
    ``progress``: None = choose by stderr, True = the bar, False = nothing."""
    if progress is None and not sys.stderr.isatty():
        return _LogProgress(total)
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="convert", file=sys.stderr,
                disable=not progress and not (progress is None and sys.stderr.isatty()), delay=0.5, leave=False)


class _LogProgress:
    def __init__(self, total: int):
        self.total, self.done = total, 0
        self.start = self.last = time.perf_counter()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int):
        self.done += n
        now = time.perf_counter()
        if now - self.last >= PROGRESS_EVERY:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            log.info("convert: %.1f of %.1f MB (%.0f%%), %.0f MB/s", self.done / 1e6, self.total / 1e6,
                     100 * self.done / max(self.total, 1), rate / 1e6)
