"""Every command-line path and option, and every field of a JSON file or a .pdparams bookkeeping entry, is checked
before use (issue 28, item 5): a wrong one is one `padiff-lite: error:` line naming the option or the file and the
fix, exit 2, never an unforeseen exception; and nothing is written."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from ckpt_helpers import save, state_as_torch, trained_conv_lstm

from padiff_lite import MappingError
from padiff_lite.cli import main
from padiff_lite.mapping import Mapping

T, P = "fixtures.models:conv_lstm_torch", "fixtures.models:conv_lstm_paddle"
MLP = ["--base", "padiff_lite.models:mlp", "--raw", "fixtures.models:paddle_mlp"]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("padiff-lite: error:")]
    assert len(lines) == 1 and "Traceback" not in err and "not foreseen" not in err, err
    return lines[0]


def _paths(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "folder").mkdir()
    return {"missing folder": (tmp_path / "nodir" / "out", "the folder {d}/nodir does not exist; create it first"),
            "a folder": (tmp_path / "folder", "is a folder; name the file to write"),
            "under a file": (tmp_path / "afile" / "out", "{d}/afile is a file, not a folder")}


@pytest.mark.parametrize("case", ["missing folder", "a folder", "under a file"])
def test_pair_output_and_check_html_paths_are_checked_before_the_models_are_built(tmp_path, capsys, case):
    path, why = _paths(tmp_path)[case]
    why = why.format(d=tmp_path)
    for argv, flag in ((["pair", *MLP, "--input-shape", "4,16", "-o", f"{path}.json"], "-o"),
                       (["check", *MLP, "--input-shape", "4,16", "--html", f"{path}.html"], "--html")):
        if case == "a folder":
            argv[-1] = str(path)
        assert main(argv) == 2, argv
        line = _one_line(capsys)
        assert f"DiffInputError: {flag} {argv[-1]}: " in line and why in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "folder"] and not any((tmp_path / "folder").iterdir())


def test_mapping_save_refuses_paths_it_cannot_write(tmp_path):
    m = Mapping("torch", "A", "paddle", "B")
    for case, (path, why) in _paths(tmp_path).items():
        with pytest.raises(MappingError, match=why.format(d=tmp_path)):
            m.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "folder"]
    assert json.loads(m.save(tmp_path / "folder" / "m.json").read_text())["base"] == {"framework": "torch", "model": "A"}


@pytest.mark.parametrize("argv,expected", [
    (["--dtype", "object"], "--dtype 'object' is not a number type a model takes as input; use one of float16"),
    (["--dtype", "str"], "--dtype 'str' is not a number type"),
    (["--dtype", "complex64"], "--dtype 'complex64' is not a number type"),
    (["--dtype", "no_such_type"], "--dtype 'no_such_type' is not a numpy dtype name"),
    (["--dtype", "int64", "--int-range", "0,99999999999999999999"],
     "--int-range '0,99999999999999999999': the values 0..99999999999999999998 do not fit --dtype int64"),
    (["--dtype", "float32", "--int-range=-99999999999999999999,0"], "--int-range '-99999999999999999999,0': the values -99999999999999999999..-1 do not fit int64"),
    (["--dtype", "int8", "--int-range", "1,32000"], "--int-range '1,32000': the values 1..31999 do not fit --dtype int8 (-128..127)"),
    (["--dtype", "uint8", "--int-range=-1,5"], "--int-range '-1,5': the values -1..4 do not fit --dtype uint8 (0..255)"),
    (["--input-shape", "4294967296,4294967296"], "--input-shape '4294967296,4294967296': 1.84e+19 values"),
    (["--seed", "-1"], "--seed -1: expected an integer from 0 to 2**63-1"),
    (["--atol", "nan"], "--atol nan: expected a finite number >= 0"),
    (["--rtol", "-1"], "--rtol -1.0: expected a finite number >= 0"),
])
def test_check_options_are_checked_against_their_dtype_and_int64(capsys, argv, expected):
    assert main(["check", *MLP, "--input-shape", "4,16", *argv]) == 2
    line = _one_line(capsys)
    assert "DiffInputError: " + expected in line, line


def test_integer_inputs_within_the_dtype_still_run(capsys):
    """The checks refuse only what cannot be: a range that fits the dtype runs (an Embedding model, int64 ids)."""
    assert main(["check", "--base", "padiff_lite.models:llama_torch", "--raw", "padiff_lite.models:llama_paddle",
                 "--input-shape", "2,5", "--dtype", "int64", "--int-range", "1,256"]) == 0
    assert ": OK" in capsys.readouterr().out


def _convert(tmp_path, src, *extra):
    return main(["convert", str(src), str(tmp_path / "o.pdparams"), "--base", T, "--raw", P, *extra])


@pytest.mark.parametrize("mapping,expected", [
    ({"layers": 5}, "layers is a number, expected a list of {base, raw} objects"),
    ({"layers": [{"base": 1, "raw": "x"}]}, "layers[0].base is a number, expected a string"),
    ({"layers": [], "tensors": [{"base": "a", "raw": "b", "value": "1"}]}, "tensors[0].value is a string, expected a "
                                                                           "number or null"),
    ({"layers": [], "base": "torch"}, "base is a string, expected an object {framework, model}"),
    ({"layers": [], "notes": "x"}, "notes is not a list of strings"),
    ({"layers": [], "format": 1}, "format is a number, expected the string 'padiff-lite mapping 1'"),
    ({"conv": ["x"]}, "entry 'conv': a list where a raw layer path (a string) belongs"),
    ([1, 2], "a mapping is an object (a dict), got a list"),
])
def test_malformed_mapping_files_are_one_line_naming_the_field(tmp_path, capsys, mapping, expected):
    save(state_as_torch(trained_conv_lstm("torch"), "torch"), tmp_path / "w.pt")
    (tmp_path / "m.json").write_text(json.dumps(mapping))
    assert _convert(tmp_path, tmp_path / "w.pt", "--map", str(tmp_path / "m.json")) == 2
    line = _one_line(capsys)
    assert f"MappingError: {tmp_path}/m.json: not a mapping: {expected}" in line and "padiff-lite pair" in line, line
    assert not (tmp_path / "o.pdparams").exists()


def test_deeply_nested_mapping_json_is_one_line(tmp_path, capsys):
    save(state_as_torch(trained_conv_lstm("torch"), "torch"), tmp_path / "w.pt")
    (tmp_path / "m.json").write_text('{"layers": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert _convert(tmp_path, tmp_path / "w.pt", "--map", str(tmp_path / "m.json")) == 2
    assert "m.json is not readable JSON (RecursionError" in _one_line(capsys)


@pytest.mark.parametrize("index,expected", [
    ({"metadata": {}}, "it has no 'weight_map'"),
    ({"weight_map": ["a", "b"]}, "its weight_map is a list, not an object"),
    ({"weight_map": {"w": 3}}, "weight_map['w'] is a number, not a shard file name"),
    ({"weight_map": {}}, "its weight_map is empty"),
    ("weight_map", "the JSON holds a string, not an object"),
])
def test_malformed_indexes_are_one_line_naming_the_field(tmp_path, capsys, index, expected):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert _convert(tmp_path, tmp_path / "model.safetensors.index.json") == 2
    assert f"model.safetensors.index.json: not a valid checkpoint index ({expected}); an index is JSON with a " \
           "'weight_map'" in _one_line(capsys)


@pytest.mark.parametrize("info,expected", [
    (["w"], "UnpackBigParamInfor@@ is a list, not a table of big arrays"),
    ({"w": 3}, "UnpackBigParamInfor@@['w'] is not {'OriginShape': sizes, 'slices': [names]}"),
    ({"w": {"OriginShape": [4], "slices": [1, 2]}}, "UnpackBigParamInfor@@['w'] is not"),
    ({"w": {"OriginShape": [-4], "slices": ["w@0"]}}, "not a tuple of sizes from 0 to 2**63-1"),
    ({"w": {"OriginShape": [1 << 62, 1 << 62], "slices": ["w@0"]}}, "larger than any file can hold"),
])
def test_pdparams_bookkeeping_of_the_wrong_type_is_one_line(tmp_path, capsys, info, expected):
    """paddle.save's own entries (the slices of arrays over 1 GB) hold what paddle wrote, or the file is refused."""
    state = {k: v.numpy() for k, v in state_as_torch(trained_conv_lstm("paddle"), "paddle").items()}
    state["w@0"] = np.zeros(4, "f4")
    state["UnpackBigParamInfor@@"] = info
    with open(tmp_path / "w.pdparams", "wb") as fh:
        pickle.dump(state, fh, protocol=2)
    assert main(["convert", str(tmp_path / "w.pdparams"), str(tmp_path / "o.pt"), "--base", P, "--raw", T]) == 2
    line = _one_line(capsys)
    assert "w.pdparams: cannot read this file as paddle" in line and expected in line, line


def test_checkpoint_paths_under_a_file_or_a_folder_without_one_are_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert _convert(tmp_path, tmp_path / "afile" / "w.pt") == 2
    assert f"afile/w.pt: {tmp_path}/afile is a file, not a folder; check the path" in _one_line(capsys)
    (tmp_path / "empty").mkdir()
    assert _convert(tmp_path, tmp_path / "empty") == 2
    assert "empty: folder holds no checkpoint; pass the checkpoint file" in _one_line(capsys)
    assert main(["check", *MLP, "--input-shape", "4,16", "--weights", str(tmp_path / "afile" / "w.pt")]) == 2
    assert "afile is a file, not a folder" in _one_line(capsys)
