"""``auto_diff``: prove a transfer by outputs, gradients and training steps, and point at the first difference.

It composes the other modules of ``verify``: inputs (``inputs``), one plan and transfer (``plan``/``transfer``),
the settings check (``settings``), the steps (``training``: forward layer by layer through ``session``, loss,
backward and optimizer compared parameter by parameter through ``mapped``), and the report (``render``).
"""
from __future__ import annotations

from ..inputs import per_step, split_inputs
from ..prepare import prepare
from ..proxy import create_model
from . import settings
from .numerics import ATOL, GRAD_RTOL, RTOL, STEP_RTOL, Tolerance
from .render import label
from .results import DiffResult, LayerDiff, TreeLine
from .session import ABSORBED
from .training import Setup, run_step

PHASES = ("forward", "backward", "both")


def _pair_of(value, name, accept, what):
    if value is None:
        return None
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(accept(v) for v in value)):
        from ..errors import DiffInputError

        raise DiffInputError(f"{name} must be a pair (base, raw) of {what}, got {type(value).__name__}")
    return tuple(value)


def auto_diff(base, raw, inputs, *, atol: float | None = None, rtol: float | None = None, auto_init: bool = True,
              diff_phase: str | None = None, loss_fns=None, optimizers=None, steps: int = 1,
              compare_mode: str = "strict", single_step: bool = False, pool=None,
              interleave: bool = True, isolate_steps: bool = True) -> DiffResult:
    """Run ``base`` and ``raw`` on the same inputs and compare every paired layer; with ``loss_fns``,
    ``optimizers`` or ``steps``, train both side by side and compare the loss, every gradient and every weight.

    base, raw: torch/paddle models or ProxyModels (their layer maps and black/white lists are used).
    inputs: ``({"x": base_tensor}, {"x": raw_tensor})`` (PaDiff's form, base first), a numpy array, a tuple of
        numpy arrays fed positionally to both models, or a dict of numpy arrays fed by keyword
        (``{"input_ids": ids}``); arrays are converted per framework, dtype kept. With ``steps=N``, also a list
        of N such items, one per step.
    atol, rtol, compare_mode: ``"strict"`` compares every value, ``|raw - base| <= atol + rtol * S`` with ``S``
        the tensor's largest magnitude (scaled by the tensor, so float32 accumulation in deep layers is no
        divergence); gradients value by value too, within ``atol + rtol_g * S`` plus 4 times how far base's own
        gradient moves when its weights move by a few ulps (one more forward and backward of base per step: the
        float32 noise floor of each gradient on these inputs, ``verify/reference.py``); weights after an optimizer
        step by the L2 norm of their difference against base's update (and their gradient's noise). That reference
        run also gives every layer output and the loss a noise floor when gradients are compared or training. ``"mean"`` compares the tensors' means as
        PaDiff does (``verify/numerics.py``). Defaults: atol 1e-7, rtol 1e-4 (gradients 1e-3 of their scale,
        weights after a step 2e-2 of the update's norm); an rtol given applies to gradients and steps too.
    auto_init: transfer base -> raw with ``assign_weight`` first.
    diff_phase: "forward" (layer outputs), "backward" (gradients only) or "both". Default: "forward", or "both"
        when training. Without a loss the backward pass starts from the mean of the outputs (PaDiff's seed).
    loss_fns: ``(base_fn, raw_fn)``, each called with its model's outputs, returning a scalar loss tensor.
    optimizers: ``(base_opt, raw_opt)``: torch/paddle optimizers (stepped; gradients are cleared by
        auto_diff) or callables that step and clear gradients (for schedulers, clipping, accumulation). Framework
        optimizers are checked first (kind, learning rate, betas, epsilon, momentum, weight decay per parameter,
        gradient clipping) with the models' train/eval state: a mismatch is refused (``DiffInputError``).
    steps: training steps on the same inputs (or on one input item per step).
    single_step: feed each raw layer the inputs its base layer got (and, backward, the gradients its base
        layer's outputs got), so each layer is judged on its own and errors do not accumulate.
    pool: the registry of rules to pair, transfer and map gradients with (default: the global ``init_pool``).
    interleave: run base in a second thread, a layer ahead of raw, so that only about one layer's outputs are
        held at a time (forward-only comparisons; the results are the same).
    isolate_steps: once a step's gradients agree, raw's optimizer steps on base's (mapped), so each step is judged
        alone; False lets the runs part by rounding (carried into later noise floors, docs/design.md).

    Returns a :class:`DiffResult` (true when everything agrees): ``step`` and ``stage`` name the first
    difference, ``steps`` holds every step's loss, layers, gradients and weights. Raises
    :class:`DiffInputError` for inputs or settings that do not fit, :class:`OutputStructureError` when no tensor
    of the final outputs can be paired, :class:`DiffError` when a model fails to run.
    """
    training = loss_fns is not None or optimizers is not None or steps != 1
    phase = diff_phase if diff_phase is not None else ("both" if training else "forward")
    if phase not in PHASES:
        raise ValueError(f"diff_phase must be one of {PHASES}, got {diff_phase!r}")
    tol = Tolerance(ATOL if atol is None else atol, RTOL if rtol is None else rtol, compare_mode,
                    GRAD_RTOL if rtol is None else rtol, STEP_RTOL if rtol is None else rtol)
    loss_fns = _pair_of(loss_fns, "loss_fns", callable, "callables")
    optimizers = _pair_of(optimizers, "optimizers", lambda o: callable(o) or settings.is_framework_optimizer(o),
                          "torch/paddle optimizers or callables")
    base, raw = create_model(base), create_model(raw)
    items = per_step(inputs, steps)
    sides = [split_inputs(item, base, raw) for item in items]
    # one pairing (layers names leave open paired by the order they run), with the modules that hold no tensors
    # (their outputs are compared too); one plan from it: the transfer runs it, gradients and weights are mapped by
    # its operations
    prepared = prepare(base, raw, inputs=items[0], pool=pool, keep_empty=True)
    plan = prepared.plan if auto_init or phase != "forward" or optimizers is not None else None
    report = None
    pairs = prepared.pairing.matched
    from .mapped import imperative_note, trainable_ops

    notes = settings.check(base, raw, pairs, trainable_ops(plan) if plan is not None else [], optimizers, training)
    if auto_init:
        from ..transfer import run_plan

        report = run_plan(plan, context=prepared.context)
    hooked = _hooked(pairs)
    setup = Setup(base, raw, pairs, hooked, plan, tol, phase, training, single_step, interleave, loss_fns,
                  optimizers, notes, isolate_steps=isolate_steps)
    if setup.need_backward:
        base.adapter.clear_grads(base.model)
        raw.adapter.clear_grads(raw.model)
    records = [run_step(setup, s, side) for s, side in enumerate(sides)]
    result = _result(setup, records, report, {i for i, _ in hooked[0]}, plan)
    if not result.ok and not training:
        _weights_explaining(result, prepared.plan, tol)
    return result


def _weights_explaining(result: DiffResult, plan, tol: Tolerance):
    """Which weights explain a difference, named to the part of a fused/packed tensor: ``weight_diffs`` and notes."""
    from .mapped import differing_weights

    result.weight_diffs = differing_weights(plan, tol)
    for w in result.weight_diffs[:5]:
        result.notes.append(f"raw {w.raw_param}{' ' + w.note if w.note else ''} does not hold base "
                            f"{w.base_param} as the transfer maps it: max abs diff {w.max_abs_diff:.3g}, "
                            f"{w.mismatched} of {w.total} values")
    if len(result.weight_diffs) > 5:
        result.notes.append(f"... and {len(result.weight_diffs) - 5} more tensors (result.weight_diffs)")


def _hooked(pairs):
    hooked_b, hooked_r, seen = [], [], set()
    for i, pair in enumerate(pairs):
        if not (pair.base.on and pair.raw.on):
            continue
        key_b, key_r = ("b", id(pair.base.module)), ("r", id(pair.raw.module))
        if key_b in seen or key_r in seen:  # a module shared under two names is hooked once
            continue
        seen.update((key_b, key_r))
        hooked_b.append((i, pair.base.module))
        hooked_r.append((i, pair.raw.module))
    return hooked_b, hooked_r


def _result(setup: Setup, records, report, hooked, plan) -> DiffResult:
    base, raw, tol = setup.base, setup.raw, setup.tol
    first = next((r for r in records if r.stage is not None), None)
    shown = first or records[0]
    result = DiffResult(f"{base.framework}:{base.name}", f"{raw.framework}:{raw.name}", setup.phase, tol.atol,
                        tol.rtol, shown.max_abs_diff, shown.max_rel_diff, shown.mismatched, shown.total,
                        setup.finals[0], transfer=report, raw_output_structure=setup.finals[1])
    result.compare_mode, result.single_step, result.training = tol.mode, setup.single_step, setup.training
    result.steps = records
    result.step, result.stage = (first.step, first.stage) if first is not None else (None, None)
    result.layers, result.not_comparable = shown.layers, shown.not_comparable
    result.first_diff, result.grads, result.first_grad_diff = shown.first_diff, shown.grads, shown.first_grad_diff
    result.first_weight_diff = shown.first_weight_diff
    result.peak_held_bytes, result.interleaved = setup.peak_held_bytes, setup.interleaved
    result.notes.extend(setup.notes)
    if setup.single_step:
        result.notes.append("single step: each raw layer was given the inputs (and, backward, the output gradients) "
                            "of its base layer and passed base's outputs on, so the final outputs compared are not "
                            "an end-to-end run; compare without single_step for that")
    isolated = [r.step for r in records if r.isolated]
    if isolated:
        result.notes.append(
            f"steps isolated: after its gradients agreed, raw's optimizer stepped on base's gradients (carried "
            f"through the transfer plan) in {len(isolated)} of {len(records)} steps, so each step is judged on its "
            "own code; isolate_steps=False lets the two runs train apart")
    for idx, side in setup.only.items():
        pair = setup.pairs[idx]
        result.notes.append(
            f"{label(pair.base.path)} -> {label(pair.raw.path)}: called more often on the {side} side; the extra "
            "calls were not compared (a fused fast path or a module reused differently)")
    absorbed = sorted({label(ld.base_path) for ld in result.layers if not ld.ok and ld.note.endswith(ABSORBED)})
    if absorbed:
        result.notes.append(f"{len(absorbed)} layer(s) differ while the layer enclosing them agrees (they return "
                            f"another form of the same result; not counted as divergences): {', '.join(absorbed[:6])}"
                            + (f" and {len(absorbed) - 6} more" if len(absorbed) > 6 else ""))
    if result.not_comparable:
        names = sorted({label(nc.base_path) for nc in result.not_comparable})
        shown_names = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        result.notes.append(f"{len(result.not_comparable)} calls not comparable (outputs of a different form that "
                            f"cannot be aligned; see result.not_comparable): {shown_names}")
    if plan is not None and (setup.need_backward):
        from .mapped import imperative_note

        n = imperative_note(plan)
        if n:
            result.notes.append(n)
    result.tree = _tree(setup.pairs, result, hooked)
    return result


def _tree(pairs, result: DiffResult, hooked: set[int]) -> list[TreeLine]:
    """The model tree the report shows: every pair in the base model's order, with what its calls showed."""
    preorder: dict[int, int] = {}

    def walk(node):
        preorder.setdefault(id(node), len(preorder))
        for _, child in node.children:
            walk(child)

    for pair in pairs:
        if pair.how in ("root", "layer_map"):
            walk(pair.base)
    status: dict[tuple, str] = {}
    worst: dict[tuple, LayerDiff] = {}
    for ld in result.layers:
        key = (ld.base_path, ld.raw_path)
        if not ld.ok and (key not in worst or ld.max_abs_diff > worst[key].max_abs_diff):
            worst[key] = ld
        status.setdefault(key, "ok")
    unaligned = {(nc.base_path, nc.raw_path) for nc in result.not_comparable}
    lines = []
    ordered = sorted(range(len(pairs)), key=lambda i: preorder.get(id(pairs[i].base), 1 << 30))
    for i in ordered:
        pair = pairs[i]
        key = (pair.base.path, pair.raw.path)
        if key in worst:
            s = f"DIFF max abs {worst[key].max_abs_diff:.3g}"
        elif key in status:
            s = "ok"
        elif key in unaligned:
            s = "not comparable"
        elif i in hooked:
            s = "not called"
        else:
            s = "not compared"
        depth = 0 if not pair.base.path else pair.base.path.count(".") + 1
        lines.append(TreeLine(depth, pair.base.path, pair.raw.path, type(pair.base.module).__name__,
                               type(pair.raw.module).__name__, s))
    return lines
