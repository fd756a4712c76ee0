"""convert_checkpoint: a checkpoint file of one framework -> a checkpoint file of the other.

The same pipeline as :func:`padiff_lite.assign_weight` - pair -> plan -> validate -> execute -> report - with
the same rules, the same validator and the same errors; only the executor differs. Resolving (building the
models without storage, finding each tensor's key in the file, checking the file against the plan) is
:mod:`.checkpoint_plan`; this module runs the result: source tensors are read by key from the file, shard by
shard, and each target tensor is written to the output as soon as it is complete, so memory holds about one
shard (safetensors: about one tensor), never the model.

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

from . import fastcopy, hf_disk_layout, layout, layouts_on_disk, nonfinite
from .checkpoint_plan import FilePlan, Unit, nbytes, resolve
from .errors import CheckpointError, TransferError
from .execute import PARALLEL_MIN_ELEMENTS, Stats, no_grad, special_init_error
from .factories import build_model
from .formats.common import INDEX_SUFFIX, format_of
from .formats.files import Checkpoint, open_checkpoint, streams, writer_for
from .formats.index import write_index
from .formats.output import NAME_MAX, AtomicOutput, output_error
from .interrupts import terminate_like_interrupt
from .ops import AS_IS, FILL, TRANSPOSE
from .plan import pair_label
from .prepare import prepare
from .report import TransferReport, build_report
from .validate import check
from .workers import Pool

log = logging.getLogger("padiff_lite.checkpoint")


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


# -- the conversion ----------------------------------------------------------
def convert_checkpoint(src, dst, base_model=None, raw_model=None, strict: bool = True, progress=None,
                       mapping=None, *, layout: str | None = None, to: str | None = None, verify: bool = False,
                       out_layout: str | None = None, pool=None, optimizer=None, scheduler=None,
                       scheduler_out=None):
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

    layout: the layout of ``src`` ("torch", "paddle" or "hf") when neither its header metadata nor its folder
        says (:mod:`.layouts_on_disk`); needed only where square tensors make it ambiguous.
    out_layout: "hf" writes a transformers raw model's ``.safetensors`` in transformers' on-disk (Hub) layout, what
        its ``save_pretrained`` writes (per-expert MoE tensors, VL prefixes; transformers' own reverse conversion),
        which ``from_pretrained``, PaddleFormers and other Hub readers load; default: the raw model's in-memory
        layout (``load_state_dict``).
    to: "paddleformers" or "transformers": ``src`` and ``dst`` are model folders and the models come from the
        folder's config.json (:func:`.library_folders.convert_folder`; base_model/raw_model are not given then);
        ``verify`` loads the written folder with the target library and compares outputs.
    pool: the registry of rules to pair and plan with (default: the global ``init_pool``).
    optimizer, scheduler, scheduler_out: optimizer-state files (a ``.pdopt`` on either side):
        :func:`.optim_files.convert_optimizer` converts ``optimizer.state_dict()`` files torch <-> paddle.

    Raises CheckpointError (file missing, corrupt, unknown suffix) or TransferError (the checkpoint does
    not fit the models); no output is left behind then, and the source is never written.
    """
    if to is not None:
        if base_model is not None or raw_model is not None or layout is not None or mapping is not None or \
                out_layout is not None or pool is not None or scheduler is not None or scheduler_out is not None:
            raise CheckpointError("to= converts a model folder with the models its config.json names (by the "
                                  "library's own tables, not the rules of a pool); do not pass "
                                  "base_model/raw_model/layout/mapping/out_layout/pool/scheduler with it")
        from .library_folders import convert_folder
        from .trainer_folders import convert_trainer_folder, is_trainer_folder

        if is_trainer_folder(src):
            if verify:
                raise CheckpointError(f"{src} is a trainer checkpoint (trainer_state.json): verify= is for model "
                                      "folders; resume the converted checkpoint with the target library's Trainer")
            return convert_trainer_folder(src, dst, to, progress=progress, optimizer=optimizer)
        if optimizer is not None:
            raise CheckpointError(f"{src} is a model folder (no trainer_state): optimizer= is for optimizer state; "
                                  "leave it out")
        return convert_folder(src, dst, to, verify=verify, progress=progress)
    from .optim_files import convert_optimizer, is_optimizer_conversion

    if is_optimizer_conversion(src, dst):
        if base_model is None or raw_model is None:
            raise CheckpointError("an optimizer state file is converted with the models it is for: give base_model "
                                  "and raw_model (--base/--raw)")
        if not strict or layout is not None or verify:
            raise CheckpointError("strict=False, layout= and verify= do not apply to optimizer state files")
        return convert_optimizer(src, dst, base_model, raw_model, mapping=mapping, optimizer=optimizer,
                                 scheduler=scheduler, scheduler_out=scheduler_out)
    if optimizer is not None or scheduler is not None or scheduler_out is not None:
        raise CheckpointError(f"optimizer=/scheduler=/scheduler_out= are for optimizer state files ({src} -> {dst}): "
                              "name the paddle side .pdopt")
    if base_model is None or raw_model is None:
        raise CheckpointError("give base_model and raw_model (the models SRC and DST are for), or to= for a model "
                              "folder (padiff-lite convert SRC_DIR DST_DIR --to paddleformers|transformers)")
    if verify:
        raise CheckpointError("verify= needs the folder form (to=...): only a model folder can be loaded by a library "
                              "on its own")
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
    layouts_on_disk.check_output(dst, out_fmt, raw)
    disk = _disk_layout(dst, out_fmt, raw, out_layout)
    prepared = prepare(base, raw, mapping=mapping, pool=pool, runnable=False)
    plan = prepared.plan
    layouts_on_disk.check_source(ck, plan, base, raw, layout)
    checked = check(plan, need_data=False, strict=strict, context=prepared.context)
    fp = resolve(ck, plan, strict, checked.problems)
    job = Runner(fp, base_built, raw_built)
    groups = fp.groups()
    files, index = _layout(dst, out_fmt, ck, len(groups))
    stats = Stats()
    finals = files + ([index] if index else [])
    try:
        # SIGTERM/SIGHUP clean up like Ctrl-C (set here, after the models are built: paddle sets its own handlers)
        with terminate_like_interrupt(), \
                AtomicOutput(finals, ck.files + ([ck.index] if ck.index else []), index, fp.total_bytes) as out, \
                _progress(fp.total_bytes, progress) as bar, contextlib.closing(job):
            weight_map = {}
            shards = [[e for unit in group for e in unit.entries] for group in groups]
            if disk:  # transformers' on-disk names and shapes, known before a tensor is made
                memory_shards = [[e for e in entries if not e.alias_of] for entries in shards]
                shards = hf_disk_layout.disk_shards(raw.model, memory_shards)
            for path, group, entries in zip(files, groups, shards):
                writer = writer_for(out.tmp(path), out_fmt, entries, "hf" if disk else raw.framework)
                out.opened(writer)
                reuse = streams(out_fmt) and not disk  # the writer copies each tensor out before the next is made
                held = {}
                for unit in group:
                    for key, tensor in job.compute(unit, stats, reuse).items():
                        if disk:  # the shard's tensors go through transformers' reverse conversion together
                            if not any(e.key == key and e.alias_of for e in unit.entries):
                                held[key] = tensor
                        else:
                            writer.add(key, tensor)
                        bar.update(tensor.numel() * tensor.element_size())
                if disk:
                    reverted = hf_disk_layout.to_disk(raw.model, held)
                    held.clear()
                    for e in entries:
                        writer.add(e.key, reverted.pop(e.key).contiguous())
                if not reuse:
                    job.bufs.clear()  # a whole-dict writer's peak is while it serialises: no scratch held then
                writer.close()
                ck.release()
                unchanged(ck)  # early: a long conversion need not run to its end to be refused
                weight_map.update({e.key: path.name for e in entries if not (out_fmt == "safetensors" and e.alias_of)})
            if index:
                write_index(out.tmp(index), weight_map, stats.bytes)
            job.check()
            unchanged(ck)  # the last step before the commit: what was read is what the output holds
            out.commit()
    except (OSError, RuntimeError, BufferError) as exc:
        err = output_error(exc, dst)
        if err is None:
            raise
        raise err from exc
    report = build_report(plan, stats, time.perf_counter() - t0, checked.casts)
    report = CheckpointReport(**{f.name: getattr(report, f.name) for f in fields(TransferReport)},
                              source=str(ck.path), outputs=[str(p) for p in finals])
    report.missing += fp.missing
    report.unexpected += fp.unexpected
    report.notes += fp.notes
    if out_fmt == "safetensors":
        dropped = [f"{e.key} (same tensor as {e.alias_of})" for u in fp.units for e in u.entries if e.alias_of]
        if dropped:
            report.notes.append("tied names not stored (safetensors holds no aliases; the model's own tying "
                                "restores them): " + ", ".join(dropped))
    if disk:
        n = sum(len(entries) for entries in shards)
        report.notes.append(f"written in transformers' on-disk layout for {type(raw.model).__name__} (its own reverse "
                            f"conversion, as save_pretrained writes): {n} tensors on disk")
    elif out_fmt == "safetensors" and hf_disk_layout.writes_disk_layout(raw.model):
        report.notes.append(f"written in {type(raw.model).__name__}'s in-memory layout (load_state_dict); "
                            "transformers stores this family differently on disk: out_layout='hf' (--out-layout hf) "
                            "writes what its save_pretrained writes")
    if report.summary:
        log.warning("%s -> %s: %s", ck.path, dst, report.summary)
    log.info("converted %s -> %s: %d tensors, %.1f MB in %.2f s", ck.path, dst, report.tensors,
             report.bytes / 1e6, report.seconds)
    return report


def _disk_layout(dst: Path, out_fmt: str, raw, out_layout: str | None) -> bool:
    """Whether the output is written in transformers' on-disk layout (``out_layout="hf"``, checked here)."""
    if out_layout is None:
        return False
    if out_layout != "hf":
        raise CheckpointError(f"out_layout={out_layout!r}: the only choice is 'hf' (transformers' on-disk layout); "
                              "leave it out for the raw model's in-memory layout")
    if out_fmt != "safetensors" or raw.framework != "torch" or not hf_disk_layout.is_transformers_model(raw.model):
        raise CheckpointError(f"{dst}: out_layout='hf' writes a transformers model's .safetensors the way its "
                              f"save_pretrained does; here the raw model is {raw.name} ({raw.framework}) and the "
                              f"output {out_fmt}. Nothing was written")
    return hf_disk_layout.writes_disk_layout(raw.model)


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


# what of a file's status says its content may differ: (name in messages, os.stat_result fields)
_IDENTITY = (("size", ("st_size",)), ("inode", ("st_dev", "st_ino")), ("modification time", ("st_mtime_ns",)),
             ("status change time", ("st_ctime_ns",)))


def unchanged(ck: Checkpoint):
    """CheckpointError when a source file is not the one it was before it was first read: another size, another
    inode (replaced by a rename), another modification or status change time (overwritten in place). A file
    changed while being read would give an output mixing its two versions."""
    for f, was in ck.before.items():
        try:
            now = os.stat(f)
        except OSError as exc:
            raise CheckpointError(f"{f}: the source file changed while being read: it is gone now ({exc.strerror}); "
                                  "nothing was written. Convert again once nothing writes the checkpoint (a download, "
                                  "a save or a copy in progress)") from None
        changed = [f"{what} {'/'.join(str(getattr(was, a)) for a in attrs)} -> "
                   f"{'/'.join(str(getattr(now, a)) for a in attrs)}"
                   for what, attrs in _IDENTITY if any(getattr(was, a) != getattr(now, a) for a in attrs)]
        if changed:
            raise CheckpointError(f"{f}: the source file changed while being read ({'; '.join(changed)}): the output "
                                  "would mix its old and new contents, so nothing was written. Convert again once "
                                  "nothing writes the checkpoint (a download, a save or a copy in progress)")


class Runner:
    """Computes each unit's target tensors from the file: planned copies/fills into a fresh (or reused) buffer,
    imperative special inits on a scratch copy of their pair."""

    def __init__(self, fp: FilePlan, base_built: bool, raw_built: bool):
        self.fp, self.ck = fp, fp.ck
        self.base, self.raw = fp.plan.base, fp.plan.raw
        self.base_built, self.raw_built = base_built, raw_built
        self.uses = dict(fp.uses)  # file key -> units still to read it (then its memory can go)
        self.bufs: dict[str, torch.Tensor] = {}  # reused byte buffers: "in" (a source), "out" (a target)
        self.workers = max(1, min(torch.get_num_threads(), 8))
        self.pool = None  # see _pool

    # -- executing -------------------------------------------------------------
    def compute(self, unit: Unit, stats: Stats, reuse: bool = False) -> dict[str, torch.Tensor]:
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
            self.pool = Pool(self.workers)
        return self.pool

    def check(self):
        """Raise an exception sent to a copy thread between tasks (the tasks themselves hand theirs to the waiter)."""
        if self.pool is not None and self.pool.broken is not None:
            raise self.pool.broken

    def close(self):
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def _buf(self, name: str, nbytes: int) -> torch.Tensor:
        """A reused uint8 buffer of at least ``nbytes`` (memory touched once, not once per tensor)."""
        buf = self.bufs.get(name)
        if buf is None or buf.numel() < nbytes:
            self.bufs.pop(name, None)
            buf = self.bufs[name] = torch.empty(nbytes, dtype=torch.uint8)
        return buf

    def _planned(self, unit: Unit, stats: Stats, reuse: bool = False) -> dict[str, torch.Tensor]:
        entry = unit.entries[0]
        ops = unit.ops
        size = nbytes(entry.shape, entry.dtype)
        if len(ops) == 1 and ops[0].whole and ops[0].transform is AS_IS:
            key = self.fp.key[id(ops[0].src.tensor)]
            info = self.ck.infos[key]
            if info.dtype == entry.dtype and tuple(info.shape) == entry.shape:
                src = self.ck.get(key, into=self._buf("out", size) if reuse else None)
                if src.is_contiguous() and src.untyped_storage().nbytes() == src.numel() * src.element_size() \
                        or reuse and src.is_contiguous():
                    stats.add_nonfinite(entry.key, nonfinite.count(src))
                    stats.add_written(src)
                    return {entry.key: src}  # unchanged: written as read, no copy
        if reuse:
            out = self._buf("out", size)[:size].view(entry.dtype).reshape(entry.shape)
        else:
            out = torch.empty(entry.shape, dtype=entry.dtype)
        for op in ops:
            regions = layout.cut(out, op.dst_part)
            if op.kind is FILL:
                for region in regions:
                    region.fill_(op.value)
                continue
            key = self.fp.key[id(op.src.tensor)]
            src = self.ck.get(key, into=self._buf("in", self.ck.infos[key].nbytes))  # used up within this op
            if len(regions) == 1 and regions[0].numel() >= PARALLEL_MIN_ELEMENTS:  # big: one pass, copy and count
                bad = fastcopy.copy_counting(regions[0], layout.take(src, op.src_part), op.transform is TRANSPOSE,
                                             self._pool(), self.workers)
                if bad is not None:
                    stats.add_nonfinite(entry.key, bad)
                    continue
            for region, value in layout.pieces(src, op.src_part, op.transform, out, op.dst_part):
                region.copy_(value)
                # scanned where it was written: contiguous, so faster than the (transposed) source view
                stats.add_nonfinite(entry.key, nonfinite.count(region if region.dtype == value.dtype else value))
        stats.add_written(out)
        return {entry.key: out}

    def _imperative(self, unit: Unit, stats: Stats) -> dict[str, torch.Tensor]:
        """Run a PaDiff-style init on just this pair: base filled from the file, raw with real storage."""
        pair, ba, ra = unit.pair, self.base.adapter, self.raw.adapter
        bmod = _scratch(ba, pair.base.module, self.base_built)
        rmod = _scratch(ra, pair.raw.module, self.raw_built)
        for local, ref in pair.base.subtree_tensors().items():
            t = ba.get_tensor(bmod, local)
            ba.write(t, self.ck.get(self.fp.key[id(ref.tensor)]).to(getattr(torch, ba.dtype_name(t))))
        try:
            with no_grad(self.raw), no_grad(self.base):
                pair.entry.func(bmod, rmod)
        except Exception as exc:
            raise special_init_error(pair, exc, "no output was written") from exc
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
            stats.add_written(value)
            out[entry.key] = value
        if self.base_built:
            ba.release(bmod)  # give the memory back
        if self.raw_built:
            ra.release(rmod)
        return out


def _scratch(adapter, module, built_here: bool):
    """The module with real storage to run a special init on: ours in place, a caller's model as a copy."""
    if not built_here:
        module = copy.deepcopy(module)
    adapter.materialize(module)
    return module


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
