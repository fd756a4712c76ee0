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
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from . import layout, output_align
from .errors import DiffError, DiffInputError, OutputStructureError
from .ops import COPY, RESHAPE, TRANSPOSE
from .pairing import pair_models
from .plan import build_plan
from .proxy import create_model
from .special_init import init_pool
from .stream import BaseFailed, Stash

PHASES = ("forward", "both")
INPUT_FORMS = (
    "accepted input forms: ({'x': base_tensor}, {'x': raw_tensor}) - keyword inputs for each model, base "
    "first (PaDiff's form); a numpy array; a tuple/list of numpy arrays fed positionally to both models; or a "
    "dict of numpy arrays fed by keyword to both (e.g. {'input_ids': ids})"
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
    note: str = ""  # how the outputs were aligned (broadcast, merged dimensions, fields left out)
    raw_output: str = ""  # the raw output the shapes refer to, when it is not at the same place as the base one

    @property
    def ok(self) -> bool:
        return self.mismatched == 0

    def __str__(self):
        return (f"base {_p(self.base_path)} ({self.base_class}) {list(self.base_shape)} vs raw {_p(self.raw_path)} "
                f"({self.raw_class}) {list(self.raw_shape)}: max abs diff {self.max_abs_diff:.3g}, max rel diff "
                f"{self.max_rel_diff:.3g}, {self.mismatched} of {self.total} values outside tolerance")


@dataclass
class NotComparable:
    """A call whose outputs cannot be aligned between the two sides: listed, never counted as a difference."""

    base_path: str
    raw_path: str
    base_class: str
    raw_class: str
    call: int
    order: int
    reason: str
    base_structure: str
    raw_structure: str

    def __str__(self):
        return (f"base {_p(self.base_path)} ({self.base_class}) returns {self.base_structure}, raw "
                f"{_p(self.raw_path)} ({self.raw_class}) returns {self.raw_structure}: {self.reason}")


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
    output_structure: str  # the base model's output, e.g. "CausalLMOutputWithPast(logits=Tensor[2, 9, 128], ...)"
    first_diff: LayerDiff | None = None
    first_grad_diff: GradDiff | None = None
    layers: list[LayerDiff] = field(default_factory=list)  # every compared call, in base call order
    grads: list[GradDiff] = field(default_factory=list)  # every compared gradient, in backward order
    notes: list[str] = field(default_factory=list)
    transfer: object = None  # the TransferReport when auto_init ran
    tree: list[_TreeLine] = field(default_factory=list)
    not_comparable: list[NotComparable] = field(default_factory=list)  # calls whose outputs cannot be aligned
    raw_output_structure: str = ""
    peak_held_bytes: int = 0  # the most bytes of base outputs held at once, waiting for raw's matching call
    interleaved: bool = False  # base ran a layer ahead of raw in a second thread

    def to_html(self, path) -> str:
        """Write one self-contained HTML page (model tree, per-layer chart) to ``path``; returns the path."""
        from .html_report import write_html

        return write_html(self, path)

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
_CHUNK = 1 << 18  # values compared at once: the float64 temporaries stay ~16 MB whatever the activation


def compare_arrays(base, raw, atol: float, rtol: float) -> tuple[float, float, int]:
    """(max abs diff, max rel diff, values outside tolerance) of two numpy arrays.

    A value is outside tolerance when ``|raw - base| > atol + rtol * |base|``. NaN and Inf are
    compared by position: NaN equals NaN, Inf equals Inf of the same sign; any other pairing with a
    non-finite value is a mismatch, and makes both maxima infinite. The relative difference is
    ``|raw - base| / max(|base|, |raw|)`` (0 where both are 0). Different shapes: every value mismatches
    (``output_align.fitted`` makes broadcast-equal or merged shapes one shape first). Big arrays are compared
    in blocks along their first axis.
    """
    base, raw = np.asarray(base), np.asarray(raw)
    if base.shape != raw.shape:
        return math.inf, math.inf, max(base.size, raw.size, 1)
    if base.size == 0:
        return 0.0, 0.0, 0
    if base.ndim == 0 or base.size <= _CHUNK:
        return _compare_block(base, raw, atol, rtol)
    step = max(1, _CHUNK // max(1, base.size // base.shape[0]))
    worst_abs = worst_rel = 0.0
    n = 0
    for i in range(0, base.shape[0], step):
        ma, mr, k = _compare_block(base[i:i + step], raw[i:i + step], atol, rtol)
        worst_abs, worst_rel, n = max(worst_abs, ma), max(worst_rel, mr), n + k
    return worst_abs, worst_rel, n


def _compare_block(base, raw, atol, rtol):
    complex_ = np.iscomplexobj(base) or np.iscomplexobj(raw)
    if not complex_ and np.isfinite(base).all() and np.isfinite(raw).all():
        return _compare_finite(base, raw, atol, rtol)
    return _compare_general(base, raw, atol, rtol)


def _compare_finite(base, raw, atol, rtol):
    """``_compare_general`` for real arrays without NaN/Inf, in fewer passes over memory (same results)."""
    a, b = base.astype(np.float64), raw.astype(np.float64)
    d = np.subtract(a, b)
    np.abs(d, out=d)
    np.abs(a, out=a)
    np.abs(b, out=b)
    n = int(np.count_nonzero(d > a * rtol + atol))
    scale = np.maximum(a, b, out=a)
    rel = np.zeros_like(d)
    np.divide(d, scale, out=rel, where=scale > 0)
    return float(d.max()), float(rel.max()), n


def _compare_general(base, raw, atol, rtol):
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


@dataclass
class _Compared:
    output: str
    raw_output: str
    base_shape: tuple
    raw_shape: tuple
    max_abs: float
    max_rel: float
    mismatched: int
    total: int
    note: str


def _compare_aligned(al: output_align.Alignment, atol, rtol) -> _Compared | None:
    """Compare every aligned pair; None when no tensor could be paired."""
    if not any(p.how != "value" for p in al.pairs):
        return None
    worst_abs = worst_rel = 0.0
    mismatched = total = 0
    shown = None
    for p in al.pairs:
        if p.how == "value":  # plain values (None, numbers, strings) must be equal; NaN meets NaN
            ma, mr, n, size = 0.0, 0.0, int(not _same_value(p.base, p.raw)), 1
            bshape = rshape = ()
        else:
            b, r = output_align.fitted(p.base, p.raw, p.how)
            ma, mr, n = compare_arrays(b, r, atol, rtol)
            size, bshape, rshape = b.size, tuple(p.base.shape), tuple(p.raw.shape)
        worst_abs, worst_rel = max(worst_abs, ma), max(worst_rel, mr)
        mismatched += n
        total += size
        if shown is None or (n and not shown[4]):
            shown = (p.base_where, p.raw_where, bshape, rshape, n)
    notes = list(al.notes)
    if al.only_base or al.only_raw or al.unaligned:
        notes.append("not compared: " + al.reason())
    return _Compared(shown[0], shown[1], shown[2], shown[3], worst_abs, worst_rel, mismatched, total,
                     "; ".join(notes))


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
    if isinstance(inputs, Mapping) and inputs and all(isinstance(v, np.ndarray) for v in inputs.values()):
        return (((), {k: base.adapter.to_tensor(v) for k, v in inputs.items()}),
                ((), {k: raw.adapter.to_tensor(v) for k, v in inputs.items()}))
    if isinstance(inputs, (tuple, list)) and inputs and all(isinstance(x, np.ndarray) for x in inputs):
        return ((tuple(base.adapter.to_tensor(a) for a in inputs), {}),
                (tuple(raw.adapter.to_tensor(a) for a in inputs), {}))
    raise DiffInputError(f"auto_diff() got inputs of an unknown form ({_describe(inputs)}); {INPUT_FORMS}")


# -- running -------------------------------------------------------------------
def _run(proxy, hooked, args, kwargs, grad: bool, on_call):
    """Forward ``proxy`` in eval mode calling ``on_call(pair index, call number, args, kwargs, output)``
    after each call of a ``hooked`` [(pair index, module)]; returns the model's output. Hooks are removed
    and training modes restored always."""
    adapter = proxy.adapter
    counts: dict[int, int] = {}

    def make(idx):
        def hook(a, kw, output):
            k = counts.get(idx, 0)
            counts[idx] = k + 1
            on_call(idx, k, a, kw, output)

        return hook

    modes = [(m, adapter.is_training(m)) for _, m in proxy.named_modules()]
    handles = []
    try:
        for idx, module in hooked:
            handles.append(adapter.add_call_hook(module, make(idx)))
        adapter.set_training(proxy.model, False)
        try:
            out = adapter.forward(proxy.model, args, kwargs, grad)
        except BaseFailed:
            raise
        except Exception as exc:
            raise DiffError(
                f"the {proxy.framework} model {proxy.name} failed on the given inputs: {type(exc).__name__}: {exc}; "
                "check the inputs' shapes, dtypes and names"
            ) from exc
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
        return out
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


class _Session:
    """One comparison: the base side stashes each hooked call's outputs, the raw side compares and drops them."""

    def __init__(self, base, raw, pairs, atol, rtol, interleave: bool):
        self.base, self.raw, self.pairs = base, raw, pairs
        self.atol, self.rtol = atol, rtol
        self.stash = Stash(budget=0 if interleave else None)
        self.interleave = interleave
        self.order = 0
        self.layers: list[LayerDiff] = []
        self.not_comparable: list[NotComparable] = []
        self.only: dict[int, str] = {}
        self.first: LayerDiff | None = None
        self.first_raw_inputs = None

    def on_base(self, idx, k, _args, _kwargs, output):
        node = output_align.capture(output, self.base.adapter)
        self.stash.put((idx, k), (self.order, node), node.nbytes)
        self.order += 1

    def on_raw(self, idx, k, args, kwargs, output):
        got = self.stash.take((idx, k))
        if got is None:
            self.only.setdefault(idx, "raw")
            return
        order, bnode = got
        rnode = output_align.capture(output, self.raw.adapter)
        pair = self.pairs[idx]
        classes = (type(pair.base.module).__name__, type(pair.raw.module).__name__)
        al = output_align.align(bnode, rnode)
        c = _compare_aligned(al, self.atol, self.rtol)
        if c is None:
            self.not_comparable.append(NotComparable(pair.base.path, pair.raw.path, *classes, k, order, al.reason(),
                                                     str(bnode), str(rnode)))
            return
        ld = LayerDiff(pair.base.path, pair.raw.path, *classes, k, order, c.output, c.base_shape, c.raw_shape,
                       c.max_abs, c.max_rel, c.mismatched, c.total, note=c.note, raw_output=c.raw_output)
        self.layers.append(ld)
        if not ld.ok and (self.first is None or order < self.first.order):
            self.first = ld  # raw runs in its own call order: keep the earliest in the base's order
            self.first_raw_inputs = output_align.capture_inputs(args, kwargs, self.raw.adapter)

    def run(self, bargs, bkw, rargs, rkw, grad: bool):
        """(base output, raw output) of the two forwards, every hooked call compared on the way."""
        hb, hr = self.hooked
        if not self.interleave:
            bout = _run(self.base, hb, bargs, bkw, grad, self.on_base)
            self.stash.base_finished()
            rout = _run(self.raw, hr, rargs, rkw, grad, self.on_raw)
        else:
            box = {}

            def base_thread():
                try:
                    box["out"] = _run(self.base, hb, bargs, bkw, grad, self.on_base)
                except BaseException as exc:  # handed to the caller's thread below
                    box["error"] = exc
                finally:
                    self.stash.base_finished(box.get("error"))

            t = threading.Thread(target=base_thread, name="padiff-lite-base", daemon=True)
            t.start()
            rout, raw_error = None, None
            try:
                rout = _run(self.raw, hr, rargs, rkw, grad, self.on_raw)
            except BaseFailed:
                pass
            except BaseException as exc:
                raw_error = exc
            finally:
                self.stash.raw_finished()
                t.join()
            if "error" in box:  # the base model's failure first, as in a sequential run
                raise box["error"]
            if raw_error is not None:
                raise raw_error
            bout = box["out"]
        for idx, _ in self.stash.leftovers():
            self.only.setdefault(idx, "base")
        return bout, rout


def _inputs_at(proxy, module, call, args, kwargs):
    """The inputs of the ``call``-th call of ``module``, from one more forward of ``proxy`` (no gradients)."""
    found = {}

    def on_call(_idx, k, a, kw, _out):
        if k == call:
            found["in"] = output_align.capture_inputs(a, kw, proxy.adapter)

    _run(proxy, [(0, module)], args, kwargs, False, on_call)
    return found.get("in")


# -- the entry point -------------------------------------------------------------
def auto_diff(base, raw, inputs, atol: float = 1e-5, rtol: float = 1e-5, auto_init: bool = True,
              diff_phase: str = "forward", pool=None, interleave: bool = True) -> DiffResult:
    """Run ``base`` and ``raw`` on the same inputs and compare every paired layer's outputs.

    base, raw: torch/paddle models or ProxyModels (their layer maps and black/white lists are used).
    inputs: ``({"x": base_tensor}, {"x": raw_tensor})`` (PaDiff's form, base first), a numpy array, a
        tuple of numpy arrays fed positionally to both models, or a dict of numpy arrays fed by keyword
        (``{"input_ids": ids}``); arrays are converted per framework, dtype kept.
    auto_init: transfer base -> raw with ``assign_weight`` first.
    diff_phase: "forward", or "both" to also compare parameter gradients of a backward pass on the
        sum of the outputs (the models' gradients are cleared before and after).
    pool: the registry of rules to pair, transfer and map gradients with (default: the global ``init_pool``).
    interleave: run base in a second thread, a layer ahead of raw, so that only about one layer's
        outputs are held at a time (False: base runs to the end first and every paired layer's outputs
        are held until raw reaches them). The results are the same.

    Outputs of different form are aligned (``padiff_lite.output_align``): by field name, else by the position
    of their tensors; broadcast-equal tensors are equal. A layer whose outputs cannot be aligned is
    listed in ``not_comparable``, never counted as a difference.

    Returns a :class:`DiffResult` (true when everything agrees). Raises :class:`DiffInputError` for
    inputs in an unknown form, :class:`OutputStructureError` when no tensor of the final outputs can
    be paired, :class:`DiffError` when a model fails to run.
    """
    if diff_phase not in PHASES:
        raise ValueError(f"diff_phase must be one of {PHASES}, got {diff_phase!r}")
    base, raw = create_model(base), create_model(raw)
    (bargs, bkw), (rargs, rkw) = split_inputs(inputs, base, raw)
    from .align import execution_mapping

    mapping = execution_mapping(base, raw, inputs)  # layers names leave open, paired by the order they run
    grad = diff_phase == "both"
    report = plan = None
    if auto_init or grad:  # one plan: the transfer runs it, the gradients are mapped by its operations
        plan = build_plan(base, raw, pool, mapping=mapping)
    if auto_init:
        from .transfer import run_plan

        report = run_plan(plan, found=mapping, mapping_given=mapping is not None, can_run=mapping is None)
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

    session = _Session(base, raw, pairs, atol, rtol, interleave and not grad)
    session.hooked = (hooked_b, hooked_r)
    try:
        if grad:
            base.adapter.clear_grads(base.model)
            raw.adapter.clear_grads(raw.model)
        bout, rout = session.run(bargs, bkw, rargs, rkw, grad)
        bfinal, rfinal = output_align.capture(bout, base.adapter), output_align.capture(rout, raw.adapter)
        del bout, rout
        fabs, frel, fbad, ftotal, fnotes = _compare_final(bfinal, rfinal, base, raw, atol, rtol)
        result = DiffResult(f"{base.framework}:{base.name}", f"{raw.framework}:{raw.name}", diff_phase, atol, rtol,
                            fabs, frel, fbad, ftotal, str(bfinal), transfer=report, raw_output_structure=str(rfinal))
        result.notes.extend(fnotes)
        result.layers = sorted(session.layers, key=lambda ld: ld.order)
        result.not_comparable = sorted(session.not_comparable, key=lambda nc: nc.order)
        result.peak_held_bytes = session.stash.peak
        result.interleaved = session.interleave
        if session.first is not None:
            f = result.first_diff = session.first
            module = pairs[next(i for i, m in hooked_b if pairs[i].base.path == f.base_path
                                and pairs[i].raw.path == f.raw_path)].base.module
            binputs = _inputs_at(base, module, f.call, bargs, bkw)
            f.inputs_agree = _inputs_agree(binputs, session.first_raw_inputs, atol, rtol)
        for idx, side in session.only.items():
            pair = pairs[idx]
            result.notes.append(
                f"{_p(pair.base.path)} -> {_p(pair.raw.path)}: called more often on the {side} side; the extra calls "
                "were not compared (a fused fast path or a module reused differently)")
        if result.not_comparable:
            names = sorted({_p(nc.base_path) for nc in result.not_comparable})
            shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
            result.notes.append(f"{len(result.not_comparable)} calls not comparable (outputs of a different form "
                                f"that cannot be aligned; see result.not_comparable): {shown}")
        if grad:
            _compare_grads(result, plan, atol, rtol)
    finally:
        if grad:
            base.adapter.clear_grads(base.model)
            raw.adapter.clear_grads(raw.model)
    result.tree = _tree(pairing, pairs, result, {i for i, _ in hooked_b})
    return result


def _compare_final(bfinal, rfinal, base, raw, atol, rtol):
    """(max abs, max rel, mismatched, total, notes) of the models' own outputs."""
    al = output_align.align(bfinal, rfinal)
    notes = []
    c = _compare_aligned(al, atol, rtol)
    if c is None:
        bt, rt = output_align.tensors(bfinal, "out"), output_align.tensors(rfinal, "out")
        if bt and rt and output_align.fit(bt[0][1].shape, rt[0][1].shape):
            al = output_align.Alignment()
            output_align.pair_tensors(bt[0][0], rt[0][0], bt[0][1], rt[0][1], al)
            c = _compare_aligned(al, atol, rtol)
            notes.append(f"the final outputs differ in structure (base {bfinal}, raw {rfinal}): the first tensors "
                         f"were compared ({bt[0][0]} with {rt[0][0]})")
        else:
            raise OutputStructureError(
                f"{base.framework}:{base.name} vs {raw.framework}:{raw.name}: no tensor of the final outputs can be "
                f"paired: base returns {bfinal}, raw returns {rfinal} ({al.reason()}); make one model return the "
                "other's tensors (wrap it, or pick the output with a small module), or compare a submodule")
    elif str(bfinal) != str(rfinal):
        extra = [n for n in al.notes if not n.startswith("base returns")]
        if bfinal.type != rfinal.type and bfinal.type.lower() == rfinal.type.lower():
            extra.insert(0, "the class names differ only in case")
        if al.only_base or al.only_raw or al.unaligned:
            extra.append("not compared: " + al.reason())
        notes.append(f"final outputs of a different form (base {bfinal}, raw {rfinal}): compared "
                     + ", ".join(p.base_where if p.base_where == p.raw_where else f"{p.base_where} with {p.raw_where}"
                                 for p in al.pairs if p.how != "value")
                     + "".join(f"; {n}" for n in extra))
    return c.max_abs, c.max_rel, c.mismatched, c.total, notes


def _inputs_agree(bnode, rnode, atol, rtol):
    if bnode is None or rnode is None:
        return None
    al = output_align.align(bnode, rnode, "in", "in")
    pairs = [p for p in al.pairs if p.how != "value"]
    if not pairs:
        return None
    return all(compare_arrays(*output_align.fitted(p.base, p.raw, p.how), atol, rtol)[2] == 0 for p in pairs)


# -- gradients -------------------------------------------------------------------
def _to_raw_layout(g, op, shape):
    """A base gradient (numpy) as the op writes it into a raw region of ``shape`` (its part taken, its transform
    applied: ``layout.value_of``, as the executor does); (array, notes)."""
    import torch

    value = layout.take(torch.from_numpy(np.ascontiguousarray(g)), op.src_part)
    if op.transform is RESHAPE and (shape is None or math.prod(shape) != value.numel()):
        shape = tuple(value.shape)  # nothing to reshape to: compared as it is (the sizes differ)
    notes = [f"base part {op.src_part}"] if op.src_part is not None else []
    notes += {TRANSPOSE: ["transposed"], RESHAPE: ["reshaped"]}.get(op.transform, [])
    return layout.transformed(value, op.transform, shape).numpy(), notes


def _compare_grads(result: DiffResult, plan, atol, rtol):
    """Each copy op's base gradient, in the raw layout (the op's part and transform), against the raw one."""
    first_call = {}
    for c in sorted(result.layers + result.not_comparable, key=lambda c: c.order):
        first_call.setdefault((c.base_path, c.raw_path), c.order)
    ba, ra = plan.base.adapter, plan.raw.adapter
    found = []
    for op in plan.ops:
        if op.kind is not COPY:
            continue
        gb, gr = ba.grad(op.src.tensor), ra.grad(op.dst.tensor)
        if gb is None and gr is None:
            continue
        note = []
        if gr is not None and op.dst_part is not None:
            import torch

            gr = layout.take(torch.from_numpy(np.ascontiguousarray(gr)), op.dst_part).numpy()
        mapped = None
        if gb is not None:
            mapped, note = _to_raw_layout(gb, op, None if gr is None else gr.shape)
        if gr is not None and op.dst_part is not None:
            note.append(f"raw part {op.dst_part}")
        if gb is None:
            mapped = np.zeros_like(gr)
            note.append("no gradient on the base side")
        if gr is None:
            gr = np.zeros_like(mapped)
            note.append("no gradient on the raw side")
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
        lines.append(_TreeLine(depth, pair.base.path, pair.raw.path, type(pair.base.module).__name__,
                               type(pair.raw.module).__name__, s))
    return lines


_MAX_TREE = 40
_MAX_NOT_COMPARABLE = 5


def _render(r: DiffResult) -> list[str]:
    verdict = "OK" if r.ok else "MISMATCH"
    out = [f"auto_diff {r.base} -> {r.raw} ({r.phase}, atol={r.atol:g}, rtol={r.rtol:g}): {verdict}"]
    if r.transfer is not None:
        out.append(f"weights transferred first: {r.transfer.tensors} tensors in {len(r.transfer.pairs)} layer pairs")
    out.append(f"final outputs {r.output_structure}: max abs diff {r.max_abs_diff:.3g}, max rel diff "
               f"{r.max_rel_diff:.3g}, {r.mismatched} of {r.total} values outside tolerance")
    bad = sum(not ld.ok for ld in r.layers)
    out.append(f"layers compared: {len(r.layers)} calls, {bad} outside tolerance"
               + (f"; {len(r.not_comparable)} calls not comparable" if r.not_comparable else ""))
    f = r.first_diff
    if f is not None:
        out.append(f"first divergence: call {f.order + 1} in the base model's call order"
                   f"{f' (call {f.call + 1} of this module)' if f.call else ''}:")
        out.append(f"  base {_p(f.base_path)} ({f.base_class})  {f.output} {list(f.base_shape)}")
        out.append(f"  raw  {_p(f.raw_path)} ({f.raw_class})  {f.raw_output or f.output} {list(f.raw_shape)}")
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
    for nc in r.not_comparable[:_MAX_NOT_COMPARABLE]:
        out.append(f"not comparable: {nc}")
    if len(r.not_comparable) > _MAX_NOT_COMPARABLE:
        out.append(f"not comparable: ... {len(r.not_comparable) - _MAX_NOT_COMPARABLE} more in result.not_comparable")
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
