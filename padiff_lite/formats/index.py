"""HuggingFace indexes: ``*.<suffix>.index.json`` naming the shard file of every tensor. An index is read field by
field; it may only name plain file names of its own format inside its own folder (never a path out of it)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import CheckpointError
from ..regular import read_json_bytes
from .common import FORMATS, INDEX_SUFFIX, TEMP_PREFIX, json_type

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


def find_in_folder(folder: Path) -> Path:
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
        return f"the JSON holds a {json_type(data)}, not an object"
    if "weight_map" not in data:
        return "it has no 'weight_map'"
    weight_map = data["weight_map"]
    if not isinstance(weight_map, dict):
        return f"its weight_map is a {json_type(weight_map)}, not an object"
    if not weight_map:
        return "its weight_map is empty"
    bad = [k for k, v in weight_map.items() if not isinstance(v, str)]
    if bad:
        return f"weight_map[{bad[0]!r}] is a {json_type(weight_map[bad[0]])}, not a shard file name"
    return None



def write_index(path: Path, weight_map: dict, total_size: int):
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"metadata": {"total_size": total_size}, "weight_map": weight_map}, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
