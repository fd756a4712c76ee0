"""Issue 15: `padiff-lite check` on HF-style models: integer id inputs fed by name, factories from a file
or any importable module, an HTML report, exit 0 agree / 1 differ / 2 any error (one line, no traceback)."""
import os
import subprocess
import sys
import textwrap

import pytest

from padiff_lite.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")

FACTORIES = textwrap.dedent('''
    import hf_families as H

    def torch_llama():
        return H.BY_NAME["llama"].torch_model(0)

    def paddle_llama():
        return H.BY_NAME["llama"].paddle_model(1)

    def torch_gpt_oss():
        return H.BY_NAME["gpt_oss"].torch_model(0)

    def paddle_gpt_oss():
        return H.BY_NAME["gpt_oss"].paddle_model(1)

    def not_a_model():
        return 42

    def model_that_fails():
        import torch

        class Broken(torch.nn.Module):
            def forward(self, input_ids):
                raise KeyError("no such token")

        return Broken()
''')

IDS = ["--input-shape", "2,9", "--dtype", "int64", "--int-range", "1,128", "--input-name", "input_ids"]


@pytest.fixture(scope="module")
def factories(tmp_path_factory):
    d = tmp_path_factory.mktemp("factories")
    path = d / "hf_factories.py"
    path.write_text(FACTORIES)
    sys.path.insert(0, TESTS)  # hf_families, as a user's own module would import its helpers
    return str(path)


@pytest.mark.parametrize("base,raw", [("torch_llama", "paddle_llama"), ("paddle_llama", "torch_llama")])
def test_hf_port_agrees_from_a_file_factory_with_token_ids(factories, capsys, tmp_path, base, raw):
    page = tmp_path / "report.html"
    code = main(["check", "--base", f"{factories}:{base}", "--raw", f"{factories}:{raw}", *IDS,
                 "--html", str(page)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "(forward, atol=1e-07, rtol=0.0001): OK" in out.splitlines()[0]
    assert "final outputs of a different form" in out  # ModelOutput vs tuple, no wrapping needed
    text = page.read_text()
    assert f"HTML report: {page}" in out and text.startswith("<!DOCTYPE html>") and '"ok": true' in text


def test_hf_port_that_differs_exits_1_and_names_the_experts(factories, capsys):
    code = main(["check", "--base", f"{factories}:torch_gpt_oss", "--raw", f"{factories}:paddle_gpt_oss", *IDS])
    out = capsys.readouterr().out
    assert code == 1
    assert "  base model.layers.0.mlp.experts (GptOssExperts)" in out and "its inputs agree" in out


def test_errors_exit_2_with_one_line(factories, capsys, tmp_path):
    cases = [
        (["--base", f"{factories}:not_a_model", "--raw", f"{factories}:paddle_llama", *IDS],
         "--base " + f"{factories}:not_a_model() returned builtins.int, not a torch.nn.Module or paddle.nn.Layer"),
        (["--base", f"{tmp_path}/missing.py:f", "--raw", f"{factories}:paddle_llama", *IDS],
         f"DiffInputError: --base '{tmp_path}/missing.py:f': no file {tmp_path}/missing.py"),
        (["--base", f"{factories}:torch_llama", "--raw", f"{factories}:paddle_llama", *IDS, "--int-range", "5,5"],
         "--int-range '5,5': expected LOW,HIGH with LOW < HIGH"),
        (["--base", f"{factories}:torch_llama", "--raw", f"{factories}:paddle_llama", *IDS,
          "--input-name", "attention_mask"], "2 --input-name for 1 --input-shape"),
        (["--base", f"{factories}:torch_llama", "--raw", f"{factories}:paddle_llama", *IDS,
          "--html", str(tmp_path / "no_such_dir" / "r.html")],
         f"DiffInputError: --html {tmp_path}/no_such_dir/r.html: the folder {tmp_path}/no_such_dir does not exist"),
        (["--base", f"{factories}:model_that_fails", "--raw", f"{factories}:model_that_fails", *IDS],
         "DiffError: the torch model Broken failed on the given inputs: KeyError"),
    ]
    for argv, expected in cases:
        assert main(["check", *argv]) == 2, argv
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("padiff-lite: error:")]
        assert len(lines) == 1 and expected in lines[0], err


def test_a_factory_returning_no_model_exits_2_without_traceback_from_the_command_line(tmp_path):
    plain = tmp_path / "plain.py"  # no transformers import: the interpreter starts faster
    plain.write_text("def not_a_model():\n    return 42\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
    p = subprocess.run([sys.executable, "-m", "padiff_lite", "check", "--base", f"{plain}:not_a_model",
                        "--raw", "fixtures.models:paddle_mlp", "--input-shape", "4,16"],
                       env=env, cwd=ROOT, text=True, capture_output=True, timeout=180)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stderr and "returned builtins.int, not a torch.nn.Module" in p.stderr
