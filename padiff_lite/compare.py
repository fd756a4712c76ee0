"""auto_diff: prove a transfer by outputs, and point at the first layer that diverges.

Both models run forward in eval mode on the same inputs, with a hook on every paired submodule
(the pairing of ``pairing.py``, with ``keep_empty`` so that activations and other modules without
tensors are compared too). Each hook keeps a copy of the module's inputs and outputs. Then the
k-th call of a base module is compared with the k-th call of its raw partner.

"First" is the earliest divergence in the base model's call order. A hook fires when its module
finishes, so a diverging leaf is met before the parents that contain it, and a layer that merely
passes on a difference it received is met after the layer that made it.

With ``diff_phase="both"`` a backward pass on the sum of the outputs follows, and each parameter's
gradient is compared with its partner's, mapped through the transfer plan's own operation (rows,
transpose, reshape), so a Linear's ``[out, in]`` gradient meets paddle's ``[in, out]`` one.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from . import layout
from .errors import DiffError, DiffInputError, OutputStructureError
from .pairing import pair_models
from .proxy import create_model
from .special_init import init_pool

PHASES = ("forward", "both")
INPUT_FORMS = (
    "accepted input forms: ({'x': base_tensor}, {'x': raw_tensor}) - keyword inputs for each model, base "
    "first (PaDiff's form); a numpy array; or a tuple/list of numpy arrays fed positionally to both models"
)


# -- results -------------------------------------------------------------------
@dataclass
class LayerDiff:
    """One call of a pair of modules compared: the k-th call of the base module with the k-th of the raw one."""

    base_path: str
    raw_path: str
    base_class: str
    raw_class: str
    call: int  # 0 for the first call of this module, 1 for the second, ...
    order: int  # position of this call in the base model's call order (0 = the first module to finish)
    output: str  # the output the shapes refer to ("out", "out[0]", "out['logits']")
    base_shape: tuple
    raw_shape: tuple
    max_abs_diff: float
    max_rel_diff: float
    mismatched: int  # values outside atol + rtol * |base|
    total: int
    inputs_agree: bool | None = None  # only for the first divergence; None when the inputs hold no tensors
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.mismatched == 0

    def __str__(self):
        return (f"base {_p(self.base_path)} ({self.base_class}) {list(self.base_shape)} vs raw {_p(self.raw_path)} "
                f"({self.raw_class}) {list(self.raw_shape)}: max abs diff {self.max_abs_diff:.3g}, max rel diff "
                f"{self.max_rel_diff:.3g}, {self.mismatched} of {self.total} values outside tolerance")


@dataclass
class GradDiff:
    """The gradient of one base parameter (mapped to the raw layout) compared with its raw partner's."""

    base_path: str  # the layer
    raw_path: str
    base_class: str
    raw_class: str
    base_param: str  # dotted path of the parameter in the whole model
    raw_param: str
    base_shape: tuple
    raw_shape: tuple
    max_abs_diff: float
    max_rel_diff: float
    mismatched: int
    total: int
    note: str = ""  # the layout mapping applied, or which side had no gradient

    @property
    def ok(self) -> bool:
        return self.mismatched == 0

    def __str__(self):
        return (f"grad of base {self.base_param} {list(self.base_shape)} vs raw {self.raw_param} "
                f"{list(self.raw_shape)}{' (' + self.note + ')' if self.note else ''}: max abs diff "
                f"{self.max_abs_diff:.3g}, max rel diff {self.max_rel_diff:.3g}, {self.mismatched} of {self.total} "
                "values outside tolerance")


@dataclass
class _TreeLine:
    depth: int
    base_path: str
    raw_path: str
    base_class: str
    raw_class: str
    status: str


@dataclass
class DiffResult:
    base: str  # "torch:Net"
    raw: str
    phase: str
    atol: float
    rtol: float
    max_abs_diff: float  # over the final outputs
    max_rel_diff: float
    mismatched: int  # final output values outside tolerance
    total: int
    output_structure: str
    first_diff: LayerDiff | None = None
    first_grad_diff: GradDiff | None = None
    layers: list[LayerDiff] = field(default_factory=list)  # every compared call, in base call order
    grads: list[GradDiff] = field(default_factory=list)  # every compared gradient, in backward order
    notes: list[str] = field(default_factory=list)
    transfer: object = None  # the TransferReport when auto_init ran
    tree: list[_TreeLine] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.mismatched == 0 and self.first_diff is None and self.first_grad_diff is None

    def __bool__(self):
        return self.ok

    def __str__(self):
        return "\n".join(_render(self))


def _p(path: str) -> str:
    return path or "<root>"


# -- comparing arrays ----------------------------------------------------------
def compare_arrays(base, raw, atol: float, rtol: float) -> tuple[float, float, int]:
    """(max abs diff, max rel diff, values outside tolerance) of two numpy arrays.

    A value is outside tolerance when ``|raw - base| > atol + rtol * |base|``. NaN and Inf are
    compared by position: NaN equals NaN, Inf equals Inf of the same sign; any other pairing with a
    non-finite value is a mismatch, and makes both maxima infinite. The relative difference is
    ``|raw - base| / max(|base|, |raw|)`` (0 where both are 0). Different shapes: every value mismatches.
    """
    base, raw = np.asarray(base), np.asarray(raw)
    if base.shape != raw.shape:
        return math.inf, math.inf, max(base.size, raw.size, 1)
    if base.size == 0:
        return 0.0, 0.0, 0
    kind = np.complex128 if np.iscomplexobj(base) or np.iscomplexobj(raw) else np.float64
    a, b = base.astype(kind), raw.astype(kind)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        finite = np.isfinite(a) & np.isfinite(b)
        d = np.where(finite, np.abs(a - b), 0.0)
        scale = np.maximum(np.abs(a), np.abs(b))
        rel = np.where(finite & (scale > 0), d / np.where(scale > 0, scale, 1.0), 0.0)
        bad = finite & (d > atol + rtol * np.abs(a))
        same_nonfinite = (np.isnan(a) & np.isnan(b)) | (a == b)
        bad_nonfinite = ~finite & ~same_nonfinite
    n = int(bad.sum()) + int(bad_nonfinite.sum())
    if bad_nonfinite.any():
        return math.inf, math.inf, n
    return float(d.max()), float(rel.max()), n


# -- capturing outputs ---------------------------------------------------------
def _capture(obj, adapter, where="out"):
    """(leaves, structure): leaves are (where, numpy copy or plain value); structure names the nesting and shapes."""
    leaves: list[tuple[str, object]] = []

    def walk(o, w):
        if adapter.is_tensor(o):
            v = adapter.snapshot(o)
            leaves.append((w, v))
            return f"Tensor{list(v.shape)}"
        if isinstance(o, Mapping):
            return f"{type(o).__name__}(" + ", ".join(f"{k}={walk(o[k], f'{w}[{k!r}]')}" for k in o) + ")"
        if isinstance(o, (tuple, list)):
            return f"{type(o).__name__}(" + ", ".join(walk(x, f"{w}[{i}]") for i, x in enumerate(o)) + ")"
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            fs = [f.name for f in dataclasses.fields(o)]
            return f"{type(o).__name__}(" + ", ".join(f"{n}={walk(getattr(o, n), f'{w}.{n}')}" for n in fs) + ")"
        leaves.append((w, o))
        return type(o).__name__

    structure = walk(obj, where)
    return leaves, structure


@dataclass
class _Call:
    pair: int
    call: int
    out: tuple  # (leaves, structure)
    inputs: tuple


def _tensors(leaves):
    return [(w, v) for w, v in leaves if isinstance(v, np.ndarray)]


def _compare_captures(bcap, rcap, atol, rtol, strict: bool, what: str):
    """Compare two captures; returns (output, base_shape, raw_shape, max_abs, max_rel, mismatched, total, note)."""
    (bl, bs), (rl, rs) = bcap, rcap
    note = ""
    if bs != rs:
        if strict:
            raise OutputStructureError(
                f"{what}: the models return outputs of different structure: base returns {bs}, raw returns {rs}; "
                "make both return the same nesting of tensors (for example wrap one model so it returns the "
                "same tuple or dict), or compare a submodule whose outputs agree in form"
            )
        bt, rt = _tensors(bl), _tensors(rl)
        if not bt or not rt:
            return None
        bl, rl = bt[:1], rt[:1]
        note = f"outputs differ in structure (base {bs}, raw {rs}): the first tensors were compared"
    worst = (0.0, 0.0)
    mismatched = total = 0
    shown = None
    for (w, bv), (_, rv) in zip(bl, rl):
        if isinstance(bv, np.ndarray) and isinstance(rv, np.ndarray):
            ma, mr, n = compare_arrays(bv, rv, atol, rtol)
            size = max(bv.size, rv.size)
        else:  # plain values (None, numbers, strings) must be equal; NaN meets NaN
            ma, mr, n, size = 0.0, 0.0, int(not _same_value(bv, rv)), 1
            bv = rv = np.zeros(())
        worst = (max(worst[0], ma), max(worst[1], mr))
        mismatched += n
        total += size
        if shown is None or (n and not shown[3]):
            shown = (w, tuple(np.shape(bv)), tuple(np.shape(rv)), n)
    if shown is None:
        shown = ("out", (), (), 0)
    return shown[0], shown[1], shown[2], worst[0], worst[1], mismatched, total, note


def _same_value(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        return bool(a == b)
    except Exception:  # objects without a truthful ==: not counted as a difference
        return True


# -- inputs --------------------------------------------------------------------
def _describe(obj) -> str:
    if isinstance(obj, (tuple, list)):
        return f"{type(obj).__name__} of {len(obj)}: " + ", ".join(type(x).__name__ for x in obj[:4])
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def split_inputs(inputs, base, raw):
    """((args, kwargs) for base, (args, kwargs) for raw)."""
    if isinstance(inputs, np.ndarray):
        inputs = (inputs,)
    if isinstance(inputs, (tuple, list)) and len(inputs) == 2 and all(isinstance(x, Mapping) for x in inputs):
        sides = []
        for i, (proxy, other, kw) in enumerate(((base, raw, inputs[0]), (raw, base, inputs[1]))):
            out = {}
            for k, v in kw.items():
                if isinstance(v, np.ndarray):
                    v = proxy.adapter.to_tensor(v)
                elif other.adapter.is_tensor(v) and not proxy.adapter.is_tensor(v):
                    side = ("base", "raw")[i]
                    raise DiffInputError(
                        f"inputs[{i}][{k!r}] is a {other.framework} tensor, but inputs[{i}] is for the {side} model "
                        f"({proxy.framework}:{proxy.name}); give the base model's inputs first, the raw model's second"
                    )
                out[k] = v
            sides.append(((), out))
        return sides[0], sides[1]
    if isinstance(inputs, (tuple, list)) and inputs and all(isinstance(x, np.ndarray) for x in inputs):
        return ((tuple(base.adapter.to_tensor(a) for a in inputs), {}),
                (tuple(raw.adapter.to_tensor(a) for a in inputs), {}))
    raise DiffInputError(f"auto_diff() got inputs of an unknown form ({_describe(inputs)}); {INPUT_FORMS}")


# -- running -------------------------------------------------------------------
def _run(proxy, hooked, args, kwargs, grad: bool):
    """Forward ``proxy`` in eval mode with ``hooked`` [(pair index, module)]; hooks removed and modes restored always."""
    adapter = proxy.adapter
    calls: list[_Call] = []
    counts: dict[int, int] = {}

    def make(idx):
        def on_call(inputs, output):
            k = counts.get(idx, 0)
            counts[idx] = k + 1
            calls.append(_Call(idx, k, _capture(output, adapter), _capture(inputs, adapter, "in")))

        return on_call

    modes = [(m, adapter.is_training(m)) for _, m in proxy.named_modules()]
    handles = []
    try:
        for idx, module in hooked:
            handles.append(adapter.add_forward_hook(module, make(idx)))
        adapter.set_training(proxy.model, False)
        try:
            out = adapter.forward(proxy.model, args, kwargs, grad)
        except Exception as exc:
            raise DiffError(
                f"the {proxy.framework} model {proxy.name} failed on the given inputs: {type(exc).__name__}: {exc}; "
                "check the inputs' shapes, dtypes and names"
            ) from exc
        final = _capture(out, adapter)
        if grad:
            leaves = []
            _collect_tensors(out, adapter, leaves)
            try:
                ran = adapter.backward_sum(leaves)
            except Exception as exc:
                raise DiffError(f"backward through the {proxy.framework} model {proxy.name} failed: "
                                f"{type(exc).__name__}: {exc}") from exc
            if not ran:
                raise DiffError(f"the {proxy.framework} model {proxy.name} returned no floating tensor that needs a "
                                "gradient; diff_phase='both' needs trainable parameters, use diff_phase='forward'")
        return calls, final
    finally:
        for h in handles:
            h.remove()
        for module, training in modes:  # parents first: a parent's train()/eval() reaches its children
            adapter.set_training(module, training)


def _collect_tensors(obj, adapter, out):
    if adapter.is_tensor(obj):
        out.append(obj)
    elif isinstance(obj, Mapping):
        for v in obj.values():
            _collect_tensors(v, adapter, out)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            _collect_tensors(v, adapter, out)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _collect_tensors(getattr(obj, f.name), adapter, out)


# -- the entry point -------------------------------------------------------------
def auto_diff(base, raw, inputs, atol: float = 1e-5, rtol: float = 1e-5, auto_init: bool = True,
              diff_phase: str = "forward", pool=None) -> DiffResult:
    """Run ``base`` and ``raw`` on the same inputs and compare every paired layer's outputs.

    base, raw: torch/paddle models or ProxyModels (their layer maps and black/white lists are used).
    inputs: ``({"x": base_tensor}, {"x": raw_tensor})`` (PaDiff's form, base first), a numpy array, or
        a tuple of numpy arrays fed positionally to both models (converted per framework, dtype kept).
    auto_init: transfer base -> raw with ``assign_weight`` first.
    diff_phase: "forward", or "both" to also compare parameter gradients of a backward pass on the
        sum of the outputs (the models' gradients are cleared before and after).
    pool: the registry of rules to pair, transfer and map gradients with (default: the global ``init_pool``).

    Returns a :class:`DiffResult` (true when everything agrees). Raises :class:`DiffInputError` for
    inputs in an unknown form, :class:`OutputStructureError` when the final outputs differ in
    structure, :class:`DiffError` when a model fails to run.
    """
    if diff_phase not in PHASES:
        raise ValueError(f"diff_phase must be one of {PHASES}, got {diff_phase!r}")
    base, raw = create_model(base), create_model(raw)
    (bargs, bkw), (rargs, rkw) = split_inputs(inputs, base, raw)
    from .align import execution_mapping

    mapping = execution_mapping(base, raw, inputs)  # layers names leave open, paired by the order they run
    report = None
    if auto_init:
        from .transfer import assign_weight

        report = assign_weight(base, raw, mapping=mapping, pool=pool)
    pairing = pair_models(base, raw, init_pool if pool is None else pool, keep_empty=True, mapping=mapping)
    pairs = pairing.matched
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

    grad = diff_phase == "both"
    try:
        if grad:
            base.adapter.clear_grads(base.model)
            raw.adapter.clear_grads(raw.model)
        bcalls, bfinal = _run(base, hooked_b, bargs, bkw, grad)
        rcalls, rfinal = _run(raw, hooked_r, rargs, rkw, grad)
        what = f"{base.framework}:{base.name} vs {raw.framework}:{raw.name}"
        _, _, _, fabs, frel, fbad, ftotal, _ = _compare_captures(bfinal, rfinal, atol, rtol, True, what)
        result = DiffResult(f"{base.framework}:{base.name}", f"{raw.framework}:{raw.name}", diff_phase, atol, rtol,
                            fabs, frel, fbad, ftotal, bfinal[1], transfer=report)
        _compare_layers(result, pairs, bcalls, rcalls, atol, rtol)
        if grad:
            _compare_grads(result, base, raw, bcalls, pairs, atol, rtol, mapping, pool)
    finally:
        if grad:
            base.adapter.clear_grads(base.model)
            raw.adapter.clear_grads(raw.model)
    result.tree = _tree(pairing, pairs, result, {i for i, _ in hooked_b})
    return result


def _compare_layers(result: DiffResult, pairs, bcalls, rcalls, atol, rtol):
    raw_by = {(c.pair, c.call): c for c in rcalls}
    base_keys = {(c.pair, c.call) for c in bcalls}
    only = {}
    for order, c in enumerate(bcalls):
        rc = raw_by.get((c.pair, c.call))
        pair = pairs[c.pair]
        if rc is None:
            only.setdefault(c.pair, "base")
            continue
        got = _compare_captures(c.out, rc.out, atol, rtol, False, "")
        if got is None:
            continue
        output, bshape, rshape, ma, mr, bad, total, note = got
        ld = LayerDiff(pair.base.path, pair.raw.path, type(pair.base.module).__name__,
                       type(pair.raw.module).__name__, c.call, order, output, bshape, rshape, ma, mr, bad, total,
                       note=note)
        result.layers.append(ld)
        if not ld.ok and result.first_diff is None:
            result.first_diff = ld
            ld.inputs_agree = _inputs_agree(c.inputs, rc.inputs, atol, rtol)
    for c in rcalls:
        if (c.pair, c.call) not in base_keys:
            only.setdefault(c.pair, "raw")
    for idx, side in only.items():
        pair = pairs[idx]
        result.notes.append(
            f"{_p(pair.base.path)} -> {_p(pair.raw.path)}: called more often on the {side} side; the extra calls "
            "were not compared (a fused fast path or a module reused differently)")


def _inputs_agree(bcap, rcap, atol, rtol):
    bt, rt = _tensors(bcap[0]), _tensors(rcap[0])
    if not bt or not rt:
        return None
    if len(bt) != len(rt):
        return False
    return all(compare_arrays(b, r, atol, rtol)[2] == 0 for (_, b), (_, r) in zip(bt, rt))


# -- gradients -------------------------------------------------------------------
def _to_raw_layout(g, op):
    """Apply a plan operation's mapping to a base gradient; (array, note)."""
    notes = []
    if op.src_part is not None:
        g = layout.apply_numpy(g, op.src_part)
        notes.append(f"base part {op.src_part}")
    if op.transform == "transpose":
        g = g.T
        notes.append("transposed")
    elif op.transform == "reshape":
        notes.append("reshaped")
    return g, notes


def _compare_grads(result: DiffResult, base, raw, bcalls, pairs, atol, rtol, mapping=None, pool=None):
    from .plan import build_plan

    plan = build_plan(base, raw, pool, mapping=mapping)
    first_call = {}
    for order, c in enumerate(bcalls):
        p = pairs[c.pair]
        first_call.setdefault((p.base.path, p.raw.path), order)
    ba, ra = base.adapter, raw.adapter
    found = []
    for op in plan.ops:
        if op.kind != "copy":
            continue
        gb, gr = ba.grad(op.src.tensor), ra.grad(op.dst.tensor)
        if gb is None and gr is None:
            continue
        note = []
        mapped = None
        if gb is not None:
            mapped, note = _to_raw_layout(gb, op)
        if gr is not None and op.dst_part is not None:
            gr = layout.apply_numpy(gr, op.dst_part)
            note.append(f"raw part {op.dst_part}")
        if gb is None:
            mapped = np.zeros_like(gr)
            note.append("no gradient on the base side")
        if gr is None:
            gr = np.zeros_like(mapped)
            note.append("no gradient on the raw side")
        if op.transform == "reshape" and mapped.size == gr.size:
            mapped = mapped.reshape(gr.shape)
        ma, mr, bad = compare_arrays(mapped, gr, atol, rtol)
        pair = op.pair
        gd = GradDiff(pair.base.path, pair.raw.path, type(pair.base.module).__name__, type(pair.raw.module).__name__,
                      op.src.path, op.dst.path, tuple(gb.shape) if gb is not None else (),
                      tuple(gr.shape), ma, mr, bad, max(mapped.size, gr.size), ", ".join(note))
        found.append((first_call.get((pair.base.path, pair.raw.path), -1), len(found), gd))
    # backward visits layers in reverse call order: the last layer to run forward gets its gradient first
    found.sort(key=lambda t: (-t[0], t[1]))
    result.grads = [g for *_, g in found]
    result.first_grad_diff = next((g for g in result.grads if not g.ok), None)
    if plan.imperative:
        names = ", ".join(_p(p.base.path) for p in plan.imperative)
        result.notes.append(f"gradients not compared for layers transferred by an imperative special init: {names}")


# -- the report --------------------------------------------------------------------
def _tree(pairing, pairs, result: DiffResult, hooked: set[int]) -> list[_TreeLine]:
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
    lines = []
    ordered = sorted(range(len(pairs)), key=lambda i: preorder.get(id(pairs[i].base), 1 << 30))
    for i in ordered:
        pair = pairs[i]
        key = (pair.base.path, pair.raw.path)
        if key in worst:
            s = f"DIFF max abs {worst[key].max_abs_diff:.3g}"
        elif key in status:
            s = "ok"
        elif i in hooked:
            s = "not called"
        else:
            s = "not compared"
        depth = 0 if not pair.base.path else pair.base.path.count(".") + 1
        lines.append(_TreeLine(depth, pair.base.path, pair.raw.path, type(pair.base.module).__name__,
                               type(pair.raw.module).__name__, s))
    return lines


_MAX_TREE = 40


def _render(r: DiffResult) -> list[str]:
    verdict = "OK" if r.ok else "MISMATCH"
    out = [f"auto_diff {r.base} -> {r.raw} ({r.phase}, atol={r.atol:g}, rtol={r.rtol:g}): {verdict}"]
    if r.transfer is not None:
        out.append(f"weights transferred first: {r.transfer.tensors} tensors in {len(r.transfer.pairs)} layer pairs")
    out.append(f"final outputs {r.output_structure}: max abs diff {r.max_abs_diff:.3g}, max rel diff "
               f"{r.max_rel_diff:.3g}, {r.mismatched} of {r.total} values outside tolerance")
    bad = sum(not ld.ok for ld in r.layers)
    out.append(f"layers compared: {len(r.layers)} calls, {bad} outside tolerance")
    f = r.first_diff
    if f is not None:
        out.append(f"first divergence: call {f.order + 1} in the base model's call order"
                   f"{f' (call {f.call + 1} of this module)' if f.call else ''}:")
        out.append(f"  base {_p(f.base_path)} ({f.base_class})  {f.output} {list(f.base_shape)}")
        out.append(f"  raw  {_p(f.raw_path)} ({f.raw_class})  {f.output} {list(f.raw_shape)}")
        out.append(f"  max abs diff {f.max_abs_diff:.3g}, max rel diff {f.max_rel_diff:.3g}, "
                   f"{f.mismatched} of {f.total} values outside tolerance")
        if f.note:
            out.append(f"  {f.note}")
        if f.inputs_agree:
            out.append("  its inputs agree: the difference is made inside this layer (its weights or its computation)")
        elif f.inputs_agree is False:
            out.append("  its inputs already differ: the difference comes from code no paired layer covers "
                       "(a functional call in a parent's forward, or an unpaired module) that runs before it")
    elif not r.ok and r.mismatched:
        out.append("no compared layer diverges: the difference is made outside the compared layers")
    g = r.first_grad_diff
    if g is not None:
        out.append(f"first gradient difference (backward order): base {_p(g.base_path)} ({g.base_class}) -> "
                   f"raw {_p(g.raw_path)} ({g.raw_class})")
        out.append(f"  {g}")
    elif r.phase == "both":
        out.append(f"gradients compared: {len(r.grads)} parameters, all within tolerance")
    for n in r.notes:
        out.append(f"note: {n}")
    if r.tree:
        out.append("model tree (base -> raw" + ("; '>>' marks the first divergence):" if f else "):"))
        out.extend(_render_tree(r.tree, f))
    return out


def _render_tree(lines: list[_TreeLine], first: LayerDiff | None) -> list[str]:
    mark = None
    if first is not None:
        mark = next((i for i, ln in enumerate(lines)
                     if (ln.base_path, ln.raw_path) == (first.base_path, first.raw_path)), None)
    keep = set(range(len(lines)))
    if len(lines) > _MAX_TREE:
        keep = {i for i, ln in enumerate(lines) if ln.depth <= 1}
        if mark is not None:
            target = lines[mark].base_path
            chain = [i for i, ln in enumerate(lines)
                     if ln.base_path == "" or target == ln.base_path or target.startswith(ln.base_path + ".")]
            keep.update(chain)
            for c in chain:  # a few siblings around the marked layer and around each of its ancestors
                parent = lines[c].base_path.rpartition(".")[0]
                sib = [i for i, ln in enumerate(lines) if ln.depth == lines[c].depth
                       and ln.base_path.rpartition(".")[0] == parent]
                at = sib.index(c)
                keep.update(sib[max(0, at - 2):at + 3])
            kids = [i for i, ln in enumerate(lines) if ln.base_path.startswith(target + ".") or
                    (target == "" and ln.depth == 1)]
            keep.update(kids[:6])
        else:  # nothing to point at: as many whole levels as fit
            depth = 1
            while sum(ln.depth <= depth + 1 for ln in lines) <= _MAX_TREE:
                depth += 1
            keep = {i for i, ln in enumerate(lines) if ln.depth <= depth}
    width = max(len("  " * ln.depth + _label(ln)) for ln in lines) + 2
    out, skipped, at = [], 0, 0

    def flush():
        if skipped:
            out.append(f"     {'  ' * at}... {skipped} more")

    for i, ln in enumerate(lines):
        if i not in keep:
            if not skipped:
                at = ln.depth
            skipped += 1
            continue
        flush()
        skipped = 0
        pre = ">> " if i == mark else "   "
        out.append(f"  {pre}{('  ' * ln.depth + _label(ln)).ljust(width)}{ln.status}")
    flush()
    return out


def _label(ln: _TreeLine) -> str:
    bname = ln.base_path.rpartition(".")[2] if ln.base_path else "<root>"
    rname = ln.raw_path.rpartition(".")[2] if ln.raw_path else "<root>"
    b = f"{bname} ({ln.base_class})"
    r = f"{rname} ({ln.raw_class})"
    return b if b == r else f"{b} -> {r}"
