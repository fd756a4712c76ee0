"""Output under real faults (issue 16): SIGKILL at every step of a sharded commit, SIGTERM/SIGHUP, a full disk,
a read-only folder, long names, a parent that is a file. After any of them the output folder holds the old
complete checkpoint or the new complete one - never a mix - and the next run leaves no temporary file.

Kills are real signals sent by the converting process to itself at a chosen step (tests/fault_runner.py).
The full disk and the read-only folder are real tmpfs mounts (root only; skipped elsewhere, saying why)."""
from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from ckpt_helpers import load, save, save_sharded, state_as_torch

from fixtures.models import conv_lstm, conv_lstm_paddle, conv_lstm_torch
from padiff_lite import CheckpointError, convert_checkpoint
from padiff_lite.formats.output import clean_folder
from padiff_lite.formats.common import TEMP_PREFIX
from padiff_lite.formats.files import open_checkpoint

ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().parent / "fault_runner.py"
T = "fixtures.models:conv_lstm_torch"
INDEX = "model.safetensors.index.json"
SHARDS = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]


def _source(folder: Path, seed: int) -> dict:
    torch.manual_seed(seed)
    state = state_as_torch(conv_lstm("torch"), "torch")
    folder.mkdir()
    save_sharded(state, folder, "model", ".safetensors", shards=3)
    return state


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _final_names(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(TEMP_PREFIX))


def _cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    return subprocess.Popen([sys.executable, *map(str, args)], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


# (name, point, n, signal, fresh output folder?, which checkpoint the folder holds afterwards)
CASES = [
    ("kill_writing_shard_2", "write", 12, "KILL", False, "old"),
    ("kill_after_commit_record", "record", 1, "KILL", False, "old"),
    ("kill_after_index_switch", "fsync", 1, "KILL", False, "new"),
    ("kill_between_shard_links", "place", 2, "KILL", False, "new"),
    ("kill_after_final_index", "fsync", 3, "KILL", False, "new"),
    ("term_writing", "write", 12, "TERM", False, "old"),
    ("kill_writing_new_folder", "write", 12, "KILL", True, None),
    ("kill_before_folder_rename", "fsync", 1, "KILL", True, None),
    ("hup_writing_new_folder", "write", 12, "HUP", True, None),
]


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """Every case's folder after its faulted run, the runs started together (each spends seconds importing)."""
    base = tmp_path_factory.mktemp("faults")
    old, new = _source(base / "A", 1), _source(base / "B", 2)
    runs = {}
    for name, point, n, sig, fresh, _ in CASES:
        parent = base / name
        parent.mkdir()
        out = parent / "out"
        if not fresh:  # an earlier conversion of A is there; B is written over it
            convert_checkpoint(base / "A", out / "model.safetensors", conv_lstm_torch, conv_lstm_torch)
        runs[name] = _cli(RUNNER, point, n, sig, "--", "convert", base / "B", out / "model.safetensors",
                          "--base", T, "--raw", T, cwd=parent)
    results = {}
    for name, p in runs.items():
        stdout, stderr = p.communicate(timeout=300)
        results[name] = (p.returncode, stderr)
    return base, old, new, results


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_fault_leaves_the_old_or_the_new_checkpoint(faults, case):
    base, old, new, results = faults
    name, point, n, sig, fresh, holds = case
    rc, stderr = results[name]
    parent, out = base / name, base / name / "out"
    if sig == "KILL":
        assert rc == -9, stderr
    else:  # handled like Ctrl-C: one line, exit 128 + signal, temporary files removed
        assert rc == {"TERM": 143, "HUP": 129}[sig], stderr
        lines = [ln for ln in stderr.splitlines() if ln.startswith("padiff-lite: error:")]
        assert len(lines) == 1 and f"interrupted by SIG{sig}" in lines[0] and "Traceback" not in stderr
        assert not [p for p in parent.rglob("*") if p.name.startswith(TEMP_PREFIX)]
    if fresh:
        if (out / INDEX).exists():  # killed after the folder was renamed into place: complete
            assert _same(load(out / INDEX), new) and _final_names(out) == sorted(SHARDS + [INDEX])
        else:
            assert _final_names(parent) == []  # nothing but temporary names (and after a signal, not even those)
    else:
        expected = old if holds == "old" else new
        assert _same(load(out / INDEX), expected)  # the index names a complete checkpoint, old or new
        assert _same({k: v.clone() for k, v in _read(out).items()}, expected)  # the folder is usable as a source
        for shard in _final_names(out):  # nothing mixed: any final-named shard is wholly old or wholly new
            if shard != INDEX:
                got = load(out / shard)
                assert _same(got, {k: old[k] for k in got}) or _same(got, {k: new[k] for k in got}), shard
    clean_folder(parent, set())  # what the next run does first
    if out.exists():
        clean_folder(out, set())
    left = [p.name for p in parent.rglob("*") if p.name.startswith(TEMP_PREFIX)]
    assert not left
    if not fresh or out.exists():
        assert _final_names(out) == sorted(SHARDS + [INDEX])  # exactly one checkpoint
        assert _same(load(out / INDEX), old if holds == "old" else new)
    convert_checkpoint(base / "B", out / "model.safetensors", conv_lstm_torch, conv_lstm_torch)  # runs again fine
    assert _final_names(out) == sorted(SHARDS + [INDEX]) and _same(load(out / INDEX), new)


def _read(folder):
    ck = open_checkpoint(folder)
    return {k: ck.get(k).clone() for k in ck.infos}


# -- filesystems that refuse: real tmpfs mounts ----------------------------------------
@contextlib.contextmanager
def _tmpfs(options: str):
    d = tempfile.mkdtemp(prefix="padiff-tmpfs-")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", d], capture_output=True, text=True)
    if r.returncode:
        os.rmdir(d)
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); needs root")
    try:
        yield Path(d)
    finally:
        subprocess.run(["umount", d], check=False)
        os.rmdir(d)


def _big_source(tmp_path):
    torch.manual_seed(0)
    lin = torch.nn.Linear(700, 600)  # 1.7 MB of float32
    save(state_as_torch(lin, "torch"), tmp_path / "big.safetensors")
    return lambda: torch.nn.Linear(700, 600), lambda: __import__("paddle").nn.Linear(700, 600)


def test_not_enough_free_space_is_refused_before_writing(tmp_path):
    tnet, pnet = _big_source(tmp_path)
    with _tmpfs("size=1m") as disk:
        with pytest.raises(CheckpointError, match=r"the output needs about \d\.\d MB and .* has [\d.]+ MB free; "
                                                  r"free space or write elsewhere"):
            convert_checkpoint(tmp_path / "big.safetensors", disk / "o.pdparams", tnet, pnet)
        assert list(disk.iterdir()) == []


@pytest.mark.parametrize("suffix", [".safetensors", ".pdparams"])
def test_disk_full_while_writing_is_one_clear_error(tmp_path, monkeypatch, suffix):
    """The free-space check passed (another process filled the disk meanwhile): ENOSPC itself is reported."""
    from padiff_lite.formats.output import AtomicOutput

    monkeypatch.setattr(AtomicOutput, "_check_space", lambda self, folder: None)
    tnet, pnet = _big_source(tmp_path)
    with _tmpfs("size=1m") as disk:
        with pytest.raises(CheckpointError, match=r"cannot write the output .*the disk is full\); free space .*"
                                                  r"Nothing was written") as err:
            convert_checkpoint(tmp_path / "big.safetensors", disk / f"o{suffix}", tnet, pnet)
        assert "BufferError" not in str(err.value)
        assert list(disk.iterdir()) == []


def test_disk_full_torch_output(tmp_path, monkeypatch):
    from padiff_lite.formats.output import AtomicOutput

    monkeypatch.setattr(AtomicOutput, "_check_space", lambda self, folder: None)
    tnet, _ = _big_source(tmp_path)
    with _tmpfs("size=1m") as disk:
        with pytest.raises(CheckpointError, match=r"disk|full|writing failed"):
            convert_checkpoint(tmp_path / "big.safetensors", disk / "o.bin", tnet, tnet)
        assert list(disk.iterdir()) == []


def test_read_only_folder_is_one_clear_error(tmp_path):
    save(state_as_torch(conv_lstm("torch"), "torch"), tmp_path / "w.safetensors")
    with _tmpfs("size=4m,ro") as ro:
        with pytest.raises(CheckpointError, match=r"cannot write the output .*read-only filesystem\); write into a "
                                                  r"folder you can write to"):
            convert_checkpoint(tmp_path / "w.safetensors", ro / "o.pdparams", conv_lstm_torch, conv_lstm_paddle)
        with pytest.raises(CheckpointError, match=r"read-only filesystem"):  # a new folder inside it too
            convert_checkpoint(tmp_path / "w.safetensors", ro / "new" / "o.pdparams", conv_lstm_torch,
                               conv_lstm_paddle)


def test_long_names_parent_files_and_stale_temporaries(tmp_path):
    torch.manual_seed(0)
    state = state_as_torch(conv_lstm("torch"), "torch")
    save(state, tmp_path / "w.safetensors")
    name = "m" * (242 - len(".pdparams")) + ".pdparams"  # legal: 242 bytes
    convert_checkpoint(tmp_path / "w.safetensors", tmp_path / "out" / name, conv_lstm_torch, conv_lstm_paddle)
    assert _same(load(tmp_path / "out" / name), {k: v for k, v in load(tmp_path / "out" / name).items()})
    with pytest.raises(CheckpointError, match="more than filesystems allow"):
        convert_checkpoint(tmp_path / "w.safetensors", tmp_path / ("m" * 260 + ".pdparams"), conv_lstm_torch,
                           conv_lstm_paddle)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CheckpointError, match="afile is a file, not a folder"):
        convert_checkpoint(tmp_path / "w.safetensors", tmp_path / "afile" / "sub" / "o.pdparams", conv_lstm_torch,
                           conv_lstm_paddle)
    # leftovers of a process that is gone (pid 2**22 + 1 is above Linux's pid limit) are removed by the next run
    dead = tmp_path / "out" / f"{TEMP_PREFIX}4194305-0123abcd-model.safetensors.index.json"
    dead.write_text("{}")
    mine = tmp_path / "out" / f"{TEMP_PREFIX}{os.getpid()}-0123abcd-x.pdparams"  # a live process's: kept
    mine.write_text("")
    assert open_checkpoint(tmp_path / "out").path.name == name  # a stale temporary index is never the source
    convert_checkpoint(tmp_path / "w.safetensors", tmp_path / "out" / "o.pdparams", conv_lstm_torch, conv_lstm_paddle)
    assert not dead.exists() and mine.exists()


def test_two_runs_racing_into_one_new_folder(tmp_path):
    torch.manual_seed(0)
    save(state_as_torch(conv_lstm("torch"), "torch"), tmp_path / "w.safetensors")
    runs = [_cli("-m", "padiff_lite", "--quiet", "convert", tmp_path / "w.safetensors",
                 tmp_path / "new" / f"o{i}.pdparams", "--base", T, "--raw", "fixtures.models:conv_lstm_paddle",
                 cwd=tmp_path) for i in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in runs]
    for rc, err in results:
        assert rc in (0, 2) and "Traceback" not in err, err
        if rc == 2:
            assert "was created by another process while this conversion wrote its output" in err
    assert 0 in [rc for rc, _ in results]
    names = sorted(p.name for p in (tmp_path / "new").iterdir())
    assert names in (["o0.pdparams"], ["o1.pdparams"], ["o0.pdparams", "o1.pdparams"])
    digests = {hashlib.sha256((tmp_path / "new" / n).read_bytes()).hexdigest() for n in names}
    assert len(digests) == 1
