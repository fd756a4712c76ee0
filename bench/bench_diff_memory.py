"""Peak memory of ``auto_diff`` on a model whose hooked activations total well over 1 GB.

    python bench/bench_diff_memory.py                  # this checkout: interleaved and sequential runs
    python bench/bench_diff_memory.py --before PATH    # also a checkout of an older padiff_lite (e.g. a
                                                       #   `git worktree add /tmp/old <commit>`)

Each measurement runs in its own interpreter. A sampling thread reads the process's resident memory
every 2 ms; the figure reported is the peak during the call minus the resident memory just before it
(models built, weights transferred once, inputs made), so it is what the comparison itself adds on
top of the models: the stash of base outputs, the captures, the comparison's temporaries, and the
frameworks' own activations of one forward. A plain forward of both models is measured the same way
as the floor. Results: docs/performance.md, "Memory of auto_diff".
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, DIM, BLOCKS = 32768, 256, 10  # each hooked output: N x DIM float32 = 32 MiB


def build(framework):
    from padiff_lite import models

    nn = models._nn(framework)

    class Block(models._base(framework)):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(DIM, DIM)
            self.relu = nn.ReLU()
            self.tanh = nn.Tanh()

        def forward(self, x):
            return x + self.tanh(self.relu(self.fc(x)))

    class Tall(models._base(framework)):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(*[Block() for _ in range(BLOCKS)])

        def forward(self, x):
            return self.blocks(x)

    return Tall().eval()


class PeakRSS:
    def __init__(self):
        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        self.start = self.proc.memory_info().rss
        self.peak = self.start
        self._t = threading.Thread(target=self._sample, daemon=True)
        self._t.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def added(self):
        return self.peak - self.start


def one(mode: str) -> dict:
    import numpy as np
    import paddle
    import torch

    from padiff_lite import assign_weight, auto_diff

    torch.manual_seed(0)
    base, raw = build("torch"), build("paddle")
    assign_weight(base, raw)
    x = np.random.default_rng(0).standard_normal((N, DIM)).astype("float32")
    hooked = BLOCKS * 4 + 2  # fc, relu, tanh and the block, per block; the Sequential and the root
    mib = N * DIM * 4 / 2**20
    out = dict(mode=mode, activation_mib=mib, hooked_outputs=hooked, hooked_total_mib=hooked * mib)
    t0 = time.perf_counter()
    if mode == "forward":  # the floor: one plain forward of each model
        with PeakRSS() as m:
            with torch.no_grad():
                base(torch.from_numpy(x))
            with paddle.no_grad():
                raw(paddle.to_tensor(x))
    else:
        kw = {} if mode == "before" else {"interleave": mode == "interleaved"}
        with PeakRSS() as m:
            result = auto_diff(base, raw, x, auto_init=False, **kw)
        assert result.ok, str(result)
        out["held_mib"] = getattr(result, "peak_held_bytes", 0) / 2**20
    out["seconds"] = time.perf_counter() - t0
    out["peak_added_mib"] = m.added / 2**20
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", metavar="PATH", help="a checkout of an older padiff_lite to measure too")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        import padiff_lite

        sys.stderr.write(f"padiff_lite from {os.path.dirname(padiff_lite.__file__)}\n")
        print(json.dumps(one(args.one)))
        return
    runs = [("forward", ROOT), ("interleaved", ROOT), ("sequential", ROOT)]
    if args.before:
        runs.append(("before", os.path.abspath(args.before)))
    rows = []
    for mode, root in runs:
        env = dict(os.environ, PYTHONPATH=root)  # padiff_lite imported from that checkout
        cmd = [sys.executable, os.path.abspath(__file__), "--one", mode]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if p.returncode:
            sys.exit(f"{mode} failed:\n{p.stderr[-3000:]}")
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
    r0 = rows[0]
    print(f"model: {BLOCKS} blocks of Linear({DIM}, {DIM}) + ReLU + Tanh on [{N}, {DIM}] float32; "
          f"{r0['hooked_outputs']} hooked outputs of {r0['activation_mib']:.0f} MiB each = "
          f"{r0['hooked_total_mib'] / 1024:.2f} GiB per model")
    print("| run | peak memory added | base outputs held at once | time |")
    print("|---|---|---|---|")
    for r in rows:
        held = f"{r['held_mib']:.0f} MiB" if r.get("held_mib") else "-"
        print(f"| {r['mode']} | {r['peak_added_mib']:.0f} MiB | {held} | {r['seconds']:.1f} s |")


if __name__ == "__main__":
    main()
