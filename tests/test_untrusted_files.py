"""Files that would hang or kill the process (issue 28, item 2) are refused, for real: a FIFO as a checkpoint, a
shard, an index, a mapping or --weights file; /dev/zero behind a symbolic link; a .pdparams or .pt whose pickle nests
a dict key a million levels deep (signal 11 in hash()) or multiplies itself through its memo ("billion laughs");
headers whose sizes do not fit the file. Each hostile file is run through the command line in a child process
with a timeout: it must return, exit 2, and print one error line naming the file. Legitimate files with many
tensors, wrappers and legacy torch files still read (the bounds are far above what a state dict needs).
"""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from ckpt_helpers import save, state_as_torch, trained_conv_lstm

from padiff_lite import CheckpointError, MappingError
from padiff_lite.formats.files import open_checkpoint, read_state
from padiff_lite.mapping import load as load_mapping

ROOT = Path(__file__).resolve().parents[1]
TEST_PATH = os.pathsep.join([str(ROOT), str(ROOT / "tests")])  # the package and fixtures.models
T, P = "fixtures.models:conv_lstm_torch", "fixtures.models:conv_lstm_paddle"


# -- crafting hostile pickles by hand, opcode by opcode -------------------------------------------------------
def deep_key_pickle(depth: int) -> bytes:
    """{((((...)))): 1}: a dict key nested ``depth`` tuples deep (hashing it recurses in C)."""
    return b"\x80\x02}" + b")" + b"\x85" * depth + b"K\x01s."  # EMPTY_DICT EMPTY_TUPLE TUPLE1*depth BININT1 SETITEM


def laughs_pickle(levels: int = 12, fan: int = 10) -> bytes:
    """{"w": t_levels} where t_0 = 1 and t_i = (t_(i-1),) * fan through the memo: 10**12 values in ~400 bytes."""
    ops = b"\x80\x02}X\x01\x00\x00\x00w" + b"K\x01q\x00"  # EMPTY_DICT, 'w', 1 -> memo 0
    for i in range(1, levels + 1):
        ops += b"(" + (b"h" + bytes([i - 1])) * fan + b"tq" + bytes([i])  # MARK BINGET*fan TUPLE BINPUT i
    return ops + b"s."


def torch_zip_with_pickle(path: Path, pkl: bytes):
    """A torch.save zip file whose data.pkl is ``pkl`` (the other records as torch wrote them)."""
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for info in src.infolist():
            z.writestr(info.filename, pkl if info.filename.endswith("/data.pkl") else src.read(info))
    return path


def _run_cli(argvs: list[list[str]], cwd: Path, timeout: float = 120):
    """Run ``main(argv)`` for each argv in ONE child process (a crash kills it, a hang times it out); returns the
    exit codes and the error lines of each run."""
    script = ("import json, sys\nfrom padiff_lite.cli import main\n"
              "for argv in json.loads(sys.argv[1]):\n"
              "    rc = main(argv)\n"
              "    print('RC', rc, flush=True)\n"
              "    print('END', file=sys.stderr, flush=True)\n")
    r = subprocess.run([sys.executable, "-c", script, json.dumps(argvs)], cwd=cwd, capture_output=True, text=True,
                       timeout=timeout, env=dict(os.environ, PYTHONPATH=TEST_PATH))
    assert r.returncode == 0, f"the process died (status {r.returncode}):\n{r.stderr[-3000:]}"
    codes = [int(line.split()[1]) for line in r.stdout.splitlines() if line.startswith("RC ")]
    errors = [[ln for ln in block.splitlines() if ln.startswith("padiff-lite: error:")]
              for block in r.stderr.split("END\n")[:-1]]
    assert "Traceback" not in r.stderr, r.stderr
    return codes, errors


def test_fifos_and_devices_are_refused_without_blocking(tmp_path):
    """Every path a user names, as a FIFO without a writer (it would block for ever) or a symbolic link to
    /dev/zero (it would be read until memory runs out): exit 2, one line naming the file and what it is."""
    state = state_as_torch(trained_conv_lstm("torch"), "torch")
    os.mkfifo(tmp_path / "fifo.safetensors")
    os.mkfifo(tmp_path / "fifo.json")
    os.mkfifo(tmp_path / "fifo.pt")
    os.symlink("/dev/zero", tmp_path / "zero.safetensors")
    os.symlink("/dev/zero", tmp_path / "zero.json")
    idx = tmp_path / "idx"  # an index that is a FIFO
    idx.mkdir()
    os.mkfifo(idx / "model.safetensors.index.json")
    shard = tmp_path / "shard"  # an index whose shard is a FIFO beside it
    shard.mkdir()
    os.mkfifo(shard / "model-00001-of-00001.safetensors")
    (shard / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: "model-00001-of-00001.safetensors" for k in state}}))
    inner = tmp_path / "inner"  # a symbolic link inside the folder, to a link inside the folder, to /dev/zero
    inner.mkdir()
    os.symlink("/dev/zero", inner / "z")
    os.symlink("z", inner / "model-00001-of-00001.safetensors")
    (inner / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: "model-00001-of-00001.safetensors" for k in state}}))
    save(state, tmp_path / "w.safetensors")
    conv = ["convert", "--base", T, "--raw", P]
    cases = [
        (conv[:1] + ["fifo.safetensors", "o.pdparams"] + conv[1:], "fifo.safetensors: the checkpoint file is a FIFO"),
        (conv[:1] + ["zero.safetensors", "o.pdparams"] + conv[1:],
         "zero.safetensors (a symbolic link to /dev/zero): the checkpoint file is a character device"),
        (conv[:1] + ["idx", "o.pdparams"] + conv[1:], "model.safetensors.index.json: the checkpoint index is a FIFO"),
        (conv[:1] + ["shard", "o.pdparams"] + conv[1:], "model-00001-of-00001.safetensors: the checkpoint file is a FIFO"),
        (conv[:1] + ["inner", "o.pdparams"] + conv[1:], "symbolic link out of the index's folder"),
        (conv[:1] + ["w.safetensors", "o.pdparams", "--map", "fifo.json"] + conv[1:],
         "fifo.json: the mapping file is a FIFO"),
        (conv[:1] + ["w.safetensors", "o.pdparams", "--map", "zero.json"] + conv[1:],
         "zero.json (a symbolic link to /dev/zero): the mapping file is a character device"),
        (["check", "--base", T, "--raw", P, "--input-shape", "2,3,8,8", "--weights", "fifo.pt"],
         "fifo.pt: the --weights file is a FIFO"),
    ]
    codes, errors = _run_cli([argv for argv, _ in cases], tmp_path)
    assert codes == [2] * len(cases)
    for (argv, expected), lines in zip(cases, errors):
        assert len(lines) == 1 and expected in lines[0], (argv, lines)
        assert "not a regular file" in lines[0] or "symbolic link out" in lines[0], lines
    assert not list(tmp_path.glob("o.*")) and not list(tmp_path.glob(".padiff-tmp-*"))


def test_deep_nesting_and_billion_laughs_are_refused_fast_and_the_process_survives(tmp_path):
    """Without the bounds, the deep keys kill the interpreter (signal 11) and the laughs run for ever."""
    (tmp_path / "deep.pdparams").write_bytes(deep_key_pickle(1_000_000))
    (tmp_path / "laughs.pdparams").write_bytes(laughs_pickle())
    torch_zip_with_pickle(tmp_path / "deep.pt", deep_key_pickle(1_000_000))
    torch_zip_with_pickle(tmp_path / "laughs.pt", laughs_pickle())
    deep_list = b"\x80\x02}X\x01\x00\x00\x00w" + b"(" * 200_000 + b"]" + b"l" * 200_000 + b"s."  # [[[...]]]
    (tmp_path / "deeplist.pdparams").write_bytes(deep_list)
    jagged = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)], layout=torch.jagged)
    torch.save({"w": jagged}, tmp_path / "jagged.pt")  # torch.load refuses it in a process that has not imported
    # torch._dynamo, before we could name its key: still one line naming the file
    cases = [(["convert", name, "o" + (".pt" if name.endswith("pdparams") else ".pdparams"),
               "--base", P if name.endswith("pdparams") else T, "--raw", T if name.endswith("pdparams") else P], why)
             for name, why in [("deep.pdparams", "more than 100 levels deep"), ("laughs.pdparams", "billion laughs"),
                               ("deep.pt", "more than 100 levels deep"), ("laughs.pt", "billion laughs"),
                               ("deeplist.pdparams", "more than 100 levels deep")]]
    cases.append((["convert", "jagged.pt", "o.pdparams", "--base", T, "--raw", P], "holds a nested (jagged) tensor"))
    codes, errors = _run_cli([argv for argv, _ in cases], tmp_path, timeout=120)
    assert codes == [2] * len(cases)
    for (argv, why), lines in zip(cases, errors):
        assert len(lines) == 1 and f"{argv[1]}: " in lines[0] and why in lines[0], (argv, lines)
        assert "nothing from the file was run" in lines[0] or "jagged" in argv[1]


def test_a_container_changed_after_it_was_placed_is_refused(tmp_path):
    """Lists filled after they were nested (each list appended into the previous one later through the memo):
    how depth could grow unseen by a depth count made when a container is placed."""
    ops = b"\x80\x02}X\x01\x00\x00\x00w"  # EMPTY_DICT, 'w'
    for i in range(300):  # 300 empty lists, list i in memo i
        ops += b"]r" + struct.pack("<I", i) + b"0"  # EMPTY_LIST LONG_BINPUT POP
    for i in range(1, 300):  # list i-1 gets list i; then list i (already placed) gets list i+1, ...
        ops += b"j" + struct.pack("<I", i - 1) + b"j" + struct.pack("<I", i) + b"a0"  # GET GET APPEND POP
    ops += b"j" + struct.pack("<I", 0)
    (tmp_path / "later.pdparams").write_bytes(ops + b"s.")
    with pytest.raises(CheckpointError, match="changes a container after placing it inside another"):
        open_checkpoint(tmp_path / "later.pdparams")


def _pdparams_with_array(shape, nbytes: int, dtype="<f4") -> bytes:
    """A protocol-2 pickle of {"w": ndarray} whose BUILD state says ``shape`` and holds ``nbytes`` bytes."""
    class Stand:
        def __reduce__(self):
            return (np.core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                    (1, shape, np.dtype(dtype), False, b"\0" * nbytes))

    return pickle.dumps({"w": Stand()}, protocol=2)


@pytest.mark.parametrize("shape,nbytes,why", [
    ((1 << 62, 1 << 62), 0, "larger than any file can hold"),  # the product wraps to 0 in int64
    ((1 << 31, 1 << 31, 4), 0, "larger than any file can hold"),
    ((-4, 3), 0, "not a tuple of sizes from 0 to 2**63-1"),
    ((1 << 64,), 0, "not a tuple of sizes from 0 to 2**63-1"),
    ((3, 5), 8, "holds 8 bytes, not 60"),
])
def test_pdparams_shapes_are_checked_with_exact_integers(tmp_path, shape, nbytes, why):
    (tmp_path / "s.pdparams").write_bytes(_pdparams_with_array(shape, nbytes))
    with pytest.raises(CheckpointError, match=r"s\.pdparams: cannot read this file as paddle .*" + why.replace("*", r"\*")):
        open_checkpoint(tmp_path / "s.pdparams")


def test_payload_lengths_beyond_the_file_are_refused_before_allocating(tmp_path):
    for name, ops in [("bytes8", b"\x80\x04}X\x01\x00\x00\x00w\x8e" + struct.pack("<Q", 1 << 60) + b"s."),
                      ("unicode8", b"\x80\x04}X\x01\x00\x00\x00w\x8d" + struct.pack("<Q", 1 << 40) + b"s."),
                      ("long4", b"\x80\x04}X\x01\x00\x00\x00w\x8b" + struct.pack("<i", 1 << 30) + b"s.")]:
        (tmp_path / f"{name}.pdparams").write_bytes(ops)
        with pytest.raises(CheckpointError, match="does not fit in the file"):
            open_checkpoint(tmp_path / f"{name}.pdparams")


def _torch_tensor_pickle(numel: int, size: int, offset: int = 0) -> bytes:
    """data.pkl of {"w": a float tensor} (as torch.save writes it) with the storage's element count, the tensor's
    size and its offset as given (8-byte integers)."""
    q = (lambda v: b"\x8a\x08" + struct.pack("<q", v))  # LONG1 of 8 bytes
    return (b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01ctorch._utils\n_rebuild_tensor_v2\nq\x02((X\x07\x00\x00\x00storage"
            b"q\x03ctorch\nFloatStorage\nq\x04X\x01\x00\x00\x000q\x05X\x03\x00\x00\x00cpuq\x06" + q(numel) + b"tq\x07Q"
            + q(offset) + q(size) + b"\x85q\x08K\x01\x85q\t\x89ccollections\nOrderedDict\nq\n)Rq\x0btq\x0cRq\rs.")


@pytest.mark.parametrize("numel,size,offset", [(1 << 40, 2, 0), (2, 1 << 40, 0), (2, -5, 0), (2, 2, 1 << 40),
                                               (-1, 2, 0)])
def test_torch_storage_sizes_beyond_the_file_are_refused(tmp_path, numel, size, offset):
    """Sizes in a torch pickle are checked by torch against the record before it allocates: one CheckpointError."""
    torch_zip_with_pickle(tmp_path / "ok.pt", _torch_tensor_pickle(2, 2))
    assert read_state(tmp_path / "ok.pt")["w"].shape == (2,)  # the crafted pickle is a valid torch file as such
    torch_zip_with_pickle(tmp_path / "s.pt", _torch_tensor_pickle(numel, size, offset))
    with pytest.raises(CheckpointError, match=r"s\.pt: cannot read this file as torch \(RuntimeError"):
        read_state(tmp_path / "s.pt")


def _safetensors(header: dict, data: bytes, length: int | None = None) -> bytes:
    blob = json.dumps(header).encode()
    return (len(blob) if length is None else length).to_bytes(8, "little") + blob + data


@pytest.mark.parametrize("header,data,length,why", [
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, 1 << 62, "the header claims"),
    ({"w": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 1 << 42]}}, b"\0" * 8, None,
     r"bytes \[0, 4398046511104\) lie outside the file's 8 bytes"),
    ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "is not a list of sizes"),
    ({"w": {"dtype": "F32", "shape": [1 << 64], "data_offsets": [0, 8]}}, b"\0" * 8, None, "is not a list of sizes"),
    ({"w": {"dtype": "F32", "shape": [1 << 31, 1 << 31, 4], "data_offsets": [0, 0]}}, b"", None, ""),
    ({"w": [1, 2]}, b"", None, "the header entry is not"),
    ([1, 2], b"", None, "the header is a list"),
])
def test_safetensors_header_sizes_are_checked_against_the_file(tmp_path, header, data, length, why):
    (tmp_path / "h.safetensors").write_bytes(_safetensors(header, data, length))
    with pytest.raises(CheckpointError, match=r"h\.safetensors: cannot read this file as safetensors .*" + why):
        open_checkpoint(tmp_path / "h.safetensors")


def test_many_tensors_wrappers_and_legacy_files_still_read(tmp_path):
    """The bounds are far from what a state dict needs: 2,000 tensors in one file, a wrapped state dict beside an
    optimizer state and a legacy (non-zip) torch file all read with the right values."""
    rng = np.random.default_rng(0)
    many = {f"layers.{i}.weight": rng.standard_normal(3).astype("f4") for i in range(2_000)}
    with open(tmp_path / "many.pdparams", "wb") as fh:
        pickle.dump(many, fh, protocol=4)
    torch.save({k: torch.from_numpy(v) for k, v in many.items()}, tmp_path / "many.pt")
    for name in ("many.pdparams", "many.pt"):
        got = read_state(tmp_path / name)
        assert len(got) == 2_000 and all(np.array_equal(got[k].numpy(), many[k]) for k in list(many)[::97]), name
    lin = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(lin.parameters())
    lin(torch.ones(2, 4)).sum().backward()
    opt.step()
    torch.save({"model": lin.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}, tmp_path / "wrapped.pt")
    torch.save(lin.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("wrapped.pt", "legacy.pt"):
        got = read_state(tmp_path / name)
        assert set(got) == {"weight", "bias"} and torch.equal(got["weight"], lin.weight.detach()), name


def test_fifos_folders_and_sockets_are_named_by_what_they_are(tmp_path):
    os.mkfifo(tmp_path / "m.json")
    with pytest.raises(MappingError, match=r"m\.json: the mapping file is a FIFO \(named pipe\), not a regular file"):
        load_mapping(tmp_path / "m.json")
    (tmp_path / "d.json").mkdir()
    with pytest.raises(MappingError, match=r"d\.json: the mapping file is a folder, not a regular file"):
        load_mapping(tmp_path / "d.json")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(MappingError, match=r"afile is a file, not a folder"):
        load_mapping(tmp_path / "afile" / "m.json")
    import socket

    with socket.socket(socket.AF_UNIX) as sock:  # a socket as a checkpoint
        sock.bind(str(tmp_path / "s.safetensors"))
        with pytest.raises(CheckpointError, match=r"s\.safetensors: the checkpoint file is a socket, not a regular"):
            open_checkpoint(tmp_path / "s.safetensors")
