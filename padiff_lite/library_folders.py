"""Model folders for transformers and PaddleFormers: ``convert SRC_DIR DST_DIR --to paddleformers|transformers``.

A model folder is what ``save_pretrained`` writes: ``config.json`` (naming ``architectures``), the weights
(one ``.safetensors`` file, or shards and ``model.safetensors.index.json``), ``generation_config.json`` and the
tokenizer's files. Both libraries' loaders read the weights in the HuggingFace layout
(:mod:`.layouts_on_disk`): transformers natively, PaddleFormers 1.x through each class's ``_gen_aoa_config``
rules (transposes, q/k/v and gate/up fusion) applied by paddle's flex-checkpoint loader. So converting a
folder keeps every tensor as it is (name, layout, dtype, bytes) and changes what the loaders differ on:

1. the architecture comes from ``config.json``; both models are built without storage by the libraries
   themselves (torch's meta device, ``paddle.LazyGuard``) from the translated config, so a config the target
   library cannot build is refused before anything is written;
2. the weights are checked against both loaders without reading a tensor (tied copies aside): PaddleFormers' own rules run on the
   files' names and shapes (paddle's ``AOAEngine``, as ``from_pretrained`` runs them): every tensor of the
   model must be produced with its shape, every file tensor must be read; transformers' model must hold every
   key (where transformers keeps its on-disk names) and as many values as the folder; what a library's save is
   known to write wrong is put right first where the right form is known (``SAVE_RENAMES``, ``SAVE_SPLITS``,
   each noted in the report);
3. ``config.json`` is translated (:func:`translate_config`), ``generation_config.json`` and the tokenizer
   files are copied, the weights are written shard by shard like the source (header metadata says
   ``padiff_lite_layout: hf``), all under a temporary name, renamed into place when complete (:mod:`.atomic`);
4. ``verify=True``: the written folder is loaded with the target library's ``from_pretrained``, the source with
   the source library's, both run on random token ids; the folder is written as ``DST.unverified`` (with a
   ``PADIFF_LITE_UNVERIFIED.txt`` saying why) and renamed to ``DST`` only when the outputs agree.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import paddleformers_cpu
from .atomic import AtomicOutput, output_error, terminate_like_interrupt
from .errors import CheckpointError
from .formats import INDEX_SUFFIX, TEMP_PREFIX, Entry, SafetensorsWriter, open_checkpoint, write_index
from .layouts_on_disk import metadata_for

log = logging.getLogger("padiff_lite.library_folders")

TARGETS = ("paddleformers", "transformers")
UNVERIFIED_SUFFIX = ".unverified"
UNVERIFIED_MARK = "PADIFF_LITE_UNVERIFIED.txt"
# files a save_pretrained folder holds that are not copied as they are: weights and index (rewritten),
# config.json (translated), PaddleFormers' per-rank "saved" markers
SKIP_PREFIXES = ("saved_signal_", ".model_weights.done.", TEMP_PREFIX,
                 "flex-ckpt.auto_generated.metadata")  # PaddleFormers' loader leaves it in the folder it reads

# config keys one library writes that the other does not use
ONLY_PADDLEFORMERS = ("paddleformers_version",) + paddleformers_cpu.FUSED_FLAGS
ONLY_TRANSFORMERS = ("transformers_version",)

# config keys PaddleFormers writes under another name than transformers reads: model_type -> {pf key: hf key}
CONFIG_RENAMES = {"gpt_oss": {"num_experts": "num_local_experts"}}
# what transformers' class of a family always has, which PaddleFormers' config makes optional with another default:
# model_type -> {PaddleFormers key: value}, set for PaddleFormers when the config does not say
PF_FIXED = {"ernie4_5_moe": {"num_nextn_predict_layers": 0,  # transformers' class has no multi-token prediction
                             "moe_use_aux_free": True}}  # ... and always its router's correction bias

# names a library's save_pretrained writes wrong: (source library, model_type) -> [(prefix written, prefix both
# loaders read)], applied where the right name is not in the folder already
SAVE_RENAMES = {("paddleformers", "qwen2_5_vl"): [("model.language_model.layers.", "model.layers.")]}
# fused tensors a library's save_pretrained leaves in its in-memory layout ([in, gate | up]): (source library,
# model_type) -> (suffix of the fused name, the names it is split into in order, why)
SAVE_SPLITS = {("paddleformers", "gemma3_text"): (
    "mlp.up_gate_proj.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
    "PaddleFormers 1.2's save_pretrained of Gemma3 splits mlp.up_gate_proj for layer 0 only (its "
    "_gen_inv_aoa_config names layers.0) and writes the other layers' as they are in memory, [in, gate | up]; "
    "split and transposed here as its loading rule (fused_ffn) does for layer 0")}
UPSTREAM_SAVE_NAMES = {("paddleformers", "qwen2_5_vl"): "PaddleFormers 1.2's save_pretrained of Qwen2.5-VL writes "
                       "the text layers' q/k/v biases under model.language_model.layers.* (its own loader then fails: "
                       "it cannot read back its own folder), the other tensors under model.layers.*"}

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
    cls = getattr(lib, arch, None)
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
        raise CheckpointError(f"{p} names no 'architectures' (e.g. [\"LlamaForCausalLM\"]); add the model class "
                              "there, as save_pretrained writes it")
    return cfg


def translate_config(cfg: dict, to: str) -> tuple[dict, list[str]]:
    """The config.json for ``to``'s loader and what changed (one line per change)."""
    out, changes = dict(cfg), []
    drop = ONLY_TRANSFORMERS if to == "paddleformers" else ONLY_PADDLEFORMERS
    for key in drop:
        if key in out:
            changes.append(f"{key} dropped (the other library's)")
            del out[key]
    rope = out.get("rope_parameters")
    if to == "paddleformers":
        # PaddleFormers 1.x reads rope_theta (and Gemma3's rope_local_base_freq for its sliding layers);
        # transformers 5 keeps them in rope_parameters, per layer type where they differ
        if isinstance(rope, dict) and isinstance(rope.get("full_attention"), dict):
            for kind, key in (("full_attention", "rope_theta"), ("sliding_attention", "rope_local_base_freq")):
                theta = (rope.get(kind) or {}).get("rope_theta")
                if theta is not None and out.get(key) != theta:
                    out[key] = theta
                    changes.append(f"{key} = {theta} (from rope_parameters.{kind})")
        elif isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in out:
            out["rope_theta"] = rope["rope_theta"]
            changes.append(f"rope_theta = {rope['rope_theta']} (from rope_parameters)")
        for key, value in PF_FIXED.get(out.get("model_type", ""), {}).items():
            if key not in out:
                out[key] = value
                changes.append(f"{key} = {value!r} (what transformers' class has)")
        if "dtype" in out and "torch_dtype" not in out:
            out["torch_dtype"] = out["dtype"]
            changes.append(f"torch_dtype = {out['dtype']!r} (from dtype)")
    else:
        for pf_key, hf_key in CONFIG_RENAMES.get(out.get("model_type", ""), {}).items():
            if pf_key in out and hf_key not in out:
                out[hf_key] = out.pop(pf_key)
                changes.append(f"{hf_key} = {out[hf_key]!r} (PaddleFormers' {pf_key})")
        if "rope_local_base_freq" in out and "rope_theta" in out and out.get("model_type", "").startswith("gemma3"):
            full = dict(rope) if isinstance(rope, dict) and "full_attention" not in rope else {}
            full = {"rope_type": full.get("rope_type", "default"), **full, "rope_theta": out["rope_theta"]}
            out["rope_parameters"] = {"full_attention": full, "sliding_attention": {
                "rope_type": "default", "rope_theta": out.pop("rope_local_base_freq")}}
            changes.append("rope_parameters per layer type (from rope_theta and rope_local_base_freq)")
        if "torch_dtype" in out and "dtype" not in out:
            out["dtype"] = out.pop("torch_dtype")
            changes.append(f"dtype = {out['dtype']!r} (from torch_dtype)")
    return out, changes


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


# -- the models, without storage -----------------------------------------------------
def _build(library: str, cls, cfg: dict):
    """(config object, model without storage) built by the library itself."""
    try:
        config = cls.config_class.from_dict(dict(cfg))
        if library == "transformers":
            import torch

            with torch.device("meta"):
                model = cls(config)
        else:
            import paddle

            paddleformers_cpu.switch_off(config)
            with paddle.LazyGuard():
                model = cls(config)
    except Exception as exc:
        raise CheckpointError(f"{library} cannot build {cls.__name__} from this config.json ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:300] if str(exc) else ''}); nothing was written") from exc
    return config, model


@dataclass(frozen=True)
class Piece:
    """A written tensor that is columns ``start:stop`` of a 2-D file tensor, transposed (a fused tensor a save left
    in its in-memory layout, split into the tensors the loaders read)."""

    key: str
    start: int
    stop: int

    def shape(self, ck) -> tuple:
        rows, _ = ck.infos[self.key].shape
        return (self.stop - self.start, rows)

    def take(self, tensor):
        return tensor[:, self.start:self.stop].t().contiguous()


def _key(source) -> str:
    """The file key a written tensor is read from (``names``' values: a file key or a :class:`Piece`)."""
    return source.key if isinstance(source, Piece) else source


def _shape(ck, source) -> tuple:
    return source.shape(ck) if isinstance(source, Piece) else tuple(ck.infos[source].shape)


def _nbytes(ck, source) -> int:
    return math.prod(_shape(ck, source)) * ck.infos[_key(source)].dtype.itemsize


def _shapes(ck, names: dict) -> dict[str, tuple]:
    """{written name: shape} of the tensors ``names`` ({written name: file key or Piece}) says will be written."""
    return {out: _shape(ck, source) for out, source in names.items()}


def check_paddleformers(cls, config, model, ck, names: dict) -> tuple[list[str], list[str]]:
    """Run PaddleFormers' own loading rules (``_gen_aoa_config``, paddle's AOAEngine) on the names and shapes the
    folder will hold (``names``: {written name: file key}): (problems: a model tensor not produced or of another
    shape, the rules failing; written names they never read)."""
    if not hasattr(cls, "_gen_aoa_config"):
        return [f"PaddleFormers' {cls.__name__} has no _gen_aoa_config, so its from_pretrained cannot read a "
                "HuggingFace-layout folder (flex_checkpoint loading needs it)"], []
    from paddle.distributed.flex_checkpoint.aoa.aoa_engine import AOAEngine
    from paddle.distributed.flex_checkpoint.dcp.sharded_weight import ShardedWeightDesc

    def desc(key, shape, dtype):
        return [ShardedWeightDesc(key, shape, shape, (0,) * len(shape), dtype)]

    state = model.state_dict()
    dst = {k: desc(k, tuple(v.shape), str(v.dtype).split(".")[-1]) for k, v in state.items()}
    src = {out: desc(out, _shape(ck, source), str(ck.infos[_key(source)].dtype).replace("torch.", ""))
           for out, source in names.items()}
    try:
        engine = AOAEngine(cls._gen_aoa_config(config), src, dst)
    except Exception as exc:  # the loader itself would fail the same way
        return [f"PaddleFormers' loading rules for {cls.__name__} fail on this folder: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:300] if str(exc) else ''}"], []
    problems, used = [], set()
    for key, tensor in state.items():
        got = engine.output_vars.get(key)
        if got is None:
            problems.append(f"{key}: PaddleFormers' loading rules produce nothing for it")
            continue
        used.update(s[0] for s in got.slices)
        if tuple(got.shape) != tuple(tensor.shape):
            problems.append(f"{key}: PaddleFormers' loading rules make it {list(got.shape)}, the model holds "
                            f"{list(tensor.shape)}")
    return problems, sorted(set(src) - used)


def _pf_view(cls, config, model, ck, ties: dict, names: dict) -> tuple[list[str], list[str], list[str]]:
    """PaddleFormers' view of the folder, settling tied tensors (``names`` is completed in place): (problems,
    written names that may be left out, notes). A tied name PaddleFormers' rules ask for but the folder does not
    hold (transformers does not store tied copies) is written as a copy of its partner; a stored tied copy
    PaddleFormers does not read may be left out when it equals its partner (the model's own tying restores it),
    and is refused when it does not."""
    drop, notes = [], []
    for _ in range(4):
        problems, unread = check_paddleformers(cls, config, model, ck, names)
        wanted = [k for k, v in ties.items() if k not in names and v in names
                  and any(k in p for p in problems if p.startswith("PaddleFormers' loading rules"))]
        if not wanted:
            break
        for k in wanted:
            names[k] = names[ties[k]]
            notes.append(f"{k} written as a copy of {ties[k]} (tied; PaddleFormers' {cls.__name__} loader reads it "
                         "by this name)")
    rest = []
    for k in unread:
        partner = ties.get(k)
        if partner in names and isinstance(names[k], str) and isinstance(names[partner], str) \
                and _equal(ck, names[k], names[partner]):
            drop.append(k)
        else:
            rest.append(k)
    if rest:
        problems.append(f"{len(rest)} tensor(s) of the folder would not be read by PaddleFormers' {cls.__name__}: "
                        f"{', '.join(rest[:5])}{' ...' if len(rest) > 5 else ''}")
    return problems, drop, notes


def _equal(ck, a: str, b: str) -> bool:
    import torch

    ia, ib = ck.infos[a], ck.infos[b]
    return ia.shape == ib.shape and ia.dtype == ib.dtype and torch.equal(ck.get(a).view(torch.uint8),
                                                                          ck.get(b).view(torch.uint8))


def check_transformers(model, config, got: dict) -> tuple[list[str], list[str]]:
    """The folder's names and shapes (``got``) against transformers' model built on the meta device: (problems,
    notes). Families that
    transformers stores under other names on disk (its conversion_mapping) are left to its loader (noted)."""
    from transformers.conversion_mapping import get_model_conversion_mapping

    model_type = getattr(config, "model_type", "")
    tied = set()
    if getattr(config, "tie_word_embeddings", False):
        tied = {k for k in getattr(model, "all_tied_weights_keys", {}) or {}}
    persistent = model.state_dict()
    expected = {k: tuple(v.shape) for k, v in persistent.items()}
    # whatever the names on disk, the numbers of values must agree (a config translated wrong changes sizes)
    want = sum(math.prod(s) for k, s in expected.items() if k not in tied)
    have = sum(math.prod(s) for k, s in got.items() if k not in tied)
    if want != have:
        return [f"transformers' {type(model).__name__} built from this config holds {want:,} values, the folder "
                f"{have:,}: the config does not describe these weights for transformers"], []
    if get_model_conversion_mapping(model, add_legacy=False):
        return [], [f"transformers renames {model_type} tensors when it loads (its conversion_mapping): the names were "
                    "left to its loader, the sizes checked; --verify proves the folder"]
    problems = []
    missing = sorted(k for k in expected if k not in got and k not in tied)
    if missing:
        problems.append(f"{len(missing)} tensor(s) transformers' {type(model).__name__} needs are not in the folder: "
                        f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    foreign = sorted(k for k in got if k not in expected)
    if foreign:
        problems.append(f"{len(foreign)} tensor(s) of the folder are not in transformers' {type(model).__name__}: "
                        f"{', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}")
    for k, s in got.items():
        if k in expected and expected[k] != s:
            problems.append(f"{k} is {list(s)} in the folder, {list(expected[k])} in transformers' model")
    return problems, []


def _written_names(ck, source_lib: str, model_type: str, report: FolderReport) -> dict:
    """{written name: file key}: every tensor of the folder under its own name, except the names a library's
    save_pretrained is known to write wrong (``SAVE_RENAMES``), which get the name both loaders read."""
    names = {}
    renames = SAVE_RENAMES.get((source_lib, model_type), ())
    moved = 0
    for key in ck.infos:
        out = key
        for old, new in renames:
            if key.startswith(old) and new + key[len(old):] not in ck.infos:
                out = new + key[len(old):]
                moved += 1
                break
        names[out] = key
    if moved:
        report.notes.append(f"{moved} tensor(s) renamed " + ", ".join(f"{o}* -> {n}*" for o, n in renames)
                            + f": {UPSTREAM_SAVE_NAMES[(source_lib, model_type)]}")
    split = SAVE_SPLITS.get((source_lib, model_type))
    if split:
        fused, parts, why = split
        done = []
        for key in [k for k in names if k.endswith(fused)]:
            stem = key[: -len(fused)]
            info = ck.infos[names[key]]
            if len(info.shape) != 2 or info.shape[1] % len(parts) or any(stem + p in names for p in parts):
                continue  # not the in-memory fused tensor this fix is for: the checks decide
            width = info.shape[1] // len(parts)
            for i, part in enumerate(parts):
                names[stem + part] = Piece(names[key], i * width, (i + 1) * width)
            del names[key]
            done.append(key)
        if done:
            report.notes.append(f"{len(done)} tensor(s) {fused} split into {' and '.join(parts)}: {why}")
    return names


# -- the conversion -------------------------------------------------------------------
def convert_folder(src, dst, to: str, verify: bool = False, progress=None) -> FolderReport:
    """Convert the model folder ``src`` (transformers' or PaddleFormers' save_pretrained) into the folder ``dst``
    that ``to``'s ``from_pretrained`` loads. See the module's docstring; CheckpointError when it cannot be done
    right (nothing is written then). ``progress`` is accepted for convert_checkpoint's signature; folder
    conversion shows no bar yet (it logs the result)."""
    t0 = time.perf_counter()
    if to not in TARGETS:
        raise CheckpointError(f"to={to!r}: choose one of {', '.join(TARGETS)}")
    src, dst = Path(src), Path(dst)
    cfg = read_config(src)
    final = dst.with_name(dst.name + UNVERIFIED_SUFFIX) if verify else dst
    _check_destination(src, dst, final)
    transformers, pf = _libraries()
    source_lib = "transformers" if to == "paddleformers" else "paddleformers"
    arch = cfg["architectures"][0]
    libs = {"transformers": transformers, "paddleformers": pf}
    tcls, scls = _class(libs[to], to, arch, src), _class(libs[source_lib], source_lib, arch, src)
    model_type = cfg.get("model_type", "")

    ck = open_checkpoint(src)
    outside = [str(f) for f in ck.files if f.resolve().parent != src.resolve()]
    if outside:
        raise CheckpointError(f"{src}: weight file(s) {', '.join(outside)} are symbolic links out of the folder; copy "
                              "the files themselves into it (padiff_lite never follows a path out of the folder it is "
                              "given)")
    if ck.fmt != "safetensors":
        raise CheckpointError(f"{ck.path}: the folder's weights are {ck.fmt} files; folder conversion reads "
                              ".safetensors (what save_pretrained writes): convert them with the factory form first")
    out_cfg, changes = translate_config(cfg, to)
    report = FolderReport(str(src), str(final), to, arch, config_changes=changes)

    # both models, without storage, by the libraries themselves; both loaders' view of the weights
    pf_cls = tcls if to == "paddleformers" else scls
    t_cls = tcls if to == "transformers" else scls
    pf_cfg = out_cfg if to == "paddleformers" else cfg
    t_cfg = out_cfg if to == "transformers" else cfg
    pf_config, pf_model = _build("paddleformers", pf_cls, pf_cfg)
    t_config, t_model = _build("transformers", t_cls, t_cfg)
    ties = dict(getattr(t_model, "all_tied_weights_keys", None) or {}) \
        if getattr(t_config, "tie_word_embeddings", False) else {}
    names = _written_names(ck, source_lib, model_type, report)
    problems, drop, notes = _pf_view(pf_cls, pf_config, pf_model, ck, ties, names)
    if to == "transformers":
        for k in drop:
            notes.append(f"{k} not written: the same values as {ties[k]}, to which it is tied (tie_word_embeddings); "
                         f"PaddleFormers' {pf_cls.__name__} loader does not read it")
            del names[k]
    t_problems, t_notes = check_transformers(t_model, t_config, _shapes(ck, names))
    problems += t_problems
    report.notes += notes + t_notes
    if problems:
        raise CheckpointError(f"{src}: the weights do not fit what the libraries' loaders read ({arch}, "
                              f"transformers {_version('transformers')}, paddleformers {_version('paddleformers')}); "
                              "nothing was written:\n" + "\n".join("  - " + p for p in problems))
    if to == "paddleformers":
        on = paddleformers_cpu.fused_flags_on(out_cfg)  # as the folder leaves them (absent fuse_rms_norm: on)
        if on:
            report.notes.append(f"PaddleFormers switches on {', '.join(on)} for this config (GPU-only fused kernels); "
                                "on a CPU set them False after loading (padiff-lite's check/pair/--verify do)")

    for p in {dst, final}:
        if p.is_dir():
            p.rmdir()  # empty (checked first): the new folder is renamed into its place
    _write(src, final, ck, out_cfg, report, verify, names)
    report.seconds = time.perf_counter() - t0
    if verify:
        from .library_verify import verify_folder

        try:
            report.max_diff, report.verified = verify_folder(src, final, to, source_lib, arch, VERIFY_ATOL,
                                                             VERIFY_RTOL)
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
    total = sum(_nbytes(ck, source) for source in names.values())
    by_file: dict[int, list[str]] = {}
    for out_name, source in sorted(names.items(), key=lambda kv: (ck.infos[_key(kv[1])].offset, kv[0] != kv[1])):
        by_file.setdefault(ck.infos[_key(source)].file, []).append(out_name)
    try:
        with terminate_like_interrupt(), AtomicOutput(finals, ck.files + ([ck.index] if ck.index else []), None,
                                                      total) as out:
            buf = None
            weight_map = {}
            for i, name in enumerate(weight_names):
                keys = by_file.get(i, [])
                entries = [Entry(k, _shape(ck, names[k]), ck.infos[_key(names[k])].dtype) for k in keys]
                writer = SafetensorsWriter(out.tmp(final / name), entries, metadata_for("hf"))
                out.opened(writer)
                for k in keys:
                    source = names[k]
                    n = ck.infos[_key(source)].nbytes
                    if buf is None or buf.numel() < n:
                        import torch

                        buf = torch.empty(max(n, 1), dtype=torch.uint8)
                    tensor = ck.get(_key(source), into=buf)
                    writer.add(k, source.take(tensor) if isinstance(source, Piece) else tensor)
                    report.tensors += 1
                    report.bytes += _nbytes(ck, source)
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
