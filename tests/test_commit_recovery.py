"""Recovery of a killed sharded commit acts only on what padiff_lite itself created (issue 28, item 1).

A commit record lives in this user's private state folder (``formats.output.journal_dir``), never in a checkpoint: an
index from someone else - in the source folder or in the output folder - cannot make a conversion rename,
remove or rewrite any file. These tests plant such files the way an attacker would and run real conversions."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from ckpt_helpers import load, save_sharded, state_as_torch

from fixtures.models import conv_lstm, conv_lstm_torch
from padiff_lite import CheckpointError, convert_checkpoint
from padiff_lite.formats.output import clean_folder, journal_dir, temp_name
from padiff_lite.formats.common import TEMP_PREFIX

DEAD = 4194305  # above Linux's pid limit: a process that is gone
INDEX = "model.safetensors.index.json"


def _digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _state(seed: int) -> dict:
    torch.manual_seed(seed)
    return state_as_torch(conv_lstm("torch"), "torch")


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _plant(folder: Path, index_name: str, victims: dict):
    """An index carrying the commit record older releases trusted, plus the temporary file it names."""
    tmp = f"{TEMP_PREFIX}{DEAD}-0123abcd-evil.bin"
    (folder / tmp).write_bytes(b"attacker's bytes")
    data = json.loads((folder / index_name).read_text())
    data["metadata"]["padiff_lite_commit"] = {"rename": {tmp: victims["rename"]}, "remove": [victims["remove"]]}
    (folder / index_name).write_text(json.dumps(data))
    return tmp


def test_a_source_index_with_a_commit_record_steers_nothing(tmp_path):
    """Converting into the source's own folder: the source's crafted record is not acted on, the source index
    is not rewritten, and the other files of the folder stay as they are."""
    src = tmp_path / "ckpt"
    src.mkdir()
    new = _state(2)
    save_sharded(new, src, "model", ".safetensors", shards=3)
    (src / "victim.txt").write_text("keep me")
    (src / "other.txt").write_text("keep me too")
    _plant(src, INDEX, {"rename": "victim.txt", "remove": "other.txt"})
    before = _digests(src)
    convert_checkpoint(src / INDEX, src / "converted" / "model.safetensors", conv_lstm_torch, conv_lstm_torch)
    after = _digests(src)
    planted = {n for n in before if n.startswith(TEMP_PREFIX)}  # our own temporary-name pattern, of a dead pid:
    assert set(after) <= set(before) and set(before) - set(after) <= planted  # litter we may remove, nothing else
    assert {n: d for n, d in after.items()} == {n: d for n, d in before.items() if n in after}  # byte for byte
    assert _same(load(src / "converted" / INDEX), new)


def test_an_output_index_with_a_commit_record_steers_nothing(tmp_path):
    """The output folder holds a checkpoint from someone else whose index carries a commit record and names
    files that are not its shards: replacing it removes only its shards, moves nothing, and the result is right."""
    out = tmp_path / "out"
    out.mkdir()
    save_sharded(_state(1), out, "model", ".safetensors", shards=3)
    (out / "victim.txt").write_text("keep me")
    (out / "other.txt").write_text("keep me too")
    (out / "config.json").write_text("{}")
    index = json.loads((out / INDEX).read_text())
    index["weight_map"]["extra.key"] = "config.json"  # an old index naming a file that is not a shard
    (out / INDEX).write_text(json.dumps(index))
    tmp = _plant(out, INDEX, {"rename": "victim.txt", "remove": "other.txt"})
    src = tmp_path / "src"
    src.mkdir()
    new = _state(2)
    save_sharded(new, src, "model", ".safetensors", shards=2)  # 2 shards replace 3: the third must go
    convert_checkpoint(src / INDEX, out / "model.safetensors", conv_lstm_torch, conv_lstm_torch)
    assert (out / "victim.txt").read_text() == "keep me"
    assert (out / "other.txt").read_text() == "keep me too"
    assert (out / "config.json").read_text() == "{}"
    assert (out / tmp).exists() is False  # a dead process's temporary name: removed, never renamed
    assert not (out / "model-00003-of-00003.safetensors").exists()  # the old shard named like one: removed
    assert _same(load(out / INDEX), new)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["victim.txt", "other.txt", "config.json", INDEX, "model-00001-of-00002.safetensors",
         "model-00002-of-00002.safetensors"])


def _record(folder: Path, token: str, **fields) -> Path:
    rec = journal_dir() / f"{token}.json"
    rec.write_text(json.dumps({"folder": os.path.realpath(folder), "host": os.uname().nodename, "token": token,
                               "index": INDEX, **fields}))
    return rec


@pytest.mark.parametrize("bad", [
    {"shards": ["../outside.safetensors"]},
    {"shards": ["/etc/passwd"]},
    {"shards": [f"{TEMP_PREFIX}1-00000000-x"]},
    {"shards": ["a.safetensors"], "remove": ["../outside.txt"]},
    {"shards": "a.safetensors"},
    {"shards": ["a.safetensors"], "index": "../x.index.json"},
], ids=["parent", "absolute", "temp-name", "remove-parent", "not-a-list", "index-parent"])
def test_a_malformed_record_is_dropped_without_acting(tmp_path, bad):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "outside.safetensors").write_text("x")
    (tmp_path / "outside.txt").write_text("x")
    token = f"{DEAD}-0badc0de"
    (out / temp_name("a.safetensors", token)).write_text("tmp")
    rec = _record(out, token, **bad) if "index" not in bad else _record(out, token, **{**bad})
    before = _digests(tmp_path)
    clean_folder(out, set())
    assert not rec.exists()
    assert _digests(tmp_path) == before
    assert (tmp_path / "outside.safetensors").exists() and (tmp_path / "outside.txt").exists()


def test_a_record_finishes_only_its_own_folder_and_never_a_source(tmp_path):
    """A real killed commit (temporary shards, an index naming them, the record) is finished for its folder; the
    same record does nothing to another folder, nor when the file it would replace is a source of this run."""
    out, other = tmp_path / "out", tmp_path / "other"
    out.mkdir()
    other.mkdir()
    token = f"{DEAD}-0123abcd"
    shard = "model-00001-of-00001.safetensors"
    save_sharded(_state(3), out, "model", ".safetensors", shards=1)  # stands for the new, fully written shard
    os.replace(out / shard, out / temp_name(shard, token))
    first = {"metadata": {}, "weight_map": {k: temp_name(shard, token) for k in json.loads(
        (out / INDEX).read_text())["weight_map"]}}
    final = json.loads((out / INDEX).read_text())
    (out / INDEX).write_text(json.dumps(first))  # step (1) done: the index names the temporary shard
    (out / temp_name(INDEX, token)).write_text(json.dumps(final))
    rec = _record(out, token, shards=[shard], remove=[])
    clean_folder(other, set())
    assert rec.exists()  # another folder's clean-up leaves it
    clean_folder(out, {out / INDEX})  # the index it would replace is a source of this run: left alone
    assert rec.exists() and json.loads((out / INDEX).read_text()) == first
    clean_folder(out, set())
    assert not rec.exists()
    assert json.loads((out / INDEX).read_text()) == final
    assert _same(load(out / INDEX), _state(3))
    assert sorted(p.name for p in out.iterdir()) == sorted([INDEX, shard])


def test_temporary_shards_a_final_index_names_are_kept(tmp_path):
    """With no record (another user's state folder, say), a commit killed after its index switch is left as a
    readable checkpoint: the temporary shards its index names are not removed as litter."""
    out = tmp_path / "out"
    out.mkdir()
    shard = "model-00001-of-00001.safetensors"
    save_sharded(_state(4), out, "model", ".safetensors", shards=1)
    tmp = temp_name(shard, f"{DEAD}-0123abcd")
    os.replace(out / shard, out / tmp)
    data = json.loads((out / INDEX).read_text())
    data["weight_map"] = {k: tmp for k in data["weight_map"]}
    (out / INDEX).write_text(json.dumps(data))
    clean_folder(out, set())
    assert (out / tmp).exists() and _same(load(out / INDEX), _state(4))


def test_a_state_folder_others_can_write_is_not_used(tmp_path, monkeypatch):
    """Records in a folder someone else could write would be plantable: such a folder is refused before anything
    is written, naming it and the fix."""
    shared = tmp_path / "shared"
    (shared / "commits").mkdir(parents=True)
    os.chmod(shared, 0o777)
    monkeypatch.setenv("PADIFF_LITE_STATE_DIR", str(shared))
    out, src = tmp_path / "out", tmp_path / "src"
    out.mkdir()
    src.mkdir()
    save_sharded(_state(1), out, "model", ".safetensors", shards=2)
    save_sharded(_state(2), src, "model", ".safetensors", shards=2)
    before = _digests(out)
    with pytest.raises(CheckpointError, match=r"shared is not a private folder of this user .*set "
                                              r"PADIFF_LITE_STATE_DIR to a folder only you can write"):
        convert_checkpoint(src / INDEX, out / "model.safetensors", conv_lstm_torch, conv_lstm_torch)
    assert _digests(out) == before
