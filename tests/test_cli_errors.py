"""The command line under bad input (issue 16): one `padiff-lite: error:` line with the fix and exit 2 for every
error, CLI flags in the hints, --quiet anywhere, progress lines when stderr is not a terminal, no paddle noise,
and the working folder never shadowing installed modules."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from ckpt_helpers import assert_same_outputs, load, load_into, save, state_as_torch, trained_conv_lstm

from fixtures.models import conv_lstm
from padiff_lite import checkpoint
from padiff_lite.cli import main
from padiff_lite.models import llama

ROOT = Path(__file__).resolve().parents[1]
T, P = "fixtures.models:conv_lstm_torch", "fixtures.models:conv_lstm_paddle"


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("padiff-lite: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_wrong_framework_for_the_suffix_is_refused_naming_both(tmp_path, capsys):
    """A square-weight model: only the suffix can tell that the frameworks are swapped."""
    torch.manual_seed(0)
    sq = torch.nn.Linear(8, 8)
    save(state_as_torch(sq, "torch"), tmp_path / "sq.pt")
    rc = main(["convert", str(tmp_path / "sq.pt"), str(tmp_path / "p.pdparams"), "--base", P, "--raw", T])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and "sq.pt is a torch checkpoint (.pt/.pth/.bin) but the base model ConvLSTM is a paddle model" \
        in line and "--base" in line
    save(state_as_torch(trained_conv_lstm("torch"), "torch"), tmp_path / "w.pt")
    rc = main(["convert", str(tmp_path / "w.pt"), str(tmp_path / "o.bin"), "--base", T, "--raw", P])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and "o.bin is a torch checkpoint name" in line and "raw model ConvLSTM is a paddle model" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sq.pt", "w.pt"]


def test_no_strict_summary_cannot_be_missed_and_hints_name_cli_flags(tmp_path, capsys):
    torch.manual_seed(0)
    save(state_as_torch(llama("torch"), "torch"), tmp_path / "llama.safetensors")  # unrelated to conv_lstm
    rc = main(["convert", str(tmp_path / "llama.safetensors"), str(tmp_path / "o.pdparams"), "--base", T, "--raw", P])
    err = capsys.readouterr().err
    assert rc == 2 and "--no-strict" in err and "strict=False" not in err and "set_layer_map" not in err
    rc = main(["convert", str(tmp_path / "llama.safetensors"), str(tmp_path / "o.pdparams"), "--base", T,
               "--raw", P, "--no-strict", "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0 and out == ""  # --quiet after the subcommand: no report
    assert "WARNING padiff_lite.checkpoint:" in err and "wrote 0 of 24 raw tensors; 24 missing; 21 checkpoint " \
        "tensors not used" in err


def test_check_factory_returning_a_non_model_exits_2(tmp_path, capsys, monkeypatch):
    (tmp_path / "bad_factories.py").write_text("def not_a_model():\n    return {'weight': 1}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rc = main(["check", "--base", "bad_factories:not_a_model", "--raw", "fixtures.models:paddle_mlp",
               "--input-shape", "4,16"])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and "returned builtins.dict, not a torch.nn.Module or paddle.nn.Layer" in line


def test_check_weights_reads_safetensors_and_wrapped_state_dicts(tmp_path, capsys):
    torch.manual_seed(0)
    from padiff_lite.models import mlp

    state = state_as_torch(mlp("torch"), "torch")
    save(state, tmp_path / "w.safetensors")
    torch.save({"model": state, "epoch": 3}, tmp_path / "wrapped.pt")
    for f in ("w.safetensors", "wrapped.pt"):
        rc = main(["check", "--base", "padiff_lite.models:mlp", "--raw", "fixtures.models:paddle_mlp",
                   "--input-shape", "4,16", "--weights", str(tmp_path / f)])
        assert rc == 0 and ": OK" in capsys.readouterr().out, f


def test_ctrl_c_is_one_line_exit_130_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    save(state_as_torch(trained_conv_lstm("torch"), "torch"), tmp_path / "w.pt")
    real = checkpoint.Runner.compute
    calls = []

    def interrupted(self, *a):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(self, *a)

    monkeypatch.setattr(checkpoint.Runner, "compute", interrupted)
    rc = main(["convert", str(tmp_path / "w.pt"), str(tmp_path / "new" / "o.pdparams"), "--base", T, "--raw", P])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 130 and "interrupted by SIGINT" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pt"]


def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(checkpoint, "PROGRESS_EVERY", 0.0)
    save(state_as_torch(trained_conv_lstm("torch"), "torch"), tmp_path / "w.pt")
    assert main(["convert", str(tmp_path / "w.pt"), str(tmp_path / "o.pdparams"), "--base", T, "--raw", P]) == 0
    err = capsys.readouterr().err
    assert "INFO padiff_lite.checkpoint: convert: " in err and "MB/s" in err
    assert main(["convert", "--quiet", str(tmp_path / "w.pt"), str(tmp_path / "o2.pdparams"), "--base", T,
                 "--raw", P]) == 0
    assert capsys.readouterr().err == ""


def test_subprocess_output_is_ours_and_a_planted_module_does_not_run(tmp_path):
    """As the installed `padiff-lite` script runs (python -P: the working folder is not put on sys.path): a
    factory module in the working folder is found, a six.py planted beside it is not imported; no paddle noise."""
    (tmp_path / "six.py").write_text("open('PLANTED_RAN', 'w').close()\n")
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        import six  # a real dependency: must be the installed one
        from fixtures.models import conv_lstm_paddle, conv_lstm_torch
    """))
    a = trained_conv_lstm("torch")
    save(state_as_torch(a, "torch"), tmp_path / "w.pt")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    r = subprocess.run([sys.executable, "-P", "-c", "import sys; from padiff_lite.cli import main; sys.exit(main())",
                        "convert", "w.pt", "o.pdparams", "--base", "my_models:conv_lstm_torch",
                        "--raw", "my_models:conv_lstm_paddle"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "PLANTED_RAN").exists()
    assert "No ccache found" not in r.stderr
    info = [ln for ln in r.stderr.splitlines() if "converted" in ln]
    assert info and info[0].startswith("INFO padiff_lite.checkpoint: converted w.pt -> o.pdparams")
    b = load_into(conv_lstm("paddle"), "paddle", load(tmp_path / "o.pdparams"))
    assert_same_outputs(a, "torch", b, "paddle")  # the file holds the converted weights, not just some tensors
