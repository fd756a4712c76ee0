"""Issue 4: `python -m padiff_lite check` exits 0 when the models agree, 1 when they differ, 2 on errors."""
import os
import subprocess
import sys
import textwrap

import paddle
import pytest
import torch

import numpy as np

from helpers import inputs_for
from padiff_lite import CheckpointError, create_model, models
from padiff_lite.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

USER_MODELS = textwrap.dedent('''
    from padiff_lite import models

    def torch_mlp():
        return models.mlp("torch")

    def paddle_mlp_tanh_for_relu():
        import paddle
        m = models.mlp("paddle")
        m[1] = paddle.nn.Tanh()  # the port used the wrong activation after the first Linear
        return m
''')


RUNS = {
    "agree": ["--base", "padiff_lite.models:tiny_net", "--raw", "padiff_lite.models:paddle_tiny_net",
              "--input-shape", "2,8,20"],
    "differ": ["--base", "user_models:torch_mlp", "--raw", "user_models:paddle_mlp_tanh_for_relu",
               "--input-shape", "4,16"],
    "error": ["--base", "user_models:no_such_builder", "--raw", "user_models:torch_mlp", "--input-shape", "4,16"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The three command lines, started together (each interpreter spends most of its time importing)."""
    d = tmp_path_factory.mktemp("user_models")
    (d / "user_models.py").write_text(USER_MODELS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, str(d)]))
    procs = {k: subprocess.Popen([sys.executable, "-m", "padiff_lite", "check", *a], env=env, cwd=ROOT, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for k, a in RUNS.items()}
    out = {}
    for k, p in procs.items():
        stdout, stderr = p.communicate(timeout=180)
        out[k] = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
    return out


def test_check_exits_0_when_the_port_agrees(runs):
    p = runs["agree"]
    assert p.returncode == 0, p.stdout + p.stderr
    assert "auto_diff torch:TinyNet -> paddle:TinyNet (forward, atol=1e-07, rtol=0.0001): OK" in p.stdout
    assert "0 outside tolerance" in p.stdout and "attn (MultiheadAttention) -> attn (MultiHeadAttention)" in p.stdout


def test_check_exits_1_and_names_the_layer_when_the_port_differs(runs):
    p = runs["differ"]
    assert p.returncode == 1, p.stdout + p.stderr
    assert ": MISMATCH" in p.stdout.splitlines()[0]
    assert "  base 1 (ReLU)" in p.stdout and "  raw  1 (Tanh)" in p.stdout
    assert ">>" in p.stdout and "its inputs agree" in p.stdout


def test_check_exits_2_with_one_line_on_errors(runs):
    p = runs["error"]
    assert p.returncode == 2, p.stdout + p.stderr
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("padiff-lite: error:")]
    assert len(err) == 1 and "--base 'user_models:no_such_builder'" in err[0] and "AttributeError" in err[0]
    assert "Traceback" not in p.stderr


# in-process: the same entry point, without paying for a new interpreter each time
def test_check_argument_errors_exit_2(capsys):
    assert main(["check", "--base", "padiff_lite.models:mlp", "--raw", "fixtures.models:paddle_mlp",
                 "--input-shape", "4,x"]) == 2
    assert "--input-shape '4,x': expected positive integers" in capsys.readouterr().err
    assert main(["check", "--base", "padiff_lite.models", "--raw", "fixtures.models:paddle_mlp",
                 "--input-shape", "4,16"]) == 2
    assert "expected MODULE:CALLABLE" in capsys.readouterr().err
    assert main(["check", "--base", "padiff_lite.models:mlp", "--raw", "fixtures.models:paddle_mlp",
                 "--input-shape", "4,15"]) == 2  # the models take 16 features
    assert "DiffError: the torch model Sequential failed on the given inputs" in capsys.readouterr().err


def _save(framework, path):
    trained = models.mlp(framework)
    (torch.save if framework == "torch" else paddle.save)(trained.state_dict(), path)
    return trained


@pytest.mark.parametrize("framework,suffix", [("torch", ".pt"), ("paddle", ".pdparams")])
def test_load_weights_reads_a_state_dict_into_the_model(tmp_path, framework, suffix):
    path = str(tmp_path / f"w{suffix}")
    trained = _save(framework, path)
    fresh = create_model(models.mlp(framework))
    x = inputs_for([(4, 16)])[0]
    assert not np.allclose(models.run(fresh.model, framework, [x])[0], models.run(trained, framework, [x])[0])
    fresh.adapter.load_weights(fresh.model, path)
    np.testing.assert_array_equal(models.run(fresh.model, framework, [x])[0], models.run(trained, framework, [x])[0])


@pytest.mark.parametrize("base,raw,suffix", [("padiff_lite.models:mlp", "fixtures.models:paddle_mlp", ".pt"),
                                              ("fixtures.models:paddle_mlp", "padiff_lite.models:mlp", ".pdparams")])
def test_check_with_weights(tmp_path, capsys, base, raw, suffix):
    path = str(tmp_path / f"w{suffix}")
    _save("torch" if suffix == ".pt" else "paddle", path)
    assert main(["check", "--base", base, "--raw", raw, "--input-shape", "4,16", "--weights", path]) == 0
    assert ": OK" in capsys.readouterr().out
    wrong = str(tmp_path / ("w.pdparams" if suffix == ".pt" else "w.pt"))
    assert main(["check", "--base", base, "--raw", raw, "--input-shape", "4,16", "--weights", wrong]) == 2
    err = capsys.readouterr().err
    assert "CheckpointError" in err and ("loads .pdparams" in err or "loads .pt/.pth/.bin" in err)


@pytest.mark.parametrize("framework,suffix", [("torch", ".pt"), ("paddle", ".pdparams")])
def test_weights_that_do_not_fit_are_a_checkpoint_error(tmp_path, framework, suffix):
    path = str(tmp_path / f"small{suffix}")
    small = models._nn(framework).Linear(3, 2)
    (torch.save if framework == "torch" else paddle.save)(small.state_dict(), path)
    proxy = create_model(models.mlp(framework))
    with pytest.raises(CheckpointError, match="does not fit Sequential"):
        proxy.adapter.load_weights(proxy.model, path)
