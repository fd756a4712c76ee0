"""The fast I/O paths of checkpoint conversion: OutputFile (O_DIRECT, chunked, threaded), safetensors reads
into reused buffers, the bf16 NaN scan, and a bf16 Llama conversion bit for bit through reused buffers."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from padiff_lite import CheckpointError, convert_checkpoint
from padiff_lite import nonfinite
from padiff_lite.formats.files import open_checkpoint
from padiff_lite.formats.output import OutputFile
from padiff_lite.models import llama


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("chunk", [4096, 3 * 4096])
def test_output_file_writes_every_byte_in_order(tmp_path, monkeypatch, direct, chunk):
    monkeypatch.setattr(OutputFile, "CHUNK", chunk)
    gen = torch.Generator().manual_seed(1)
    pieces = [torch.randint(0, 256, (n,), dtype=torch.uint8, generator=gen).numpy().tobytes()
              for n in (0, 1, 7, 4096, 4095, 3 * 4096 + 5, 10 * chunk + 123, 8)]
    path = tmp_path / "out.bin"
    with OutputFile(path, direct=direct) as fh:
        for p in pieces:
            assert fh.write(p) == len(p)
        assert fh.tell() == sum(map(len, pieces))
        fh.commit()
    assert path.read_bytes() == b"".join(pieces)


def test_output_file_closed_without_commit_leaves_no_thread(tmp_path):
    fh = OutputFile(tmp_path / "x")
    fh.write(b"abc" * 10000)
    fh.close()
    fh.close()  # twice is harmless
    assert fh.pool._shutdown


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.int64, torch.bool])
def test_safetensors_reads_into_a_reused_buffer_bit_exact(tmp_path, dtype):
    gen = torch.Generator().manual_seed(2)
    tensors = {"a": torch.randn(33, 17, generator=gen), "b": torch.randn(5, generator=gen), "c": torch.randn(()),
               "empty": torch.zeros(0, 3)}
    tensors = {k: (v > 0 if dtype == torch.bool else (v * 100).to(dtype)) for k, v in tensors.items()}
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path))
    ck = open_checkpoint(path)
    buf = torch.empty(1 << 16, dtype=torch.uint8)
    with safe_open(str(path), framework="pt") as h:
        for key in tensors:
            for into in (None, buf):
                got = ck.get(key, into=into)
                ref = h.get_tensor(key)
                assert got.dtype == ref.dtype and got.shape == ref.shape
                assert torch.equal(got.reshape(-1).view(torch.uint8), ref.reshape(-1).view(torch.uint8)), key


def test_truncated_safetensors_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"a": torch.ones(1000)}, str(path))
    ck = open_checkpoint(path)
    os.truncate(path, path.stat().st_size - 100)
    with pytest.raises(CheckpointError, match="truncated"):
        ck.get("a")


def test_bf16_nan_scan_counts_exactly_and_survives_overflowing_sums():
    big = torch.full((1000,), 3e38).to(torch.bfloat16)  # finite values whose sum overflows
    assert nonfinite.count(big) == 0
    bad = torch.zeros(100, dtype=torch.bfloat16)
    bad[3], bad[50], bad[70] = float("nan"), float("inf"), float("-inf")
    assert nonfinite.count(bad) == 3


@pytest.mark.parametrize("dtype, nan_bits", [("float8_e4m3fn", 0x7F), ("float8_e5m2", 0x7C),
                                             ("float8_e4m3fnuz", 0x80), ("float8_e5m2fnuz", 0x80)])
def test_float8_nan_inf_counted_by_bit_pattern(dtype, nan_bits):
    t = torch.zeros(64, dtype=getattr(torch, dtype))
    assert nonfinite.count(t) == 0
    bits = t.view(torch.uint8)
    bits[[1, 9, 40]] = nan_bits
    assert nonfinite.count(t) == 3


@pytest.mark.parametrize("out_suffix", [".safetensors", ".pdparams"])
def test_bf16_llama_converts_bit_exact_through_reused_buffers(tmp_path, out_suffix):
    cfg = dict(layers=2, vocab=64, dim=32, hidden=48, heads=4)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in llama("torch", **cfg).state_dict().items()}
    gen = torch.Generator().manual_seed(3)
    # sizes that grow and shrink, so a buffer is reused for smaller tensors after a larger one
    src = {k: torch.randn(s, generator=gen).to(torch.bfloat16) for k, s in shapes.items()}
    src["layers.1.mlp.up_proj.weight"][0, 0] = float("nan")
    path = tmp_path / "src.safetensors"
    save_file(src, str(path))
    dst = tmp_path / f"out{out_suffix}"
    report = convert_checkpoint(path, dst, lambda: llama("torch", **cfg), lambda: llama("paddle", **cfg))
    assert report.nonfinite == {"layers.1.mlp.up_proj.weight": 1}
    out = open_checkpoint(dst)
    for key, t in src.items():
        got = out.get(key)
        if key.endswith("proj.weight") or key == "lm_head.weight":  # Linear weights: [in, out] in paddle
            got = got.t()
        assert got.dtype == torch.bfloat16
        assert torch.equal(got.contiguous().view(torch.int16), t.view(torch.int16)), key
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["src.safetensors", dst.name])
