"""What ``auto_diff`` measures on correct float32 ports of deep networks, stage by stage, against its default
tolerances: torchvision's ResNet-50 and VGG-16 against paddle.vision's twins (issue 27).

    python bench/bench_float32_ports.py [resnet50|vgg16 ...] [--side 64] [--batch 2] [--steps 2]
    python bench/bench_float32_ports.py hf [FAMILY ...]     # the transformers <-> PaddleFormers families

For each twin and direction: weights transferred by ``auto_diff`` itself; then
- forward (eval): the largest relative difference of any compared layer output (``max |d| / S``, S the tensor's
  largest magnitude), against rtol;
- backward (eval, seeded by the mean of the logits): the largest gradient difference, relative to the tensor's
  largest gradient (``max |d| / S``), against the gradient rtol;
- training: a cross-entropy loss, ``steps`` steps of SGD with momentum and of AdamW (ResNet-50 in train mode, so
  BatchNorm uses batch statistics, and in eval mode; VGG-16 in eval mode: its dropout would draw different masks),
  every stage.
Each line: stage, the largest figure over layers / parameters, the tolerance, the verdict. Results are in
docs/performance.md ("float32 ports against the default tolerances").

torchvision is put on ``sys.path`` only inside ``tests/vision_twins.torchvision_models`` (see that module).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))


def figures(r, tol) -> list[str]:
    """One line per stage of every step of a DiffResult."""
    out = []
    for s in r.steps:
        lay = max((ld.max_rel_diff for ld in s.layers), default=0.0)
        bad = sum(not ld.ok for ld in s.layers)
        out.append(f"  step {s.step} forward : {len(s.layers):4d} calls, max rel {lay:.2e} (rtol {tol.rtol:.0e}), "
                   f"max abs {max((ld.max_abs_diff for ld in s.layers), default=0.0):.2e}, {bad} outside")
        if s.loss is not None:
            out.append(f"  step {s.step} loss    : {s.loss[0]:.6f} vs {s.loss[1]:.6f} "
                       f"(|d| {abs(s.loss[0] - s.loss[1]):.2e}){'' if s.loss_ok else ' OUTSIDE'}")
        if s.grads:
            g = max(s.grads, key=lambda g: g.max_rel_diff)
            bad = [x for x in s.grads if not x.ok]
            out.append(f"  step {s.step} backward: {len(s.grads):4d} params, max rel {g.max_rel_diff:.2e} "
                       f"({g.base_param}) max L2 rel {max(x.norm_rel for x in s.grads):.2e} "
                       f"(grad rtol {tol.grad_rtol:.0e}), {len(bad)} outside"
                       + (f": {bad[0].base_param}" if bad else ""))
        if s.weights:
            w = max(s.weights, key=lambda w: w.norm_rel)
            bad = [x for x in s.weights if not x.ok]
            out.append(f"  step {s.step} optimizer: {len(s.weights):4d} params, max diff/update "
                       f"{w.norm_rel:.2e} ({w.base_param}), max rel {max(x.max_rel_diff for x in s.weights):.2e}, "
                       f"{len(bad)} outside" + (f": {bad[0].base_param}" if bad else ""))
    return out


def show(what: str, r, tol, t0: float) -> None:
    """A training run's verdict and time, its figures stage by stage, and its notes on gradients."""
    print(f" {what}: {'OK' if r.ok else f'DIFFERS at step {r.step} {r.stage}'} ({time.perf_counter() - t0:.1f} s)")
    print("\n".join(figures(r, tol)))
    for n in r.notes:
        if "gradient of" in n:
            print("  note: " + n[:200])


def optimizer(fw, kind, model):
    import paddle
    import torch

    if fw == "torch":
        if kind == "sgd":
            return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        return torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    if kind == "sgd":
        return paddle.optimizer.Momentum(learning_rate=1e-3, momentum=0.9, parameters=model.parameters())
    return paddle.optimizer.AdamW(learning_rate=1e-3, weight_decay=1e-2, parameters=model.parameters())


def loss_fn(fw, labels):
    import paddle
    import torch

    # logits scaled by 1/100: the noised twins' logits reach ~1e3 in eval mode, where paddle's cross_entropy caps
    # each sample's loss at 64 (torch: 445 vs paddle: 64.0 on logits [[300, 0, -200], [10, 400, 0]])
    if fw == "torch":
        return lambda out: torch.nn.functional.cross_entropy(out * 0.01, torch.from_numpy(labels))
    return lambda out: paddle.nn.functional.cross_entropy(out * 0.01, paddle.to_tensor(labels))


def run(name, side, batch, steps, directions):
    import numpy as np
    import paddle
    import torch

    import vision_twins as vt
    from padiff_lite import auto_diff
    from padiff_lite.verify.numerics import Tolerance

    tol = Tolerance()

    def fresh():  # the same weights for every run (a run trains both models)
        with vt.torchvision_models() as tvm:
            t, p, _ = vt.build(tvm, name)
        vt.noise(t, 1)
        vt.noise(p, 2)
        return {"torch": t, "paddle": p}

    x = np.random.default_rng(0).standard_normal((batch, 3, side, side)).astype("float32")
    labels = np.random.default_rng(1).integers(0, 1000, size=(batch,))
    for src, dst in directions:
        fws = fresh()
        a, b = fws[src], fws[dst]
        print(f"{name} {src} -> {dst}, input {list(x.shape)}")
        for m in (a, b):
            m.eval()
        t0 = time.perf_counter()
        r = auto_diff(a, b, x, diff_phase="both")
        print(f" forward + backward (eval, mean seed): {'OK' if r.ok else 'DIFFERS at ' + str(r.stage)} "
              f"({time.perf_counter() - t0:.1f} s)")
        print("\n".join(figures(r, tol)))
        if not r.ok:
            print("  " + str(r).splitlines()[0])
        for kind, train in [(k, m) for m in ((True, False) if name == "resnet50" else (False,))
                            for k in ("sgd", "adamw")]:
            fws = fresh()
            a, b = fws[src], fws[dst]
            for m in (a, b):
                m.train() if train else m.eval()
            t0 = time.perf_counter()
            r = auto_diff(a, b, x, loss_fns=(loss_fn(src, labels), loss_fn(dst, labels)),
                          optimizers=(optimizer(src, kind, a), optimizer(dst, kind, b)), steps=steps)
            show(f"training, {kind}, {steps} steps ({'train' if train else 'eval'} mode)", r, tol, t0)
        del r
        del fws, a, b
    _ = paddle, torch


def hf_loss(fw, family, labels):
    """Cross-entropy on the logits of a causal LM; the mean of the output for the others (hidden states, vision)."""
    import paddle
    import torch

    import hf_families as H

    def f(out):
        v = H._first(out, "logits", "pooler_output", "last_hidden_state")
        if labels is not None and v.ndim == 3 and v.shape[-1] == H.VOCAB:
            if fw == "torch":
                return torch.nn.functional.cross_entropy(v.reshape(-1, v.shape[-1]), torch.from_numpy(labels).reshape(-1))
            return paddle.nn.functional.cross_entropy(v.reshape([-1, v.shape[-1]]), paddle.to_tensor(labels).reshape([-1]))
        return v.mean()
    return f


def run_hf(steps, names):
    """Every family of tests/hf_families.py, both directions: forward + backward (mean seed), then ``steps`` AdamW
    steps with a loss."""
    import numpy as np

    import hf_families as H
    from padiff_lite import auto_diff
    from padiff_lite.verify.numerics import Tolerance

    tol = Tolerance()
    for fam in H.FAMILIES:
        if names and fam.name not in names:
            continue
        inputs = fam.inputs()
        first = next(iter(inputs.values()))
        labels = np.random.default_rng(5).integers(1, H.VOCAB, size=first.shape) if first.dtype.kind == "i" else None
        for src, dst in (("torch", "paddle"), ("paddle", "torch")):
            build = {"torch": fam.torch_model, "paddle": fam.paddle_model}
            a, b = build[src](0), build[dst](1)
            t0 = time.perf_counter()
            try:
                r = auto_diff(a, b, inputs, diff_phase="both")
            except Exception as exc:  # noqa: BLE001 - a measurement: report and go on
                print(f"{fam.name} {src} -> {dst}: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            print(f"{fam.name} {src} -> {dst}: forward + backward {'OK' if r.ok else 'DIFFERS at ' + str(r.stage)} "
                  f"({time.perf_counter() - t0:.1f} s)")
            print("\n".join(figures(r, tol)))
            if not r.ok:
                print("  " + str(r).splitlines()[0][:300])
            opt = optimizer(src, "adamw", a), optimizer(dst, "adamw", b)
            t0 = time.perf_counter()
            try:
                r = auto_diff(a, b, inputs, loss_fns=(hf_loss(src, fam, labels), hf_loss(dst, fam, labels)),
                              optimizers=opt, steps=steps)
            except Exception as exc:  # noqa: BLE001
                print(f"  training: {type(exc).__name__}: {str(exc)[:300]}")
                continue
            show(f"training, adamw, {steps} steps", r, tol, t0)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("twins", nargs="*", default=["resnet50", "vgg16"])
    p.add_argument("--side", type=int, default=0, help="input side (default: 64 for ResNet-50, 32 for VGG-16)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--one-direction", action="store_true")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import torch

    torch.set_num_threads(1)
    directions = [("torch", "paddle")] + ([] if args.one_direction else [("paddle", "torch")])
    if args.twins and args.twins[0] == "hf":  # a process of its own: torchvision's wheel breaks transformers
        return run_hf(args.steps, args.twins[1:])
    for name in args.twins:
        run(name, args.side or {"resnet50": 64, "vgg16": 32}[name], args.batch, args.steps, directions)


if __name__ == "__main__":
    main()
