"""Checkpoint files on disk: one reader and one writer per format, chosen by the file's suffix.

=================  ==========================================  ==========================================
suffix             read                                        written
=================  ==========================================  ==========================================
.pt .pth .bin      ``torch.load(weights_only=True)``           ``torch.save`` of the shard's dict
.safetensors       header checked by ``safe_open``; tensors       streamed: header first, then tensor by tensor
                   read with pread into (reused) plain memory
.pdparams          our own pickle reader (:mod:`.pdparams`: only     the shard's dict pickled as paddle.save does
                   arrays and plain values; nothing is run), then
                   array bytes read into (reused) plain memory
*.<suffix>.index.json + shards (HuggingFace layout): any of the above, shard by shard
=================  ==========================================  ==========================================

Every output file goes through :class:`OutputFile` (O_DIRECT where allowed, written by a background thread).

Every tensor crosses this module as a CPU ``torch.Tensor`` (bf16 included: numpy has no bf16, paddle
files keep bf16 as uint16, which paddle reads back as bf16). Nothing here knows about models.

Files are untrusted: no reader runs code from a file (torch files with ``weights_only=True``, .pdparams with
our own pickle reader, never ``paddle.load``/``pickle.load``), and an index may only name shards of its own
format inside its own folder. Every file is opened through :func:`.regular.open_regular` (a FIFO, a device or a
folder is refused, behind a symbolic link too); a torch pickle is followed by :mod:`.pickle_bounds` before
``torch.load`` sees it (depth, count, memo amplification); every size a header states (safetensors header length,
byte ranges, shapes) is checked against the file's size, with exact integers, before anything is allocated.
"""
from __future__ import annotations

import io
import json
import logging
import mmap
import os
import pickle
import re
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import pdparams
from .errors import CheckpointError
from .pickle_bounds import PickleBoundsError, check_stream
from .regular import fd_path, open_regular, read_json_bytes

log = logging.getLogger("padiff_lite.formats")

FORMATS = {".pt": "torch", ".pth": "torch", ".bin": "torch", ".safetensors": "safetensors", ".pdparams": "paddle"}
INDEX_SUFFIX = ".index.json"
PADDLE_EXTRA_KEYS = {"StructuredToParameterName@@"}  # paddle.save's bookkeeping, not a tensor
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")  # {"state_dict": {...}} as training scripts save

_ST_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


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


# -- reading -----------------------------------------------------------------
class Checkpoint:
    """A checkpoint on disk: one file, or an index with its shards. Only metadata is held."""

    def __init__(self, path, files, fmt, index=None):
        self.path, self.files, self.fmt, self.index = path, files, fmt, index
        self.infos: dict[str, TensorInfo] = {}
        self._cache: tuple[int, dict] | None = None  # one whole file for the formats read whole
        self._ahead = -1  # the file last announced to the kernel with _read_ahead
        self.before: dict[Path, os.stat_result] = {}  # each file as it was before it was first read

    @property
    def sharded(self) -> bool:
        return self.index is not None

    def __repr__(self):
        return f"Checkpoint({self.path}, {self.fmt}, {len(self.files)} file(s), {len(self.infos)} tensors)"

    # the tensor of one key, as a CPU torch tensor (whole-file formats: the loaded one itself; do not write)
    def get(self, key: str, into: torch.Tensor | None = None) -> torch.Tensor:
        """``into``: a uint8 buffer safetensors tensors are read into (reused by the caller, who must be
        done with the result before the next read into it); other formats ignore it."""
        info = self.infos[key]
        f = self.files[info.file]
        if self.fmt in ("safetensors", "paddle"):
            # read with pread into plain memory, not through a mapping: a mapping's pages stay resident
            # and each 4 KiB page costs a fault on first touch (about half the time of a conversion)
            if self._ahead != info.file:  # ask the kernel to read the shard ahead while we transpose
                self._ahead = info.file
                _read_ahead(f)
            n = info.nbytes
            buf = torch.empty(n, dtype=torch.uint8) if into is None or into.numel() < n else into[:n]
            if self.fmt == "safetensors":
                _read_exact(f, info.offset, buf)
                return buf.view(info.dtype).reshape(info.shape)
            return _paddle_tensor(f, info, buf)
        if self._cache is None:
            self._cache = (info.file, _load_whole(f, self.fmt))
        if self._cache[0] != info.file:  # a tensor from another file (rare): read it without dropping ours
            return _load_whole(f, self.fmt)[key]
        return self._cache[1][key]

    def settle(self, key: str, model_dtype: torch.dtype):
        """A .pdparams uint16 array is bf16 bits unless the model's tensor is an integer: decide by the model."""
        info = self.infos[key]
        if info.uint16:
            info.dtype = torch.bfloat16 if model_dtype.is_floating_point else torch.uint16

    def forget(self, key: str):
        """The caller is done with ``key``: let its memory go (whole-file formats free it as they go)."""
        if self._cache is not None:
            self._cache[1].pop(key, None)

    def release(self):
        """Forget the file held in memory (torch/paddle formats are read a whole file at a time)."""
        self._cache = None


def open_checkpoint(path) -> Checkpoint:
    """Find the checkpoint at ``path`` (a file, an index file or a folder holding one) and read its metadata."""
    p = Path(path)
    if p.is_dir():
        p = _find_in_folder(p)
    elif not p.exists() and not p.is_symlink():
        under = next((q for q in p.parents if q.exists() and not q.is_dir()), None)
        where = f"{under} is a file, not a folder" if under is not None else "no such file"
        raise CheckpointError(f"{p}: {where}; check the path (a checkpoint file, an index "
                              f"'*{INDEX_SUFFIX}' or a folder holding one)")
    fmt = format_of(p)
    if p.name.endswith(INDEX_SUFFIX):
        before = {p: os.stat(p)}
        weight_map = read_index(p)
        names = list(dict.fromkeys(weight_map.values()))
        files = [shard_path(p, n, fmt) for n in names]
        gone = [str(f) for f in files if not f.exists() and not f.is_symlink()]
        if gone:
            raise CheckpointError(f"{p}: shard(s) listed in the index are missing: {', '.join(gone)}; "
                                  "copy every shard next to the index (or re-download the checkpoint)")
        ck = Checkpoint(p, files, fmt, index=p)
        ck.before = before
        listed = {n: i for i, n in enumerate(names)}
        for i, f in enumerate(files):
            ck.before[f] = os.stat(f)
            found = _scan(f, fmt, i)
            for key, info in found.items():
                if weight_map.get(key) == names[i]:
                    ck.infos[key] = info
            absent = [k for k, n in weight_map.items() if listed[n] == i and k not in found]
            if absent:
                raise CheckpointError(f"{f}: the index {p.name} lists {len(absent)} tensor(s) this shard does not "
                                      f"hold ({', '.join(absent[:5])}{' ...' if len(absent) > 5 else ''}); "
                                      "the shard or the index is from another checkpoint")
        return ck
    ck = Checkpoint(p, [p], fmt)
    ck.before = {p: os.stat(p)}
    ck.infos = _scan(p, fmt, 0)
    return ck


TEMP_PREFIX = ".padiff-tmp-"  # files and folders of conversions in progress (never read as a source)


def shard_path(index: Path, name: str, fmt: str) -> Path:
    """The shard ``name`` of ``index``: a plain file name in the index's folder, of the index's format."""
    bad = None
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name or os.path.isabs(name):
        bad = "is not a plain file name in the index's folder (shards must lie beside the index)"
    else:
        shard_fmt = FORMATS.get(Path(name).suffix.lower())
        if shard_fmt != fmt:
            bad = (f"is {'not a checkpoint file' if shard_fmt is None else 'a ' + shard_fmt + ' file'}, but the index "
                   f"is a {fmt} index (each shard is read by the index's format)")
    if bad:
        raise CheckpointError(f"{index}: shard {name!r} {bad}; nothing was read from it. Fix the index's weight_map "
                              "or re-download the checkpoint")
    path = index.parent / name
    if path.is_symlink() and path.resolve().parent != index.parent.resolve():
        raise CheckpointError(f"{index}: shard {name!r} is a symbolic link out of the index's folder "
                              f"(to {path.resolve()}); copy the shard itself next to the index")
    return path


def _find_in_folder(folder: Path) -> Path:
    visible = [f for f in folder.iterdir() if not f.name.startswith(TEMP_PREFIX)]
    found = sorted(f for f in visible if f.name.endswith(INDEX_SUFFIX)) or \
        sorted(f for f in visible if f.suffix in FORMATS)
    if len(found) != 1:
        what = "no checkpoint" if not found else "several checkpoints (" + ", ".join(f.name for f in found) + ")"
        raise CheckpointError(f"{folder}: folder holds {what}; pass the checkpoint file or its index file itself")
    return found[0]


def read_index(p: Path) -> dict:
    """The ``weight_map`` of an HF index (JSON ``{"weight_map": {tensor key: shard file name}, ...}``), checked
    field by field; CheckpointError naming what is wrong."""
    fix = ("an index is JSON with a 'weight_map' {tensor key: shard file name}; re-create or re-download it")
    try:
        data = json.loads(read_json_bytes(p, CheckpointError, "checkpoint index").decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{p}: not a valid checkpoint index ({type(exc).__name__}: {str(exc)[:200]}); "
                              f"{fix}") from None
    problem = _index_problem(data)
    if problem:
        raise CheckpointError(f"{p}: not a valid checkpoint index ({problem}); {fix}")
    return data["weight_map"]


def _index_problem(data) -> str | None:
    """What is wrong with an index's JSON (None when its weight_map can be used)."""
    if not isinstance(data, dict):
        return f"the JSON holds a {_json_type(data)}, not an object"
    if "weight_map" not in data:
        return "it has no 'weight_map'"
    weight_map = data["weight_map"]
    if not isinstance(weight_map, dict):
        return f"its weight_map is a {_json_type(weight_map)}, not an object"
    if not weight_map:
        return "its weight_map is empty"
    bad = [k for k, v in weight_map.items() if not isinstance(v, str)]
    if bad:
        return f"weight_map[{bad[0]!r}] is a {_json_type(weight_map[bad[0]])}, not a shard file name"
    return None


def _json_type(v) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(v), type(v).__name__)


def _corrupt(f: Path, exc: BaseException, fmt: str | None = None) -> CheckpointError:
    fmt = fmt or FORMATS.get(f.suffix.lower(), "checkpoint")
    return CheckpointError(f"{f}: cannot read this file as {fmt} ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); the file is truncated, corrupt or "
                           "not what its suffix says: re-create or re-download it")


def _read_ahead(f: Path):
    """posix_fadvise(WILLNEED): the kernel reads the file into the page cache in the background (not RSS)."""
    if not hasattr(os, "posix_fadvise"):
        return
    try:
        with open_regular(f, CheckpointError, "checkpoint file", buffering=0) as fh:
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)
    except (OSError, CheckpointError) as exc:  # only a hint (the read that follows says what is wrong)
        log.debug("%s: no read-ahead (%s)", f, exc)


def _read_exact(f: Path, offset: int, buf: torch.Tensor):
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
        raise _corrupt(f, exc, "safetensors") from exc


_ST_MAX_HEADER = 100 << 20  # safetensors' own limit on the header's length


def _st_header(fh, size: int) -> tuple[dict, int]:
    """The safetensors header of the open file ``fh`` (``size`` bytes) and where the data starts, checked field by
    field before anything is allocated (ValueError naming what is wrong)."""
    head = fh.read(8)
    if len(head) != 8:
        raise ValueError(f"the file is {size} bytes, shorter than a safetensors header")
    n = int.from_bytes(head, "little")
    if n > min(size - 8, _ST_MAX_HEADER):
        raise ValueError(f"the header claims {n} bytes, but the file has {size - 8} after the length "
                         f"(and a header is at most {_ST_MAX_HEADER >> 20} MB)")
    header = json.loads(fh.read(n))
    if not isinstance(header, dict):
        raise ValueError(f"the header is a {_json_type(header)}, not an object")
    data = size - 8 - n
    for key, v in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(v, dict) or not isinstance(v.get("dtype"), str) or not isinstance(v.get("shape"), list) \
                or not isinstance(v.get("data_offsets"), list) or len(v["data_offsets"]) != 2:
            raise ValueError(f"tensor {key}: the header entry is not {{dtype, shape, data_offsets: [start, end]}}")
        shape, (start, end) = v["shape"], v["data_offsets"]
        if not all(type(d) is int and 0 <= d < 1 << 63 for d in shape):
            raise ValueError(f"tensor {key}: shape {shape} is not a list of sizes from 0 to 2**63-1")
        if not all(type(o) is int for o in (start, end)) or not 0 <= start <= end <= data:
            raise ValueError(f"tensor {key}: bytes [{start}, {end}) lie outside the file's {data} bytes of data")
    return header, 8 + n


def _st_offsets(fh, size: int) -> dict[str, tuple[int, int]]:
    """key -> (start, end) byte offsets in the file, from the safetensors header."""
    fh.seek(0)
    header, base = _st_header(fh, size)
    return {k: (base + v["data_offsets"][0], base + v["data_offsets"][1])
            for k, v in header.items() if k != "__metadata__"}


def _scan(f: Path, fmt: str, i: int) -> dict[str, TensorInfo]:
    """Keys, shapes and dtypes of one file (safetensors: header only; .pdparams: the pickle without the array
    bytes; torch: a mapped pass)."""
    if fmt == "safetensors":
        from safetensors import safe_open

        out = {}
        try:
            fh = open_regular(f, CheckpointError, "checkpoint file")
        except CheckpointError:
            raise
        try:
            size = os.fstat(fh.fileno()).st_size
            offsets = _st_offsets(fh, size)  # our checks of the header first, then safetensors' own
            with safe_open(fd_path(fh, f), framework="pt") as h:
                for key in h.keys():
                    sl = h.get_slice(key)
                    name = sl.get_dtype()
                    if name not in _ST_NAMES:
                        raise CheckpointError(f"{f}: tensor {key} has dtype {name}, which padiff_lite does not move; "
                                              "convert that tensor to a supported dtype first")
                    out[key] = TensorInfo(key, tuple(sl.get_shape()), _ST_NAMES[name], i)
            for key, (start, end) in offsets.items():
                if key in out:
                    if end - start != out[key].nbytes:
                        raise ValueError(f"tensor {key} holds {end - start} bytes, its shape and dtype need "
                                         f"{out[key].nbytes}")
                    out[key].offset = start
        except CheckpointError:
            raise
        except Exception as exc:
            raise _corrupt(f, exc, fmt) from exc
        finally:
            fh.close()
        return out
    if fmt == "paddle":
        return _scan_paddle(f, i)
    sd = _load_whole(f, fmt, mmap=True)
    return {k: TensorInfo(k, tuple(t.shape), t.dtype, i) for k, t in sd.items()}


_NP_TORCH = {np.dtype(n): getattr(torch, n) for n in (
    "bool", "int8", "uint8", "int16", "int32", "int64", "float16", "float32", "float64", "uint32", "uint64")}


def _scan_paddle(f: Path, i: int) -> dict[str, TensorInfo]:
    obj = pdparams.parse(f)
    arrays = _tensors_only(f, obj, pdparams.ArrayRef, lambda a: a)
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


def _paddle_tensor(f: Path, info: TensorInfo, buf: torch.Tensor) -> torch.Tensor:
    """The .pdparams array of ``info`` read into the uint8 tensor ``buf`` (its byte order and memory order fixed)."""
    ref = info.array
    try:
        pdparams.read_array(f, ref, memoryview(buf.numpy()) if buf.numel() else memoryview(bytearray(0)))
    except OSError as exc:
        raise _corrupt(f, exc, "paddle") from exc
    if ref.dtype.byteorder == ">" and ref.dtype.itemsize > 1:  # big-endian (a file from another machine)
        buf.numpy().view(ref.dtype).byteswap(inplace=True)
    t = buf.view(info.dtype)
    if ref.fortran and len(info.shape) > 1:
        return t.reshape(info.shape[::-1]).permute(*reversed(range(len(info.shape))))
    return t.reshape(info.shape)


_BLOCKED = re.compile(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)")


def _load_whole(f: Path, fmt: str, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of one torch file. ``mmap=True`` maps instead of reading: right for a look at shapes, wrong
    for converting - a mapping keeps every page read in memory until the last tensor of the file is gone,
    while tensors read plainly are freed one by one as the conversion is done with them."""
    if fmt != "torch":
        raise AssertionError(fmt)
    with open_regular(f, CheckpointError, "checkpoint file") as fh:
        _check_torch_pickles(f, fh)
        obj = _torch_load(f, fd_path(fh, f), mmap)
    sd = _tensors_only(f, obj, torch.Tensor, _plain_tensor)
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
                raise _corrupt(f, exc, "torch") from None
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
        raise _corrupt(f, exc, "torch") from None


def load_torch_object(path) -> object:
    """The object a ``torch.save`` file holds (an optimizer's or a scheduler's state dict), read as every torch
    source is: a regular file, its pickles followed under bounds first, then ``torch.load(weights_only=True)``."""
    f = Path(path)
    with open_regular(f, CheckpointError, "checkpoint file") as fh:
        _check_torch_pickles(f, fh)
        return _torch_load(f, fd_path(fh, f), False)


def _tensors_only(f, obj, kind, convert) -> dict:
    if isinstance(obj, dict) and not any(isinstance(v, kind) for v in obj.values()):
        for w in WRAPPER_KEYS:
            if isinstance(obj.get(w), dict):
                log.info("%s: using the state dict stored under '%s'", f, w)
                obj = obj[w]
                break
    if isinstance(obj, dict) and kind is pdparams.ArrayRef:
        try:
            obj = pdparams.unwrap_big_params(obj)
        except (ValueError, KeyError, TypeError) as exc:
            raise _corrupt(f, exc, "paddle") from None
        obj = {k: (v[1] if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], kind)
                   else v) for k, v in obj.items()}  # paddle's reducer for a Tensor: (name, array)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{f}: holds a {type(obj).__name__}, not a state dict; save model.state_dict() "
                              "(a dict of tensor name -> tensor)")
    out, skipped = {}, []
    for k, v in obj.items():
        if isinstance(v, kind) and isinstance(k, str) and not (kind is pdparams.ArrayRef and pdparams.unsupported(v)):
            out[k] = convert(v)
        elif k not in PADDLE_EXTRA_KEYS:
            note = pdparams.unsupported(v) if isinstance(v, pdparams.ArrayRef) else None
            skipped.append(f"{k} (an array of {note})" if note else str(k))
    if skipped:
        log.warning("%s: ignoring %d entr%s that are not tensors: %s", f, len(skipped),
                    "y" if len(skipped) == 1 else "ies", ", ".join(skipped[:10]))
    return out


def read_state(path, dtypes: dict | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint at ``path`` (any format, sharded or not), read with the same safe readers as
    a conversion. ``dtypes`` (key -> the model's torch dtype) settles .pdparams uint16 arrays (bf16 or uint16)."""
    ck = open_checkpoint(path)
    out = {}
    for key in ck.infos:
        if dtypes and key in dtypes:
            ck.settle(key, dtypes[key])
        out[key] = ck.get(key)
        ck.forget(key)
    ck.release()
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


def pdparams_refusal(key: str, dtype: torch.dtype) -> str | None:
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


# -- writing -----------------------------------------------------------------
@dataclass
class Entry:
    key: str
    shape: tuple
    dtype: torch.dtype
    alias_of: str | None = None  # a tied name: written as the same tensor (not stored by safetensors)


def writer_for(path: Path, fmt: str, entries: list[Entry], target_framework: str):
    """A writer for one output file; call ``add(key, tensor)`` in ``entries`` order, then ``close()``."""
    if fmt == "safetensors":
        from .layouts_on_disk import metadata_for  # the layout is written down, so it is never guessed

        return SafetensorsWriter(path, entries, metadata_for(target_framework))
    if fmt == "paddle":
        return PdparamsWriter(path, entries)
    return DictWriter(path, fmt, entries)


def streams(fmt: str) -> bool:
    """Whether the writer of ``fmt`` copies each tensor out as it is added (so the caller may reuse its memory)."""
    return fmt in ("safetensors", "paddle")


class DictWriter:
    """torch.save / paddle.save of the file's whole dict (these formats cannot be written in pieces)."""

    def __init__(self, path: Path, fmt: str, entries: list[Entry]):
        self.path, self.fmt, self.entries = path, fmt, entries
        self.data: dict = {}

    def add(self, key, tensor: torch.Tensor):
        self.data[key] = tensor if self.fmt == "torch" else torch_to_numpy(tensor)

    def close(self):
        out = {}
        for e in self.entries:  # in the model's order, tied names as the very same object (stored once)
            out[e.key] = self.data[e.alias_of or e.key]
        with OutputFile(self.path) as fh:
            if self.fmt == "torch":
                torch.save(out, fh)
            else:
                # what paddle.save writes for a dict of arrays (paddle.load reads it back, uint16 as bf16), but with
                # the pickler's memo off: with it, every array's byte copy stays alive until the end (2x the shard)
                pickler = pickle.Pickler(fh, protocol=4)
                pickler.fast = True
                pickler.dump(out)
            fh.commit()
        self.data = {}


def _expect_next(writer, key, tensor: torch.Tensor):
    """A streaming writer's tensors come in the order of its entries, as announced (a bug in the caller otherwise)."""
    e = writer.order[writer.next] if writer.next < len(writer.order) else None
    if e is None or e.key != key:
        raise AssertionError(f"{writer.path}: tensor {key} written out of order (expected {e and e.key})")
    if tuple(tensor.shape) != tuple(e.shape) or tensor.dtype != e.dtype:
        raise AssertionError(f"{key}: writer expected {e.shape} {e.dtype}, got {tuple(tensor.shape)} {tensor.dtype}")


def _expect_all_written(writer):
    if writer.next != len(writer.order):
        raise AssertionError(f"{writer.path}: {len(writer.order) - writer.next} tensors were not written")


class PdparamsWriter:
    """Writes a ``.pdparams`` file tensor by tensor (:class:`padiff_lite.pdparams.StreamWriter`): each tensor's
    bytes go from its memory to the file as it is added, so nothing shard-sized is held; tied names are written
    as the same array (stored once), bf16 as uint16 (what ``paddle.save`` writes)."""

    def __init__(self, path: Path, entries: list[Entry]):
        self.path = path
        self.order = [e for e in entries if e.alias_of is None]
        for e in self.order:
            refusal = pdparams_refusal(e.key, e.dtype)
            if refusal:
                raise CheckpointError(f"{path}: {refusal}")
        self.aliases: dict[str, list[str]] = {}
        for e in entries:
            if e.alias_of is not None:
                self.aliases.setdefault(e.alias_of, []).append(e.key)
        self.fh = OutputFile(path)
        self.stream = pdparams.StreamWriter(self.fh)
        self.stream.start()
        self.next = 0

    def add(self, key, tensor: torch.Tensor):
        _expect_next(self, key, tensor)
        array = torch_to_numpy(tensor.contiguous())
        flat = array.reshape(-1).view(np.uint8) if array.size else array.reshape(-1)
        self.stream.add(key, flat.data, array.shape, array.dtype, memoize=key in self.aliases)
        for alias in self.aliases.get(key, ()):
            self.stream.alias(alias, key)
        self.next += 1

    def close(self):
        _expect_all_written(self)
        self.stream.finish()
        self.fh.commit()
        self.fh.close()

    def abort(self):
        self.fh.close()


class SafetensorsWriter:
    """Writes the safetensors layout tensor by tensor: the header is known up front from ``entries``.

    Layout: 8-byte little-endian header length, the JSON header (space-padded to a multiple of 8),
    then each tensor's bytes in order. Tied names are not stored (safetensors holds no aliases).
    """

    def __init__(self, path: Path, entries: list[Entry], metadata: dict):
        self.path = path
        self.order = [e for e in entries if e.alias_of is None]
        header, offset = {"__metadata__": metadata}, 0
        for e in self.order:
            if e.dtype not in _ST_DTYPES:
                raise CheckpointError(f"{path}: tensor {e.key} is {dtype_name(e.dtype)}, which safetensors cannot hold; "
                                      "write this checkpoint as .pt or .pdparams")
            n = TensorInfo(e.key, e.shape, e.dtype, 0).nbytes
            header[e.key] = {"dtype": _ST_DTYPES[e.dtype], "shape": list(e.shape), "data_offsets": [offset, offset + n]}
            offset += n
        blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
        blob += b" " * (-len(blob) % 8)
        self.fh = OutputFile(path)
        self.fh.write(len(blob).to_bytes(8, "little"))
        self.fh.write(blob)
        self.next = 0

    def add(self, key, tensor: torch.Tensor):
        _expect_next(self, key, tensor)
        flat = tensor.contiguous().reshape(-1)
        if flat.numel():
            self.fh.write(flat.view(torch.uint8).numpy())
        self.next += 1

    def close(self):
        _expect_all_written(self)
        self.fh.commit()
        self.fh.close()

    def abort(self):
        self.fh.close()


class OutputFile:
    """A write-only file for large outputs: bytes are gathered in page-aligned chunks, written by a background
    thread (so writing overlaps with producing the next bytes) with ``O_DIRECT`` where the filesystem allows it.

    ``O_DIRECT`` skips the page cache: a buffered write first has to get a fresh page-cache page for every
    4 KiB, and on this kind of VM a first touch of memory runs at 0.2-2 GB/s, slower than the disk itself.
    Where ``O_DIRECT`` is refused (tmpfs, some network filesystems) the same code writes buffered.
    ``commit()`` writes the rest and fsyncs; ``close()`` alone (after an error) just closes.
    """

    CHUNK = 8 << 20  # bytes per write; two chunks are in memory (16 MiB: no faster on these disks, +16 MB of peak)
    ALIGN = 4096

    def __init__(self, path: Path, direct: bool = True):
        self.path = Path(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        self.direct = direct and hasattr(os, "O_DIRECT")
        try:
            self.fd = os.open(self.path, flags | (os.O_DIRECT if self.direct else 0), 0o666)
        except OSError:
            if not self.direct:
                raise
            self.direct = False
            self.fd = os.open(self.path, flags, 0o666)
        self.bufs = [mmap.mmap(-1, self.CHUNK) for _ in range(2)]  # anonymous maps are page-aligned
        self.pending: list = [None, None]
        self.cur, self.fill, self.offset = 0, 0, 0  # chunk being filled, bytes in it, file offset of it
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="padiff-write")
        self.lock = threading.Lock()
        self.closed = False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False

    def tell(self) -> int:
        return self.offset + self.fill

    def flush(self):  # torch.save calls it; data reaches the disk in commit()
        pass

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            buf = self.bufs[self.cur]
            n = min(self.CHUNK - self.fill, len(view) - done)
            buf[self.fill:self.fill + n] = view[done:done + n]
            self.fill += n
            done += n
            if self.fill == self.CHUNK:
                self._submit(self.CHUNK)
        return len(view)

    def _submit(self, length: int):
        """Hand the current chunk (its first ``length`` bytes) to the writer thread and start the other one."""
        self.pending[self.cur] = self.pool.submit(self._pwrite, self.cur, length, self.offset)
        self.offset += self.fill
        self.cur, self.fill = 1 - self.cur, 0
        if self.pending[self.cur] is not None:  # wait until the other chunk is on disk before refilling it
            self.pending[self.cur].result()
            self.pending[self.cur] = None

    def _pwrite(self, i: int, length: int, offset: int):
        view = memoryview(self.bufs[i])[:length]
        done = 0
        while done < length:
            try:
                n = os.pwrite(self.fd, view[done:], offset + done)
            except OSError as exc:
                if not (self.direct and exc.errno == 22):  # EINVAL: this filesystem takes no O_DIRECT writes
                    raise
                import fcntl

                fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
                with self.lock:
                    self.direct = False
                continue
            done += n
        view.release()

    def commit(self):
        """Write what is left, set the file's exact size and fsync it."""
        size = self.tell()
        if self.fill:
            tail = self.fill
            if self.direct:  # O_DIRECT writes whole blocks: pad with zeros, cut back by ftruncate below
                pad = -tail % self.ALIGN
                self.bufs[self.cur][tail:tail + pad] = bytes(pad)
                tail += pad
            self._submit(tail)
        for i, f in enumerate(self.pending):
            if f is not None:
                f.result()
                self.pending[i] = None
        os.ftruncate(self.fd, size)
        os.fsync(self.fd)

    def close(self):
        if self.closed:
            return
        self.closed = True
        self.pool.shutdown(wait=True)
        os.close(self.fd)
        for b in self.bufs:
            b.close()


def write_index(path: Path, weight_map: dict, total_size: int):
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"metadata": {"total_size": total_size}, "weight_map": weight_map}, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_for_model(path, framework: str, own: dict, model_name: str) -> dict[str, torch.Tensor]:
    """The state dict at ``path`` for a ``framework`` model whose tensors are ``own`` (key -> (shape, torch dtype)),
    read with the safe readers; CheckpointError when the file is of the other framework or does not fit."""
    p = Path(path)
    fmt = format_of(_find_in_folder(p) if p.is_dir() else p)
    if fmt not in ("safetensors", framework):
        wanted = ".pt/.pth/.bin" if framework == "torch" else ".pdparams"
        raise CheckpointError(f"{path}: a {framework} model loads {wanted} or .safetensors files, and this is a {fmt} "
                              f"checkpoint; give the {framework} model's own checkpoint (or convert this one with "
                              "padiff-lite convert)")
    state = read_state(path, {k: d for k, (_, d) in own.items()})
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = [f"{k} {list(state[k].shape)} vs model {list(own[k][0])}" for k in own
           if k in state and tuple(state[k].shape) != tuple(own[k][0])]
    if missing or unexpected or bad:
        raise CheckpointError(f"{path} does not fit {model_name}: missing {missing or '-'}, unexpected "
                              f"{unexpected or '-'}, shape mismatch {bad or '-'}; pass the checkpoint of this model")
    return state
