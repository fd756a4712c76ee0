"""A checkpoint's files: the format chosen by the file's suffix (:mod:`.common`), its tensors' metadata read by that
format's module, tensors read one at a time, and the writer of an output file.

=================  ==========================================  ==========================================
suffix             read                                        written
=================  ==========================================  ==========================================
.pt .pth .bin      :mod:`.torchfile`: ``torch.load(weights_  ``torch.save`` of the shard's dict
                   only=True)`` after :mod:`.pickle_bounds`
.safetensors       :mod:`.safetensors`: header checked, then    streamed: header first, then tensor by tensor
                   ``safe_open``; tensors read with pread
.pdparams          :mod:`.pdparams`: our own pickle reader      the shard's dict pickled as paddle.save does,
                   (:mod:`.pdparams_pickle`, nothing is run)    streamed tensor by tensor
*.<suffix>.index.json + shards (:mod:`.index`, HuggingFace layout): any of the above, shard by shard
=================  ==========================================  ==========================================

Every output file goes through :class:`.output.OutputFile`. Files are untrusted: no reader runs code from a file,
every file is opened through :func:`..regular.open_regular` (a FIFO, a device or a folder is refused, behind a
symbolic link too), and every size a header states is checked against the file's size before anything is allocated.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import CheckpointError
from . import pdparams, safetensors, torchfile
from .common import INDEX_SUFFIX, Entry, TensorInfo, format_of, read_ahead
from .index import find_in_folder, read_index, shard_path

MODULES = {"torch": torchfile, "safetensors": safetensors, "paddle": pdparams}  # format -> scan(), read(), writer
STREAMED = ("safetensors", "paddle")  # read a tensor at a time, and written as a stream


class Checkpoint:
    """A checkpoint on disk: one file, or an index with its shards. Only metadata is held."""

    def __init__(self, path, files, fmt, index=None):
        self.path, self.files, self.fmt, self.index = path, files, fmt, index
        self.infos: dict[str, TensorInfo] = {}
        self._cache: tuple[int, dict] | None = None  # one whole file for the formats read whole
        self._ahead = -1  # the file last announced to the kernel with read_ahead
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
        if self.fmt in STREAMED:
            # read with pread into plain memory, not through a mapping: a mapping's pages stay resident
            # and each 4 KiB page costs a fault on first touch (about half the time of a conversion)
            if self._ahead != info.file:  # ask the kernel to read the shard ahead while we transpose
                self._ahead = info.file
                read_ahead(f)
            n = info.nbytes
            buf = torch.empty(n, dtype=torch.uint8) if into is None or into.numel() < n else into[:n]
            return MODULES[self.fmt].read(f, info, buf)
        if self._cache is None:
            self._cache = (info.file, torchfile.load(f))
        if self._cache[0] != info.file:  # a tensor from another file (rare): read it without dropping ours
            return torchfile.load(f)[key]
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
        p = find_in_folder(p)
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
            found = MODULES[fmt].scan(f, i)
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
    ck.infos = MODULES[fmt].scan(p, 0)
    return ck


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


def writer_for(path: Path, fmt: str, entries: list[Entry], target_framework: str):
    """A writer for one output file; call ``add(key, tensor)`` in ``entries`` order, then ``close()``."""
    if fmt == "safetensors":
        from ..layouts_on_disk import metadata_for  # the layout is written down, so it is never guessed

        return safetensors.SafetensorsWriter(path, entries, metadata_for(target_framework))
    if fmt == "paddle":
        return pdparams.PdparamsWriter(path, entries)
    return torchfile.TorchWriter(path, entries)


def streams(fmt: str) -> bool:
    """Whether the writer of ``fmt`` copies each tensor out as it is added (so the caller may reuse its memory)."""
    return fmt in STREAMED


def read_for_model(path, framework: str, own: dict, model_name: str) -> dict[str, torch.Tensor]:
    """The state dict at ``path`` for a ``framework`` model whose tensors are ``own`` (key -> (shape, torch dtype)),
    read with the safe readers; CheckpointError when the file is of the other framework or does not fit."""
    p = Path(path)
    fmt = format_of(find_in_folder(p) if p.is_dir() else p)
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
