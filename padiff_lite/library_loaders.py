"""What the libraries' own loaders read from a model folder, found without reading a tensor (for
:mod:`.library_folders`): PaddleFormers' loading rules (each class's ``_gen_aoa_config``, run by paddle's
``AOAEngine`` on names and shapes, as ``from_pretrained`` runs them), transformers' model built on the meta
device, and the names a library's save is known to write wrong, put right where the right form is known.

A folder's tensors are described by ``names``: {name written: file key, or a :class:`Piece` of one}.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import paddleformers_cpu
from .errors import CheckpointError

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
# folders a library's save_pretrained writes incomplete, with no known way to put them right: (source library,
# model_type) -> the upstream cause, given with the refusal
UPSTREAM_SAVE_INCOMPLETE = {("paddleformers", "qwen3_next"): (
    "PaddleFormers 1.2's save_pretrained of Qwen3-Next does not write the HuggingFace tensors of its fused layers: its "
    "_gen_inv_aoa_config names self_attn.q_proj/k_proj/v_proj and per-expert / shared-expert gate_proj/up_proj, which "
    "its model does not have (it holds self_attn.qkv_proj and up_gate_proj), so those are written as they are in "
    "memory, fused and [in, out], under names transformers does not read (upstream bug). Convert the transformers "
    "folder the model came from, or move the PaddleFormers model's weights into transformers' Qwen3NextForCausalLM "
    "with padiff_lite's assign_weight (example_inputs=...) and save that with save_pretrained")}
UPSTREAM_SAVE_NAMES = {("paddleformers", "qwen2_5_vl"): "PaddleFormers 1.2's save_pretrained of Qwen2.5-VL writes "
                       "the text layers' q/k/v biases under model.language_model.layers.* (its own loader then fails: "
                       "it cannot read back its own folder), the other tensors under model.layers.*"}


def build_config(library: str, config_cls, cfg: dict):
    """The library's config object for ``cfg`` (CheckpointError when the library cannot make one of it)."""
    try:
        config = config_cls.from_dict(dict(cfg))
    except Exception as exc:
        raise CheckpointError(f"{library}'s {config_cls.__name__} cannot be made from this config.json "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}); nothing "
                              "was written") from exc
    if library == "paddleformers":
        paddleformers_cpu.switch_off(config)
    return config


def build_without_storage(library: str, cls, cfg: dict):
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


def source_key(source) -> str:
    """The file key a written tensor is read from (``names``' values: a file key or a :class:`Piece`)."""
    return source.key if isinstance(source, Piece) else source


def source_shape(ck, source) -> tuple:
    return source.shape(ck) if isinstance(source, Piece) else tuple(ck.infos[source].shape)


def source_nbytes(ck, source) -> int:
    return math.prod(source_shape(ck, source)) * ck.infos[source_key(source)].dtype.itemsize


def written_shapes(ck, names: dict) -> dict[str, tuple]:
    """{written name: shape} of the tensors ``names`` ({written name: file key or Piece}) says will be written."""
    return {out: source_shape(ck, source) for out, source in names.items()}


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
    src = {out: desc(out, source_shape(ck, source), str(ck.infos[source_key(source)].dtype).replace("torch.", ""))
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


def paddleformers_view(cls, config, model, ck, ties: dict, names: dict) -> tuple[list[str], list[str], list[str]]:
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
    notes). For families
    transformers stores under other names on disk (its conversion_mapping) the folder must hold the names and shapes
    its own save_pretrained writes (its reverse conversion, run on meta tensors) or its in-memory ones; where that
    conversion cannot be run, the names are left to its loader (noted)."""
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
        # the names it reads: those its own save_pretrained writes (its reverse conversion, run on meta tensors), or
        # its in-memory names (which transformers 5.3 reads as well)
        on_disk = _transformers_disk_shapes(model, {k: v for k, v in persistent.items() if k not in tied})
        if on_disk is None:
            return [], [f"transformers renames {model_type} tensors when it loads (its conversion_mapping): the names "
                        "were left to its loader, the sizes checked; --verify proves the folder"]
        mem = {k: s for k, s in expected.items() if k not in tied}
        rest = {k: s for k, s in got.items() if k not in tied}
        if rest == on_disk or rest == mem:
            return [], []
        expected = on_disk
        tied = set()
        got = rest
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


def _transformers_disk_shapes(model, state: dict) -> dict | None:
    """{name: shape} transformers' save_pretrained writes for ``state`` (its reverse conversion on meta tensors); None
    when its converters cannot be run on them."""
    import torch

    from .hf_disk_layout import to_disk

    meta = {k: torch.empty(tuple(v.shape), dtype=v.dtype, device="meta") for k, v in state.items()}
    try:
        return {k: tuple(v.shape) for k, v in to_disk(model, meta).items()}
    except (CheckpointError, RuntimeError, ValueError, TypeError):
        return None


def written_names(ck, source_lib: str, model_type: str, notes: list) -> dict:
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
        notes.append(f"{moved} tensor(s) renamed " + ", ".join(f"{o}* -> {n}*" for o, n in renames)
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
            notes.append(f"{len(done)} tensor(s) {fused} split into {' and '.join(parts)}: {why}")
    return names
