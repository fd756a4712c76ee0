"""User code run by the command line cannot turn an error into success or shadow a library (issue 28, items 4, 6, 9).

- A factory (or a model it builds) that calls ``sys.exit(0)`` / ``exit()`` is an error of the factory: exit 2 and
  one line naming it, never exit 0 with nothing written.
- ``python -m padiff_lite`` and the ``padiff-lite`` script do not let a file in the working folder (a planted
  ``numpy.py``) shadow an installed library, for ``MODULE:CALLABLE`` and ``path/to/file.py:CALLABLE`` factories.
- Ctrl-C while torch or paddle is being imported is one line and exit 130, no traceback.
Real subprocesses, real signals."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from ckpt_helpers import save, state_as_torch

from fixtures.models import conv_lstm
from padiff_lite.cli import main

ROOT = Path(__file__).resolve().parents[1]
FACTORIES = textwrap.dedent("""
    import sys
    from fixtures.models import conv_lstm_paddle, conv_lstm_torch

    def exits_zero():
        sys.exit(0)

    def calls_exit():
        exit()

    class ExitsInForward(conv_lstm_paddle().__class__):
        def forward(self, *a, **k):
            sys.exit(0)

    def exits_in_forward():
        return ExitsInForward()
""")


def _run(args, cwd, module=True, env_extra=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), **(env_extra or {}))
    cmd = [sys.executable, "-m", "padiff_lite", *args] if module else [*args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _one_error_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("padiff-lite: error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A working folder holding a factory module (``facts``) and a checkpoint; the command runs in this process."""
    (tmp_path / "facts.py").write_text(FACTORIES)
    save(state_as_torch(conv_lstm("torch"), "torch"), tmp_path / "w.pt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("facts", "exits_on_import"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return tmp_path


def _main(args, capsys):
    rc = main(args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("padiff-lite: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return rc, lines[0]


@pytest.mark.parametrize("command", ["convert", "check", "pair"])
@pytest.mark.parametrize("factory", ["facts:exits_zero", "facts:calls_exit", "facts.py:exits_zero"])
def test_a_factory_that_exits_is_an_error(work, capsys, command, factory):
    args = {"convert": ["convert", "w.pt", "o.pdparams"],
            "check": ["check", "--input-shape", "2,3,8,8"], "pair": ["pair", "--input-shape", "2,3,8,8"]}[command]
    rc, line = _main([*args, "--base", "fixtures.models:conv_lstm_torch", "--raw", factory], capsys)
    assert rc == 2
    assert "called sys.exit(" in line and factory.split(":")[1] in line
    assert sorted(p.name for p in work.iterdir() if p.suffix != ".pyc" and p.name != "__pycache__") == \
        ["facts.py", "w.pt"]  # nothing written


def test_exit_inside_a_model_during_check_is_an_error(work, capsys):
    rc, line = _main(["check", "--input-shape", "2,3,8,8", "--base", "fixtures.models:conv_lstm_torch",
                      "--raw", "facts:exits_in_forward"], capsys)
    assert rc == 2
    assert "facts.py:" in line and "called sys.exit(0)" in line


def test_a_module_that_exits_on_import_is_an_error(work, capsys):
    (work / "exits_on_import.py").write_text("import sys\nsys.exit(0)\n")
    rc, line = _main(["convert", "w.pt", "o.pdparams", "--base", "fixtures.models:conv_lstm_torch",
                      "--raw", "exits_on_import:build"], capsys)
    assert rc == 2
    assert "exits_on_import" in line and "must not exit when imported" in line
    assert not (work / "o.pdparams").exists()


def _script():
    exe = Path(sys.executable).with_name("padiff-lite")
    return str(exe) if exe.exists() else shutil.which("padiff-lite")


@pytest.mark.parametrize("how, factory", [("python -m", "my_models:conv_lstm_paddle"),
                                          ("console script", "my_models.py:conv_lstm_paddle")])
def test_a_planted_library_in_the_working_folder_is_not_imported(tmp_path, how, factory):
    if how == "console script" and not _script():
        pytest.skip("the padiff-lite console script is not installed in this environment (pip install -e . makes it)")
    (tmp_path / "numpy.py").write_text("open('PLANTED_RAN', 'w').close()\nraise ImportError('planted')\n")
    (tmp_path / "my_models.py").write_text("import numpy\nfrom fixtures.models import conv_lstm_paddle\n")
    save(state_as_torch(conv_lstm("torch"), "torch"), tmp_path / "w.pt")
    args = ["convert", "w.pt", "o.pdparams", "--base", "fixtures.models:conv_lstm_torch", "--raw", factory]
    r = _run(args, tmp_path) if how == "python -m" else _run([_script(), *args], tmp_path, module=False)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "PLANTED_RAN").exists()
    assert (tmp_path / "o.pdparams").stat().st_size > 0


INTERRUPT_AT_IMPORT = textwrap.dedent("""
    import importlib.abc, os, signal, sys
    target = sys.argv[1]

    class SendSigint(importlib.abc.MetaPathFinder):  # a real SIGINT, landing while `target` is imported
        def find_spec(self, name, path=None, target_=None):
            if name == target:
                sys.meta_path.remove(self)
                os.kill(os.getpid(), signal.SIGINT)
            return None

    sys.meta_path.insert(0, SendSigint())
    from padiff_lite.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_ctrl_c_while_a_framework_imports_is_one_line(tmp_path, framework):
    """The SIGINT lands while ``torch.nn`` / ``paddle.nn`` is being imported (the frameworks load only once
    the command runs); nothing else runs after it."""
    (tmp_path / "run.py").write_text(INTERRUPT_AT_IMPORT)
    r = _run([sys.executable, "run.py", f"{framework}.nn", "check", "--input-shape", "2,3,8,8",
              "--base", "fixtures.models:conv_lstm_torch", "--raw", "fixtures.models:conv_lstm_paddle"],
             tmp_path, module=False)
    assert r.returncode == 130, r.stderr
    assert "interrupted by SIGINT" in _one_error_line(r)
