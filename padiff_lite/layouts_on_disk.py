"""Which layout a checkpoint file is in, known from what wrote it, and which layout a loader reads.

Three layouts of the same weights exist on disk:

- ``torch``: a torch model's ``state_dict()`` as it is in memory (Linear weight ``[out, in]``);
- ``paddle``: a paddle model's ``state_dict()`` as it is in memory (Linear weight ``[in, out]``);
- ``hf``: the HuggingFace checkpoint layout, what transformers' and PaddleFormers' ``save_pretrained`` write
  and their ``from_pretrained`` read. PaddleFormers (1.x) classes that define ``_gen_aoa_config`` read it
  through their conversion rules (transposing Linear weights, fusing q/k/v and gate/up), so a file in paddle's
  in-memory layout handed to them is transposed a second time: silently wrong.

A file's layout is never guessed from its shapes (a square matrix reads the same either way). It comes from
the safetensors header's metadata (``padiff_lite_layout``, which every safetensors file padiff_lite writes
carries, next to the ``format`` key transformers and safetensors use), from the model folder it lies in
(a ``config.json`` naming ``architectures``: a ``save_pretrained`` folder, so HF layout), or from the user
(``--layout``). Where none of these says, a file is taken to be in its base model's in-memory layout unless
that model's class itself reads HF layout; then a square tensor the conversion would transpose makes the
file ambiguous, and the conversion is refused.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError

LAYOUTS = ("torch", "paddle", "hf")
META_KEY = "padiff_lite_layout"
# the "format" value that goes with each layout: what transformers ("pt") and safetensors.numpy / PaddleFormers'
# legacy loader ("np") expect to find
FORMAT_OF = {"torch": "pt", "hf": "pt", "paddle": "np"}


def metadata_for(layout: str) -> dict:
    """The safetensors header metadata of a file written in ``layout``."""
    return {"format": FORMAT_OF[layout], META_KEY: layout}


def header_metadata(path: Path) -> dict:
    """The ``__metadata__`` of a safetensors file's header ({} when it has none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as h:
            return dict(h.metadata() or {})
    except Exception as exc:  # the readers in formats.py report a corrupt file with the fix
        raise CheckpointError(f"{path}: cannot read the safetensors header ({type(exc).__name__}: {exc}); "
                              "re-create or re-download the file") from exc


def model_config(folder: Path) -> dict | None:
    """The folder's ``config.json`` when it is a save_pretrained folder (it names ``architectures``)."""
    p = folder / "config.json"
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) and data.get("architectures") else None


@dataclass(frozen=True)
class Known:
    """A file's layout and how it is known (``layout`` None: nothing says)."""

    layout: str | None
    why: str


def file_layout(ck) -> Known:
    """The layout of an opened checkpoint (:class:`formats.Checkpoint`), from what wrote it."""
    if ck.fmt == "safetensors":
        meta = header_metadata(ck.files[0])
        if meta.get(META_KEY) in LAYOUTS:
            return Known(meta[META_KEY], f"its safetensors header says {META_KEY}={meta[META_KEY]!r}")
    cfg = model_config(Path(ck.path).parent)
    if cfg is not None:
        return Known("hf", f"it lies in a model folder whose config.json names {cfg['architectures'][0]} "
                           "(save_pretrained writes the HuggingFace layout)")
    if ck.fmt == "torch":
        return Known("torch", "torch files hold torch tensors")
    if ck.fmt == "paddle":
        return Known("paddle", ".pdparams files hold paddle tensors")
    return Known(None, "neither its header metadata nor a model folder says how it was written")


def reads_hf_layout(model) -> bool:
    """A PaddleFormers class whose ``from_pretrained`` reads HuggingFace-layout safetensors through its own
    conversion rules (``_gen_aoa_config``)."""
    cls = type(model)
    return cls.__module__.startswith("paddleformers.") and hasattr(cls, "_gen_aoa_config")


def _folder_hint(to: str) -> str:
    return (f"convert the whole model folder instead, which writes what the library's own loader reads: "
            f"`padiff-lite convert SRC_DIR DST_DIR --to {to}` (convert_checkpoint(src_dir, dst_dir, to={to!r}))")


def check_output(dst: Path, out_fmt: str, raw) -> None:
    """Refuse a .safetensors output for a PaddleFormers class that reads HF layout: its loader would
    transpose our paddle-layout tensors a second time."""
    if out_fmt == "safetensors" and raw.framework == "paddle" and reads_hf_layout(raw.model):
        cls = type(raw.model).__name__
        raise CheckpointError(
            f"{dst}: PaddleFormers' {cls}.from_pretrained reads .safetensors in the HuggingFace layout (its "
            f"_gen_aoa_config transposes Linear weights and fuses q/k/v and gate/up), so a file in paddle's in-memory "
            f"layout would load transposed a second time: silently wrong. Nothing was written; "
            f"{_folder_hint('paddleformers')}, or write .pdparams for paddle's set_state_dict")


def check_source(ck, plan, base, raw, layout: str | None) -> Known:
    """Work out the source file's layout and refuse what cannot be converted right. Returns the layout."""
    if layout is not None and layout not in LAYOUTS:
        raise CheckpointError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    known = Known(layout, "--layout says so") if layout else file_layout(ck)
    own = base.framework  # the base model's in-memory layout is what the plan reads
    if known.layout is None:
        if base.framework == "paddle" and reads_hf_layout(base.model):
            square = _square_transposes(plan)
            if square:
                raise CheckpointError(
                    f"{ck.path}: cannot tell whether this file is in paddle's in-memory layout or in the HuggingFace "
                    f"layout PaddleFormers' save_pretrained writes ({known.why}), and {len(square)} tensor(s) the "
                    f"conversion transposes are square ({', '.join(square[:3])}{' ...' if len(square) > 3 else ''}), "
                    "so their shapes cannot tell either. Nothing was written; say which: --layout paddle (saved from "
                    f"{type(base.model).__name__}.state_dict()) or --layout hf (written by save_pretrained: then "
                    f"{_folder_hint('transformers')})")
        return Known(own, f"taken as the base model's in-memory layout ({known.why})")
    if known.layout == own:
        return known
    if known.layout == "hf":
        if base.framework == "torch":
            return known  # transformers' own layout: its names say where it differs from memory (then refused)
        raise CheckpointError(
            f"{ck.path} is in the HuggingFace layout ({known.why}), not in the in-memory layout of the paddle base "
            f"model {type(base.model).__name__} (PaddleFormers transposes Linear weights and fuses q/k/v and "
            f"gate/up when it loads such a file). Nothing was written; {_folder_hint('transformers')}; or, when "
            "the file holds a torch model's state_dict, pass that torch model as --base (and --layout torch)")
    other = {"torch": "torch", "paddle": "paddle"}[known.layout]
    raise CheckpointError(
        f"{ck.path} is in {other}'s in-memory layout ({known.why}) but the base model {type(base.model).__name__} is "
        f"a {own} model; the base model is the one the file was saved from: pass the {other} model as --base and "
        f"the {raw.framework if raw.framework != other else own} model as --raw")


def _square_transposes(plan) -> list[str]:
    from .ops import TRANSPOSE

    out = []
    for op in plan.ops:
        if op.transform is TRANSPOSE and op.src is not None:
            shape = tuple(plan.base.adapter.shape(op.src.tensor))
            if len(shape) == 2 and shape[0] == shape[1]:
                out.append(op.src.path)
    return out
