"""assign_weight: the transfer pipeline, pair -> plan -> validate -> execute -> report."""
from __future__ import annotations

import functools
import gc
import logging
import time

from .errors import InitError, TransferError
from .execute import _nonfinite_count, execute
from .init import check_scheme, plan_init, scheme_name
from .plan import Plan, build_plan
from .proxy import create_model
from .report import PairRecord, TransferReport

log = logging.getLogger("padiff_lite")


def _gc_paused(fn):
    """Run ``fn`` with Python's cyclic garbage collector paused.

    Pairing and planning allocate a few small objects per module and tensor; with a large model in
    memory every automatic full collection walks all of its objects, which made planning a
    6,000-module model about three times slower. Nothing here creates garbage cycles that need
    collecting before the call returns; the collector is switched back on (if it was on) afterwards.
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
def plan_transfer(base, raw) -> Plan:
    """Pair, plan and validate without writing anything; the plan's ``problems`` say what is wrong."""
    return build_plan(create_model(base), create_model(raw))


@_gc_paused
def assign_weight(base, raw, strict: bool = True, check_finite: bool = False, init_unmatched=None,
                  std: float = 0.02) -> TransferReport:
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
    base, raw = create_model(base), create_model(raw)
    plan = build_plan(base, raw)
    problems = list(plan.problems)
    if strict and (plan.missing or plan.unexpected):
        problems = [_unpaired_problem(plan)] + problems
    if check_finite:
        problems += _nonfinite_problems(plan)
    if problems:
        raise TransferError(
            f"cannot transfer {base.framework}:{base.name} -> {raw.framework}:{raw.name}; "
            f"nothing was written ({len(problems)} problem{'s' * (len(problems) != 1)}):",
            problems,
        )
    init = plan_init(raw, init_unmatched, std, only=plan.missing) if init_unmatched is not None else None
    stats = execute(plan, init.ops if init else ())
    report = _report(plan, stats, time.perf_counter() - t0)
    if init is not None:
        report.initialised = list(stats.initialised)
        written = {line.split(": ", 1)[0] for line in report.initialised}
        left = init.left + [f"{p}: init_unmatched={scheme_name(init_unmatched)!r} did not change it"
                            for p in plan.missing if p not in written and not any(x.startswith(p + ": ") for x in init.left)]
        report.notes += [f"left as built: {x}" for x in left]
    log.debug("transferred %d tensors (%d values) %s -> %s in %.3f s",
             report.tensors, report.elements, report.base, report.raw, report.seconds)
    for note in report.notes:
        log.debug("%s", note)
    return report


def _unpaired_problem(plan: Plan) -> str:
    lines = []
    for u in plan.unpaired:
        lines.append(f"unpaired {u}: {', '.join(u.tensor_paths())}")
    listed = {p for u in plan.unpaired for p in u.tensor_paths()}
    rest_m = [p for p in plan.missing if p not in listed]
    rest_u = [p for p in plan.unexpected if p not in listed]
    if rest_m:
        lines.append("raw tensors with no base partner: " + ", ".join(rest_m))
    if rest_u:
        lines.append("base tensors with no raw partner: " + ", ".join(rest_u))
    return (
        "\n    ".join(["structure differs:"] + lines + plan.hints)
        + "\n    fix: pair the layers explicitly with set_layer_map, leave them out with update_black_list, "
        "or pass strict=False to transfer what matches and list the rest"
    )


def _nonfinite_problems(plan: Plan) -> list[str]:
    """check_finite=True: every base tensor that would be read (planned ops and special-init layers)."""
    ba = plan.base.adapter
    refs = {id(op.src.tensor): op.src for op in plan.ops if op.src is not None}
    for pair in plan.imperative:
        for ref in pair.base.subtree_tensors().values():
            refs.setdefault(id(ref.tensor), ref)
    out = []
    for ref in refs.values():
        if not ba.readable(ref.tensor):
            continue  # already a "holds no data" problem
        n = _nonfinite_count(ba.torch_view(ref.tensor))  # one sum per tensor; counts only when it is not finite
        if n:
            out.append(f"base {ref.path} holds {n} NaN/Inf value{'s' * (n != 1)} (check_finite=True); "
                       "fix the source weights or pass check_finite=False to copy them as they are")
    return out


def _report(plan: Plan, stats, seconds) -> TransferReport:
    base, raw = plan.base, plan.raw
    counts: dict[int, int] = {}
    for op in plan.ops:
        counts[id(op.pair)] = counts.get(id(op.pair), 0) + 1
    counts.update(stats.written)  # imperative special inits: the tensors each wrote
    rules = {id(None): "default"}  # rule text per entry: formatted once, not once per pair
    records = []
    for pair in plan.pairs:
        e = pair.entry
        rule = rules.get(id(e))
        if rule is None:
            rule = rules[id(e)] = f"{'mapping' if e.kind == 'mapping' else 'special init'} {e.key}"
        records.append(PairRecord(pair.base.path, pair.raw.path, type(pair.base.module).__name__,
                                  type(pair.raw.module).__name__, rule, pair.how, counts.get(id(pair), 0)))
    return TransferReport(
        base=f"{base.framework}:{base.name}", raw=f"{raw.framework}:{raw.name}", pairs=records,
        tensors=stats.tensors, elements=stats.elements, bytes=stats.bytes, seconds=seconds,
        missing=list(plan.missing), unexpected=list(plan.unexpected), casts=list(plan.casts),
        nonfinite=dict(stats.nonfinite), tied=list(plan.tied), notes=list(plan.notes) + list(stats.notes),
        filled=[op.describe() for op in plan.ops if op.kind == "fill"],
    )
