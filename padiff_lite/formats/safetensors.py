"""safetensors files: an 8-byte little-endian header length, a JSON header (dtype, shape, byte range of each tensor),
then the bytes. Read: the header checked field by field against the file's size before anything is allocated, then
``safe_open``'s own checks; each tensor read with pread into (reused) plain memory. Written: header first (known
from the entries), then tensor by tensor as each is made."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..regular import fd_path, open_regular
from .common import Entry, TensorInfo, corrupt, dtype_name, expect_all_written, expect_next, json_type, read_exact
from .output import OutputFile

_ST_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}

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
        raise ValueError(f"the header is a {json_type(header)}, not an object")
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


def scan(f: Path, i: int) -> dict[str, TensorInfo]:
    """Keys, shapes, dtypes and byte offsets of one safetensors file, from its header alone (file number ``i``)."""
    from safetensors import safe_open

    out = {}
    fh = open_regular(f, CheckpointError, "checkpoint file")
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
        raise corrupt(f, exc, "safetensors") from exc
    finally:
        fh.close()
    return out


def read(f: Path, info: TensorInfo, buf: torch.Tensor) -> torch.Tensor:
    """The tensor of ``info`` read into the uint8 tensor ``buf`` (exactly its size)."""
    read_exact(f, info.offset, buf)
    return buf.view(info.dtype).reshape(info.shape)


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
        expect_next(self, key, tensor)
        flat = tensor.contiguous().reshape(-1)
        if flat.numel():
            self.fh.write(flat.view(torch.uint8).numpy())
        self.next += 1

    def close(self):
        expect_all_written(self)
        self.fh.commit()
        self.fh.close()

    def abort(self):
        self.fh.close()
