"""Files from users are untrusted (issue 16): no reader runs code from a file, an index cannot reach out of its
folder or pick another reader, and every bad file is one CheckpointError naming the file, the cause and the fix.

Every payload here would create a marker file if it ran; no test may find the marker."""
from __future__ import annotations

import collections
import json
import os
import pickle

import numpy as np
import pytest
import torch
from ckpt_helpers import save, state_as_torch, trained_conv_lstm

from fixtures.models import conv_lstm, conv_lstm_paddle, conv_lstm_torch
from padiff_lite import CheckpointError, convert_checkpoint, create_model
from padiff_lite.cli import main
from padiff_lite.formats.files import open_checkpoint, read_state

FACT = {"torch": "fixtures.models:conv_lstm_torch", "paddle": "fixtures.models:conv_lstm_paddle"}


class Payload:
    """Pickles as a call of os.system that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class EvilFirst(dict):
    """A dict that pickles its payload before the valid state dict: the load would still return the weights."""

    def __reduce__(self):
        return (dict, ((("x", self["payload"]),),), None, None, iter([(k, v) for k, v in self.items()
                                                                      if k != "payload"]))


def _paddle_state():
    return {k: v.numpy() for k, v in conv_lstm("paddle").state_dict().items()}


def _payload_files(tmp_path, marker):
    """name -> path of a file that runs ``touch marker`` when unpickled, in every format that pickles."""
    files = {}
    good = _paddle_state()
    # a payload followed by a valid state dict, protocol 2 and 4: paddle.load would return the weights
    for proto in (2, 4):
        p = tmp_path / f"payload_then_weights_p{proto}.pdparams"
        with open(p, "wb") as fh:
            pickle.dump([Payload(marker), good], fh, protocol=proto)
        files[p.name] = p
        p = tmp_path / f"dict_with_payload_p{proto}.pdparams"
        with open(p, "wb") as fh:
            pickle.dump(collections.OrderedDict(good, evil=Payload(marker)), fh, protocol=proto)
        files[p.name] = p
    p = tmp_path / "evil_first.pdparams"
    with open(p, "wb") as fh:
        pickle.dump(EvilFirst(good, payload=Payload(marker)), fh, protocol=4)
    files[p.name] = p
    for suffix in (".pt", ".bin"):  # torch files: torch.save with a payload next to the tensors
        p = tmp_path / f"torch_payload{suffix}"
        torch.save({**state_as_torch(conv_lstm("torch"), "torch"), "evil": Payload(marker)}, p)
        files[p.name] = p
        p = tmp_path / f"plain_pickle{suffix}"  # a legacy (non-zip) pickle
        with open(p, "wb") as fh:
            pickle.dump({"evil": Payload(marker)}, fh, protocol=2)
        files[p.name] = p
    # an index whose shard is a payload
    d = tmp_path / "idx"
    d.mkdir()
    with open(d / "model-00001-of-00001.pdparams", "wb") as fh:
        pickle.dump({"w": Payload(marker)}, fh, protocol=4)
    (d / "model.pdparams.index.json").write_text(json.dumps({"weight_map": {"w": "model-00001-of-00001.pdparams"}}))
    files["index_of_payload"] = d / "model.pdparams.index.json"
    return files


def test_no_payload_runs_from_any_reader(tmp_path):
    marker = tmp_path / "MARKER"
    files = _payload_files(tmp_path, marker)
    for name, path in files.items():
        paddle_file = ".pdparams" in path.name
        base, raw = (conv_lstm_paddle, conv_lstm_torch) if paddle_file else (conv_lstm_torch, conv_lstm_paddle)
        out = tmp_path / ("o.pt" if paddle_file else "o.pdparams")
        with pytest.raises(CheckpointError) as err:
            convert_checkpoint(path, out, base, raw)
        msg = str(err.value)
        assert "refused" in msg or "cannot read" in msg, (name, msg)
        if "payload" in name or "evil" in name:
            assert "system" in msg, (name, msg)  # the object the file asks for is named
        with pytest.raises(CheckpointError):
            read_state(path)
        proxy = create_model(conv_lstm("paddle" if paddle_file else "torch"))
        with pytest.raises(CheckpointError):
            proxy.adapter.load_weights(proxy.model, str(path))
        assert not out.exists()
    assert not marker.exists()


def test_check_weights_refuses_a_payload_with_exit_2(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    path = _payload_files(tmp_path, marker)["payload_then_weights_p4.pdparams"]
    rc = main(["check", "--base", "fixtures.models:paddle_mlp", "--raw", "padiff_lite.models:mlp",
               "--input-shape", "4,16", "--weights", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "refused to load" in err[0] and "posix.system" in err[0]
    assert not marker.exists()


def test_torch_refusal_names_the_blocked_global_and_random_bytes_are_corrupt(tmp_path):
    torch.save({"w": torch.ones(2), "evil": Payload(tmp_path / "M")}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused to load: the file asks to import posix\.system.*"
                                              r"nothing was run"):
        open_checkpoint(tmp_path / "evil.pt")
    (tmp_path / "rand.pt").write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(CheckpointError) as err:
        open_checkpoint(tmp_path / "rand.pt")
    assert "cannot read this file as torch" in str(err.value) and "objects other than tensors" not in str(err.value)
    assert not (tmp_path / "M").exists()


@pytest.mark.parametrize("shard,expect", [
    ("../outside.safetensors", "is not a plain file name in the index's folder"),
    ("/etc/passwd", "is not a plain file name in the index's folder"),
    ("sub/inner.safetensors", "is not a plain file name in the index's folder"),
    ("notes.txt", "is not a checkpoint file, but the index is a safetensors index"),
    ("model.pdparams", "is a paddle file, but the index is a safetensors index"),
])
def test_index_shards_stay_in_the_folder_and_in_the_format(tmp_path, shard, expect):
    src = tmp_path / "src"
    src.mkdir()
    state = state_as_torch(trained_conv_lstm("torch"), "torch")
    save(state, tmp_path / "outside.safetensors")
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: shard for k in state}}))
    with pytest.raises(CheckpointError, match=expect):
        convert_checkpoint(src, tmp_path / "o.pdparams", conv_lstm_torch, conv_lstm_paddle)
    assert not (tmp_path / "o.pdparams").exists()


def test_index_shard_that_is_a_symlink_out_of_the_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    state = state_as_torch(trained_conv_lstm("torch"), "torch")
    save(state, tmp_path / "elsewhere.safetensors")
    os.symlink(tmp_path / "elsewhere.safetensors", src / "model-00001-of-00001.safetensors")
    (src / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: "model-00001-of-00001.safetensors" for k in state}}))
    with pytest.raises(CheckpointError, match="symbolic link out of the index's folder"):
        convert_checkpoint(src, tmp_path / "o.pdparams", conv_lstm_torch, conv_lstm_paddle)


def test_deeply_nested_index_is_a_checkpoint_error(tmp_path):
    (tmp_path / "m.safetensors.index.json").write_text('{"weight_map": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(CheckpointError, match="not a valid checkpoint index .*RecursionError"):
        open_checkpoint(tmp_path / "m.safetensors.index.json")


def test_sparse_and_meta_tensors_in_a_pt_are_named(tmp_path):
    torch.save({"s": torch.eye(3).to_sparse()}, tmp_path / "sparse.pt")
    with pytest.raises(CheckpointError, match=r"sparse\.pt: s is a sparse tensor .*save it dense"):
        open_checkpoint(tmp_path / "sparse.pt")
    torch.save({"m": torch.empty(3, device="meta")}, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match=r"meta\.pt: m is a tensor without data .*save the real weights"):
        open_checkpoint(tmp_path / "meta.pt")


def test_object_and_string_arrays_in_a_pdparams_are_not_tensors(tmp_path, caplog):
    state = _paddle_state()
    good = dict(state)
    state["names"] = np.array(["a", "bc"])
    state["objs"] = np.array([{"k": 1}, None], dtype=object)
    with open(tmp_path / "w.pdparams", "wb") as fh:
        pickle.dump(state, fh, protocol=4)
    got = read_state(tmp_path / "w.pdparams")
    assert set(got) == set(good)
    assert all(np.array_equal(got[k].numpy(), good[k]) for k in good)
    assert "names (an array of strings)" in caplog.text and "objs (an array of Python objects)" in caplog.text
