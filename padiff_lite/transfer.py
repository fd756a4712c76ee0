"""assign_weight: the transfer pipeline, pair -> plan -> validate -> execute -> report."""
from __future__ import annotations

import functools
import gc
import logging
import time

from dataclasses import replace

from . import optim_state, sched_state
from .errors import InitError, TransferInterrupted
from .execute import execute
from .init import check_scheme, plan_init, scheme_name
from .mapping import Context, from_plan
from .plan import Plan
from .prepare import prepare
from .report import TransferReport, build_report
from .validate import check, refuse

log = logging.getLogger("padiff_lite")


def _gc_paused(fn):
    """Run ``fn`` with the cyclic garbage collector paused (process-wide, for this call only; switched back on after).

    Kept because it pays: planning 10k / 100k modules took 0.75 / 5.6 s paused against 1.00 / 8.6 s with the
    collector on (bench/bench_transfer.py's scaling case, min of 5, 2 busy cores; no gain at 1k).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        was_on = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_on:
                gc.enable()

    return wrapper


@_gc_paused
def plan_transfer(base, raw, pool=None) -> Plan:
    """Pair, plan and validate without writing anything; the plan's ``problems`` say what is wrong (tensors
    without a partner are in ``missing``/``unexpected``, not problems)."""
    plan = prepare(base, raw, pool=pool).plan
    return replace(plan, problems=check(plan, strict=False).problems)


@_gc_paused
def pair_layers(base, raw, example_inputs=None, mapping=None, strict: bool = True, pool=None):
    """Pair ``base`` and ``raw`` as ``assign_weight`` would (names first, then by the order layers run on
    ``example_inputs``, or by ``mapping``), plan and validate, write nothing; return the
    :class:`padiff_lite.mapping.Mapping` (``.save(path)`` writes it). Raises TransferError as
    ``assign_weight`` would (with ``strict``, layers left unpaired are an error too)."""
    prepared = prepare(base, raw, inputs=example_inputs, mapping=mapping, pool=pool, check_settings=True)
    base, raw, plan = prepared.base, prepared.raw, prepared.plan
    checked = check(plan, strict=strict, context=prepared.context)
    refuse(f"cannot pair {base.framework}:{base.name} -> {raw.framework}:{raw.name}", checked.problems)
    return from_plan(plan, prepared.notes)


@_gc_paused
def assign_weight(base, raw, strict: bool = True, check_finite: bool = False, init_unmatched=None,
                  std: float = 0.02, example_inputs=None, mapping=None, pool=None,
                  optimizers=None, schedulers=None) -> TransferReport:
    """Copy the weights of ``base`` into ``raw`` (models or ProxyModels, torch or paddle, either way).

    Returns a :class:`TransferReport`. Raises :class:`TransferError` listing every problem when the
    transfer cannot be done correctly; ``raw`` is then left exactly as it was.

    strict: when False, tensors without a partner are listed in ``report.missing`` (raw side) and
        ``report.unexpected`` (base side) instead of being an error.
    check_finite: refuse a base model holding NaN or Inf instead of copying them and flagging them.
    init_unmatched: with strict=False, initialise exactly the tensors listed in ``report.missing``
        (never a transferred one): "bert" (N(0, std) weights, zero biases, norms 1/0, padding rows 0),
        "xavier", "orthogonal", "default" (the framework's own initialisation) or a callable
        ``fn(module)``; see :mod:`padiff_lite.init` for the exact rules. ``report.initialised`` lists
        "path: rule" for each tensor written; tensors no rule covers stay as built and are named in
        ``report.notes``. None (default) leaves the missing tensors as built.
    std: the standard deviation of "bert" (HF's initializer_range).
    example_inputs: an input both models accept, in the forms ``auto_diff`` takes (a numpy array, a tuple of
        them, or ``({"x": base_tensor}, {"x": raw_tensor})``). When names and structure leave layers unpaired,
        both models run once on it and the layers they left are paired by the order they run
        (:mod:`padiff_lite.align`); names always go first. Ambiguity raises AmbiguousPairingError.
    mapping: a mapping file (JSON), dict or Mapping (``report.mapping`` of an earlier transfer, or written by
        ``padiff-lite pair``) pairing the layers names leave open, instead of running the models.

    ``report.mapping`` lists every layer pair and tensor copy with how it was found.
    pool: the registry of rules (default: the global ``init_pool``; an ``InitPool()`` of one's own works too).
    optimizers: ``(base_optimizer, raw_optimizer)``: move each parameter's optimizer state (moments, momentum
        buffers, step counts) with it, by the same copies (:mod:`padiff_lite.optim_state`); settings that cannot
        carry over are refused before anything is written, differing hyperparameters are listed in ``report.notes``.
    schedulers: ``(base_scheduler, raw_scheduler)``: move the learning-rate schedule's position (and the raw
        optimizer's current learning rate) too (:mod:`padiff_lite.sched_state`); differing schedules are refused.
    """
    t0 = time.perf_counter()
    for name, value in (("strict", strict), ("check_finite", check_finite)):
        if not isinstance(value, bool):
            raise TypeError(f"assign_weight({name}=...) takes True or False, got {type(value).__name__} {value!r}")
    if init_unmatched is not None:
        if strict:
            raise InitError(
                f"init_unmatched={scheme_name(init_unmatched)!r} only applies with strict=False: with strict=True "
                "every raw tensor must get a partner, so nothing is left to initialise. Pass strict=False"
            )
        check_scheme(init_unmatched, std)
    prepared = prepare(base, raw, inputs=example_inputs, mapping=mapping, pool=pool, check_settings=True)
    return run_plan(prepared.plan, strict=strict, check_finite=check_finite, context=prepared.context,
                    init_unmatched=init_unmatched, std=std, started=t0, optimizers=optimizers, schedulers=schedulers)


def run_plan(plan: Plan, *, strict: bool = True, check_finite: bool = False, context: Context = Context(),
             init_unmatched=None, std: float = 0.02, started: float | None = None,
             optimizers=None, schedulers=None) -> TransferReport:
    """Validate -> execute -> report for a built plan (``assign_weight``'s second half; ``auto_diff`` plans once
    and uses the plan for its gradients too). Arguments as for ``assign_weight``; ``found``: the Mapping the plan
    was built with."""
    t0 = time.perf_counter() if started is None else started
    base, raw = plan.base, plan.raw
    checked = check(plan, strict=strict, check_finite=check_finite, context=context)
    refuse(f"cannot transfer {base.framework}:{base.name} -> {raw.framework}:{raw.name}; nothing was written",
           checked.problems)
    init = plan_init(raw, init_unmatched, std, only=plan.missing) if init_unmatched is not None else None
    moves = optim_state.prepare(plan, optimizers) if optimizers is not None else None  # refuses before any write
    sched = sched_state.prepare(schedulers, optimizers) if schedulers is not None else None
    undos = []
    try:
        for m in (moves, sched):
            if m is not None:
                undos.append(m.write())
        stats = execute(plan, init.ops if init else (), alike=checked.alike)
    except BaseException as exc:
        if not (isinstance(exc, TransferInterrupted) and exc.completed):
            for undo in reversed(undos):
                undo()  # the model was put back: so are its optimizer state and schedule position
        raise
    report = build_report(plan, stats, time.perf_counter() - t0, checked.casts)
    notes = context.notes
    report.notes += notes + (moves.notes if moves is not None else []) + (sched.notes if sched is not None else [])
    report._mapping = lambda: from_plan(plan, notes)
    if init is not None:
        report.initialised = [f"{p}: {rule}" for p, rule in stats.initialised]
        written = {p for p, _ in stats.initialised} | {p for p, _ in init.left}
        left = init.left + [(p, f"init_unmatched={scheme_name(init_unmatched)!r} did not change it")
                            for p in plan.missing if p not in written]
        report.notes += [f"left as built: {p}: {why}" for p, why in left]
    log.debug("transferred %d tensors (%d values) %s -> %s in %.3f s",
              report.tensors, report.elements, report.base, report.raw, report.seconds)
    for note in report.notes:
        log.debug("%s", note)
    return report

