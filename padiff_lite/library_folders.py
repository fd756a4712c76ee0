"""Model folders for transformers and PaddleFormers: ``convert SRC_DIR DST_DIR --to paddleformers|transformers``.

A model folder is what ``save_pretrained`` writes: ``config.json`` (naming ``architectures``), the weights
(one ``.safetensors`` file, or shards and ``model.safetensors.index.json``), ``generation_config.json`` and the
tokenizer's files. Both libraries' loaders read the weights in the HuggingFace layout
(:mod:`.layouts_on_disk`): transformers natively, PaddleFormers 1.x through each class's ``_gen_aoa_config``
rules (transposes, q/k/v and gate/up fusion) applied by paddle's flex-checkpoint loader. So converting a
folder keeps the tensors as they are (layout, dtype, bytes) and changes what the loaders differ on:

1. the architecture comes from ``config.json``; both models are built without storage by the libraries
   themselves (torch's meta device, ``paddle.LazyGuard``) from the translated config, so a config the target
   library cannot build is refused before anything is written;
2. the weights are checked against both loaders without reading a tensor (:mod:`.library_loaders`):
   PaddleFormers' own rules run on the names and shapes (paddle's ``AOAEngine``, as ``from_pretrained`` runs
   them; for its paddlefleet classes the rules of their eager class, :mod:`.paddleformers_classes`): every tensor of its model must be produced with its shape, every tensor of the folder read (tied
   copies aside); transformers' model must hold as many values as the folder and every key with its shape (its
   in-memory names, or the names its own save_pretrained writes where it renames on disk); what a library's save is known to write wrong is put right first
   where the right form is known (names, a fused tensor left in memory layout), each noted in the report;
3. ``config.json`` is translated (:mod:`.library_configs`), ``generation_config.json`` and the tokenizer
   files are copied, the weights are written shard by shard like the source (header metadata says
   ``padiff_lite_layout: hf``), all under a temporary name, renamed into place when complete (:mod:`.atomic`);
4. ``verify=True``: the written folder is loaded with the target library's ``from_pretrained``, the source with
   the source library's, both run on random token ids; the folder is written as ``DST.unverified`` (with a
   ``PADIFF_LITE_UNVERIFIED.txt`` saying why) and renamed to ``DST`` only when the outputs agree.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import paddleformers_classes, paddleformers_cpu
from .errors import CheckpointError
from .formats.common import INDEX_SUFFIX, TEMP_PREFIX, Entry
from .formats.files import open_checkpoint
from .formats.index import write_index
from .formats.output import AtomicOutput, output_error
from .formats.safetensors import SafetensorsWriter
from .interrupts import terminate_like_interrupt
from .layouts_on_disk import metadata_for
from .library_configs import translate_config
from .library_loaders import (UPSTREAM_SAVE_INCOMPLETE, Piece, build_config, build_without_storage,
                              check_transformers, paddleformers_view, source_key, source_nbytes, source_shape,
                              written_names, written_shapes)
from .paddleformers_classes import DEPRECATED

log = logging.getLogger("padiff_lite.library_folders")

TARGETS = ("paddleformers", "transformers")
UNVERIFIED_SUFFIX = ".unverified"
UNVERIFIED_MARK = "PADIFF_LITE_UNVERIFIED.txt"
# files a save_pretrained folder holds that are not copied as they are: weights and index (rewritten),
# config.json (translated), PaddleFormers' per-rank "saved" markers
SKIP_PREFIXES = ("saved_signal_", ".model_weights.done.", TEMP_PREFIX,
                 "flex-ckpt.auto_generated.metadata")  # PaddleFormers' loader leaves it in the folder it reads

# verification: outputs equal within this (float32, a few layers; the libraries' kernels differ slightly)
VERIFY_ATOL = 1e-4
VERIFY_RTOL = 1e-3


@dataclass
class FolderReport:
    source: str
    destination: str
    to: str
    architecture: str
    tensors: int = 0
    bytes: int = 0
    weight_files: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)  # other files copied as they are
    config_changes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verified: bool | None = None  # None: not asked for
    max_diff: float | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.verified is not False

    def __str__(self):
        lines = [f"model folder {self.source} -> {self.destination} ({self.architecture} for {self.to})",
                 f"  {self.tensors} tensors, {self.bytes / 1e6:.1f} MB in {len(self.weight_files)} weight file(s), "
                 f"HuggingFace layout, dtypes kept; {self.seconds:.2f} s"]
        if self.copied:
            lines.append("  copied: " + ", ".join(self.copied))
        for c in self.config_changes:
            lines.append("  config: " + c)
        for n in self.notes:
            lines.append("  note: " + n)
        if self.verified is not None:
            verdict = "verified" if self.verified else "NOT VERIFIED"
            lines.append(f"  {verdict}: max |diff| of outputs {self.max_diff:.3g} (atol {VERIFY_ATOL:g}, rtol "
                         f"{VERIFY_RTOL:g})" + ("" if self.verified else f"; left as {self.destination}"))
        return "\n".join(lines)


# -- the libraries -------------------------------------------------------------
def _libraries():
    """transformers and paddleformers.transformers, imported in the order that works (transformers first:
    PaddleFormers switches transformers' torch detection off when it is imported first)."""
    try:
        import transformers
    except ImportError as exc:
        raise CheckpointError(f"model folders need transformers ({exc}); pip install transformers") from exc
    try:
        import paddleformers.transformers as pf
    except ImportError as exc:
        raise CheckpointError(f"model folders need paddleformers ({exc}); pip install paddleformers") from exc
    return transformers, pf


def _class(lib, library: str, arch: str, src: Path):
    """transformers' class for ``arch`` (PaddleFormers' eager ``*Deprecated`` names are transformers' classes)."""
    cls = getattr(lib, arch, None)
    if cls is None and arch.endswith(DEPRECATED):  # the same model in transformers
        cls = getattr(lib, arch[: -len(DEPRECATED)], None)
    if cls is None:
        raise CheckpointError(f"{src / 'config.json'} names the architecture {arch}, which {library} "
                              f"{_version(library)} does not have; nothing was written. Convert to a library that has "
                              "it, or port the model and use the factory form (--base/--raw)")
    return cls


def _version(library: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(library)
    except md.PackageNotFoundError:
        return "?"


# -- the folder ------------------------------------------------------------------
def read_config(src: Path) -> dict:
    p = src / "config.json"
    if not src.is_dir() or not p.is_file():
        raise CheckpointError(f"{src}: not a model folder (no config.json); --to converts a folder written by "
                              "save_pretrained. For a single checkpoint file use --base/--raw")
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{p}: not valid JSON ({exc}); re-create or re-download it") from None
    archs = cfg.get("architectures") if isinstance(cfg, dict) else None
    if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
        if isinstance(cfg, dict) and "paddleformers_version" in cfg and _sub_config_architecture(cfg):
            return cfg  # PaddleFormers' save put it into text_config: settled once its classes are imported
        raise CheckpointError(f"{p} names no 'architectures' (e.g. [\"LlamaForCausalLM\"]); add the model class "
                              "there, as save_pretrained writes it")
    return cfg


def _sub_config_architecture(cfg: dict) -> str | None:
    sub = cfg.get("text_config")
    archs = sub.get("architectures") if isinstance(sub, dict) else None
    return archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None


def _settle_architecture(cfg: dict, pf, src: Path, notes: list):
    """PaddleFormers 1.2's save_pretrained of Qwen3-VL writes no top-level ``architectures`` and puts the model's class
    into ``text_config.architectures``: that class is taken when PaddleFormers has it and its config's model_type is
    the folder's (anything else is refused as a config without architectures)."""
    if cfg.get("architectures"):
        return
    arch = _sub_config_architecture(cfg)
    try:
        cls = getattr(pf, arch, None)
    except ImportError:
        cls = None
    model_type = getattr(getattr(cls, "config_class", None), "model_type", None)
    if cls is None or not model_type or model_type != cfg.get("model_type"):
        raise CheckpointError(f"{src / 'config.json'} names no 'architectures' (e.g. [\"LlamaForCausalLM\"]); add the "
                              "model class there, as save_pretrained writes it")
    cfg["architectures"] = [arch]
    notes.append(f"architectures = [{arch!r}] taken from text_config.architectures: PaddleFormers' save_pretrained "
                 f"wrote the model class there and none at the top level (its config's model_type {model_type!r} is "
                 "the folder's)")


def _other_files(src: Path, weight_files: set) -> list[Path]:
    """Files copied as they are (generation config, tokenizer, processor, chat template ...)."""
    out = []
    for p in sorted(src.iterdir()):
        if p.name == "config.json" or p in weight_files or p.name.startswith(SKIP_PREFIXES) or not p.is_file():
            continue
        if p.name.endswith(INDEX_SUFFIX) or p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".pdparams"):
            continue  # another checkpoint in the folder: not what the index names
        if p.is_symlink() and p.resolve().parent != src.resolve():
            raise CheckpointError(f"{p} is a symbolic link out of the model folder (to {p.resolve()}); copy the file "
                                  "itself into the folder (padiff_lite never follows a path out of the folder it is "
                                  "given)")
        out.append(p)
    return out


# -- the conversion -------------------------------------------------------------------
def _cpu_notes(out_cfg: dict) -> list:
    """What PaddleFormers switches on for this config that has no CPU kernel, as the folder leaves it (an absent
    fuse_rms_norm: on)."""
    on = paddleformers_cpu.fused_flags_on(out_cfg)
    if not on:
        return []
    return [f"PaddleFormers switches on {', '.join(on)} for this config (GPU-only fused kernels); on a CPU set them "
            "False after loading (padiff-lite's check/pair/--verify do)"]


def _open_weights(src: Path, weights):
    """The folder's safetensors checkpoint (``weights``: its file or index when the folder holds others too); refused
    for files linked from outside the folder or in another format."""
    ck = open_checkpoint(src if weights is None else src / Path(weights).name)
    outside = [str(f) for f in ck.files if f.resolve().parent != src.resolve()]
    if outside:
        raise CheckpointError(f"{src}: weight file(s) {', '.join(outside)} are symbolic links out of the folder; copy "
                              "the files themselves into it (padiff_lite never follows a path out of the folder it is "
                              "given)")
    if ck.fmt != "safetensors":
        raise CheckpointError(f"{ck.path}: the folder's weights are {ck.fmt} files; folder conversion reads "
                              ".safetensors (what save_pretrained writes): convert them with the factory form first")
    return ck


def _verify_written(src: Path, final: Path, dst: Path, report: FolderReport, source_lib: str, classes: dict):
    """Load the written folder ``final`` with the target library and compare its outputs with the source's: renamed
    to ``dst`` when they agree, left marked unverified (and logged) when not; CheckpointError when the check cannot
    run."""
    from .library_verify import verify_folder

    to = report.to
    try:
        report.max_diff, report.verified, verify_notes = verify_folder(src, final, to, source_lib, classes,
                                                                       VERIFY_ATOL, VERIFY_RTOL)
        report.notes += verify_notes
    except Exception as exc:  # the folder stays marked: a load or a forward that fails proves nothing
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        (final / UNVERIFIED_MARK).write_text(f"padiff-lite could not verify this folder: {why}\n", encoding="utf-8")
        raise CheckpointError(f"{final}: verification could not run ({why}); the folder is left there, marked "
                              f"unverified ({UNVERIFIED_MARK})") from exc
    if report.verified:
        (final / UNVERIFIED_MARK).unlink()
        os.rename(final, dst)
        report.destination = str(dst)
    else:
        (final / UNVERIFIED_MARK).write_text(
            f"padiff-lite converted {src} into this folder for {to}, but the outputs of {to}'s from_pretrained on "
            f"it differ from {source_lib}'s on the source by {report.max_diff:.3g} (allowed: atol {VERIFY_ATOL:g}, "
            f"rtol {VERIFY_RTOL:g}). Do not use it; report the model family.\n", encoding="utf-8")
        log.error("%s: verification failed (max |diff| %.3g); the folder is left as %s", src, report.max_diff,
                  final)


def convert_folder(src, dst, to: str, verify: bool = False, progress=None, weights=None) -> FolderReport:
    """Convert the model folder ``src`` (transformers' or PaddleFormers' save_pretrained) into the folder ``dst``
    that ``to``'s ``from_pretrained`` loads (module docstring); CheckpointError when it cannot be done right (nothing
    written). ``progress``: convert_checkpoint's signature (no bar here, the result is logged). ``weights``: the
    model's file (or index) in ``src`` when the folder holds others too (a trainer checkpoint's optimizer.pt)."""
    t0 = time.perf_counter()
    if to not in TARGETS:
        raise CheckpointError(f"to={to!r}: choose one of {', '.join(TARGETS)}")
    src, dst = Path(src), Path(dst)
    cfg = read_config(src)
    final = dst.with_name(dst.name + UNVERIFIED_SUFFIX) if verify else dst
    _check_destination(src, dst, final)
    transformers, pf = _libraries()
    arch_notes: list[str] = []
    _settle_architecture(cfg, pf, src, arch_notes)
    source_lib = "transformers" if to == "paddleformers" else "paddleformers"
    arch = cfg["architectures"][0]
    t_cls = _class(transformers, "transformers", arch, src)
    pfc = paddleformers_classes.resolve(pf, arch, _version("paddleformers"), src)
    if verify and pfc.unimportable:
        raise CheckpointError(f"--verify loads the folder with PaddleFormers' from_pretrained, but its module for "
                              f"{arch} cannot be imported here ({pfc.unimportable}); nothing was written. Convert "
                              "without --verify (the report says what was checked), or on a machine where "
                              "PaddleFormers imports it")
    model_type = cfg.get("model_type", "")

    ck = _open_weights(src, weights)
    out_cfg, changes = translate_config(cfg, to)
    if to == "transformers" and arch.endswith(DEPRECATED):
        out_cfg["architectures"] = [t_cls.__name__] + list(out_cfg["architectures"][1:])
        changes.append(f"architectures = [{t_cls.__name__!r}] (PaddleFormers' eager {arch} is transformers' "
                       f"{t_cls.__name__})")
    report = FolderReport(str(src), str(final), to, arch, config_changes=arch_notes + changes, notes=list(pfc.notes))
    writer = "paddleformers" if "paddleformers_version" in cfg else "transformers" if "transformers_version" in cfg \
        else None
    if writer == to:
        report.notes.append(f"the source's config.json was written by {to} already: the folder is copied with its "
                            "checks, not converted")

    # both models, without storage, by the libraries themselves; both loaders' view of the weights
    pf_cfg = out_cfg if to == "paddleformers" else cfg
    t_cfg = out_cfg if to == "transformers" else cfg
    t_config, t_model = build_without_storage("transformers", t_cls, t_cfg)
    ties = dict(getattr(t_model, "all_tied_weights_keys", None) or {}) \
        if getattr(t_config, "tie_word_embeddings", False) else {}
    names = written_names(ck, source_lib, model_type, report.notes)
    if pfc.cls is None:  # its module does not import here: the config is built, the rules cannot be run
        build_config("paddleformers", pfc.config_cls, pf_cfg)
        problems, drop, notes = [], [], []
    else:
        pf_config, pf_model = build_without_storage("paddleformers", pfc.cls, pf_cfg)
        problems, drop, notes = paddleformers_view(pfc.cls, pf_config, pf_model, ck, ties, names)
    if to == "transformers":
        for k in drop:
            notes.append(f"{k} not written: the same values as {ties[k]}, to which it is tied (tie_word_embeddings); "
                         f"PaddleFormers' {pfc.name} loader does not read it")
            del names[k]
    t_problems, t_notes = check_transformers(t_model, t_config, written_shapes(ck, names))
    problems += t_problems
    report.notes += notes + t_notes
    if problems:
        cause = UPSTREAM_SAVE_INCOMPLETE.get((writer or source_lib, model_type))
        raise CheckpointError(f"{src}: the weights do not fit what the libraries' loaders read ({arch}, "
                              f"transformers {_version('transformers')}, paddleformers {_version('paddleformers')}); "
                              "nothing was written:\n" + "\n".join("  - " + p for p in problems)
                              + (f"\n  cause: {cause}" if cause else ""))
    report.notes += _cpu_notes(out_cfg) if to == "paddleformers" else []

    for p in {dst, final}:
        if p.is_dir():
            p.rmdir()  # empty (checked first): the new folder is renamed into its place
    _write(src, final, ck, out_cfg, report, verify, names)
    report.seconds = time.perf_counter() - t0
    if verify:
        _verify_written(src, final, dst, report, source_lib,
                        {"transformers": t_cls.__name__, "paddleformers": pfc.name})
        report.seconds = time.perf_counter() - t0
    log.info("converted model folder %s -> %s: %d tensors, %.1f MB in %.2f s", src, report.destination,
             report.tensors, report.bytes / 1e6, report.seconds)
    return report


def _check_destination(src: Path, dst: Path, final: Path):
    for p in {dst, final}:
        if p.exists() and not (p.is_dir() and not any(p.iterdir())):
            raise CheckpointError(f"{p} exists and is not an empty folder; a model folder is written whole into a new "
                                  "(or empty) folder: choose another name or remove it")
    s = src.resolve()
    for p in (dst, final):
        r = p.resolve()
        if r == s or s in r.parents:
            raise CheckpointError(f"{p} lies inside the source folder {src}; write the converted folder elsewhere")


def _write(src: Path, final: Path, ck, out_cfg: dict, report: FolderReport, verify: bool, names: dict):
    """The folder: each written name (``names``: {written name: file key}) in the shard its file key is in, in
    the source's order (a tied copy beside its partner); config.json, the other files, the index."""
    others = _other_files(src, set(ck.files))
    weight_names = [f.name for f in ck.files]
    index = final / ck.index.name if ck.index is not None else None
    finals = [final / n for n in weight_names] + ([index] if index else []) + [final / "config.json"] + \
        [final / p.name for p in others] + ([final / UNVERIFIED_MARK] if verify else [])
    total = sum(source_nbytes(ck, source) for source in names.values())
    by_file: dict[int, list[str]] = {}
    def order(item):  # the source's order; a tied copy right after its partner
        out_name, source = item
        return ck.infos[source_key(source)].offset, out_name != source

    for out_name, source in sorted(names.items(), key=order):
        by_file.setdefault(ck.infos[source_key(source)].file, []).append(out_name)
    try:
        with terminate_like_interrupt(), AtomicOutput(finals, ck.files + ([ck.index] if ck.index else []), None,
                                                      total) as out:
            buf = None
            weight_map = {}
            for i, name in enumerate(weight_names):
                keys = by_file.get(i, [])
                entries = [Entry(k, source_shape(ck, names[k]), ck.infos[source_key(names[k])].dtype) for k in keys]
                writer = SafetensorsWriter(out.tmp(final / name), entries, metadata_for("hf"))
                out.opened(writer)
                for k in keys:
                    source = names[k]
                    n = ck.infos[source_key(source)].nbytes
                    if buf is None or buf.numel() < n:
                        import torch

                        buf = torch.empty(max(n, 1), dtype=torch.uint8)
                    tensor = ck.get(source_key(source), into=buf)
                    writer.add(k, source.take(tensor) if isinstance(source, Piece) else tensor)
                    report.tensors += 1
                    report.bytes += source_nbytes(ck, source)
                    weight_map[k] = name
                writer.close()
                ck.release()
            if index is not None:
                write_index(out.tmp(index), weight_map, total)
            _write_text(out.tmp(final / "config.json"), json.dumps(out_cfg, indent=2, sort_keys=True) + "\n")
            for p in others:
                shutil.copyfile(p, out.tmp(final / p.name))
                report.copied.append(p.name)
            if verify:
                _write_text(out.tmp(final / UNVERIFIED_MARK), "padiff-lite: this folder is being verified; it is not "
                            "verified until this file is gone and the folder has its final name\n")
            out.commit()
    except (OSError, RuntimeError) as exc:
        err = output_error(exc, final)
        if err is None:
            raise
        raise err from exc
    report.weight_files = weight_names + ([index.name] if index else [])


def _write_text(path: Path, text: str):
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
