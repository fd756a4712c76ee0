"""Gradients and weights compared parameter by parameter through the transfer plan's own operations.

Each COPY operation of the plan says where a base tensor goes in the raw model: which part, transposed or
reshaped. A base gradient (or a base weight after an optimizer step) is carried the same way
(``layout.take`` + ``layout.transformed``, as the executor does), so a Linear's ``[out, in]`` gradient meets
paddle's ``[in, out]`` one and a fused qkv block meets its three parts.
"""
from __future__ import annotations

import math

import numpy as np

from .. import layout
from ..ops import COPY, RESHAPE, TRANSPOSE
from .numerics import GRAD_FLOOR, STEP_FLOOR, Tolerance, compare, compare_gradient, compare_step
from .render import label
from .results import GradDiff, WeightDiff


def to_raw_layout(g, op, shape):
    """A base array (numpy) as the op writes it into a raw region of ``shape`` (its part taken, its transform
    applied); (array, notes)."""
    import torch

    value = layout.take(torch.from_numpy(np.ascontiguousarray(g)), op.src_part)
    if op.transform is RESHAPE and (shape is None or math.prod(shape) != value.numel()):
        shape = tuple(value.shape)  # nothing to reshape to: compared as it is (the sizes differ)
    notes = [f"base part {op.src_part}"] if op.src_part is not None else []
    notes += {TRANSPOSE: ["transposed"], RESHAPE: ["reshaped"]}.get(op.transform, [])
    return layout.transformed(value, op.transform, shape).numpy(), notes


def _raw_part(a, op):
    import torch

    return layout.take(torch.from_numpy(np.ascontiguousarray(a)), op.dst_part).numpy()


def trainable_ops(plan):
    """The plan's copies of parameters autograd tracks on either side (BatchNorm statistics left out)."""
    ba, ra = plan.base.adapter, plan.raw.adapter
    return [op for op in plan.ops if op.kind is COPY and (op.src.kind == "param" or op.dst.kind == "param")
            and (ba.needs_grad(op.src.tensor) or ra.needs_grad(op.dst.tensor))]


def _state(g) -> str:
    """How a gradient stands: "none" (no gradient at all), "zero" (every value 0) or "some"."""
    if g is None:
        return "none"
    return "zero" if not np.any(g) else "some"


def gradient_states(plan) -> list:
    """Before an optimizer step, for each trainable op (``trainable_ops`` order): (base state, raw state, raw weight)
    of the op's region of each side's gradient (``_state``: a packed tensor's part is judged alone), with raw's
    weight region (a numpy copy) where one side has no gradient and the other an all-zero one, else None: an
    optimizer skips a parameter without a gradient but applies weight decay (and earlier momentum) to one whose
    gradient is zero, so the two runs may part there (an expert no token reached: one packed tensor against one
    module per expert)."""
    ba, ra = plan.base.adapter, plan.raw.adapter
    import torch

    out = []
    for op in trainable_ops(plan):
        gb, gr = ba.grad(op.src.tensor), ra.grad(op.dst.tensor)
        if gb is not None and op.src_part is not None:
            gb = layout.take(torch.from_numpy(np.ascontiguousarray(gb)), op.src_part).numpy()
        if gr is not None and op.dst_part is not None:
            gr = _raw_part(gr, op)
        bs, rs = _state(gb), _state(gr)
        raw_before = None
        if {bs, rs} == {"none", "zero"}:
            raw_before = ra.snapshot(op.dst.tensor)
            if op.dst_part is not None:
                raw_before = _raw_part(raw_before, op)
        out.append((bs, rs, raw_before))
    return out


def gradless_cause(plan, state, update, raw_before, raw_after, first_step: bool) -> str:
    """Why a weight differs after a step when one side had no gradient for it and the other an all-zero one (and
    only that side's weight moved): empty otherwise. ``update``: base's update in the raw layout."""
    bs, rs, _ = state
    if raw_before is None or {bs, rs} != {"none", "zero"}:
        return ""
    base_moved = bool(np.any(update != 0))
    raw_moved = raw_before.shape != raw_after.shape or not np.array_equal(raw_before, raw_after)
    if bs == "none" and rs == "zero" and not base_moved and raw_moved:
        none_fw, zero_fw = plan.base.framework, plan.raw.framework
    elif rs == "none" and bs == "zero" and not raw_moved and base_moved:
        none_fw, zero_fw = plan.raw.framework, plan.base.framework
    else:
        return ""
    how = "weight decay" if first_step else "weight decay or the momentum of earlier steps"
    return (f"not updated by {none_fw}'s optimizer (no gradient), updated by {how} in {zero_fw} (an all-zero "
            f"gradient): a real difference of the two training runs (a part of the model no input reached has no "
            f"gradient in {none_fw} but a zero one in {zero_fw}, e.g. an unused expert in one packed tensor)")


def weights_before(plan) -> list:
    """Base's trainable weights before an optimizer step (numpy copies, in ``trainable_ops`` order)."""
    return [plan.base.adapter.snapshot(op.src.tensor) for op in trainable_ops(plan)]


def _norm(a) -> float:
    return float(np.linalg.norm(np.where(np.isfinite(a), a, 0).astype(np.float64))) if a is not None and a.size else 0.0


def _max_finite(a) -> float:
    a = np.abs(np.asarray(a, dtype=np.float64))
    a = a[np.isfinite(a)]
    return float(a.max()) if a.size else 0.0


def grad_noise(plan, reference: list | None) -> list | None:
    """Each trainable op's gradient noise relative to its scale (max |reference - base| / max |base|, in
    ``trainable_ops`` order), read before the optimizer step; None without a reference run."""
    if reference is None:
        return None
    out = []
    for op, ref in zip(trainable_ops(plan), reference):
        g = plan.base.adapter.grad(op.src.tensor)
        top = _max_finite(g) if g is not None else 0.0
        out.append(_max_finite(g - ref) / top if top > 0 and ref is not None and ref.shape == g.shape else 0.0)
    return out


def compare_mapped(plan, tol: Tolerance, call_order: dict, before: list | None = None,
                   reference: list | None = None, step_noise: list | None = None, states: list | None = None,
                   first_step: bool = True) -> list:
    """Each trainable copy op's base gradient (or, given base's weights ``before`` the optimizer step, its weight
    after it), in the raw layout, against the raw one; in backward order (the last layer to run forward first).
    ``reference``: base's gradients from ``reference.reference_grads`` (in ``trainable_ops`` order), whose distance
    from base's gradients is each gradient's float32 noise floor. ``step_noise`` (``grad_noise``): the same,
    relative, for judging weights after the step. ``states`` (``gradient_states``, read before the step): a weight
    that differs where one side had no gradient and the other a zero one gets that cause (``WeightDiff.cause``)."""
    ba, ra = plan.base.adapter, plan.raw.adapter
    weights = before is not None
    read_b = (lambda t: ba.snapshot(t)) if weights else ba.grad
    read_r = (lambda t: ra.snapshot(t)) if weights else ra.grad
    kind = WeightDiff if weights else GradDiff
    ops = trainable_ops(plan)
    strict = tol.mode == "strict"
    floor = 0.0
    if strict:  # a first pass: the model's largest update norm (STEP_FLOOR) or gradient value (GRAD_FLOOR)
        for i, op in enumerate(ops):
            if weights:
                floor = max(floor, _norm(ba.snapshot(op.src.tensor) - before[i]))
            else:
                g = ba.grad(op.src.tensor)
                floor = max(floor, float(np.abs(np.where(np.isfinite(g), g, 0)).max()) if g is not None and g.size
                            else 0.0)
        floor *= STEP_FLOOR if weights else GRAD_FLOOR
    found = []
    for i, op in enumerate(ops):
        gb, gr = read_b(op.src.tensor), read_r(op.dst.tensor)
        if gb is None and gr is None:
            continue
        note = []
        if gr is not None and op.dst_part is not None:
            gr = _raw_part(gr, op)
        mapped = None
        if gb is not None:
            mapped, note = to_raw_layout(gb, op, None if gr is None else gr.shape)
        if gr is not None and op.dst_part is not None:
            note.append(f"raw part {op.dst_part}")
        if gb is None:
            mapped = np.zeros_like(gr)
            note.append("no gradient on the base side")
        if gr is None:
            gr = np.zeros_like(mapped)
            note.append("no gradient on the raw side")
        if not strict:
            f = compare(mapped, gr, tol)
        elif weights:
            update, _ = to_raw_layout(gb - before[i], op, gr.shape)
            f = compare_step(mapped, gr, update, tol, floor, tol.step_rtol,
                             step_noise[i] if step_noise is not None else 0.0)
        else:
            noise = 0.0
            ref = reference[i] if reference is not None else None
            if gb is not None and ref is not None and ref.shape == gb.shape:
                moved, _ = to_raw_layout(gb - ref, op, gr.shape)
                noise = _max_finite(moved)
            f = compare_gradient(mapped, gr, tol, floor, tol.grad_rtol, noise)
        pair = op.pair
        d = kind(pair.base.path, pair.raw.path, type(pair.base.module).__name__, type(pair.raw.module).__name__,
                 op.src.path, op.dst.path, tuple(gb.shape) if gb is not None else (), tuple(gr.shape),
                 f.max_abs, f.max_rel, f.mismatched, f.total, ", ".join(note), f.scale, f.norm_rel)
        d.noise = f.noise
        if weights:
            top = _norm(mapped)
            d.drift = _norm(mapped - gr) / top if top > 0 and mapped.shape == gr.shape else 0.0
            if states is not None and f.mismatched:
                update, _ = to_raw_layout(gb - before[i], op, gr.shape)
                d.cause = gradless_cause(plan, states[i], update, states[i][2], gr, first_step)
        found.append((call_order.get((pair.base.path, pair.raw.path), -1), len(found), d))
    found.sort(key=lambda t: (-t[0], t[1]))
    return [d for *_, d in found]


def imperative_note(plan) -> str | None:
    if not plan.imperative:
        return None
    names = ", ".join(label(p.base.path) for p in plan.imperative)
    return f"gradients and weights not compared for layers transferred by an imperative special init: {names}"


def differing_weights(plan, tol: Tolerance) -> list:
    """Every planned copy whose raw region does not hold what the plan would write from base's current value (the
    part of a fused or packed tensor included): the weights that explain a difference, named to the part. Used
    when outputs differ, so a spoiled ``qkv_proj`` rows block is named, not the next layer that could be compared."""
    ba, ra = plan.base.adapter, plan.raw.adapter
    found = []
    for op in plan.ops:
        if op.kind is not COPY:
            continue
        b, r = ba.snapshot(op.src.tensor), ra.snapshot(op.dst.tensor)
        if b is None or r is None:
            continue
        if op.dst_part is not None:
            r = _raw_part(r, op)
        mapped, note = to_raw_layout(b, op, r.shape)
        if mapped.shape != r.shape:
            continue
        if op.dst_part is not None:
            note.append(f"raw part {op.dst_part}")
        f = compare(mapped, r, tol)
        if f.mismatched:
            pair = op.pair
            found.append(WeightDiff(pair.base.path, pair.raw.path, type(pair.base.module).__name__,
                                    type(pair.raw.module).__name__, op.src.path, op.dst.path, tuple(b.shape),
                                    tuple(r.shape), f.max_abs, f.max_rel, f.mismatched, f.total, ", ".join(note),
                                    f.scale, f.norm_rel, after_step=False))
    return found
