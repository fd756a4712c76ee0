"""`padiff-lite convert` / `python -m padiff_lite convert`: real subprocesses for the happy path both
ways, in-process main() for the error lines (the same code, without paying the import time each run)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ckpt_helpers import assert_same_outputs, digest, load, load_into, save, save_sharded, state_as_torch, \
    trained_conv_lstm

from fixtures.models import conv_lstm
from padiff_lite.cli import main

ROOT = Path(__file__).resolve().parents[1]
FACT = {"torch": "fixtures.models:conv_lstm_torch", "paddle": "fixtures.models:conv_lstm_paddle"}


def _cli(*args, cwd):
    path = [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]  # tests/: fixtures.models
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    return subprocess.run([sys.executable, "-m", "padiff_lite", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("fs,fd,src_name,dst_name", [
    ("torch", "paddle", "model.safetensors", "model_state.pdparams"),
    ("paddle", "torch", "model_state.pdparams", "pytorch_model.bin"),
], ids=["torch->paddle", "paddle->torch"])
def test_convert_subprocess_round_trip(tmp_path, fs, fd, src_name, dst_name):
    a = trained_conv_lstm(fs)
    save(state_as_torch(a, fs), tmp_path / src_name)
    r = _cli("convert", src_name, dst_name, "--base", FACT[fs], "--raw", FACT[fd], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"checkpoint {src_name} -> {dst_name}" in r.stdout and "LSTM -> LSTM" in r.stdout
    assert "\r" not in r.stderr  # stderr is not a terminal: no progress bar
    b = load_into(conv_lstm(fd), fd, load(tmp_path / dst_name))
    assert_same_outputs(a, fs, b, fd)


def test_convert_subprocess_error_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"not really" * 20)
    r = _cli("convert", "w.safetensors", "o.pdparams", "--base", FACT["torch"], "--raw", FACT["paddle"], cwd=tmp_path)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("padiff-lite: error:")]
    assert len(lines) == 1 and "w.safetensors: cannot read this file as safetensors" in lines[0]
    assert "re-create or re-download it" in lines[0] and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_convert_in_process_sharded_and_no_strict(tmp_path, capsys):
    a = trained_conv_lstm("torch")
    state = state_as_torch(a, "torch")
    state["stray.weight"] = state["head.weight"].clone()
    (tmp_path / "src").mkdir()
    save_sharded(state, tmp_path / "src", "model", ".safetensors", shards=2)
    before = digest(tmp_path / "src")
    args = ["--quiet", "convert", str(tmp_path / "src"), str(tmp_path / "out" / "model.safetensors"),
            "--base", FACT["torch"], "--raw", FACT["paddle"]]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "TransferError" in err and "stray.weight" in err and "--no-strict" in err
    assert not (tmp_path / "out").exists()
    assert main(args[1:] + ["--no-strict"]) == 0
    out = capsys.readouterr().out
    assert "WARNING: wrote 24 of 24 raw tensors; 1 checkpoint tensor not used" in out
    assert "unexpected (base tensors not used):\n  stray.weight" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
    b = load_into(conv_lstm("paddle"), "paddle", load(tmp_path / "out" / "model.safetensors.index.json"))
    assert_same_outputs(a, "torch", b, "paddle")
    assert digest(tmp_path / "src") == before


@pytest.mark.parametrize("base,expect", [
    ("padiff_lite.models", "is not MODULE:CALLABLE; write it like mypackage.models:build_model"),
    ("no_such_pkg.models:build", "cannot import module 'no_such_pkg.models'"),
    ("padiff_lite.models:no_such_fn", "has no 'no_such_fn' (AttributeError); check the name after the colon"),
    ("padiff_lite.models:PAIRS", "is a dict, not a class or function"),
])
def test_convert_bad_factory(tmp_path, capsys, base, expect):
    save(state_as_torch(conv_lstm("torch"), "torch"), tmp_path / "w.pt")
    assert main(["convert", str(tmp_path / "w.pt"), str(tmp_path / "o.pdparams"), "--base", base,
                 "--raw", FACT["paddle"]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("padiff-lite: error: CheckpointError:") and expect in err[0]
    assert not (tmp_path / "o.pdparams").exists()


def test_convert_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="no such file"):
        main(["--debug", "convert", str(tmp_path / "missing.pt"), str(tmp_path / "o.pdparams"),
              "--base", FACT["torch"], "--raw", FACT["paddle"]])
