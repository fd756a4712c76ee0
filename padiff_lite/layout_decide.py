"""Deciding the fused layouts :mod:`padiff_lite.layout_infer` recognised: a planning step.

Each undecided :class:`~padiff_lite.layout_infer.InferredLayout` gets its candidate: the only one the shapes allow;
or the one whose tensors a given mapping lists (a mapping written by an earlier run: how ``convert`` reuses a layout
where nothing can run); or the one candidate under which private copies of the unit, given the same random weights
through their own sub-plan, give the same outputs on a random input (a unit that cannot run alone, experts, runs
through its nearest paired ancestor, the MoE block). None or several: refused, the candidates named. Namesakes whose
shapes are each other's transpose, with no Linear on either side, are confirmed the same way.

Planning a unit's copies and validating that plan are later stages: a :class:`Decider` is given them (by
:mod:`padiff_lite.prepare`, the way pairing by execution is given its fit check), and planning
(:func:`padiff_lite.plan.plan_from`) is given the Decider, so this module imports neither planning nor validation.
"""
from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass
from typing import Callable

from .errors import AmbiguousPairingError, PadiffError, PairingError
from .layout_infer import TRANSPOSED_BY_RUN, Candidate, InferredLayout, as_linear, forcing
from .mapping import plan_tensors
from .problems import Problem


@dataclass(frozen=True)
class Decider:
    """Decides layouts for planning; holds what it needs of the later stages.

    plan_models: ``(base module, raw module) -> Plan``: two private copies of a unit paired and planned, their own
        fused layouts decided the same way (under :func:`padiff_lite.layout_infer.forcing`, as forced).
    problems: ``Plan -> list``: planning's problems, else strict validation's.
    plan_pairs: ``(base proxy, raw proxy, layer pairs) -> Plan``: these pairs alone planned (nothing decided).
    """

    plan_models: Callable
    problems: Callable
    plan_pairs: Callable

    def layouts(self, entries, base, raw, mapping=None, matched=()) -> list[str]:
        """Decide every undecided entry; returns the notes saying what was inferred and how (:func:`resolve`)."""
        return resolve(entries, base, raw, self, mapping, matched)

    def transposes(self, plan, matched, mapping=None):
        """Confirm the namesakes only the shapes say are transposed (:func:`verify_transposes`)."""
        verify_transposes(plan, self, matched, mapping)


def _label(pair) -> str:
    b, r = pair.base, pair.raw
    return f"{b.path or '<root>'} ({type(b.module).__name__}) -> {r.path or '<root>'} ({type(r.module).__name__})"


def resolve(entries, base, raw, decider: Decider, mapping=None, matched=()) -> list[str]:
    """Decide every undecided entry (module docstring); returns the notes saying what was inferred and how.
    ``matched``: every layer pair of the pairing (a unit that cannot run alone is run through its nearest paired
    ancestor that can: experts through their MoE block). Raises PairingError (none agrees, or the unit cannot run)
    / AmbiguousPairingError (several agree)."""
    notes = []
    entries = list(entries)
    for entry in entries:
        if entry.chosen is None:
            first = entry.pairs[0]
            if len(entry.candidates) == 1:
                entry.chosen, entry.how = entry.candidates[0], "the only layout the shapes allow"
            elif mapping is not None and mapping.tensors:
                entry.chosen, entry.how = _by_mapping(entry, first, base, raw, mapping, decider)
            else:
                decided = {e.signature: e.chosen.name for e in entries if e.chosen is not None}
                units = [first] + sorted(
                    (p for p in matched if p.entry is None and _inside(first.base.path, p.base.path)
                     and _inside(first.raw.path, p.raw.path) and p.base.path != first.base.path),
                    key=lambda p: -len(p.base.path))[:2]
                entry.chosen, entry.how = _by_running(entry, units, base, raw, decider, decided)
        if entry.how != "forced":
            where = _label(entry.pairs[0]) + (f" and {len(entry.pairs) - 1} more" if len(entry.pairs) > 1 else "")
            notes.append(f"{where}: {entry.describe()}")
    return notes


def _inside(path: str, ancestor: str) -> bool:
    return not ancestor or path == ancestor or path.startswith(ancestor + ".")


def _candidate_names(entry) -> str:
    return "; ".join(f"({i + 1}) {c.name}" for i, c in enumerate(entry.candidates))


def _by_mapping(entry, pair, base, raw, mapping, decider):
    want = {(e.base, e.raw, str(e.transform), e.base_part, e.raw_part) for e in mapping.tensors}
    fits = []
    for cand in entry.candidates:
        trial = InferredLayout(entry.what, entry.signature, [cand], entry.inp, cand, "trial")
        scratch = decider.plan_pairs(base, raw, [type(pair)(pair.base, pair.raw, trial, pair.how)])
        got = {(e.base, e.raw, str(e.transform), e.base_part, e.raw_part) for e in plan_tensors(scratch)}
        if got and got <= want:
            fits.append(cand)
    if len(fits) == 1:
        return fits[0], "as the mapping's tensors say"
    raise PairingError(
        f"{_label(pair)}: {entry.what} fit {len(entry.candidates)} layouts ({_candidate_names(entry)}) and the mapping's "
        f"tensors match {len(fits)} of them; make the mapping again for these models (assign_weight(...).mapping.save "
        "or `padiff-lite pair` on small random-weight models), or register a rule for this class pair "
        "(init_pool.register_maps)")


def _width(adapter, node) -> int:
    """The input width of a unit without a fused projection of its own: the in-features of its first Linear-like
    descendant (torch layout)."""
    from .tree import walk

    for n in walk(node):
        lin = as_linear(adapter, "", n)
        if lin is not None:
            return lin.inp
    return 0


def _randomise(adapter, module, seed: int):
    """Give every tensor of ``module`` (a private copy) random values: weights ~ N(0, 1/fan), 1-D tensors 1 + noise
    (so a layout that swaps norms or biases cannot pass by their 0/1 initialisation)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    for _, m in _modules(adapter, module):
        for _, t, _, _ in adapter.own_tensors(m):
            if t is None or not adapter.readable(t):
                continue
            view, direct = adapter.writable_view(t)
            if not view.is_floating_point():
                continue
            shape = tuple(view.shape)
            noise = torch.randn(shape, generator=gen)
            value = noise / math.sqrt(shape[-1]) if len(shape) > 1 else 1.0 + 0.3 * noise
            with torch.no_grad():
                view.copy_(value.to(view.dtype))
            if not direct:
                adapter.write(t, view)


def _modules(adapter, module, path=""):
    yield path, module
    for name, child in adapter.named_children(module):
        yield from _modules(adapter, child, f"{path}.{name}" if path else name)


def _copy_plan(plan):
    """Run ``plan``'s copies and fills into the raw copy (private copies of the unit only: never a user's model)."""
    import torch

    from . import layout
    from .ops import COPY, FILL

    ba, ra = plan.base.adapter, plan.raw.adapter
    with torch.no_grad():
        for pair in plan.imperative:
            pair.entry.func(pair.base.module, pair.raw.module)
        for op in plan.ops:
            dst, direct = ra.writable_view(op.dst.tensor)
            if op.kind is COPY:
                for region, value in layout.pieces(ba.torch_view(op.src.tensor), op.src_part, op.transform, dst,
                                                   op.dst_part):
                    region.copy_(value.to(region.dtype))
            elif op.kind is FILL:
                for region in layout.cut(dst, op.dst_part):
                    region.fill_(op.value)
            if not direct:
                ra.write(op.dst.tensor, dst)


def _first_tensor(adapter, out):
    """The unit's output tensor: the output itself, or the first tensor of a tuple, list or dict."""
    if adapter.is_tensor(out):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    elif not isinstance(out, (tuple, list)):
        return None
    for x in out:
        t = _first_tensor(adapter, x) if x is not None else None
        if t is not None:
            return t
    return None


MASK_NAMES = ("attention_mask", "attn_mask", "mask")


def _causal_mask(batch: int, seq: int):
    """An explicit additive causal mask ``[batch, 1, seq, seq]`` (0 on and below the diagonal, -1e9 above): the
    libraries read a *missing* mask differently (transformers' eager attention and PaddleFormers' eager attention
    attend both ways, PaddleFormers' sdpa attention causally), an explicit one alike."""
    import numpy as np

    upper = np.triu(np.ones((seq, seq), dtype=bool), 1)
    return np.broadcast_to(np.where(upper, np.float32(-1e9), np.float32(0)), (batch, 1, seq, seq)).copy()


def _call_args(module, x, cos_sin, mask=None, own=False):
    """``(args, kwargs)`` calling ``module`` on ``x``: the first parameter gets ``x``, ``position_embeddings``
    ``cos_sin``, an attention mask ``mask`` (an explicit causal mask) when it is required or ``own`` (the unit holds
    the fused projections itself: an attention, whose mask is the additive ``[B, 1, S, S]`` kind in every library;
    an enclosing layer's optional mask may be of another kind and is left out), other required parameters None."""
    args, kwargs = [x], {}
    params = [p for p in inspect.signature(module.forward).parameters.values()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    for p in params[1:]:
        if p.name == "position_embeddings" and cos_sin is not None:
            kwargs[p.name] = cos_sin
        elif p.name in MASK_NAMES and (own or p.default is inspect.Parameter.empty):
            kwargs[p.name] = mask
        elif p.default is inspect.Parameter.empty:
            kwargs[p.name] = None
    return args, kwargs


def _run_unit(proxy, module, x_np, cos_sin_np, own=False):
    adapter = proxy.adapter
    x = adapter.to_tensor(x_np)
    cs = tuple(adapter.to_tensor(a) for a in cos_sin_np) if cos_sin_np is not None else None
    mask = adapter.to_tensor(_causal_mask(*x_np.shape[:2])) if x_np.ndim == 3 else None
    args, kwargs = _call_args(module, x, cs, mask, own)
    adapter.set_training(module, False)
    out = _first_tensor(adapter, adapter.forward(module, tuple(args), kwargs, False))
    if out is None:
        raise PairingError(f"{type(module).__name__} returned no tensor")
    return adapter.snapshot(out)


def _by_running(entry, units, base, raw, decider, decided):
    """Run the first of ``units`` (the group's pair, then its paired ancestors) that runs on both sides."""
    failures = []
    for unit in units:
        chosen, how = _run_candidates(entry, unit, base, raw, decider, decided, entry.pairs[0])
        if chosen is not None:
            return chosen, how
        failures.append(f"{_label(unit)}: {how}")  # this unit cannot tell: its ancestor may
    raise PairingError(
        f"{_label(entry.pairs[0])}: {entry.what} fit {len(entry.candidates)} layout{'s' * (len(entry.candidates) != 1)} "
        f"({_candidate_names(entry)}) and running the units around it on a random input did not single one out: "
        f"{' | '.join(failures)}. Nothing was written. Fix: register a rule for this class pair "
        "(init_pool.register_maps), or pass mapping= naming the tensors")


def _run_candidates(entry, pair, base, raw, decider, decided, group):
    """``(candidate, how)`` when running ``pair``'s copies singles one out; ``(None, why)`` when this unit cannot
    tell (it does not run, its outputs are of another form, or none agrees); raises when several agree."""
    import numpy as np

    label = _label(group)
    readable = all(proxy.adapter.readable(ref.tensor) for proxy, node in ((base, pair.base), (raw, pair.raw))
                   for ref in node.subtree_tensors().values())
    if not readable:
        raise PairingError(
            f"{label}: {entry.what} fit {len(entry.candidates)} layouts ({_candidate_names(entry)}) and the models hold "
            "no data, so the unit cannot be run to tell them apart (checkpoint conversion); pass mapping= a mapping made "
            "on small random-weight models of this architecture (assign_weight(...).mapping.save(path) or `padiff-lite "
            "pair`): it records the layout; or register a rule for this class pair (init_pool.register_maps)")
    rng = np.random.default_rng(0)
    width = entry.inp or _width(base.adapter, pair.base)
    if not width:
        return None, "no input width known"
    x = rng.standard_normal((2, 5, width)).astype("float32")
    agree, results, ran, crashed = [], [], [], []
    for cand in entry.candidates:
        cos_sin = None
        if cand.head_dim:
            ang = rng.standard_normal((2, 5, cand.head_dim // 2)).astype("float32")
            ang = np.concatenate([ang, ang], -1)
            cos_sin = (np.cos(ang), np.sin(ang))
        bm, rm = copy.deepcopy(pair.base.module), copy.deepcopy(pair.raw.module)
        _randomise(base.adapter, bm, 1)
        _randomise(raw.adapter, rm, 2)
        with forcing({**decided, entry.signature: cand.name}):
            sub = decider.plan_models(bm, rm)
        problems = decider.problems(sub)
        if problems or sub.missing:
            why = "; ".join(problems) or "missing " + ", ".join(sub.missing)
            results.append(Problem(cand.name, f"the unit does not plan ({why})"))
            continue
        ran.append(cand)
        _copy_plan(sub)
        try:
            a = _run_unit(sub.base, bm, x, cos_sin, pair is group)
            b = _run_unit(sub.raw, rm, x, cos_sin, pair is group)
        except Exception as exc:  # the unit cannot run on its own with these inputs: say so
            crashed.append(cand)
            results.append(Problem(cand.name,
                                   f"the unit failed to run on a random input ({type(exc).__name__}: {exc})"))
            continue
        if a.shape != b.shape:
            crashed.append(cand)  # outputs of another form: not comparable here (an ancestor may be)
            results.append(Problem(cand.name, f"outputs of shapes {list(a.shape)} and {list(b.shape)}"))
            continue
        diff = float(np.abs(a.astype("float64") - b).max()) if a.size else 0.0
        scale = float(np.abs(a).max()) if a.size else 0.0
        results.append(Problem(cand.name, f"max |diff| {diff:.3g} (outputs up to {scale:.3g})"))
        if diff <= 1e-5 + 1e-4 * scale:
            agree.append(cand)
    if ran and len(crashed) == len(ran):
        return None, results[-1].what
    if len(agree) == 1:
        where = "" if pair is group else f" (run through {pair.base.path or '<root>'})"
        return agree[0], (f"the one candidate of {len(entry.candidates)} whose unit outputs agree on a random "
                          f"input{where}")
    if not agree:
        return None, "agrees under none of them: " + "; ".join(results)
    msg = (f"{label}: {entry.what} fit {len(entry.candidates)} layouts and running the unit on a random input "
           f"agrees under {len(agree)} of them: " + "; ".join(results) + ". Nothing was written. Fix: register a rule "
           "for this class pair (init_pool.register_maps), or pass mapping= naming the tensors")
    raise AmbiguousPairingError(msg, [msg], [("base", group.base.path, [c.name for c in agree])])




def verify_transposes(plan, decider: Decider, matched, mapping=None):
    """Namesakes whose shapes are each other's transpose with no Linear on either side (``plan.pending``): copied
    transposed when running the nearest unit that runs agrees; otherwise left as they are (validation then refuses
    the shapes and says to register a rule), what was tried in the plan's hints. A ``mapping`` whose tensors say
    these copies are transposed (made by an earlier run) decides where nothing can run."""
    from .ops import TRANSPOSE

    said = {(e.base, e.raw) for e in mapping.tensors if str(e.transform) == "transpose"} if mapping is not None else set()
    for key, ops in plan.pending.items():
        first = ops[0].pair
        if said and all((op.src.path, op.dst.path) in said for op in ops):  # a mapping made by an earlier run
            for op in ops:
                op.transform = TRANSPOSE
            plan.inferred.setdefault(f"{key}: layout inferred (transposed, as the mapping's tensors say)", []).extend(
                op.pair for op in ops)
            continue
        entry = InferredLayout(key, ("transposed", key), [Candidate("transposed", ())], 0)
        entry.pairs = [op.pair for op in ops]
        units = [first] + sorted((p for p in matched if p.entry is None and p is not first
                                  and _inside(first.base.path, p.base.path) and _inside(first.raw.path, p.raw.path)
                                  and p.base.path != first.base.path), key=lambda p: -len(p.base.path))[:2]
        try:
            _by_running(entry, units, plan.base, plan.raw, decider, {})
        except PadiffError as exc:
            plan.hints.append(f"{_label(first)}: {key} look transposed and the unit did not confirm it ({exc})")
            continue
        for op in ops:
            op.transform = TRANSPOSE
        plan.inferred.setdefault(f"{key}: layout inferred ({TRANSPOSED_BY_RUN})", []).extend(op.pair for op in ops)


