"""Running the two models with hooks on their paired layers, and comparing each call as it happens.

``run_model`` runs one model with a hook after each call of the hooked modules. A ``Session`` runs both:
the base side stashes each call's outputs (``stream.Stash``), the raw side compares and drops them, in one
thread each when interleaved (docs/design.md "Memory of a comparison"). With ``single_step`` the raw side also
gets, before each paired call, the inputs the base layer was called with (converted to the raw framework and
joined to raw's graph so gradients still flow), and during backward the gradients base's layer outputs got.
"""
from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Mapping

from . import output_align
from ..errors import DiffError
from .stream import BaseFailed, Stash
from .numerics import Tolerance, compare, compare_gradient, widened
from .render import label
from .results import LayerDiff, NotComparable
from .aligned import compare_aligned, noise_of

# a model that registers a gradient hook inside forward cannot run without autograd (torch and paddle words)
_HOOK_NEEDS_GRAD = re.compile(r"register (a )?hook on a tensor that (doesn't require grad|stop gradient)", re.I)


def needs_autograd(exc: BaseException) -> bool:
    """Whether a failed forward failed only because it ran without autograd (a hook registered inside forward)."""
    while exc is not None:
        if _HOOK_NEEDS_GRAD.search(str(exc)):
            return True
        exc = exc.__cause__
    return False


def run_model(proxy, hooked, args, kwargs, *, grad: bool, eval_mode: bool, on_call, pre=None):
    """Forward ``proxy`` calling ``on_call(pair index, call number, args, kwargs, output)`` after each call of a
    ``hooked`` [(pair index, module)] (and ``pre(pair index, call number, args, kwargs)`` before it, which may
    return replacement inputs); in eval mode when ``eval_mode`` (modes restored after), with autograd when
    ``grad``. Returns the model's output; hooks are removed always."""
    adapter = proxy.adapter
    counts: dict[int, int] = {}
    pre_counts: dict[int, int] = {}

    def make(idx):
        def hook(a, kw, output):
            k = counts.get(idx, 0)
            counts[idx] = k + 1
            return on_call(idx, k, a, kw, output)

        return hook

    def make_pre(idx):
        def hook(a, kw):
            k = pre_counts.get(idx, 0)
            pre_counts[idx] = k + 1
            return pre(idx, k, a, kw)

        return hook

    modes = [(m, adapter.is_training(m)) for _, m in proxy.named_modules()] if eval_mode else []
    handles = []
    try:
        for idx, module in hooked:
            handles.append(adapter.add_call_hook(module, make(idx)))
            if pre is not None:
                handles.append(adapter.add_pre_hook(module, make_pre(idx)))
        if eval_mode:
            adapter.set_training(proxy.model, False)
        try:
            return adapter.forward(proxy.model, args, kwargs, grad)
        except BaseFailed:
            raise
        except Exception as exc:
            raise DiffError(
                f"the {proxy.framework} model {proxy.name} failed on the given inputs: {type(exc).__name__}: {exc}; "
                "check the inputs' shapes, dtypes and names"
            ) from exc
    finally:
        for h in handles:
            h.remove()
        for module, training in modes:  # parents first: a parent's train()/eval() reaches its children
            adapter.set_training(module, training)


def collect_tensors(obj, adapter, out):
    if adapter.is_tensor(obj):
        out.append(obj)
    elif isinstance(obj, Mapping):
        for v in obj.values():
            collect_tensors(v, adapter, out)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            collect_tensors(v, adapter, out)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            collect_tensors(getattr(obj, f.name), adapter, out)


def backward(proxy, seed, retain: bool = False) -> bool:
    """Backward through ``proxy`` from the mean of each floating tensor in ``seed`` (an output, or a loss, or a list of
    the output's tensors both models return); ``retain`` keeps the graph for another backward. Refused when nothing
    in ``seed`` needs a gradient."""
    return _backward(proxy, seed, retain, refuse=True)


def _backward(proxy, seed, retain: bool, refuse: bool) -> bool:
    leaves = []
    if not hasattr(seed, "grads"):  # a seeds.Seeded carries its own seeds
        collect_tensors(seed, proxy.adapter, leaves)
    try:
        if leaves or not hasattr(seed, "grads"):
            ran = proxy.adapter.backward_mean(leaves, retain)
        else:
            proxy.adapter.backward_with(seed.tensors, seed.grads)
            ran = True
    except Exception as exc:
        raise DiffError(f"backward through the {proxy.framework} model {proxy.name} failed: "
                        f"{type(exc).__name__}: {exc}") from exc
    if not ran and refuse:
        raise DiffError(f"the {proxy.framework} model {proxy.name} returned no floating tensor that needs a "
                        "gradient; a gradient comparison needs trainable parameters, use diff_phase='forward'")
    return ran


def backward_each(proxy, out, read) -> dict:
    """A backward from each tensor of the output ``out`` on its own (the graph kept between them), ``read()`` (the
    gradients wanted) after each, the gradients cleared before the next: {place: what ``read`` returned} for the
    tensors that need a gradient, places named as ``output_align.tensors`` names them. By linearity the gradient of
    a seed made of some of these places is the sum of theirs."""
    from .output_align import live_tensors

    found = {}
    for where, t in live_tensors(out, proxy.adapter):
        if _backward(proxy, [t], True, refuse=False):
            found[where] = read()
        proxy.adapter.clear_grads(proxy.model)
    return found


def substitute(obj, node, adapter):
    """``obj`` (raw's inputs) with each tensor replaced by the base value captured at the same place, where the
    shapes are equal; a replaced tensor that autograd tracks stays in raw's graph (``x + (base - x).detach()``)."""
    if node is None:
        return obj
    if adapter.is_tensor(obj):
        if node.kind != "tensor" or tuple(node.value.shape) != tuple(obj.shape):
            return obj
        value = adapter.like(node.value, obj)
        return obj + (value - obj).detach() if adapter.needs_grad(obj) else value
    keyed = dict(node.items) if node.kind in ("named", "seq") else {}
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(substitute(x, keyed.get(i), adapter) for i, x in enumerate(obj))
    if isinstance(obj, list):
        return [substitute(x, keyed.get(i), adapter) for i, x in enumerate(obj)]
    if isinstance(obj, dict):
        new = {k: substitute(v, keyed.get(k), adapter) for k, v in obj.items()}
        if type(obj) is dict:
            return new
        try:  # a dict-like output class (transformers' ModelOutput): the same class, fields replaced
            return type(obj)(**new)
        except Exception:
            return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        try:
            return dataclasses.replace(obj, **{f.name: substitute(getattr(obj, f.name), keyed.get(f.name), adapter)
                                               for f in dataclasses.fields(obj) if f.init})
        except Exception:
            return obj
    return obj


ABSORBED = " (not counted as a divergence)"
# a differing layer inside an agreeing one is taken as "another form of the same result" (a router's probabilities
# against a Linear's logits) only when it differs grossly: by this much of its output's scale, or in shape. A small
# difference (a weight spoiled by 1e-3) whose effect the enclosing layer's tolerance hides is still a divergence.
GROSS = 0.1


def _gross(u) -> bool:
    return tuple(u.base_shape) != tuple(u.raw_shape) or not u.max_rel_diff < GROSS  # NaN counts as gross


class Session:
    """One forward comparison: the base side stashes each hooked call's outputs, the raw side compares and
    drops them. ``compare_layers=False`` runs both models without comparing their layers (backward phase)."""

    def __init__(self, base, raw, pairs, hooked, tol: Tolerance, *, interleave: bool, grad: bool,
                 eval_mode: bool, single_step: bool = False, compare_layers: bool = True,
                 reference_outputs: dict | None = None, raw_reference_outputs: dict | None = None):
        self.base, self.raw, self.pairs = base, raw, pairs
        self.reference_outputs = reference_outputs or {}  # (pair, call) -> base's output with its weights moved
        self.raw_reference_outputs = raw_reference_outputs or {}  # the same of raw's own reference run
        self.hooked = hooked if compare_layers or single_step else (hooked[0], [])  # base: the call order only
        self.tol = tol
        self.grad, self.eval_mode, self.single_step, self.compare_layers = grad, eval_mode, single_step, compare_layers
        self.interleave = interleave and not grad and not single_step
        self.stash = Stash(budget=0 if self.interleave else None)
        self.order = 0
        self.layers: list[LayerDiff] = []
        self.not_comparable: list[NotComparable] = []
        self.only: dict[int, str] = {}
        self.first: LayerDiff | None = None
        self.first_raw_inputs = None
        self.first_key = None  # (pair index, call number) of the first divergence
        self.call_order: dict[int, int] = {}  # pair index -> where its first call finished in base's call order
        self.base_inputs: dict = {}  # single_step: (pair, call) -> base's captured inputs
        self.keep_inputs = single_step or not eval_mode  # a training forward cannot be run again to get them
        self.base_grads: dict = {}  # single_step with grad: (pair, call, tensor number) -> base's output gradient
        self._grad_hooks: list = []
        self.output_grads: list[LayerDiff] = []  # single_step backward, in backward order
        self.arrived: dict = {}  # single_step: (pair, call) -> how the inputs raw computed differ from base's
        # differing calls whose enclosing paired layer has not finished yet: (LayerDiff, (pair, call), raw inputs).
        # An enclosing layer that agrees absorbs them (the two return different forms of one result: a
        # router's probabilities against a Linear's logits); one that differs confirms them.
        self.unconfirmed: list = []
        self.forms: set = set()  # class pairs seen returning another form of the same result

    # -- base side -------------------------------------------------------------------
    def on_base(self, idx, k, args, kwargs, output):
        self.call_order.setdefault(idx, self.order)
        if not (self.compare_layers or self.single_step):
            self.order += 1
            return
        node = output_align.capture(output, self.base.adapter)
        self.stash.put((idx, k), (self.order, node), node.nbytes)
        self.order += 1
        if self.keep_inputs:
            self.base_inputs[(idx, k)] = output_align.capture_inputs(args, kwargs, self.base.adapter)
        if self.single_step and self.grad:
            self._watch_grads(idx, k, output)

    def _watch_grads(self, idx, k, output):
        adapter = self.base.adapter
        outs = []
        collect_tensors(output, adapter, outs)
        for j, t in enumerate(outs):
            if adapter.needs_grad(t):
                def keep(g, key=(idx, k, j)):
                    self.base_grads[key] = adapter.snapshot(g)

                self._grad_hooks.append(t.register_hook(keep))

    # -- raw side --------------------------------------------------------------------
    def pre_raw(self, idx, k, args, kwargs):
        if not self.single_step:
            return None
        node = self.base_inputs.get((idx, k))
        if node is None:
            return None
        keyed = dict(node.items)
        adapter = self.raw.adapter
        arrived = compare_aligned(output_align.align(node, output_align.capture_inputs(args, kwargs, adapter),
                                                     "in", "in"), self.tol)
        if arrived is not None and arrived.mismatched:
            self.arrived[(idx, k)] = arrived  # made by code before this layer that no paired layer covers
        new_args = tuple(substitute(a, keyed.get(i), adapter) for i, a in enumerate(args))
        new_kwargs = {key: substitute(v, keyed.get(key), adapter) for key, v in (kwargs or {}).items()}
        return new_args, new_kwargs

    def _feed_grads(self, idx, k, output):
        adapter = self.raw.adapter
        outs = []
        collect_tensors(output, adapter, outs)
        for j, t in enumerate(outs):
            if adapter.needs_grad(t):
                def give(g, key=(idx, k, j)):
                    got = self.base_grads.get(key)
                    if got is None or tuple(got.shape) != tuple(g.shape):
                        return None
                    self._judge_grad(key, got, adapter.snapshot(g))
                    return adapter.like(got, g)

                self._grad_hooks.append(t.register_hook(give))

    def _judge_grad(self, key, base_grad, raw_grad):
        """Single-step backward: the gradient arriving at a raw layer's output (every layer after it was fed base's
        gradients) against base's, before base's replaces it; kept in the order backward reaches them."""
        idx, k, j = key
        f = (compare_gradient(base_grad, raw_grad, self.tol, 0.0, self.tol.grad_rtol) if self.tol.mode == "strict"
             else compare(base_grad, raw_grad, self.tol))
        pair = self.pairs[idx]
        self.output_grads.append(LayerDiff(
            pair.base.path, pair.raw.path, type(pair.base.module).__name__, type(pair.raw.module).__name__, k,
            len(self.output_grads), f"gradient of out[{j}]" if j else "gradient of out", tuple(base_grad.shape),
            tuple(raw_grad.shape), f.max_abs, f.max_rel, f.mismatched, f.total))

    def on_raw(self, idx, k, args, kwargs, output):
        if self.single_step and self.grad:
            self._feed_grads(idx, k, output)
        got = self.stash.take((idx, k))
        if got is None:
            self.only.setdefault(idx, "raw")
            return
        order, bnode = got
        if not self.compare_layers:
            return substitute(output, bnode, self.raw.adapter) if self.single_step else None
        rnode = output_align.capture(output, self.raw.adapter)
        pair = self.pairs[idx]
        classes = (type(pair.base.module).__name__, type(pair.raw.module).__name__)
        c = self.arrived.pop((idx, k), None)
        if c is not None:  # single step: what arrived differs; it counts before the layer's own output
            ld = LayerDiff(pair.base.path, pair.raw.path, *classes, k, order, c.output, c.base_shape, c.raw_shape,
                           c.max_abs, c.max_rel, c.mismatched, c.total, inputs_agree=False,
                           note="the inputs raw computed for this layer differ although every earlier layer was fed "
                                "base's inputs: code before it that no paired layer covers differs" +
                                (f"; {c.note}" if c.note else ""))
            self.layers.append(ld)
            if self.first is None or order <= self.first.order:
                self.first, self.first_key, self.first_raw_inputs = ld, (idx, k), None
        al = output_align.align(bnode, rnode)
        noise = max(noise_of(bnode, self.reference_outputs.pop((idx, k), None)),
                    noise_of(rnode, self.raw_reference_outputs.pop((idx, k), None)))
        c = compare_aligned(al, widened(self.tol, noise))
        if c is None:
            self.not_comparable.append(NotComparable(pair.base.path, pair.raw.path, *classes, k, order, al.reason(),
                                                     str(bnode), str(rnode)))
            return
        ld = LayerDiff(pair.base.path, pair.raw.path, *classes, k, order, c.output, c.base_shape, c.raw_shape,
                       c.max_abs, c.max_rel, c.mismatched, c.total, note=c.note, raw_output=c.raw_output,
                       noise=noise)
        self.layers.append(ld)
        self._settle(pair, ld)
        if not ld.ok and (self.first is None or order < self.first.order):  # (ties: the inputs' record first)
            raw_inputs = output_align.capture_inputs(args, kwargs, self.raw.adapter)
            if self.single_step:  # its enclosing layer gets base's outputs: its agreeing would prove nothing
                self._confirm((ld, (idx, k), raw_inputs))
            else:
                self.unconfirmed.append((ld, (idx, k), raw_inputs))
        if self.single_step:  # what comes after this layer gets base's output, so only its own code is judged
            return substitute(output, bnode, self.raw.adapter)
        return None

    def _confirm(self, entry):
        ld, key, raw_inputs = entry
        if self.first is None or ld.order < self.first.order:  # raw runs in its own call order: the earliest in base's
            self.first, self.first_key, self.first_raw_inputs = ld, key, raw_inputs

    def _settle(self, pair, ld):
        """The differing calls inside ``pair`` (its paths enclose theirs) are absorbed when ``ld`` agrees and they
        differ grossly (:data:`GROSS`; noted on them, not a divergence), confirmed otherwise, unless an earlier call of the same class pair was absorbed
        (a router of another layer: this one returns the other form too, the difference is elsewhere in ``pair``)."""
        def inside(path, outer):
            return path != outer and (not outer or path.startswith(outer + "."))

        kept = []
        for entry in self.unconfirmed:
            u = entry[0]
            if not (inside(u.base_path, pair.base.path) and inside(u.raw_path, pair.raw.path)):
                kept.append(entry)
            elif ld.ok and _gross(u):
                self.forms.add((u.base_class, u.raw_class))
                u.note = ((u.note + "; ") if u.note else "") + (
                    f"differs, but the enclosing {label(ld.base_path)} -> {label(ld.raw_path)} agrees: the two layers "
                    "return different forms of the same result" + ABSORBED)
            elif (u.base_class, u.raw_class) in self.forms and _gross(u):
                u.note = ((u.note + "; ") if u.note else "") + (
                    f"differs as another call of {u.base_class} -> {u.raw_class} did whose enclosing layer agreed: "
                    "taken as the other form of the same result" + ABSORBED)
            else:
                self._confirm(entry)
        self.unconfirmed = kept

    def finish(self):
        """After the forward: differing calls no enclosing compared layer judged count as divergences."""
        for entry in self.unconfirmed:
            self._confirm(entry)
        self.unconfirmed = []

    def release(self):
        """Drop the tensor hooks of a single-step backward (after both backward passes ran)."""
        for h in self._grad_hooks:
            h.remove()
        self._grad_hooks.clear()
        self.base_grads.clear()

    # -- both --------------------------------------------------------------------------
    def run(self, bargs, bkw, rargs, rkw):
        """(base output, raw output) of the two forwards, every hooked call compared on the way."""
        hb, hr = self.hooked
        opts = dict(grad=self.grad, eval_mode=self.eval_mode)
        pre = self.pre_raw if self.single_step else None
        if not self.interleave:
            bout = run_model(self.base, hb, bargs, bkw, on_call=self.on_base, **opts)
            self.stash.base_finished()
            rout = run_model(self.raw, hr, rargs, rkw, on_call=self.on_raw, pre=pre, **opts)
        else:
            box = {}

            def base_thread():
                try:
                    box["out"] = run_model(self.base, hb, bargs, bkw, on_call=self.on_base, **opts)
                except BaseException as exc:  # handed to the caller's thread below
                    box["error"] = exc
                finally:
                    self.stash.base_finished(box.get("error"))

            t = threading.Thread(target=base_thread, name="padiff-lite-base", daemon=True)
            t.start()
            rout, raw_error = None, None
            try:
                rout = run_model(self.raw, hr, rargs, rkw, on_call=self.on_raw, **opts)
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


def inputs_at(proxy, module, call, args, kwargs, eval_mode: bool):
    """The inputs of the ``call``-th call of ``module``, from one more forward of ``proxy`` (no gradients)."""
    found = {}

    def on_call(_idx, k, a, kw, _out):
        if k == call:
            found["in"] = output_align.capture_inputs(a, kw, proxy.adapter)

    try:
        run_model(proxy, [(0, module)], args, kwargs, grad=False, eval_mode=eval_mode, on_call=on_call)
    except DiffError as exc:
        if not needs_autograd(exc):
            raise
        run_model(proxy, [(0, module)], args, kwargs, grad=True, eval_mode=eval_mode, on_call=on_call)
    return found.get("in")
