"""Where a loss's gradient is itself float32 rounding: base's handed to raw's backward, when the two agree to that.

A cross-entropy on a sample the model has learnt (``p`` of its class within 2e-5 of 1) has the gradient ``p - 1`` at
that logit, which float32 holds to a few tenths of a percent: a ResNet-50 whose two images are memorised has the
two frameworks' loss gradients 0.38% apart on logits that agree to 2e-5, each side 0.2-0.4% off what float64 gives
on its own logits. Every parameter's gradient inherits that, and no reference run sees it (weights moved by a few
ulps do not move ``p`` by an ulp of 1). Judging raw's backward code needs the same seed on both sides, so when the
two loss gradients at the compared outputs differ by no more than ``NOISE_FACTOR`` times their float64-measured
rounding, raw's backward runs from its own loss plus ``base's - raw's`` at its outputs (the loss's own terms that do
not go through the outputs, a weight penalty say, stay raw's). A loss gradient that differs by more (a loss whose
backward differs) is not handed over: raw backpropagates its own and the backward stage shows the difference.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from . import output_align
from .numerics import NOISE_FACTOR

# the float64 copies of the outputs and their gradients cost 16 bytes a value: above this many output values (a
# large-vocabulary LM's logits over many tokens) nothing is handed over and raw backpropagates its own loss
MAX_VALUES = 1 << 25


@dataclass
class Seeded:
    """A backward from several tensors at once, each with its own seed (None: a scalar loss's 1)."""

    tensors: list
    grads: list


def _rebuild(obj, swap):
    """``obj`` (a model's output: tensor, tuple, list, mapping, dataclass) with each tensor ``t`` replaced by
    ``swap(t)``; what is neither is kept as it is."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _rebuild(getattr(obj, f.name), swap)
                                           for f in dataclasses.fields(obj) if f.init})
    if isinstance(obj, Mapping):
        return type(obj)((k, _rebuild(v, swap)) for k, v in obj.items())
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_rebuild(v, swap) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(_rebuild(v, swap) for v in obj)
    return swap(obj)


def _float64_seeds(proxy, loss_fn, out, live) -> list | None:
    """The gradient of ``loss_fn`` at float64 copies of the ``live`` [(place, tensor)] outputs (numpy, one per
    tensor), or None when the loss cannot be computed that way."""
    adapter = proxy.adapter
    leaves = {id(t): adapter.float64_copy(t) for _, t in live}
    try:
        loss = loss_fn(_rebuild(out, lambda v: leaves.get(id(v), v) if adapter.is_tensor(v) else v))
        grads = adapter.grads_of(loss, [leaves[id(t)] for _, t in live])
    except Exception:  # noqa: BLE001 - a loss that will not take float64: nothing is handed over
        return None
    return [None if g is None else np.asarray(adapter.snapshot(g), dtype=np.float64) for g in grads]


def _seeds(proxy, loss, loss_fn, out):
    """([(place, tensor)] of the output tensors autograd tracks, their float32 loss gradients, float64 ones)."""
    adapter = proxy.adapter
    live = [(w, t) for w, t in output_align.live_tensors(out, adapter) if adapter.needs_grad(t)]
    if not live or sum(math.prod(adapter.shape(t)) for _, t in live) > MAX_VALUES:
        return live, None, None
    got = adapter.grads_of(loss, [t for _, t in live])
    f32 = [None if g is None else np.asarray(adapter.snapshot(g), dtype=np.float64) for g in got]
    return live, f32, _float64_seeds(proxy, loss_fn, out, live)


def hand_over(base, raw, loss_fns, outs, losses, places) -> tuple:
    """``(raw's seed, note)``: a :class:`Seeded` backward for raw (its loss, plus base's loss gradient minus its own
    at the compared output ``places``) when the two loss gradients differ and by float32 rounding alone, with a note
    of the figures; ``(None, None)`` otherwise (raw backpropagates its own loss)."""
    (bout, rout), (bloss, rloss) = outs, losses
    blive, b32, b64 = _seeds(base, bloss, loss_fns[0], bout)
    rlive, r32, r64 = _seeds(raw, rloss, loss_fns[1], rout)
    if b32 is None or r32 is None or b64 is None or r64 is None:
        return None, None
    bat = {w: i for i, (w, _) in enumerate(blive)}
    rat = {w: i for i, (w, _) in enumerate(rlive)}
    pairs = [(bat[b], rat[r]) for b, r in places if b in bat and r in rat]
    seeded = {j for _, j in pairs}
    if any(g is not None and np.any(g) for j, g in enumerate(r32) if j not in seeded):
        return None, None  # the loss reads raw outputs the comparison did not pair: nothing to hand over safely
    deltas, worst, rounding = {}, 0.0, 0.0
    for i, j in pairs:
        sb, sr = b32[i], r32[j]
        if sb is None or sr is None or sb.size != sr.size or b64[i] is None or r64[j] is None:
            return None, None
        sb = sb.reshape(sr.shape)
        scale = max(float(np.abs(sb).max()), float(np.abs(sr).max()), np.finfo(np.float64).tiny)
        err = float(np.abs(sb - b64[i].reshape(sr.shape)).max()) + float(np.abs(sr - r64[j]).max())
        d = float(np.abs(sb - sr).max())
        if d > NOISE_FACTOR * err:
            return None, None
        worst, rounding = max(worst, d / scale), max(rounding, err / scale)
        if d > 0:
            deltas[j] = sb - sr
    if not deltas:
        return None, None
    tensors = [rloss] + [rlive[j][1] for j in deltas]
    grads = [None] + [raw.adapter.like(delta.astype(np.float32), rlive[j][1]) for j, delta in deltas.items()]
    note = (f"the two losses' gradients at the outputs differed by float32 rounding alone (up to {worst:.2g} of "
            f"their scale; float64 puts the two together up to {rounding:.2g} off): raw's backward was given base's "
            "there, so the gradients compare the backward code")
    return Seeded(tensors, grads), note
