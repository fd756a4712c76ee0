"""torch files (.pt .pth .bin): ``torch.save``'s zip archive (or its legacy pickle stream). Read with
``torch.load(weights_only=True)`` after :mod:`.pickle_bounds` has followed every pickle in it (depth, count, memo
amplification), a whole file at a time; written with ``torch.save`` of the shard's dict."""
from __future__ import annotations

import io
import os
import re
import zipfile
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..regular import fd_path, open_regular
from .common import Entry, TensorInfo, corrupt, tensors_only
from .output import OutputFile
from .pickle_bounds import PickleBoundsError, check_stream

_BLOCKED = re.compile(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)")


def load(f: Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of one torch file. ``mmap=True`` maps instead of reading: right for a look at shapes, wrong
    for converting - a mapping keeps every page read in memory until the last tensor of the file is gone,
    while tensors read plainly are freed one by one as the conversion is done with them."""
    with open_regular(f, CheckpointError, "checkpoint file") as fh:
        _check_torch_pickles(f, fh)
        obj = _torch_load(f, fd_path(fh, f), mmap)
    sd = tensors_only(f, obj, torch.Tensor, _plain_tensor)
    for key, t in sd.items():
        what = ("a nested tensor" if t.is_nested
                else "a sparse tensor (layout " + str(t.layout).replace("torch.", "") + ")" if t.layout != torch.strided
                else "a tensor without data (saved from the meta device)" if t.is_meta
                else "a quantized tensor" if t.is_quantized else None)
        if what:
            fix = ("save it padded: t.to_padded_tensor(0), or each of its tensors under a name of its own"
                   if t.is_nested else "save it dense: t.to_dense()" if t.layout != torch.strided else
                   "save the real weights (the model after loading or training, not one built on the meta device)"
                   if t.is_meta else "save it dequantized: t.dequantize()")
            raise CheckpointError(f"{f}: {key} is {what}, which padiff_lite does not convert; {fix}")
    return sd


def load_object(path) -> object:
    """The object a ``torch.save`` file holds (an optimizer's or a scheduler's state dict), read as every torch
    source is: a regular file, its pickles followed under bounds first, then ``torch.load(weights_only=True)``."""
    f = Path(path)
    with open_regular(f, CheckpointError, "checkpoint file") as fh:
        _check_torch_pickles(f, fh)
        return _torch_load(f, fd_path(fh, f), False)


def _plain_tensor(t: torch.Tensor) -> torch.Tensor:
    """A tensor as a state dict holds it: an ``nn.Parameter`` (``state_dict(keep_vars=True)``) or a tensor that
    requires grad is taken as its data (detached: the same memory, no autograd)."""
    return t.detach() if t.requires_grad or isinstance(t, torch.nn.Parameter) else t


_TORCH_PICKLE_LIMIT = 256 << 20  # bytes of pickle in a torch file (data.pkl of 100,000 tensors: ~15 MB)


def _check_torch_pickles(f: Path, fh):
    """Follow the pickles of a torch file with :mod:`.pickle_bounds` before torch.load builds them: ``data.pkl``
    (every ``*.pkl`` member) of a zip file, the pickles ahead of the storages of a legacy one."""
    head = fh.read(4)
    fh.seek(0)
    try:
        if head == b"PK\x03\x04":  # torch.load tells the formats apart by this, so do we
            try:
                archive = zipfile.ZipFile(fh)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
                raise corrupt(f, exc, "torch") from None
            with archive:
                for info in archive.infolist():
                    if info.filename.endswith(".pkl"):
                        with archive.open(info) as member:
                            data = member.read(_TORCH_PICKLE_LIMIT + 1)
                        if len(data) > _TORCH_PICKLE_LIMIT:
                            raise PickleBoundsError(f"{info.filename} is more than {_TORCH_PICKLE_LIMIT >> 20} MB "
                                                    "of pickle")
                        check_stream(io.BytesIO(data), len(data))
        else:  # magic number, protocol, system info, the object, the storage keys: five pickles in a row
            size = os.fstat(fh.fileno()).st_size
            for _ in range(5):
                if not check_stream(fh, size - fh.tell()):
                    break
    except PickleBoundsError as exc:
        raise CheckpointError(f"{f}: refused to load: its pickle passes a bound ({exc}), which no torch.save "
                              "file does; nothing from the file was run. Get the checkpoint from a trusted source "
                              "or save the state dict again: torch.save(model.state_dict(), path)") from None
    finally:
        fh.seek(0)


_NESTED = "nested jagged tensors"


def _torch_load(f: Path, path: str, mmap: bool):
    """torch.load(weights_only=True) of the file at ``path`` (the descriptor's path of ``f``, already checked)."""
    try:
        if mmap:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap can only be used" not in str(exc):
                    raise
        # a legacy (non-zip) torch.save file cannot be mapped
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        blocked = _BLOCKED.search(str(exc))
        if blocked:
            raise CheckpointError(
                f"{f}: refused to load: the file asks to import {blocked.group(1)}, which a state dict never needs "
                "(torch.load ran with weights_only=True, so nothing was run). A file like this can run code when "
                "loaded with weights_only=False: do not do that unless you trust its source; save the state dict "
                "alone: torch.save(model.state_dict(), path)") from None
        if _NESTED in str(exc):
            raise CheckpointError(f"{f}: holds a nested (jagged) tensor, which padiff_lite does not convert; save it "
                                  "padded (t.to_padded_tensor(0)) or each of its tensors under a name of its own"
                                  ) from None
        raise corrupt(f, exc, "torch") from None


class TorchWriter:
    """torch.save of the file's whole dict (a torch file cannot be written in pieces)."""

    def __init__(self, path: Path, entries: list[Entry]):
        self.path, self.entries = path, entries
        self.data: dict = {}

    def add(self, key, tensor: torch.Tensor):
        self.data[key] = tensor

    def close(self):
        out = {}
        for e in self.entries:  # in the model's order, tied names as the very same object (stored once)
            out[e.key] = self.data[e.alias_of or e.key]
        with OutputFile(self.path) as fh:
            torch.save(out, fh)
            fh.commit()
        self.data = {}


def scan(f: Path, i: int) -> dict[str, TensorInfo]:
    """Keys, shapes and dtypes of one torch file (file number ``i``), from a mapped load."""
    sd = load(f, mmap=True)
    return {k: TensorInfo(k, tuple(t.shape), t.dtype, i) for k, t in sd.items()}
