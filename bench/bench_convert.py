"""Benchmark: convert a synthetic sharded Llama-like checkpoint (>= 2 GB, bf16) torch <-> paddle.

    python bench/bench_convert.py [--dir /tmp/padiff-bench] [--layers 19] [--shard-mb 600] [--keep]

1. writes an HF-style sharded torch checkpoint (model-0000i-of-0000n.safetensors + index) in a child process;
2. runs each conversion in a fresh child process that reports its baseline RSS (interpreter with torch,
   paddle and padiff_lite imported) and its peak RSS (VmHWM) after convert_checkpoint;
3. checks peak RSS - baseline < 0.5 x the largest shard for streamed outputs (.safetensors, .pdparams; 1.5 x for
   .bin, which torch.save pickles whole), times a dd copy of the same files (the disk's floor), and checks the converted tensors against the
   source (a sample of tensors, bit-exact);
4. prints a markdown table (for docs/checkpoints.md).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONFIG = dict(vocab=32000, dim=2048, hidden=5632, heads=16)


def _status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0


def child_make(folder: Path, layers: int, shard_mb: int):
    """Write the source checkpoint shard by shard (one shard in memory at a time)."""
    import torch
    from safetensors.torch import save_file

    from padiff_lite.models import llama

    with torch.device("meta"):
        model = llama("torch", layers=layers, **CONFIG)
    specs = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    gen = torch.Generator().manual_seed(0)
    weight_map, shard, size, names = {}, {}, 0, []

    def flush():
        nonlocal shard, size
        if shard:
            name = f"model-{len(names) + 1:05d}.safetensors"
            save_file(shard, str(folder / name), metadata={"format": "pt"})
            names.append(name)
            weight_map.update({k: name for k in shard})
            shard, size = {}, 0

    for key, shape in specs:
        t = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
        if size and size + t.numel() * 2 > shard_mb * 1e6:
            flush()
        shard[key] = t
        size += t.numel() * 2
    flush()
    n = len(names)
    final = {}
    for i, name in enumerate(names):  # HF naming: model-0000i-of-0000n.safetensors
        new = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        (folder / name).rename(folder / new)
        final[name] = new
    weight_map = {k: final[v] for k, v in weight_map.items()}
    total = sum((folder / f).stat().st_size for f in final.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))


def child_convert(src: str, dst: str, direction: str, layers: int):
    import functools
    import logging

    import paddle  # noqa: F401  (part of the baseline: a conversion needs both frameworks)
    import torch  # noqa: F401

    from padiff_lite import convert_checkpoint
    from padiff_lite.models import llama

    logging.getLogger("padiff_lite").setLevel(logging.WARNING)
    fs, fd = direction.split("->")
    base = functools.partial(llama, fs, layers=layers, **CONFIG)
    raw = functools.partial(llama, fd, layers=layers, **CONFIG)
    from padiff_lite.factories import build_model

    # the baseline: interpreter + torch + paddle + padiff_lite, and the models' structure built once (torch's
    # meta-device init imports torch._dynamo the first time: ~100 MB that has nothing to do with the weights)
    build_model(base, "base"), build_model(raw, "raw")
    baseline = _status("VmRSS:")
    t0 = time.perf_counter()
    report = convert_checkpoint(src, dst, base, raw, progress=False)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "bytes": report.bytes, "tensors": report.tensors,
                      "baseline": baseline, "peak": _status("VmHWM:"), "outputs": report.outputs}))


def _run_child(*args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], env=env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"child {args} failed:\n{r.stderr[-3000:]}")
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def _largest(files) -> int:
    return max(Path(f).stat().st_size for f in files)


def _sample_check(src_index: Path, out_index: Path, transposed: bool):
    """A few tensors of the output against the source, bit for bit (Linear weights transposed)."""
    import torch

    from padiff_lite.formats.files import open_checkpoint

    src, out = open_checkpoint(src_index), open_checkpoint(out_index)
    keys = ["embed_tokens.weight", "layers.0.self_attn.q_proj.weight", "layers.0.mlp.down_proj.weight",
            "layers.0.input_layernorm.weight", "lm_head.weight"]
    for k in keys:
        a, b = src.get(k), out.get(k)
        if transposed and (k.endswith("proj.weight") or k == "lm_head.weight"):
            b = b.t()
        assert a.dtype == b.dtype == torch.bfloat16 and torch.equal(a, b), k
        src.release()
        out.release()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/padiff-bench")
    ap.add_argument("--layers", type=int, default=19)
    ap.add_argument("--shard-mb", type=int, default=600)
    ap.add_argument("--keep", action="store_true", help="keep the files (default: delete them at the end)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "make":
            child_make(Path(rest[0]), int(rest[1]), int(rest[2]))
        else:
            child_convert(rest[0], rest[1], rest[2], int(rest[3]))
        return

    d = Path(args.dir)
    shutil.rmtree(d, ignore_errors=True)
    (d / "torch").mkdir(parents=True)
    t0 = time.perf_counter()
    _run_child("make", d / "torch", args.layers, args.shard_mb)
    src = d / "torch" / "model.safetensors.index.json"
    shards = sorted((d / "torch").glob("*.safetensors"))
    total = sum(p.stat().st_size for p in shards)
    print(f"source: {len(shards)} shards, {total / 1e9:.2f} GB, largest {_largest(shards) / 1e6:.0f} MB "
          f"(written in {time.perf_counter() - t0:.1f} s)", file=sys.stderr)

    runs = [
        ("torch->paddle", src, d / "paddle_st" / "model.safetensors"),
        ("torch->paddle", src, d / "paddle_pd" / "model_state.pdparams"),
        ("paddle->torch", d / "paddle_st" / "model.safetensors.index.json", d / "torch_st" / "model.safetensors"),
        ("paddle->torch", d / "paddle_pd" / "model_state.pdparams.index.json", d / "torch_bin" / "pytorch_model.bin"),
    ]
    rows, ok = [], True
    cold = _can_drop_caches()
    if not cold:
        print("cold-cache rows skipped: /proc/sys/vm/drop_caches is not writable (needs root)", file=sys.stderr)
    for direction, s, o in runs:
        from padiff_lite.formats.files import open_checkpoint

        in_files = open_checkpoint(s).files
        for cache in (["cold", "warm"] if cold else ["warm"]):
            # cold: the kernel's page cache emptied first (the source comes from disk); warm: the source read
            # once before (it comes from memory): the difference is the disk
            shutil.rmtree(o.parent, ignore_errors=True)
            if cache == "cold":
                _drop_caches()
            else:
                for f in in_files:
                    with open(f, "rb") as fh:
                        while fh.read(1 << 24):
                            pass
            r = _run_child("convert", s, o, direction, args.layers)
            floor = _dd_copy(in_files, d / "dd-copy", cold=cache == "cold")
            ok &= _row(rows, direction, s, o, r, in_files, cache, floor)
    _sample_check(src, d / "paddle_st" / "model.safetensors.index.json", transposed=True)
    _sample_check(src, d / "torch_bin" / "pytorch_model.bin.index.json", transposed=False)
    print(f"\nmachine: {platform.platform()}, {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, python {platform.python_version()}")
    print(disk_speeds(d))
    print(f"model: Llama-like, {args.layers} layers, dim {CONFIG['dim']}, MLP {CONFIG['hidden']}, vocab {CONFIG['vocab']}, "
          f"bf16, {total / 1e9:.2f} GB in {len(shards)} shards\n")
    print("| direction | formats | source cache | size | time | rate | baseline RSS | peak RSS | peak - baseline | "
          "largest shard | (peak - baseline) / shard | dd copy of the same bytes | time / dd |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\nsampled tensors bit-exact after torch->paddle and after the paddle->torch round trip: yes")
    if not args.keep:
        shutil.rmtree(d, ignore_errors=True)
    sys.exit(0 if ok else 1)


def _can_drop_caches() -> bool:
    return os.access("/proc/sys/vm/drop_caches", os.W_OK)


def _drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as fh:
        fh.write("3\n")


def _dd_copy(files, folder: Path, cold: bool) -> float:
    """Seconds for dd to copy ``files`` (the same bytes a conversion reads and writes) into ``folder``, 16 MiB
    blocks, output O_DIRECT like the converter's writer, from a cold or warm page cache: the disk's floor."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if cold:
        _drop_caches()
    t0 = time.perf_counter()
    for f in files:
        subprocess.run(["dd", f"if={f}", f"of={folder / Path(f).name}", "bs=16M", "oflag=direct"],
                       capture_output=True, check=True)
    os.sync()
    seconds = time.perf_counter() - t0
    shutil.rmtree(folder, ignore_errors=True)
    return seconds


def _row(rows, direction, s, o, r, in_files, cache, floor) -> bool:
    largest = _largest(in_files)
    out_files = [Path(p) for p in r["outputs"] if not p.endswith(".json")]
    largest = max(largest, _largest(out_files))
    extra = r["peak"] - r["baseline"]
    # streamed outputs (safetensors, .pdparams) must stay under half a shard; torch.save (.bin) pickles a whole shard
    limit = 0.5 if o.suffix in (".safetensors", ".pdparams") else 1.5
    passed = extra < limit * largest
    rows.append(f"| {direction} | {Path(s).name.split('.')[1] if 'index' in Path(s).name else Path(s).suffix} "
                f"-> {o.suffix[1:]} | {cache} | {r['bytes'] / 1e9:.2f} GB, {len(in_files)} -> {len(out_files)} shards | "
                f"{r['seconds']:.1f} s | {r['bytes'] / r['seconds'] / 1e9:.2f} GB/s | {r['baseline'] / 1e6:.0f} MB | "
                f"{r['peak'] / 1e6:.0f} MB | {extra / 1e6:.0f} MB | {largest / 1e6:.0f} MB | "
                f"{extra / largest:.2f} x {'ok' if passed else f'OVER {limit} x'} | {floor:.1f} s | "
                f"{r['seconds'] / floor:.2f} x |")
    print(rows[-1], file=sys.stderr)
    return passed


def disk_speeds(folder: Path) -> str:
    """Sequential write (O_DIRECT) and read (cold where the page cache can be dropped) of 1 GiB in ``folder``,
    with dd: what any conversion's I/O is bound by."""
    f = folder / "dd-probe"
    out = []
    try:
        for what, cmd in (("write", ["dd", "if=/dev/zero", f"of={f}", "bs=16M", "count=64", "oflag=direct"]),
                          ("read", ["dd", f"if={f}", "of=/dev/null", "bs=16M"])):
            if what == "read" and _can_drop_caches():
                _drop_caches()
            r = subprocess.run(cmd, capture_output=True, text=True)
            out.append(f"{what} {r.stderr.strip().splitlines()[-1].split(',')[-1].strip()}")
    except (OSError, IndexError):
        return "disk: not measured (dd failed)"
    finally:
        f.unlink(missing_ok=True)
    cold = "cold " if _can_drop_caches() else ""
    return f"disk (dd, 1 GiB, sequential): {out[0]} (O_DIRECT), {cold}{out[1]}"


if __name__ == "__main__":
    main()
