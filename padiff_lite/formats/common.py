"""What every format shares: the suffix table, the records a file's tensors are described by (``TensorInfo`` when
read, ``Entry`` when written), the refusal of a file that is not what its suffix says, plain reads, and the state
dict found in a loaded object. Every tensor crosses the formats as a CPU ``torch.Tensor`` (bf16 included: numpy has
no bf16, paddle files keep bf16 as uint16, which paddle reads back as bf16). Nothing here knows about models."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from ..regular import open_regular

log = logging.getLogger("padiff_lite.formats")

FORMATS = {".pt": "torch", ".pth": "torch", ".bin": "torch", ".safetensors": "safetensors", ".pdparams": "paddle"}
INDEX_SUFFIX = ".index.json"
PADDLE_EXTRA_KEYS = {"StructuredToParameterName@@"}  # paddle.save's bookkeeping, not a tensor
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")  # {"state_dict": {...}} as training scripts save

TEMP_PREFIX = ".padiff-tmp-"  # files and folders of conversions in progress (never read as a source)


def _suffix_fix() -> str:
    return "use one of " + ", ".join(sorted(FORMATS)) + f", or an HF index '*.safetensors{INDEX_SUFFIX}'"


def format_of(path: Path) -> str:
    """'torch' | 'safetensors' | 'paddle' from the suffix; CheckpointError otherwise."""
    name = path.name[: -len(INDEX_SUFFIX)] if path.name.endswith(INDEX_SUFFIX) else path.name
    fmt = FORMATS.get(Path(name).suffix.lower())
    if fmt is None:
        raise CheckpointError(f"{path}: unknown checkpoint suffix '{Path(name).suffix or path.name}'; {_suffix_fix()}")
    return fmt


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@dataclass
class TensorInfo:
    key: str
    shape: tuple
    dtype: torch.dtype
    file: int  # index into Checkpoint.files
    offset: int = -1  # safetensors: where the tensor's bytes start in the file
    array: object = None  # .pdparams: the pdparams.ArrayRef (where the bytes lie, dtype, order)
    uint16: bool = False  # .pdparams: stored as uint16, which paddle uses for bf16 too (see Checkpoint.settle)

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * self.dtype.itemsize


def json_type(v) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(v), type(v).__name__)


def corrupt(f: Path, exc: BaseException, fmt: str | None = None) -> CheckpointError:
    fmt = fmt or FORMATS.get(f.suffix.lower(), "checkpoint")
    return CheckpointError(f"{f}: cannot read this file as {fmt} ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); the file is truncated, corrupt or "
                           "not what its suffix says: re-create or re-download it")


def read_ahead(f: Path):
    """posix_fadvise(WILLNEED): the kernel reads the file into the page cache in the background (not RSS)."""
    if not hasattr(os, "posix_fadvise"):
        return
    try:
        with open_regular(f, CheckpointError, "checkpoint file", buffering=0) as fh:
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)
    except (OSError, CheckpointError) as exc:  # only a hint (the read that follows says what is wrong)
        log.debug("%s: no read-ahead (%s)", f, exc)


def read_exact(f: Path, offset: int, buf: torch.Tensor):
    """Fill the uint8 tensor ``buf`` with the bytes of ``f`` from ``offset`` (CheckpointError if it ends early)."""
    view = memoryview(buf.numpy()) if buf.numel() else memoryview(b"")
    try:
        with open_regular(f, CheckpointError, "checkpoint file", buffering=0) as fh:
            fh.seek(offset)
            done = 0
            while done < len(view):
                n = fh.readinto(view[done:])
                if not n:
                    raise CheckpointError(f"{f}: the file ends {len(view) - done} bytes before the tensor at byte "
                                          f"{offset} does; the file is truncated: re-create or re-download it")
                done += n
    except OSError as exc:
        raise corrupt(f, exc, "safetensors") from exc


def tensors_only(f, obj, kind, convert, prepare=None, unsupported=None) -> dict:
    """The state dict in ``obj`` (a dict, or one under a WRAPPER_KEYS key): its ``kind`` values under string keys,
    each through ``convert``; the rest is logged as ignored. ``prepare(f, dict)`` reshapes a format's own dict first
    (.pdparams: big arrays cut in slices); ``unsupported(value)`` says why a ``kind`` value cannot be used."""
    if isinstance(obj, dict) and not any(isinstance(v, kind) for v in obj.values()):
        for w in WRAPPER_KEYS:
            if isinstance(obj.get(w), dict):
                log.info("%s: using the state dict stored under '%s'", f, w)
                obj = obj[w]
                break
    if isinstance(obj, dict) and prepare is not None:
        obj = prepare(f, obj)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{f}: holds a {type(obj).__name__}, not a state dict; save model.state_dict() "
                              "(a dict of tensor name -> tensor)")
    out, skipped = {}, []
    for k, v in obj.items():
        note = unsupported(v) if unsupported is not None and isinstance(v, kind) else None
        if isinstance(v, kind) and isinstance(k, str) and not note:
            out[k] = convert(v)
        elif k not in PADDLE_EXTRA_KEYS:
            skipped.append(f"{k} (an array of {note})" if note else str(k))
    if skipped:
        log.warning("%s: ignoring %d entr%s that are not tensors: %s", f, len(skipped),
                    "y" if len(skipped) == 1 else "ies", ", ".join(skipped[:10]))
    return out


def numpy_to_torch(a: np.ndarray) -> torch.Tensor:
    """numpy -> torch without a copy; paddle stores bf16 as uint16, which comes back as bf16."""
    if a.dtype == np.uint16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def torch_to_numpy(t: torch.Tensor) -> np.ndarray:
    """torch -> numpy without a copy; bf16 becomes uint16, as paddle.save writes it (a Parameter: its data)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


@dataclass
class Entry:
    key: str
    shape: tuple
    dtype: torch.dtype
    alias_of: str | None = None  # a tied name: written as the same tensor (not stored by safetensors)


def expect_next(writer, key, tensor: torch.Tensor):
    """A streaming writer's tensors come in the order of its entries, as announced (a bug in the caller otherwise)."""
    e = writer.order[writer.next] if writer.next < len(writer.order) else None
    if e is None or e.key != key:
        raise AssertionError(f"{writer.path}: tensor {key} written out of order (expected {e and e.key})")
    if tuple(tensor.shape) != tuple(e.shape) or tensor.dtype != e.dtype:
        raise AssertionError(f"{key}: writer expected {e.shape} {e.dtype}, got {tuple(tensor.shape)} {tensor.dtype}")


def expect_all_written(writer):
    if writer.next != len(writer.order):
        raise AssertionError(f"{writer.path}: {len(writer.order) - writer.next} tensors were not written")
