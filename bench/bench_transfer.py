#!/usr/bin/env python
"""Benchmark padiff_lite's weight transfer (issue 7), and PaDiff's assign_weight where it is installed.

    python bench/bench_transfer.py                # the full run (about 5-10 minutes on 2 cores)
    python bench/bench_transfer.py --quick        # small models, about a minute
    python bench/bench_transfer.py --skip-padiff  # padiff_lite only

Tools: padiff_lite (its C kernel only where it measured faster than torch on this CPU); padiff_lite-torch (the
kernel switched off, PADIFF_LITE_FASTCOPY=0); padiff_lite-kernel (the kernel wherever it applies, =1);
PaDiff where installed; floor-* reference rows (bare torch copy_ calls, no bookkeeping).

Models (built the same way in torch and paddle, flat Sequential so both sides name children 0, 1, ...):
  big      Embedding(32000, 1024) + 24 x [Linear(1024, 4096), Linear(4096, 1024), LayerNorm(1024)]
           + Linear(1024, 32000): 267 M parameters, 1.07 GB fp32 per framework
  tiny     2,000 x [Linear(16, 32), Linear(32, 16), LayerNorm(16)]: 6,000 modules, 12,000 tensors
  scaling  n/3 x [Linear(2, 2), Linear(2, 2), LayerNorm(2)] for n = 1k, 10k, 100k modules: pairing + planning
           (+ validation) only, torch -> paddle

Method:
  * Every measurement runs in a child process of its own (this script with --worker), so one
    measurement's allocations, caches and thread pools cannot leak into the next, and PaDiff (which
    patches torch and paddle when imported) runs in its own interpreter.
  * Time: the child builds both models, then runs the transfer ``--repeat`` times; the minimum and
    the median wall time of those runs are printed (the machine is shared: use the minimum to
    compare, the median to see the noise). The first run is included; nothing is warmed up except
    that the models exist.
  * Peak RSS growth: before each run the child resets the kernel's peak-RSS counter
    (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0) and notes VmRSS; after the run it reads VmHWM
    (the kernel's exact high-water mark, no sampling). Growth = VmHWM - VmRSS before; the largest
    over the runs is printed. Where clear_refs is not writable, a psutil thread samples RSS every
    millisecond instead (the table says which).
  * Each result is checked afterwards (every tensor compared with its source, transposed for
    Linear weights across frameworks) so a fast wrong copy cannot pass.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_PADIFF_PYTHON = "/work/padiff-venv/bin/python"


# -- models ----------------------------------------------------------------------
def _nn(fw):
    if fw == "torch":
        import torch

        return torch.nn
    import paddle

    return paddle.nn


def build(kind: str, fw: str, size: dict, seed: int):
    """A flat Sequential of the layers of ``kind``; parameters drawn from ``seed``."""
    nn = _nn(fw)
    if fw == "torch":
        import torch

        torch.manual_seed(seed)
        norm = nn.LayerNorm
    else:
        import paddle

        paddle.seed(seed)
        norm = nn.LayerNorm
    layers = []
    if kind == "big":
        v, h, f, n = size["vocab"], size["hidden"], size["ffn"], size["layers"]
        layers.append(nn.Embedding(v, h))
        for _ in range(n):
            layers += [nn.Linear(h, f), nn.Linear(f, h), norm(h)]
        layers.append(nn.Linear(h, v))
    else:
        a, b, blocks = size["a"], size["b"], size["blocks"]
        for _ in range(blocks):
            layers += [nn.Linear(a, b), nn.Linear(b, a), norm(a)]
    model = nn.Sequential(*layers)
    model.eval()
    return model


SIZES = {
    "big": {"vocab": 32000, "hidden": 1024, "ffn": 4096, "layers": 24},
    "big-quick": {"vocab": 8000, "hidden": 512, "ffn": 2048, "layers": 6},
    "tiny": {"a": 16, "b": 32, "blocks": 2000},
}


# -- memory ----------------------------------------------------------------------
def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakRSS:
    """Peak RSS growth of this process over a ``with`` block, in MB."""

    def __init__(self):
        self.method = "VmHWM after clear_refs"
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            self.method = "psutil 1 ms sampling"

    def __enter__(self):
        self.stop = False
        if self.method.startswith("VmHWM"):
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.before = _status_mb("VmRSS")
        else:
            import psutil

            proc = psutil.Process()
            self.before = proc.memory_info().rss / 2**20
            self.peak = self.before

            def sample():
                while not self.stop:
                    self.peak = max(self.peak, proc.memory_info().rss / 2**20)
                    time.sleep(0.001)

            self.thread = threading.Thread(target=sample, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.method.startswith("VmHWM"):
            self.growth = _status_mb("VmHWM") - self.before
        else:
            self.stop = True
            self.thread.join()
            self.growth = self.peak - self.before
        return False


# -- checking a result -------------------------------------------------------------
def _as_torch(t):
    import torch

    if isinstance(t, torch.Tensor):
        return t.detach()
    return torch.from_dlpack(t.detach())


def check_result(src_model, dst_model, src_fw, dst_fw):
    """Every destination tensor equals its source (Linear weights transposed across frameworks)."""
    import torch

    def tensors(model, fw):
        out = []
        kids = model._modules if fw == "torch" else model._sub_layers
        for layer in kids.values():
            params = layer._parameters
            names = sorted(k for k, p in params.items() if p is not None)
            out.append((type(layer).__name__, [params[k] for k in names]))
        return out

    bad = 0
    for (cls, s_list), (_, d_list) in zip(tensors(src_model, src_fw), tensors(dst_model, dst_fw)):
        for s, d in zip(s_list, d_list):
            s, d = _as_torch(s), _as_torch(d)
            if cls == "Linear" and src_fw != dst_fw and s.dim() == 2:
                s = s.t()
            bad += not torch.equal(s, d)
    return bad


# -- the work of one child -----------------------------------------------------------
def _tool_padiff_lite(src, dst):
    from padiff_lite import assign_weight

    return lambda: assign_weight(src, dst)


def _tool_padiff(src, dst, src_fw, dst_fw):
    import padiff

    if (src_fw, dst_fw) != ("torch", "paddle"):
        raise RuntimeError("PaDiff 0.2.0's assign_weight(layer, module) only copies torch -> paddle")
    return lambda: padiff.assign_weight(dst, src)


def _tool_floor(src, dst, src_fw, dst_fw, transpose):
    """Reference: copy every tensor into its destination with one torch copy_ and nothing else."""
    import torch

    pairs = []
    sk = src._modules if src_fw == "torch" else src._sub_layers
    dk = dst._modules if dst_fw == "torch" else dst._sub_layers
    for a, b in zip(sk.values(), dk.values()):
        for p, q in zip([p for p in a._parameters.values() if p is not None],
                        [q for q in b._parameters.values() if q is not None]):
            s, d = _as_torch(p), _as_torch(q)
            if transpose and src_fw != dst_fw and s.dim() == 2 and type(a).__name__ == "Linear":
                s = s.t()
            pairs.append((d.view(-1) if not transpose else d, s.reshape(-1) if not transpose else s))

    def run():
        with torch.no_grad():
            for d, s in pairs:
                d.copy_(s)

    return run


def _tool_floor_views(src, dst, src_fw, dst_fw):
    """Reference for small tensors: per tensor only what any copy must do (two views, one copy_)."""
    import torch

    def view_fn(fw):
        if fw == "torch":
            return lambda t: t.detach()
        from paddle.utils.dlpack import to_dlpack
        from torch.utils.dlpack import from_dlpack

        return lambda t: from_dlpack(to_dlpack(t))

    sv, dv = view_fn(src_fw), view_fn(dst_fw)
    sk = src._modules if src_fw == "torch" else src._sub_layers
    dk = dst._modules if dst_fw == "torch" else dst._sub_layers
    pairs = []
    for a, b in zip(sk.values(), dk.values()):
        flip = src_fw != dst_fw and type(a).__name__ == "Linear"
        for name, p in a._parameters.items():
            pairs.append((p, b._parameters[name], flip and name == "weight"))

    def run():
        with torch.no_grad():
            for p, q, flip in pairs:
                s = sv(p)
                dv(q).copy_(s.t() if flip else s)

    return run


def worker(job: dict) -> dict:
    if job["tool"] == "padiff_lite":
        sys.path.insert(0, ROOT)
    kind, src_fw, dst_fw = job["model"], job["src"], job["dst"]
    if kind == "scaling":
        return worker_scaling(job)
    size = SIZES[job["size"]]
    src = build(kind, src_fw, size, seed=1)
    dst = build(kind, dst_fw, size, seed=2)
    tool = job["tool"]
    if tool == "padiff_lite":
        run = _tool_padiff_lite(src, dst)
    elif tool == "padiff":
        run = _tool_padiff(src, dst, src_fw, dst_fw)
    elif tool == "floor-views":
        run = _tool_floor_views(src, dst, src_fw, dst_fw)
    elif tool in ("floor-copy", "floor-transpose"):
        run = _tool_floor(src, dst, src_fw, dst_fw, transpose=tool == "floor-transpose")
    else:
        raise ValueError(tool)
    times, growth = [], []
    peak = PeakRSS()
    for _ in range(job["repeat"]):
        with peak:
            t0 = time.perf_counter()
            out = run()
            times.append(time.perf_counter() - t0)
        growth.append(peak.growth)
    result = {"times": times, "rss_growth_mb": max(growth), "rss_method": peak.method}
    if job["tool"] == "padiff_lite":
        from padiff_lite import fastcopy

        result["copy_paths"] = fastcopy.choices()  # what the calibration chose in this process
    if tool == "padiff" and out is False:
        result["error"] = "PaDiff's assign_weight returned False"
    if tool == "padiff_lite":
        from padiff_lite import plan_transfer

        plan_times = []
        for _ in range(job["repeat"]):
            t0 = time.perf_counter()
            plan_transfer(src, dst)
            plan_times.append(time.perf_counter() - t0)
        result["plan_times"] = plan_times
        result["tensors"] = out.tensors
    nbytes = 0
    for p in src.parameters():
        v = _as_torch(p)
        nbytes += v.numel() * v.element_size()
    result["bytes"] = nbytes
    if tool != "floor-copy":
        result["mismatched_tensors"] = check_result(src, dst, src_fw, dst_fw)
    return result


def worker_scaling(job: dict) -> dict:
    from padiff_lite import plan_transfer
    from padiff_lite.pairing import pair_models
    from padiff_lite.proxy import create_model
    from padiff_lite.special_init import init_pool

    n = job["modules"]
    size = {"a": 2, "b": 2, "blocks": n // 3}
    src = build("tiny", job["src"], size, seed=1)
    dst = build("tiny", job["dst"], size, seed=2)
    import gc

    pair_t, plan_t = [], []
    for _ in range(job["repeat"]):
        gc.disable()  # as assign_weight and plan_transfer do
        t0 = time.perf_counter()
        pair_models(create_model(src), create_model(dst), init_pool)
        pair_t.append(time.perf_counter() - t0)
        gc.enable()
        t0 = time.perf_counter()
        plan = plan_transfer(src, dst)
        plan_t.append(time.perf_counter() - t0)
    return {"pair_times": pair_t, "plan_times": plan_t, "ops": len(plan.ops), "problems": len(plan.problems)}


# -- the parent ----------------------------------------------------------------------
def run_child(job: dict, python: str, env_extra=None, timeout=1800) -> dict:
    env = dict(os.environ)
    env.update(env_extra or {})
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PYTHONWARNINGS", "ignore")
    try:
        proc = subprocess.run([python, os.path.abspath(__file__), "--worker", json.dumps(job)],
                              capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1][len("RESULT "):])


def _fmt_row(cells, widths):
    return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()


def print_table(title, header, rows):
    print(f"\n{title}")
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    print(_fmt_row(header, widths))
    print(_fmt_row(["-" * w for w in widths], widths))
    for r in rows:
        print(_fmt_row(r, widths))
    sys.stdout.flush()


def machine() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import platform

    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def versions(python) -> str:
    code = ("import torch, paddle; from padiff_lite import fastcopy; "
            "print(torch.__version__, paddle.__version__, torch.get_num_threads(), fastcopy.available())")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONWARNINGS="ignore")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env).stdout.split()
    if len(out) != 4:
        return "?"
    return (f"torch {out[0]}, paddle {out[1]}, torch threads {out[2]}, "
            f"padiff_lite C kernel {'built' if out[3] == 'True' else 'NOT built (torch copies only)'}")


def padiff_status(python) -> tuple[bool, str]:
    if not os.path.exists(python):
        return False, f"{python} does not exist (see docs/performance.md for how it was set up)"
    code = "import padiff; print(padiff.__version__)"
    env = dict(os.environ, PADIFF_API_CHECK="OFF", PYTHONWARNINGS="ignore")
    p = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return False, "import padiff failed: " + (p.stderr.strip().splitlines() or ["?"])[-1]
    return True, "PaDiff " + p.stdout.strip()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller big model, fewer repeats, scaling up to 10k")
    ap.add_argument("--skip-padiff", action="store_true", help="do not run PaDiff even if it is installed")
    ap.add_argument("--padiff-python", default=os.environ.get("PADIFF_PYTHON", DEFAULT_PADIFF_PYTHON),
                    help="interpreter that can import padiff (default: $PADIFF_PYTHON or %(default)s)")
    ap.add_argument("--repeat", type=int, default=None, help="runs per measurement (default 3, quick 2)")
    ap.add_argument("--only", choices=["big", "tiny", "scaling"], action="append", help="run only these parts")
    ap.add_argument("--json", help="also write every raw result to this file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        result = worker(json.loads(args.worker))
        print("RESULT " + json.dumps(result))
        return 0

    py = sys.executable
    repeat = args.repeat or (2 if args.quick else 3)
    parts = args.only or ["big", "tiny", "scaling"]
    print(f"machine: {machine()}; {versions(py)}")
    have_padiff, padiff_note = (False, "skipped (--skip-padiff)") if args.skip_padiff else padiff_status(args.padiff_python)
    print(f"PaDiff: {padiff_note}" + (f" via {args.padiff_python} (PADIFF_API_CHECK=OFF)" if have_padiff else ""))
    raw = {}
    directions = [("torch", "paddle"), ("paddle", "torch"), ("torch", "torch"), ("paddle", "paddle")]

    # padiff_lite variants side by side: the default (the C kernel only where it measured faster than torch on
    # this CPU), "-torch" (kernel switched off: torch copies) and "-kernel" (kernel wherever it applies)
    variants = {"padiff_lite-torch": {"PADIFF_LITE_FASTCOPY": "0"}, "padiff_lite-kernel": {"PADIFF_LITE_FASTCOPY": "1"},
                "padiff_lite": {"PADIFF_LITE_FASTCOPY": "auto"}}

    def measure(model, size, tools, interleave=False):
        """Every tool in every direction. ``interleave``: one run per child process, the tools taking turns,
        ``repeat`` rounds (so a slow moment of the machine hits every tool alike); else ``repeat`` runs per child."""
        rows = []
        for src, dst in directions:
            results: dict = {}
            for _ in range(repeat if interleave else 1):
                for tool in tools:
                    if tool == "padiff" and (not have_padiff or (src, dst) != ("torch", "paddle")):
                        continue
                    name = "padiff_lite" if tool in variants else tool
                    job = {"tool": name, "model": model, "size": size, "src": src, "dst": dst,
                           "repeat": 1 if interleave else repeat}
                    if tool == "padiff":
                        res = run_child(job, args.padiff_python, {"PADIFF_API_CHECK": "OFF"})
                    else:
                        res = run_child(job, py, variants.get(tool))
                    got = results.setdefault(tool, res)
                    if got is not res and "error" not in got:
                        if "error" in res:
                            results[tool] = res
                        else:
                            got["times"] += res["times"]
                            got["rss_growth_mb"] = max(got["rss_growth_mb"], res["rss_growth_mb"])
            for tool, res in results.items():
                raw[f"{model}/{size}/{tool}/{src}->{dst}"] = res
                rows.append(((src, dst, tool), res))
        return rows

    if "big" in parts:
        size = "big-quick" if args.quick else "big"
        tools = ["padiff_lite", "padiff_lite-torch", "padiff_lite-kernel", "padiff", "floor-copy", "floor-transpose"]
        rows = []
        paths = {}
        for (src, dst, tool), r in measure("big", size, tools, interleave=True):
            paths.update(r.get("copy_paths", {}))
            if "error" in r:
                rows.append([f"{src} -> {dst}", tool, "error: " + r["error"], "", "", "", ""])
                continue
            best = min(r["times"])
            rows.append([f"{src} -> {dst}", tool, f"{best:.3f}", f"{statistics.median(r['times']):.3f}",
                         f"{r['bytes'] / best / 1e9:.2f}", f"{r['rss_growth_mb']:.0f}",
                         r.get("mismatched_tensors", "-")])
        print_table(f"big model ({size}: {SIZES[size]}), {repeat} interleaved runs each",
                    ["direction", "tool", "min s", "median s", "GB/s", "peak RSS growth MB", "wrong tensors"], rows)
        print("copy path chosen by padiff_lite's calibration on this CPU: "
              + (", ".join(f"{k}: {v}" for k, v in sorted(paths.items())) or "-"))
    if "tiny" in parts:
        rows = []
        for (src, dst, tool), r in measure("tiny", "tiny", ["padiff_lite", "padiff", "floor-views"]):
            if "error" in r:
                rows.append([f"{src} -> {dst}", tool, "error: " + r["error"], "", "", "", ""])
                continue
            best = min(r["times"])
            n = r.get("tensors", 12000)
            plan = f"{min(r['plan_times']):.3f}" if "plan_times" in r else "-"
            rows.append([f"{src} -> {dst}", tool, f"{best:.3f}", f"{statistics.median(r['times']):.3f}", plan,
                         f"{best / n * 1e6:.1f}", r.get("mismatched_tensors", "-")])
        print_table(f"tiny blocks (2,000 x [Linear(16,32), Linear(32,16), LayerNorm(16)]: 6,000 modules, "
                    f"12,000 tensors), {repeat} runs each",
                    ["direction", "tool", "min s (end to end)", "median s", "pair+plan s", "us/tensor",
                     "wrong tensors"], rows)
    if "scaling" in parts:
        rows = []
        for n in ([1000, 10000] if args.quick else [1000, 10000, 100000]):
            job = {"tool": "padiff_lite", "model": "scaling", "modules": n, "src": "torch", "dst": "paddle",
                   "repeat": repeat}
            r = run_child(job, py, timeout=3600)
            raw[f"scaling/{n}"] = r
            if "error" in r:
                rows.append([f"{n:,}", "error: " + r["error"], "", "", ""])
                continue
            pair, plan = min(r["pair_times"]), min(r["plan_times"])
            rows.append([f"{n:,}", f"{pair:.3f}", f"{plan:.3f}", f"{plan / n * 1e6:.1f}", r["ops"]])
        print_table(f"pairing and planning, torch -> paddle, n/3 x [Linear(2,2), Linear(2,2), LayerNorm(2)], "
                    f"min of {repeat}",
                    ["modules", "pairing s", "pair+plan+validate s", "us/module", "copy ops"], rows)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine(), "versions": versions(py), "padiff": padiff_note, "results": raw}, fh,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
