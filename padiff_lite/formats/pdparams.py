""".pdparams files, as ``paddle.save`` writes them for a state dict: a pickle of numpy arrays. Read with our own
pickle reader (:mod:`.pdparams_pickle`: only arrays and plain values; nothing is run), then each array's bytes read
into (reused) plain memory; written as a stream, tensor by tensor (bf16 as uint16, as paddle.save does)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from . import pdparams_pickle as pickled
from .common import Entry, TensorInfo, corrupt, dtype_name, expect_all_written, expect_next, tensors_only, torch_to_numpy
from .output import OutputFile

_NP_TORCH = {np.dtype(n): getattr(torch, n) for n in (
    "bool", "int8", "uint8", "int16", "int32", "int64", "float16", "float32", "float64", "uint32", "uint64")}


def _prepare(f: Path, obj: dict) -> dict:
    """Big arrays joined from their slices, and paddle's reducer for a Tensor, ``(name, array)``, taken as the array."""
    try:
        obj = pickled.unwrap_big_params(obj)
    except (ValueError, KeyError, TypeError) as exc:
        raise corrupt(f, exc, "paddle") from None
    return {k: (v[1] if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str)
                and isinstance(v[1], pickled.ArrayRef) else v) for k, v in obj.items()}


def scan(f: Path, i: int) -> dict[str, TensorInfo]:
    """Keys, shapes and dtypes of one .pdparams file (file number ``i``): the pickle without the array bytes."""
    obj = pickled.parse(f)
    arrays = tensors_only(f, obj, pickled.ArrayRef, lambda a: a, prepare=_prepare, unsupported=pickled.unsupported)
    out = {}
    for key, ref in arrays.items():
        native = ref.dtype.newbyteorder("=")
        if native == np.dtype("uint16"):
            dtype = torch.bfloat16  # until the model says otherwise (Checkpoint.settle)
        elif native in _NP_TORCH:
            dtype = _NP_TORCH[native]
        else:
            raise CheckpointError(f"{f}: array {key} has dtype {ref.dtype}, which padiff_lite does not move; "
                                  "convert that array to a supported dtype first")
        out[key] = TensorInfo(key, ref.shape, dtype, i, array=ref, uint16=native == np.dtype("uint16"))
    return out


def read(f: Path, info: TensorInfo, buf: torch.Tensor) -> torch.Tensor:
    """The .pdparams array of ``info`` read into the uint8 tensor ``buf`` (its byte order and memory order fixed)."""
    ref = info.array
    try:
        pickled.read_array(f, ref, memoryview(buf.numpy()) if buf.numel() else memoryview(bytearray(0)))
    except OSError as exc:
        raise corrupt(f, exc, "paddle") from exc
    if ref.dtype.byteorder == ">" and ref.dtype.itemsize > 1:  # big-endian (a file from another machine)
        buf.numpy().view(ref.dtype).byteswap(inplace=True)
    t = buf.view(info.dtype)
    if ref.fortran and len(info.shape) > 1:
        return t.reshape(info.shape[::-1]).permute(*reversed(range(len(info.shape))))
    return t.reshape(info.shape)


def refusal(key: str, dtype: torch.dtype) -> str | None:
    """Why a tensor of ``dtype`` cannot be written to a .pdparams file (None when it can)."""
    if dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return (f"tensor {key} is {dtype_name(dtype)}, which a .pdparams file cannot hold: paddle.save stores float8 "
                "as int8 and paddle.load gives int8 back, which a float8 model refuses (and a cast would change the "
                "values); write this checkpoint as .safetensors or .pt, which keep float8")
    try:
        torch_to_numpy(torch.empty(0, dtype=dtype))
    except (TypeError, RuntimeError):
        return (f"tensor {key} is {dtype_name(dtype)}, which numpy (and so a .pdparams file) cannot hold; write this "
                "checkpoint as .pt")
    return None


class PdparamsWriter:
    """Writes a ``.pdparams`` file tensor by tensor (:class:`.pdparams_pickle.StreamWriter`): each tensor's
    bytes go from its memory to the file as it is added, so nothing shard-sized is held; tied names are written
    as the same array (stored once), bf16 as uint16 (what ``paddle.save`` writes)."""

    def __init__(self, path: Path, entries: list[Entry]):
        self.path = path
        self.order = [e for e in entries if e.alias_of is None]
        for e in self.order:
            why = refusal(e.key, e.dtype)
            if why:
                raise CheckpointError(f"{path}: {why}")
        self.aliases: dict[str, list[str]] = {}
        for e in entries:
            if e.alias_of is not None:
                self.aliases.setdefault(e.alias_of, []).append(e.key)
        self.fh = OutputFile(path)
        self.stream = pickled.StreamWriter(self.fh)
        self.stream.start()
        self.next = 0

    def add(self, key, tensor: torch.Tensor):
        expect_next(self, key, tensor)
        array = torch_to_numpy(tensor.contiguous())
        flat = array.reshape(-1).view(np.uint8) if array.size else array.reshape(-1)
        self.stream.add(key, flat.data, array.shape, array.dtype, memoize=key in self.aliases)
        for alias in self.aliases.get(key, ()):
            self.stream.alias(alias, key)
        self.next += 1

    def close(self):
        expect_all_written(self)
        self.stream.finish()
        self.fh.commit()
        self.fh.close()

    def abort(self):
        self.fh.close()
