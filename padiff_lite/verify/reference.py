"""How far float32 itself moves each model's gradients: the noise floor each gradient is judged against.

A correct float32 port differs from its base by rounding: a few units in the last place per operation, grown by the
model's own conditioning. Where the conditioning is good, gradients agree to ~1e-6 of their scale and a backward bug
of 0.5% stands out; where it is bad, rounding alone moves gradients by far more (a ResNet-50 trained with batch
statistics over two images: 30% of a tensor's scale, float64 agrees to 3e-10; a ReLU or a top-k choice flipped by
1e-6 of noise: a few % of a weight gradient). No fixed tolerance fits both, so each model is run once more with
every trainable weight moved by ``PERTURB`` (a few float32 ulps, random signs) and the gradients that run gives are
kept: their distance from the model's own gradients is what rounding-sized changes do to it on these inputs, tensor
by tensor. Both models are run, since each framework rounds its own way (``Floors``: the larger counts). After a
free training step that agreed, the two models' weights are apart by what that step's float32 noise left (amplified
by the optimizer, often in a few rows: Adam takes a full step on a gradient that is noise); the next step's base
reference also moves each weight by exactly that gap, so it runs base's code on raw's weights and the floor holds
what those differences do. ``numerics.compare_gradient`` allows a multiple of the floor on top of its scale-aware
tolerance. The same runs give each layer output's noise floor (how far it moved), which the forward comparison adds
to its tolerance likewise: a BatchNorm with batch statistics over a few values divides rounding by a small spread.

The extra run leaves the model as it was: every own tensor of every module (weights, BatchNorm statistics and
counters) is copied before and written back after, and its gradients are cleared.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import output_align
from .session import backward, backward_each, run_model

# relative change of each weight: 2**-18 ~ 3.8e-6 ~ 32 float32 ulps, the size of the per-layer rounding differences
# measured between torch and paddle in deep layers (forward, 1e-6 .. 1e-5 of the tensor's scale)
PERTURB = 2.0 ** -18


def own_tensors(proxy) -> list:
    """Every own tensor of every module of ``proxy`` (parameters and buffers), each once."""
    seen, out = set(), []
    for _, module in proxy.named_modules():
        for _, t, _, _ in proxy.adapter.own_tensors(module):
            if id(t) not in seen:
                seen.add(id(t))
                out.append(t)
    return out


@dataclass
class Reference:
    """What base gave with its weights moved by ``PERTURB``: its gradients (one per op, None where there is none;
    None when gradients are not compared), each hooked call's output and the model's output (captured trees)."""

    grads: list | None
    outputs: dict = field(default_factory=dict)  # (pair index, call number) -> output_align.Node
    final: object = None
    loss: float | None = None  # loss_fn's value on the reference outputs
    # without a loss function: the gradients (one per op) of each output tensor's mean on its own, by place
    # ("out['pooler_output']"); the seed is chosen later, from what both models return (``grads_for``)
    grads_by_place: dict | None = None

    def grads_for(self, places) -> list | None:
        """The gradients of a backward seeded by the means of the output tensors at ``places`` (the sum of each
        place's: a gradient is linear in its seed); ``grads`` when the run had a loss function."""
        if self.grads_by_place is None:
            return self.grads
        chosen = [self.grads_by_place[w] for w in dict.fromkeys(places) if w in self.grads_by_place]
        if not chosen:
            return None
        out = []
        for per_op in zip(*chosen):
            got = [g for g in per_op if g is not None]
            out.append(None if not got else got[0] if len(got) == 1 else sum(got[1:], got[0].copy()))
        return out


@dataclass
class Floors:
    """The reference runs of one step: base's (``base``) and raw's own (``raw``), either None where it was not made
    or failed. Each framework rounds in its own way (a correct ResNet-50 trained on 2 images: a layer3 gradient 5%
    off float64 in paddle where torch is 0.05% off), so a value's floor is the larger of the two."""

    base: Reference | None = None
    raw: Reference | None = None

    def grads(self, places=None) -> tuple:
        """(base's reference gradients, raw's), one per op or None; ``places`` [(base place, raw place)] choose the
        seed of a run without a loss function."""
        def pick(ref, side):
            if ref is None:
                return None
            return ref.grads_for([p[side] for p in places]) if places is not None else ref.grads

        return pick(self.base, 0), pick(self.raw, 1)


def reference_run(proxy, ops, hooked, args, kwargs, *, eval_mode: bool, loss_fn=None, grads: bool = True,
                  seed: int = 0, gaps: dict | None = None, side: str = "src") -> Reference:
    """The model run forward (and backward from ``loss_fn``'s loss, or its outputs' mean, when ``grads``) with its
    trainable weights moved by ``PERTURB`` (relative, random signs) and by ``gaps[id(tensor)]`` (how far raw's
    weights are from base's after earlier steps that agreed, ``mapped.weight_gaps``), the outputs of the
    ``hooked`` [(pair index, module)] captured; the model is put back as it was. ``side``: "src" when ``proxy`` is
    base (the ops' sources are its tensors), "dst" for raw's own reference run (its gradients read whole)."""
    import torch

    adapter = proxy.adapter
    tensors = own_tensors(proxy)
    saved = [adapter.snapshot(t) for t in tensors]
    rng = np.random.default_rng(seed)
    mine = [getattr(op, side).tensor for op in ops]
    trainable = {id(t) for t in mine}
    gaps = gaps or {}
    ref = Reference(None)

    def keep(idx, k, _a, _kw, output):
        ref.outputs[(idx, k)] = output_align.capture(output, adapter)

    try:
        for t, value in zip(tensors, saved):
            if id(t) in trainable and value.dtype.kind == "f":
                signs = rng.integers(0, 2, value.shape).astype(value.dtype) * 2 - 1
                moved = value * (1 + signs * value.dtype.type(PERTURB))
                gap = gaps.get(id(t))
                if gap is not None and gap.shape == value.shape:
                    moved = (moved + gap).astype(value.dtype)
                adapter.write(t, torch.from_numpy(moved))
        out = run_model(proxy, hooked, args, kwargs, grad=grads, eval_mode=eval_mode, on_call=keep)
        ref.final = output_align.capture(out, adapter)
        loss = loss_fn(out) if loss_fn is not None else None
        if loss is not None and adapter.is_tensor(loss):
            value = np.asarray(adapter.snapshot(loss), dtype=np.float64).reshape(-1)
            ref.loss = float(value[0]) if value.size == 1 else None
        if grads and loss is not None:
            backward(proxy, loss)
            ref.grads = [adapter.grad(t) for t in mine]
        elif grads:
            ref.grads_by_place = backward_each(proxy, out, lambda: [adapter.grad(t) for t in mine])
        del out
        return ref
    finally:
        adapter.clear_grads(proxy.model)
        for t, value in zip(tensors, saved):
            adapter.write(t, torch.from_numpy(value))
