"""A source that changes while a conversion reads it (issue 28, item 8): overwritten in place or a shard replaced by
a rename, it gave an output mixing the two versions, with exit 0. Now every source file's size, inode, modification
and status change times are taken before it is first read and compared after each output shard and before the
commit: a change is a CheckpointError naming the file, and nothing is written.

The change is made at a chosen point, deterministically: the conversion runs in a thread (or a process) whose
``Checkpoint.release`` (called when an output shard is complete) stops after the first shard until the test has
changed the source.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from ckpt_helpers import assert_same_outputs, digest, load, load_into, save, save_sharded, state_as_torch, \
    trained_conv_lstm

from fixtures.models import conv_lstm, conv_lstm_paddle, conv_lstm_torch
from padiff_lite import CheckpointError, convert_checkpoint
from padiff_lite.formats.files import Checkpoint

HERE = Path(__file__).resolve().parent
FACTORY = {"torch": conv_lstm_torch, "paddle": conv_lstm_paddle}
OTHER = {"torch": "paddle", "paddle": "torch"}
SOURCES = [("torch", ".safetensors"), ("torch", ".pt"), ("paddle", ".pdparams")]
SHARD = "model-0000{}-of-00003{}"


def sharded_source(tmp_path, fw, suffix):
    """A 3-shard checkpoint of a trained ConvLSTM of ``fw`` in tmp_path/src; returns (model, index, state)."""
    model = trained_conv_lstm(fw)
    state = state_as_torch(model, fw)
    (tmp_path / "src").mkdir()
    (tmp_path / "out").mkdir()
    return model, save_sharded(state, tmp_path / "src", "model", suffix, shards=3), state


def changed_copy(state, path: Path, suffix):
    """``path``'s shard written again with other values (the same keys, shapes and dtypes) into a new file."""
    old = load(path)
    new = path.with_name("new" + suffix)
    save({k: state[k] * 2 + 1 for k in old}, new)
    return new


def change(how, state, src: Path, suffix):
    """Change the source as a download, a save or a copy over it would; returns the shard changed."""
    shard = src / SHARD.format(1 if how == "overwrite-read-shard" else 2, suffix)
    was = os.stat(shard)
    while time.time_ns() < max(was.st_mtime_ns, was.st_ctime_ns) + 20_000_000:  # beyond the timestamps' grain
        time.sleep(0.005)
    new = changed_copy(state, shard, suffix)
    if how == "rename-over-unread-shard":
        os.replace(new, shard)
    else:  # in place: same file, same inode, new bytes
        data = new.read_bytes()
        new.unlink()
        with open(shard, "r+b") as fh:
            fh.write(data)
            fh.truncate()
    now = os.stat(shard)
    assert (now.st_ino, now.st_mtime_ns, now.st_size) != (was.st_ino, was.st_mtime_ns, was.st_size)
    return shard


class PauseAfterFirstShard:
    """``Checkpoint.release`` stops after the first output shard is written until ``go`` is set."""

    def __init__(self, monkeypatch):
        self.reached, self.go = threading.Event(), threading.Event()
        real = Checkpoint.release
        calls = []

        def release(ck):
            real(ck)
            calls.append(ck)
            if len(calls) == 1:
                self.reached.set()
                assert self.go.wait(120), "the test never let the conversion go on"

        monkeypatch.setattr(Checkpoint, "release", release)


def convert_in_a_thread(monkeypatch, index, dst, fw, during=None):
    """Run the conversion in a thread, call ``during()`` while it is stopped after the first shard; returns what it
    raised (None when it succeeded)."""
    pause = PauseAfterFirstShard(monkeypatch)
    outcome = []

    def run():
        try:
            convert_checkpoint(index, dst, FACTORY[fw], FACTORY[OTHER[fw]])
            outcome.append(None)
        except BaseException as exc:  # noqa: B036 - handed to the test
            outcome.append(exc)
            pause.reached.set()

    t = threading.Thread(target=run)
    t.start()
    try:
        assert pause.reached.wait(120), "the conversion never reached its first shard"
        if during is not None and not outcome:
            during()
    finally:
        pause.go.set()
        t.join(120)
    assert not t.is_alive() and len(outcome) == 1
    return outcome[0]


@pytest.mark.parametrize("how", ["overwrite-read-shard", "overwrite-unread-shard", "rename-over-unread-shard"])
@pytest.mark.parametrize("fw,suffix", SOURCES, ids=[s[1][1:] for s in SOURCES])
def test_a_source_changed_while_being_read_is_refused_and_nothing_is_written(tmp_path, monkeypatch, fw, suffix, how):
    _, index, state = sharded_source(tmp_path, fw, suffix)
    changed = []
    exc = convert_in_a_thread(monkeypatch, index, tmp_path / "out" / "model.safetensors", fw,
                              during=lambda: changed.append(change(how, state, tmp_path / "src", suffix)))
    assert isinstance(exc, CheckpointError), exc
    msg = str(exc)
    assert f"{changed[0]}: the source file changed while being read (" in msg
    assert ("inode" if how.startswith("rename") else "modification time") in msg
    assert "nothing was written" in msg and "Convert again once nothing writes the checkpoint" in msg
    assert list((tmp_path / "out").iterdir()) == []  # no output, no temporary file


@pytest.mark.parametrize("fw,suffix", SOURCES, ids=[s[1][1:] for s in SOURCES])
def test_an_unchanged_source_converts_through_the_same_pause(tmp_path, monkeypatch, fw, suffix):
    model, index, _ = sharded_source(tmp_path, fw, suffix)
    before = digest(tmp_path / "src")
    assert convert_in_a_thread(monkeypatch, index, tmp_path / "out" / "model.safetensors", fw) is None
    other = load_into(conv_lstm(OTHER[fw]), OTHER[fw], load(tmp_path / "out" / "model.safetensors.index.json"))
    assert_same_outputs(model, fw, other, OTHER[fw])
    assert digest(tmp_path / "src") == before


def test_the_command_line_exits_2_with_one_line_when_a_shard_is_replaced_mid_conversion(tmp_path):
    """``padiff-lite convert`` in a process of its own (tests/source_change_runner.py: the same pause, handshaking
    through files), a shard renamed over mid-conversion."""
    _, index, state = sharded_source(tmp_path, "torch", ".safetensors")
    sync = tmp_path / "sync"
    sync.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE), os.environ.get("PYTHONPATH", "")]))
    args = ["convert", str(index), str(tmp_path / "out" / "model.safetensors"),
            "--base", "fixtures.models:conv_lstm_torch", "--raw", "fixtures.models:conv_lstm_paddle"]
    proc = subprocess.Popen([sys.executable, str(HERE / "source_change_runner.py"), str(sync), "--", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (sync / "paused").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the conversion never reached its first shard"
            time.sleep(0.01)
        shard = change("rename-over-unread-shard", state, tmp_path / "src", ".safetensors")
        (sync / "go").touch()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("padiff-lite: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"CheckpointError: {shard}: the source file changed while being read (inode" in lines[0]
    assert list((tmp_path / "out").iterdir()) == []
    shutil.rmtree(sync)
