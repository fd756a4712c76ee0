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
from .numerics import (GRAD_FLOOR, ISOLATED_STEP_RTOL, NOISE_FACTOR, STEP_FLOOR, Tolerance, compare,
                       compare_gradient, compare_step)
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
    """Both sides' trainable weights before an optimizer step, in ``trainable_ops`` order: (base's weight, raw's
    region of the op) as numpy copies."""
    ba, ra = plan.base.adapter, plan.raw.adapter
    out = []
    for op in trainable_ops(plan):
        r = ra.snapshot(op.dst.tensor)
        out.append((ba.snapshot(op.src.tensor), _raw_part(r, op) if r is not None and op.dst_part is not None else r))
    return out


def _norm(a) -> float:
    return float(np.linalg.norm(np.where(np.isfinite(a), a, 0).astype(np.float64))) if a is not None and a.size else 0.0


def _max_finite(a) -> float:
    a = np.abs(np.asarray(a, dtype=np.float64))
    a = a[np.isfinite(a)]
    return float(a.max()) if a.size else 0.0


def grad_noise(plan, reference: list | None, raw_reference: list | None = None) -> list | None:
    """For judging each trainable op's weight after the optimizer step (read before it, in ``trainable_ops`` order):
    ``(judged, rho)`` in the raw layout, ``judged`` the values whose base gradient is larger than ``NOISE_FACTOR``
    times its float32 noise and ``rho`` that noise relative to the gradient over those values (the larger of the L2
    ratio and the root mean square of the values' ratios: a plain step follows the first, Adam's per-value scaling
    the second); ``(None, 0.0)`` where it is not measured. The noise of a value is the largest of its distance from
    the reference run's gradient, from raw's gradient (the two gradients agreed: their difference is noise as
    well), raw's own reference distance (``raw_reference``, raw's whole gradients), and the root mean square of the
    reference distance over the tensor. None without base's reference run."""
    if reference is None:
        return None
    ba, ra = plan.base.adapter, plan.raw.adapter
    out = []
    ops = trainable_ops(plan)
    raw_refs = raw_reference if raw_reference is not None else [None] * len(ops)
    for op, ref, rref in zip(ops, reference, raw_refs):
        g, gr = ba.grad(op.src.tensor), ra.grad(op.dst.tensor)
        if g is None or ref is None or ref.shape != g.shape or g.dtype.kind != "f":
            out.append((None, 0.0))
            continue
        shape = None
        if gr is not None:
            gr = _raw_part(gr, op) if op.dst_part is not None else gr
            shape = gr.shape
        gb = to_raw_layout(g, op, shape)[0].astype(np.float64)
        moved = np.abs(to_raw_layout(ref, op, gb.shape)[0].astype(np.float64) - gb)
        noise = np.maximum(moved, math.sqrt(float(np.mean(np.square(moved)))) if moved.size else 0.0)
        if gr is not None and gr.shape == gb.shape:
            noise = np.maximum(noise, np.abs(gr.astype(np.float64) - gb))
            if rref is not None:
                rref = _raw_part(rref, op) if op.dst_part is not None else rref
                if rref.shape == gr.shape:
                    noise = np.maximum(noise, np.abs(rref.astype(np.float64) - gr))
        judged = np.abs(gb) > NOISE_FACTOR * noise
        if not judged.any():
            out.append((judged, 0.0))
            continue
        n, a = noise[judged], np.abs(gb[judged])
        rho = max(float(np.linalg.norm(n) / np.linalg.norm(a)), math.sqrt(float(np.mean(np.square(n / a)))))
        out.append((judged, rho))
    return out


def _gradient_floor(op, gb, gr, ref, raw_ref) -> float:
    """How far each side's own reference run moved this op's gradient (its largest value; raw's region of raw's):
    the larger of the two."""
    noise = 0.0
    if gb is not None and ref is not None and ref.shape == gb.shape:
        moved, _ = to_raw_layout(gb - ref, op, gr.shape)
        noise = _max_finite(moved)
    if raw_ref is not None:
        raw_ref = _raw_part(raw_ref, op) if op.dst_part is not None else raw_ref
        if raw_ref.shape == gr.shape:
            noise = max(noise, _max_finite(gr - raw_ref))
    return noise


def compare_mapped(plan, tol: Tolerance, call_order: dict, before: list | None = None,
                   reference: list | None = None, step_noise: list | None = None, states: list | None = None,
                   first_step: bool = True, isolated: bool = False, raw_reference: list | None = None) -> list:
    """Each trainable copy op's base gradient (or, given base's weights ``before`` the optimizer step, its weight
    after it), in the raw layout, against the raw one; in backward order (the last layer to run forward first).
    ``reference``: base's gradients from ``reference.reference_run`` (in ``trainable_ops`` order), whose distance
    from base's gradients is each gradient's float32 noise floor; ``raw_reference`` raw's own (whole tensors), the
    floor the larger of the two. ``step_noise`` (``grad_noise``): per op, which values of a weight are judged after
    the step and their gradient's relative noise (None: every value, no noise; ``isolated``: raw stepped on base's
    gradients, judged within ``ISOLATED_STEP_RTOL``). ``states`` (``gradient_states``, read before the step): a weight
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
                floor = max(floor, _norm(ba.snapshot(op.src.tensor) - before[i][0]))
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
            base_was, raw_was = before[i]
            update, _ = to_raw_layout(gb - base_was, op, gr.shape)
            raw_update = gr - raw_was if raw_was is not None and raw_was.shape == gr.shape else gr - mapped + update
            f = compare_step(mapped, gr, update, raw_update, tol, floor,
                             min(tol.step_rtol, ISOLATED_STEP_RTOL) if isolated else tol.step_rtol,
                             step_noise[i] if step_noise is not None else None)
        else:
            noise = _gradient_floor(op, gb, gr, reference[i] if reference is not None else None,
                                    raw_reference[i] if raw_reference is not None else None)
            f = compare_gradient(mapped, gr, tol, floor, tol.grad_rtol, noise)
        pair = op.pair
        d = kind(pair.base.path, pair.raw.path, type(pair.base.module).__name__, type(pair.raw.module).__name__,
                 op.src.path, op.dst.path, tuple(gb.shape) if gb is not None else (), tuple(gr.shape),
                 f.max_abs, f.max_rel, f.mismatched, f.total, ", ".join(note), f.scale, f.norm_rel)
        d.noise = f.noise
        if weights:
            d.excused = f.excused
        if weights and states is not None and f.mismatched:
            update, _ = to_raw_layout(gb - before[i][0], op, gr.shape)
            d.cause = gradless_cause(plan, states[i], update, states[i][2], gr, first_step)
        found.append((call_order.get((pair.base.path, pair.raw.path), -1), len(found), d))
    found.sort(key=lambda t: (-t[0], t[1]))
    return [d for *_, d in found]


def give_base_gradients(plan) -> int:
    """Raw's gradients overwritten, in place, with base's carried through the plan (each op's region: parts,
    transposes, reshapes), where both sides have one (a missing gradient stays missing: an optimizer skips such a
    parameter); returns how many raw tensors were written."""
    import torch

    ba, ra = plan.base.adapter, plan.raw.adapter
    edited = {}  # id(raw tensor) -> (raw tensor, its gradient as a torch array being edited)
    for op in trainable_ops(plan):
        gb = ba.grad(op.src.tensor)
        if gb is None:
            continue
        entry = edited.get(id(op.dst.tensor))
        if entry is None:
            gr = ra.grad(op.dst.tensor)
            if gr is None:
                continue
            entry = edited[id(op.dst.tensor)] = (op.dst.tensor, torch.from_numpy(gr))
        for view, value in layout.pieces(torch.from_numpy(gb), op.src_part, op.transform, entry[1], op.dst_part):
            view.copy_(value)
    for t, value in edited.values():
        ra.write_grad(t, value)
    return len(edited)


def weight_gaps(plan) -> dict:
    """After an optimizer step: how far raw's weights are from base's, carried back into base's layout (each op's
    raw region minus what the op writes from base's weight, untransposed and put at the op's base part), as
    ``{id(base tensor): numpy array of its shape}`` for the floating trainable tensors. The next step's reference
    run moves base's weights by exactly these gaps (``reference.py``): the difference pattern an earlier step left
    (an adaptive optimizer's full-size steps on float noise, concentrated in a few rows) is what the floor must
    measure, not a spread of the same norm."""
    import torch

    gaps = {}
    for op, mapped, r, _ in _weights_in_raw_layout(plan, trainable_ops(plan)):
        if mapped.dtype.kind != "f" or r.dtype.kind != "f":
            continue
        gap = gaps.get(id(op.src.tensor))
        if gap is None:
            gap = gaps[id(op.src.tensor)] = torch.zeros(tuple(plan.base.adapter.shape(op.src.tensor)),
                                                         dtype=torch.float64)
        back = torch.from_numpy(r.astype(np.float64) - mapped.astype(np.float64))
        for view, value in layout.pieces(back, None, op.transform, gap, op.src_part):  # each transform undoes itself
            view.copy_(value)
    return {k: v.numpy() for k, v in gaps.items()}


def _weights_in_raw_layout(plan, ops):
    """``(op, base's weight as the op writes it, raw's region, notes)`` for each op whose two sides hold values of
    one shape there (numpy copies)."""
    ba, ra = plan.base.adapter, plan.raw.adapter
    for op in ops:
        b, r = ba.snapshot(op.src.tensor), ra.snapshot(op.dst.tensor)
        if b is None or r is None:
            continue
        if op.dst_part is not None:
            r = _raw_part(r, op)
        mapped, note = to_raw_layout(b, op, r.shape)
        if mapped.shape == r.shape:
            yield op, mapped, r, note


def imperative_note(plan) -> str | None:
    if not plan.imperative:
        return None
    names = ", ".join(label(p.base.path) for p in plan.imperative)
    return f"gradients and weights not compared for layers transferred by an imperative special init: {names}"


def differing_weights(plan, tol: Tolerance) -> list:
    """Every planned copy whose raw region does not hold what the plan would write from base's current value (the
    part of a fused or packed tensor included): the weights that explain a difference, named to the part. Used
    when outputs differ, so a spoiled ``qkv_proj`` rows block is named, not the next layer that could be compared."""
    found = []
    for op, mapped, r, note in _weights_in_raw_layout(plan, [op for op in plan.ops if op.kind is COPY]):
        if op.dst_part is not None:
            note.append(f"raw part {op.dst_part}")
        f = compare(mapped, r, tol)
        if f.mismatched:
            pair = op.pair
            found.append(WeightDiff(pair.base.path, pair.raw.path, type(pair.base.module).__name__,
                                    type(pair.raw.module).__name__, op.src.path, op.dst.path,
                                    tuple(plan.base.adapter.shape(op.src.tensor)),
                                    tuple(r.shape), f.max_abs, f.max_rel, f.mismatched, f.total, ", ".join(note),
                                    f.scale, f.norm_rel, after_step=False))
    return found
