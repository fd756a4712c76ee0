"""The front half every entry point starts from: pair once (names, then execution or a mapping where names leave
layers open), then plan from that one pairing.

``assign_weight``, ``pair_layers``, ``plan_transfer`` (:mod:`.transfer`), ``auto_diff`` (:mod:`.verify.diff`),
``convert_checkpoint`` (:mod:`.checkpoint`) and the dump checks (:mod:`.verify.dump_check`) call :func:`prepare`
and go on from its :class:`Prepared`: validation with their own demands (:func:`padiff_lite.validate.check`), then
their executor or their comparison.

This module wires the stages together: pairing by execution (:mod:`.align`) gets its fit check
(:func:`padiff_lite.validate.pair_fit`) and its call traces (:mod:`.trace`, on the inputs read by :mod:`.inputs`)
from here, and deciding fused layouts (:mod:`.layout_decide`, a step of planning) gets its planner and validator
from here, so no stage imports a later one.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import cached_property

from .align import mapping_from_calls
from .inputs import split_inputs
from .layout_decide import Decider
from .mapping import Context, Mapping, Paired
from .mapping import prepare as prepare_mapping
from .pairing import Pairing, apply_mapping, pair_models
from .plan import Plan, plan_from, plan_pairs
from .proxy import create_model
from .special_init import registry
from .trace import record_calls
from .validate import check, pair_fit


@dataclass(eq=False)
class Prepared:
    """Two models paired once: ``pairing`` (names, then what paired the layers they left open), ``context`` (what
    that was, and its Mapping: validation's checks and hints read it), and the ``plan`` made from that pairing
    (built when first read; planning's own problems are in it, the callers' demands are validated by
    :func:`padiff_lite.validate.check` with this ``context``)."""

    base: object  # ProxyModel
    raw: object  # ProxyModel
    pool: object  # the registry of rules used
    pairing: Pairing
    context: Context = Context()

    @property
    def found(self) -> Mapping | None:
        """The Mapping that paired what names left open: given by the user, found by running the models, or None."""
        return self.context.mapping

    @cached_property
    def plan(self) -> Plan:
        return plan_from(self.pairing, self.found, decider(self.pool))

    @property
    def notes(self) -> list[str]:
        """What pairing by execution noted (layers that never ran, or ran more than once)."""
        return self.context.notes


def prepare(base, raw, *, inputs=None, mapping=None, pool=None, keep_empty: bool = False,
            check_settings: bool = False, traces=None, runnable: bool = True) -> Prepared:
    """Pair ``base`` and ``raw`` (models or ProxyModels) once and return a :class:`Prepared`.

    inputs: an input both models accept (the forms of :mod:`padiff_lite.inputs`): when names leave layers open on
        both sides, both models run once on it and the open layers are paired by the order they run.
    mapping: a mapping file, dict or Mapping pairing what names leave open instead (read, turned to run base ->
        raw and checked against both models).
    traces: ``traces(base modules, raw modules)`` giving the two call traces instead of running (a dump's report).
    pool: the registry of rules (default: the global ``init_pool``, chosen by :func:`padiff_lite.special_init.registry`).
    keep_empty: also pair modules that hold no tensors (``pairing.matched``; what comparing outputs hooks).
    check_settings: with ``inputs``, also compare the settings of weightless layers (dropout, pooling) running
        between paired layers (:mod:`padiff_lite.settings`).
    runnable: False where the models cannot run (checkpoint conversion): a refusal then does not suggest example
        inputs.
    """
    if mapping is not None and inputs is not None:
        raise TypeError("assign_weight() takes mapping= or example_inputs=, not both: a mapping says the pairs, "
                        "example inputs find them")
    base, raw = create_model(base), create_model(raw)
    pool = registry(pool)
    found = prepare_mapping(mapping, base, raw) if mapping is not None else None
    pairing = pair_models(base, raw, pool, keep_empty=keep_empty)
    if traces is None and inputs is not None:
        traces = _runner(base, raw, inputs)
    if traces is not None:
        found = mapping_from_calls(pairing, traces, functools.partial(pair_fit, base, raw), check_settings)
    if found is not None and found.layers:
        apply_mapping(pairing, found)
    if mapping is not None:
        paired = Paired.MAPPING
    elif traces is not None:
        paired = Paired.EXECUTION
    else:
        paired = Paired.NAMES if runnable else Paired.NAMES_ONLY
    return Prepared(base, raw, pool, pairing, Context(paired, found))


def _runner(base, raw, inputs):
    """The call traces of one run of both models on ``inputs`` (read only when a run is needed)."""
    split = []

    def traces(modules_b, modules_r):
        if not split:
            split.extend(split_inputs(inputs, base, raw))
        (bargs, bkw), (rargs, rkw) = split
        return record_calls(base, modules_b, bargs, bkw), record_calls(raw, modules_r, rargs, rkw)

    return traces


def decider(pool) -> Decider:
    """What decides fused layouts while planning (:class:`padiff_lite.layout_decide.Decider`), given its planner (a
    unit's private copies paired and planned with ``pool``'s rules, deciding the same way) and its validator (strict)."""

    def plan_models(base_module, raw_module) -> Plan:
        return plan_from(pair_models(create_model(base_module), create_model(raw_module), pool), None, made)

    made = Decider(plan_models, _plan_problems, _plan_of)
    return made


def _plan_problems(plan: Plan) -> list:
    return plan.problems or check(plan, strict=True).problems


def _plan_of(base, raw, pairs) -> Plan:
    plan = Plan(base, raw)
    plan_pairs(plan, pairs)
    return plan
