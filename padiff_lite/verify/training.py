"""One comparison step: forward (layer by layer), loss, backward (parameter by parameter), optimizer step
(weight by weight), and the stage where the step first differs.

A comparison without loss functions or optimizers is one such step with only its forward (and, for
``diff_phase="both"``, a backward from the mean of the outputs, as PaDiff seeds it). With ``steps=N`` the
step repeats on each step's inputs; the models keep their own train/eval modes then (a training run),
while a plain comparison runs them in eval mode and restores their modes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import output_align
from ..errors import DiffError, DiffInputError
from . import seeds, settings
from .aligned import compare_final, inputs_agree, noise_of
from .mapped import (compare_mapped, give_base_gradients, grad_noise, gradient_states, trainable_ops, weight_gaps,
                     weights_before)
from .reference import Floors, reference_run
from .numerics import Tolerance, compare, widened
from .results import StepRecord
from .session import Session, backward, inputs_at, needs_autograd


@dataclass
class Setup:
    """What every step of one comparison shares."""

    base: object
    raw: object
    pairs: list
    hooked: tuple  # ([(pair index, base module)], [(pair index, raw module)])
    plan: object  # the transfer plan (None when neither a transfer nor a gradient mapping is needed)
    tol: Tolerance
    phase: str  # "forward" | "backward" | "both"
    training: bool
    single_step: bool = False
    interleave: bool = True
    loss_fns: tuple | None = None
    optimizers: tuple | None = None
    notes: list = field(default_factory=list)
    isolate_steps: bool = True  # raw's optimizer steps on base's gradients once they agreed (auto_diff's docstring)
    finals: tuple = ("", "")  # the output structures of the last step run (base, raw)
    peak_held_bytes: int = 0
    interleaved: bool = False
    only: dict = field(default_factory=dict)  # pair index -> the side that called it more often
    # id(base tensor) -> raw's weight minus base's (base layout) after the last optimizer step that agreed: the next
    # step's reference run moves base's weights by these gaps (reference.py), so what float32 left is floored
    gaps: dict = field(default_factory=dict)

    @property
    def forward_compared(self) -> bool:
        return self.phase in ("forward", "both")

    @property
    def grads_compared(self) -> bool:
        return self.phase in ("backward", "both")

    @property
    def need_backward(self) -> bool:
        return self.grads_compared or self.optimizers is not None


def _forward(setup: Setup, grad: bool, sides, reference=None) -> tuple:
    (bargs, bkw), (rargs, rkw) = sides
    session = Session(setup.base, setup.raw, setup.pairs, setup.hooked, setup.tol, interleave=setup.interleave,
                      grad=grad, eval_mode=not setup.training, single_step=setup.single_step,
                      compare_layers=setup.forward_compared,
                      reference_outputs=reference.base.outputs if reference is not None and reference.base else None,
                      raw_reference_outputs=reference.raw.outputs if reference is not None and reference.raw else None)
    return session, session.run(bargs, bkw, rargs, rkw)


def _loss(proxy, fn, out, which):
    try:
        loss = fn(out)
    except Exception as exc:
        raise DiffError(f"loss_fns[{which}] failed on the outputs of the {proxy.framework} model {proxy.name}: "
                        f"{type(exc).__name__}: {exc}") from exc
    if not proxy.adapter.is_tensor(loss):
        raise DiffInputError(f"loss_fns[{which}] returned {type(loss).__name__}, not a {proxy.framework} tensor; a "
                             "loss function takes the model's outputs and returns a scalar loss tensor")
    value = np.asarray(proxy.adapter.snapshot(loss)).reshape(-1)
    if value.size != 1:
        raise DiffInputError(f"loss_fns[{which}] returned a tensor of shape {list(proxy.adapter.shape(loss))}, not a "
                             "scalar; reduce it (e.g. .mean()) inside the loss function")
    return loss, float(value[0])


def run_step(setup: Setup, step: int, sides) -> StepRecord:
    """One step: forward (layer by layer), the loss, backward, the optimizer step; each stage compared."""
    base, raw, tol = setup.base, setup.raw, setup.tol
    rec = StepRecord(step)
    grad = setup.need_backward
    reference = (_reference(setup, step, sides)
                 if tol.mode == "strict" and setup.plan is not None and (setup.grads_compared or setup.training)
                 else None)
    try:
        session, (bout, rout) = _forward(setup, grad, sides, reference)
    except DiffError as exc:
        if grad or not needs_autograd(exc):
            raise
        setup.notes.append("a model registers a gradient hook inside forward: the forward ran with autograd on")
        grad = True
        session, (bout, rout) = _forward(setup, True, sides, reference)
    try:
        places = _forward_stage(setup, rec, session, sides, (bout, rout), reference)
        bseed, rseed, ref_grads = _seeds(setup, rec, (bout, rout), places, reference)
        if setup.need_backward:
            backward(base, bseed)
            backward(raw, rseed)
        session.release()
        rec.output_grads = list(session.output_grads)
        rec.first_output_grad_diff = next((g for g in rec.output_grads if not g.ok), None)
        order = {(setup.pairs[i].base.path, setup.pairs[i].raw.path): o for i, o in session.call_order.items()}
        if setup.grads_compared:
            rec.grads = compare_mapped(setup.plan, tol, order, reference=ref_grads[0], raw_reference=ref_grads[1])
            rec.first_grad_diff = next((g for g in rec.grads if not g.ok), None)
        if setup.optimizers is not None:
            _optimizer_stage(setup, rec, step, order, ref_grads)
    finally:
        session.release()
        if grad:
            base.adapter.clear_grads(base.model)
            raw.adapter.clear_grads(raw.model)
    rec.stage = stage_of(rec)
    if rec.stage == "optimizer":
        note = gradless_note(rec) or vanishing_gradient_note(rec)
        if note and note not in setup.notes:
            setup.notes.append(note)
    return rec


def _forward_stage(setup: Setup, rec: StepRecord, session, sides, outs, reference) -> list:
    """The final outputs and every hooked layer into ``rec`` (and the first divergence's inputs judged); returns the
    places of the final outputs both models return."""
    base, raw, tol = setup.base, setup.raw, setup.tol
    bfinal, rfinal = output_align.capture(outs[0], base.adapter), output_align.capture(outs[1], raw.adapter)
    setup.finals = (str(bfinal), str(rfinal))
    final_noise = 0.0
    if reference is not None:
        final_noise = max(noise_of(bfinal, reference.base.final) if reference.base else 0.0,
                          noise_of(rfinal, reference.raw.final) if reference.raw else 0.0)
    rec.max_abs_diff, rec.max_rel_diff, rec.mismatched, rec.total, fnotes, places = compare_final(
        bfinal, rfinal, base, raw, widened(tol, final_noise))
    for n in fnotes:
        if n not in setup.notes:
            setup.notes.append(n)
    session.finish()
    rec.layers = sorted(session.layers, key=lambda ld: ld.order)
    rec.not_comparable = sorted(session.not_comparable, key=lambda nc: nc.order)
    setup.peak_held_bytes = max(setup.peak_held_bytes, session.stash.peak)
    setup.interleaved = session.interleave
    for idx, side in session.only.items():
        setup.only.setdefault(idx, side)
    if session.first is not None:
        rec.first_diff = session.first
        idx, k = session.first_key
        if session.keep_inputs:
            binputs = session.base_inputs.get((idx, k))
        else:
            (bargs, bkw), _ = sides
            binputs = inputs_at(base, setup.pairs[idx].base.module, k, bargs, bkw, eval_mode=not setup.training)
        if session.first_raw_inputs is not None:
            rec.first_diff.inputs_agree = inputs_agree(binputs, session.first_raw_inputs, tol)
    session.base_inputs.clear()
    return places


def _seeds(setup: Setup, rec: StepRecord, outs, places, reference) -> tuple:
    """(base seed, raw seed, reference gradients): the losses (compared into ``rec``), or without loss functions the
    outputs' mean over what both models return (PaDiff's seed, but a field only one side returns, e.g.
    last_hidden_state beside pooler_output, would seed one backward only)."""
    base, raw, tol = setup.base, setup.raw, setup.tol
    bout, rout = outs
    if setup.loss_fns is None:
        bseed, rseed, seed_note = _common_seed(base, raw, bout, rout, places)
        if seed_note and setup.need_backward and seed_note not in setup.notes:
            setup.notes.append(seed_note)
        return bseed, rseed, (reference.grads(places) if reference is not None else (None, None))
    bseed, lb = _loss(base, setup.loss_fns[0], bout, 0)
    rseed, lr = _loss(raw, setup.loss_fns[1], rout, 1)
    rec.loss = (lb, lr)
    loss_noise = 0.0
    if reference is not None:
        loss_noise = max([abs(ref.loss - v) for ref, v in ((reference.base, lb), (reference.raw, lr))
                          if ref is not None and ref.loss is not None], default=0.0)
    rec.loss_ok = compare(np.float64(lb), np.float64(lr), widened(tol, loss_noise)).ok
    if rec.loss_ok and tol.mode == "strict" and setup.grads_compared and not setup.single_step and places:
        seeded, note = seeds.hand_over(base, raw, setup.loss_fns, outs, (bseed, rseed), places)
        if seeded is not None:
            rseed = seeded
            if not any(n.startswith(note.split(" (")[0]) for n in setup.notes):
                setup.notes.append(note)
    return bseed, rseed, (reference.grads() if reference is not None else (None, None))


def _optimizer_stage(setup: Setup, rec: StepRecord, step: int, order, ref_grads) -> None:
    """Both optimizers step (raw's on base's gradients when the step isolates, see ``auto_diff``); every weight
    compared after the step (its update against base's) into ``rec``."""
    before = weights_before(setup.plan)
    states = gradient_states(setup.plan)
    rec.isolated = (setup.isolate_steps and setup.grads_compared and stage_of(rec) is None
                    and rec.first_output_grad_diff is None)
    if rec.isolated:  # the same gradients on both sides: the updates may differ by the optimizers' own rounding
        give_base_gradients(setup.plan)
        noise = None
    else:
        noise = grad_noise(setup.plan, *ref_grads)
    settings.step(setup.optimizers[0])
    settings.step(setup.optimizers[1])
    rec.weights = compare_mapped(setup.plan, setup.tol, order, before, step_noise=noise, states=states,
                                 first_step=step == 0, isolated=rec.isolated)
    agreed = rec.first_diff is None and rec.loss_ok and all(x.ok for x in rec.grads + rec.weights)
    # a free step that agreed: what it left apart is float32's, carried into the next floors (an isolated step leaves
    # the optimizers' own rounding, far below the reference run's 2^-18)
    setup.gaps = weight_gaps(setup.plan) if agreed and not rec.isolated else {}
    rec.first_weight_diff = next((w for w in rec.weights if not w.ok), None)


def _common_seed(base, raw, bout, rout, places):
    """(base seed, raw seed, note): the tensors of each model's output at the compared ``places`` (each once), and a
    note naming the output tensors left out of the seed (None when none)."""
    bwant, rwant = dict.fromkeys(b for b, _ in places), dict.fromkeys(r for _, r in places)
    blive, rlive = output_align.live_tensors(bout, base.adapter), output_align.live_tensors(rout, raw.adapter)
    bseed = [t for w, t in blive if w in bwant]
    rseed = [t for w, t in rlive if w in rwant]
    left = ([f"base {w}" for w, t in blive if w not in bwant and base.adapter.needs_grad(t)]
            + [f"raw {w}" for w, t in rlive if w not in rwant and raw.adapter.needs_grad(t)])
    note = None
    if left:
        note = ("the backward pass without a loss starts from the mean of the output tensors both models return, "
                f"compared above; left out of the seed: {', '.join(left)}")
    return bseed, rseed, note


def _reference(setup: Setup, step: int, sides) -> Floors:
    """Each model run once more with its weights moved by a few ulps (``reference.py``; base's also by the gap earlier
    steps left): the float32 noise floors of every layer output, the loss and every gradient, each side's own. A side
    whose run fails has none (the step's own run then reports the failure, named)."""
    ops = trainable_ops(setup.plan)
    floors = Floors()
    for which, proxy, (args, kw) in ((0, setup.base, sides[0]), (1, setup.raw, sides[1])):
        try:
            ref = reference_run(proxy, ops, setup.hooked[which] if setup.forward_compared else [], args, kw,
                                eval_mode=not setup.training,
                                loss_fn=setup.loss_fns[which] if setup.loss_fns is not None else None,
                                grads=setup.need_backward, seed=2 * step + which,
                                gaps=setup.gaps if which == 0 else None, side=("src", "dst")[which])
        except Exception as exc:  # noqa: BLE001 - the same inputs run again right after and raise there, named
            note = (f"compared without {('base', 'raw')[which]}'s float32 noise floors: its reference run failed "
                    f"({type(exc).__name__})")
            if note not in setup.notes:
                setup.notes.append(note)
            continue
        if which == 0:
            floors.base = ref
        else:
            floors.raw = ref
    return floors


def gradless_note(rec: StepRecord) -> str | None:
    """The weights that differ after the step because one side had no gradient for them and the other a zero one."""
    found = [w for w in rec.weights if not w.ok and w.cause]
    if not found:
        return None
    names = ", ".join(f"{w.raw_param}{' (' + w.note + ')' if 'part' in w.note else ''}" for w in found[:4])
    more = f" and {len(found) - 4} more" if len(found) > 4 else ""
    return f"step {rec.step}: {names}{more}: {found[0].cause}"


def vanishing_gradient_note(rec: StepRecord) -> str | None:
    """Why weights can differ while the gradients agreed: adaptive optimizers (Adam and kin) divide by the
    gradient's own size, so a gradient that is float noise on both sides (theoretically 0, e.g. a bias right
    before a normalization layer) becomes a full-size step in a random direction."""
    w = rec.first_weight_diff
    g = next((g for g in rec.grads if g.base_param == w.base_param and g.raw_param == w.raw_param), None)
    top = max((x.scale for x in rec.grads), default=0.0)
    if g is None or top == 0 or g.scale > 1e-5 * top:
        return None
    return (f"the gradient of {w.base_param} is ~0 on both sides (largest {g.scale:.3g}, against {top:.3g} for the "
            "largest gradient): an adaptive optimizer (Adam, AdamW, ...) scales float noise in a vanishing gradient to "
            "a full step, so its weights drift apart though the port is right (a bias before a normalization layer "
            "has no effect on outputs: drop it, or compare with SGD)")


def stage_of(rec: StepRecord) -> str | None:
    """The first stage of a step that differs: forward, loss, backward, optimizer (in the order they run)."""
    if rec.first_diff is not None or rec.mismatched:
        return "forward"
    if not rec.loss_ok:
        return "loss"
    if rec.first_grad_diff is not None or rec.first_output_grad_diff is not None:
        return "backward"
    if rec.first_weight_diff is not None:
        return "optimizer"
    return None
