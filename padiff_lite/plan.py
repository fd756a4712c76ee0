"""Planning and validation: turn layer pairs into a list of plain operations, check them all.

Nothing here writes to a model. ``build_plan`` returns a :class:`Plan` whose ``problems`` say
everything that is wrong at once; the executor only runs a plan without problems.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import layout
from .errors import PadiffError

from .ops import CopyFacts, Kind, Op, Transform
from .pairing import LayerPair, Unpaired, pair_models
from .special_init import init_pool
from .tree import ModelTree

# torch-only counters with no counterpart anywhere: dropped when met in a default pair
SOURCE_ONLY = {"num_batches_tracked"}


@dataclass
class Plan:
    base: object
    raw: object
    pairs: list[LayerPair] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)  # copy and fill, in execution order
    checks: list[Op] = field(default_factory=list)  # expect: source must equal a constant
    imperative: list[LayerPair] = field(default_factory=list)
    unpaired: list[Unpaired] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # raw tensors nothing will write
    unexpected: list[str] = field(default_factory=list)  # base tensors nothing will read
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)  # how to fix unpaired tensors (for the strict error)
    caveats: dict = field(default_factory=dict)  # semantics weights cannot fix -> the pairs it applies to
    casts: list[str] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)
    tie_conflicts: list[tuple] = field(default_factory=list)  # (kept op, dropped op) writing one tied target
    facts: dict = field(default_factory=dict)  # id(copy op) -> CopyFacts, set by validate


def pair_label(pair: LayerPair) -> str:
    b, r = pair.base, pair.raw
    return (f"{b.path or '<root>'} ({type(b.module).__name__}) -> "
            f"{r.path or '<root>'} ({type(r.module).__name__})")


# -- building ------------------------------------------------------------------
def build_plan(base, raw, pool=None, need_data: bool = True, mapping=None) -> Plan:
    """Pair and plan ``base`` -> ``raw`` with the rules of ``pool`` (default: the global ``init_pool``), then
    validate. ``need_data=False``: see :func:`validate`. ``mapping``: a :class:`padiff_lite.mapping.Mapping`
    (oriented base -> raw) pairing what names leave open."""
    pairing = pair_models(base, raw, init_pool if pool is None else pool, mapping=mapping)
    plan = Plan(base, raw, pairing.pairs, unpaired=pairing.unpaired)
    for u in pairing.unpaired:
        (plan.unexpected if u.side == "base" else plan.missing).extend(u.tensor_paths())
    for pair in pairing.pairs:
        if pair.entry is None:
            _plan_default(plan, pair)
        elif pair.entry.kind == "mapping":
            _plan_maps(plan, pair)
        else:
            plan.imperative.append(pair)
    _dedupe_targets(plan)
    _check_parts(plan)
    plan.notes += [_caveat_note(caveat, pairs) for caveat, pairs in plan.caveats.items()]
    plan.missing = _in_model_order(raw, plan.missing)
    plan.unexpected = _in_model_order(base, plan.unexpected)
    validate(plan, need_data=need_data)
    return plan


def pair_problems(base, raw, pair: LayerPair) -> list[str]:
    """What would be wrong with transferring this one layer pair (shapes after the rule's transforms, tensors
    left without a partner on either side, a rule that refuses it); [] when it fits. Reads no values.
    An imperative special init cannot be checked without running it: it fits."""
    plan = Plan(base, raw, [pair])
    if pair.entry is None:
        _plan_default(plan, pair)
    elif pair.entry.kind == "mapping":
        _plan_maps(plan, pair)
    else:
        return []
    validate(plan, need_data=False)
    return plan.problems + [f"{pair_label(pair)}: base {p} has no partner" for p in plan.unexpected] + \
        [f"{pair_label(pair)}: raw {p} has no partner" for p in plan.missing]


def _in_model_order(proxy, paths: list[str]) -> list[str]:
    """``paths`` once each, in state_dict order (a module's own tensors, then its children's)."""
    if not paths:
        return []  # the usual case: no need to walk the model again
    order = {p: i for i, p in enumerate(ModelTree(proxy).build(proxy.model).subtree_tensors())}
    return sorted(dict.fromkeys(paths), key=lambda p: order.get(p, len(order)))


def _plan_default(plan: Plan, pair: LayerPair):
    b, r = pair.base, pair.raw
    # names local to each module (Node.local, inlined: this runs for every tensor of a default pair)
    b_cut, r_cut = len(b.path) + 1 if b.path else 0, len(r.path) + 1 if r.path else 0
    rk = {}
    for ref in r.own:
        rk[ref.path[r_cut:]] = ref
    for ref in b.own:
        name = ref.path[b_cut:]
        other = rk.pop(name, None)
        if other is not None:
            plan.ops.append(Op(Kind.COPY, ref, other, pair))
        elif name in SOURCE_ONLY or not ref.persistent or ref.alias_of:
            continue
        else:
            plan.unexpected.append(ref.path)
            _hint_rename(plan, pair, ref, rk)
    for ref in rk.values():
        if ref.persistent and not ref.alias_of:
            plan.missing.append(ref.path)


def _hint_rename(plan, pair, ref, candidates):
    if candidates:
        names = ", ".join(sorted(pair.raw.local(c) for c in candidates.values()))
        plan.hints.append(
            f"{pair_label(pair)}: base tensor '{pair.base.local(ref)}' has no namesake on the raw side "
            f"(raw has {names}); register a rule for this class pair with init_pool.register_maps or "
            "add_special_init"
        )


_WEIGHT_NORM = ("weight_g", "weight_v", "original0", "original1")


def _hint_uncovered(plan, pair, left_b, left_r):
    """A rule's maps do not name some tensors of its pair: say so (the tensor names alone can look identical)."""
    entry = pair.entry
    sides = [f"{side} {', '.join(names)}" for side, names in (("base", left_b), ("raw", left_r)) if names]
    hint = (f"{pair_label(pair)}: rule {entry.key} ({entry.origin}) has no map for {' and '.join(sides)}, so they have "
            "no namesake to go to; ")
    if any(n.split(".")[-1] in _WEIGHT_NORM for n in left_b + left_r):
        hint += ("these are weight-norm tensors, which the built-in rules do not carry: remove the weight norm on both "
                 "sides before the transfer (torch.nn.utils.remove_weight_norm or "
                 "torch.nn.utils.parametrize.remove_parametrizations; paddle.nn.utils.remove_weight_norm) and apply it "
                 "again afterwards, or ")
    plan.hints.append(hint + "register a rule for this class pair with init_pool.register_maps(..., override=True)")


def _canonical(tensors: dict, ref):
    """A rule may name a tensor by an alias (paddle's RNN cells): use its first, state-dict name."""
    if ref is None or not ref.alias_of:
        return ref
    for other in tensors.values():
        if other.path == ref.alias_of:
            return other
    return ref


def _plan_maps(plan: Plan, pair: LayerPair):
    b, r, entry = pair.base, pair.raw, pair.entry
    bt, rt = b.subtree_tensors(), r.subtree_tensors()
    try:
        maps = entry.maps(b.module, r.module)
    except Exception as exc:  # a rule that cannot describe this pair is a planning problem, not a crash
        if isinstance(exc, PadiffError):  # the rule refuses this pair and says why
            plan.problems.append(f"{pair_label(pair)}: {exc} (rule {entry.key}, {entry.origin})")
        else:
            plan.problems.append(f"{pair_label(pair)}: rule {entry.key} ({entry.origin}) failed: {type(exc).__name__}: {exc}; "
                                 "fix the rule, or register another for this class pair with override=True")
        return
    # runs once per layer pair of a rule (most pairs of a model): the common case, a tensor on each
    # side, goes first; the other branches are the rule's fills, checks and absent tensors
    ops = plan.ops
    used_b, used_r = set(), set()
    for m in maps:
        src = bt.get(m.src) if m.src else None
        dst = rt.get(m.dst) if m.dst else None
        if src is not None and src.alias_of:
            src = _canonical(bt, src)
        if dst is not None and dst.alias_of:
            dst = _canonical(rt, dst)
        src_part = dst_part = None
        if m.src_part is not None or m.dst_part is not None:
            try:
                src_part = _resolved(plan.base.adapter, b.module, m.src, src, m.src_part)
                dst_part = _resolved(plan.raw.adapter, r.module, m.dst, dst, m.dst_part)
            except ValueError as exc:
                plan.problems.append(f"{pair_label(pair)}: rule {entry.key} ({entry.origin}): {exc}; fix the rule's Part")
                used_b.add(m.src)
                used_r.add(m.dst)
                continue
        if src is not None and dst is not None:
            used_b.add(m.src)
            used_r.add(m.dst)
            ops.append(Op(Kind.COPY, src, dst, pair, Transform(m.transform), src_part, dst_part))
            continue
        if m.src and src is None and m.dst and dst is not None:
            plan.missing.append(dst.path)
            used_r.add(m.dst)
            continue
        if m.dst and dst is None and m.src and src is not None:
            if m.value is None and m.src not in SOURCE_ONLY:
                plan.unexpected.append(src.path)
            used_b.add(m.src)
            continue
        if src is None and dst is None:
            continue  # the rule names tensors that neither side has (e.g. bias=False on both)
        used_b.add(m.src)
        used_r.add(m.dst)
        if dst is not None and m.value is not None:
            plan.ops.append(Op(Kind.FILL, None, dst, pair, dst_part=dst_part, value=m.value))
        elif src is not None and m.value is not None:
            plan.checks.append(Op(Kind.EXPECT, src, None, pair, src_part=src_part, value=m.value))
    # a tensor is covered when a rule names it under any of its names (paddle RNN cells alias the
    # top-level weights, and a rule may address either); when the maps name every tensor of a side
    # by its own name (the usual case) nothing there is left over
    left_b, left_r = [], []
    if not bt.keys() <= used_b:
        seen_b = {id(bt[n].tensor) for n in used_b if n in bt}
        for name, ref in bt.items():
            if (id(ref.tensor) not in seen_b and ref.persistent and not ref.alias_of
                    and name.split(".")[-1] not in SOURCE_ONLY):
                plan.unexpected.append(ref.path)
                left_b.append(name)
    if not rt.keys() <= used_r:
        seen_r = {id(rt[n].tensor) for n in used_r if n in rt}
        for name, ref in rt.items():
            if id(ref.tensor) not in seen_r and ref.persistent and not ref.alias_of:
                plan.missing.append(ref.path)
                left_r.append(name)
    if left_b or left_r:
        _hint_uncovered(plan, pair, left_b, left_r)
    caveat = entry.caveat_for(b.module, r.module) if entry.caveat else ""
    if caveat:
        plan.caveats.setdefault(caveat, []).append(pair)


def _resolved(adapter, module, local: str | None, ref, part):
    """``part`` of the tensor ``local`` (a name below ``module``) with its axis made a dimension."""
    if part is None or ref is None:
        return part
    owner, _, leaf = local.rpartition(".")
    for name in owner.split(".") if owner else ():
        module = getattr(module, name)
    try:
        return layout.resolve(part, len(adapter.shape(ref.tensor)), adapter.stored_transposed(module, leaf))
    except ValueError as exc:
        raise ValueError(f"{ref.path} {list(adapter.shape(ref.tensor))}: {exc}") from None


def _caveat_note(caveat: str, pairs: list) -> str:
    """One note per caveat, naming the layer pairs it applies to (the first few when there are many)."""
    if len(pairs) == 1:
        return f"{pair_label(pairs[0])}: {caveat}"
    shown = "; ".join(pair_label(p) for p in pairs[:3]) + ("; ..." if len(pairs) > 3 else "")
    return f"{caveat} ({len(pairs)} layer pairs: {shown})"


def _dedupe_targets(plan: Plan):
    """A tied target is written once; a second writer is noted, not run."""
    # the key of a whole-tensor target is the tensor's id alone (never equal to an (id, part) tuple)
    keys = [id(op.dst.tensor) if op.dst_part is None else (id(op.dst.tensor), op.dst_part) for op in plan.ops]
    if len(set(keys)) == len(keys):
        return  # every target written once (the usual case): nothing to drop
    first: dict = {}
    kept = []
    for key, op in zip(keys, plan.ops):
        prev = first.get(key)
        if prev is None:
            first[key] = op
            kept.append(op)
        elif prev.dst.path == op.dst.path and (prev.src is None or op.src is None or prev.src.tensor is not op.src.tensor):
            plan.problems.append(
                f"{pair_label(op.pair)}: raw {op.dst.path}{op.dst_part or ''} and {prev.dst.path}{prev.dst_part or ''} overlap: "
                f"two maps ({prev.describe()}; {op.describe()}) write the same values; fix the rule's maps")
        elif prev.src is not None and op.src is not None and prev.src.tensor is not op.src.tensor:
            plan.tied.append(f"{op.dst.path} is tied to {prev.dst.path}: it gets {prev.src.path}, not {op.src.path}")
            plan.tie_conflicts.append((prev, op))
    plan.ops = kept


def _check_parts(plan: Plan):
    """Targets written in parts: the parts must not overlap, and together they must cover the tensor
    (what no part writes would keep its old values: it is listed as missing)."""
    by_dst: dict = {}
    for op in plan.ops:
        if op.dst_part is not None:
            by_dst.setdefault(id(op.dst.tensor), []).append(op)
    if not by_dst:
        return  # the usual case: no target is written in parts
    whole: dict = {}  # the whole-tensor writers of those targets (one pass over the ops, not one per target)
    for op in plan.ops:
        if op.dst_part is None and id(op.dst.tensor) in by_dst:
            whole.setdefault(id(op.dst.tensor), []).append(op)
    for key, ops in by_dst.items():
        ops = whole.get(key, []) + ops
        ref = ops[0].dst
        shape = tuple(plan.raw.adapter.shape(ref.tensor))
        clash = next(((a, b) for i, a in enumerate(ops) for b in ops[i + 1:] if layout.overlaps(a.dst_part, b.dst_part)),
                     None)
        if clash:
            a, b = clash
            plan.problems.append(
                f"{pair_label(b.pair)}: raw {ref.path}{a.dst_part or ''} and {ref.path}{b.dst_part or ''} overlap: two maps "
                f"({a.describe()}; {b.describe()}) write the same values; fix the rule's Parts")
            continue
        total = math.prod(shape)
        done = layout.covered(shape, [op.dst_part for op in ops])
        if done < total and ref.persistent and not ref.alias_of:
            plan.missing.append(ref.path)
            plan.hints.append(f"{pair_label(ops[0].pair)}: raw {ref.path} {list(shape)} is written in parts that cover "
                              f"{done} of its {total} values; the rest would keep its old values: add maps for the "
                              "rest, or fix the rule's Parts")


# -- validating ----------------------------------------------------------------
_FLOATS = {"float16", "bfloat16", "float32", "float64"}
_WIDTH = {"float16": 16, "bfloat16": 16, "float32": 32, "float64": 64}


def dtype_family(dtype: str) -> str:
    if dtype in _FLOATS or dtype.startswith("float8"):
        return "float"
    if dtype.startswith("complex"):
        return "complex"
    if dtype == "bool":
        return "bool"
    return "int"


def validate(plan: Plan, need_data: bool = True):
    """Fill ``plan.problems`` with everything that would make the transfer wrong.

    ``need_data=False`` checks structure, shapes and dtypes only, for models built without storage
    (torch's meta device, ``paddle.LazyGuard``): the base tensors need not hold data, and
    ``plan.checks`` (a base tensor must equal a constant) are left for the caller, who reads the
    values from elsewhere (``padiff_lite.checkpoint`` reads them from the file).
    """
    ba, ra = plan.base.adapter, plan.raw.adapter
    unreadable: set[int] = set()
    # this loop runs once per tensor: the adapters' methods are looked up once, not once per call
    b_shape, r_shape, b_dtype, r_dtype = ba.shape, ra.shape, ba.dtype_name, ra.dtype_name
    b_readable, r_readable = ba.readable, ra.readable
    for op in plan.ops:
        dst = op.dst.tensor
        if need_data and not r_readable(dst):
            unreadable.add(id(dst))
            plan.problems.append(_no_data(pair_label(op.pair), "raw", ra, op.dst))
            continue
        dshape = r_shape(dst)
        want = dshape if op.dst_part is None else layout.region_shape(dshape, op.dst_part)
        if want is None:
            plan.problems.append(f"{pair_label(op.pair)}: part {op.dst_part} does not fit raw {op.dst.path} of shape "
                                 f"{list(dshape)}; fix the rule's Part")
            continue
        if op.kind is Kind.FILL:
            continue
        src = op.src.tensor
        sshape = b_shape(src)
        if need_data and not b_readable(src):
            unreadable.add(id(src))
            plan.problems.append(_no_data(pair_label(op.pair), "base", ba, op.src))
            continue
        got = sshape if op.src_part is None else layout.region_shape(sshape, op.src_part)
        if got is None:
            plan.problems.append(f"{pair_label(op.pair)}: part {op.src_part} does not fit base {op.src.path} of shape "
                                 f"{list(sshape)}; fix the rule's Part")
            continue
        transform = op.transform
        if transform == "transpose":
            if len(got) != 2:
                plan.problems.append(f"{pair_label(op.pair)}: base {op.src.path} is {len(got)}-D, a transpose needs 2-D")
                continue
            got = got[::-1]
        elif transform == "reshape" and math.prod(got) == math.prod(want):
            got = want
        if got != want:
            plan.problems.append(_shape_problem(pair_label(op.pair), op, sshape, dshape))
        sd, dd = b_dtype(src), r_dtype(dst)
        plan.facts[id(op)] = CopyFacts(sshape, dshape, sd, dd)  # the executor groups small copies by it
        if sd != dd:  # the place is formatted only when there is something to say
            _check_dtype(plan, pair_label(op.pair), op, sd, dd)
    if not need_data:  # shapes only (checkpoint conversion): values are checked against the file
        return
    for pair in plan.imperative:  # a special init reads and writes whole layers: all of them must hold data
        for side, node, adapter in (("base", pair.base, ba), ("raw", pair.raw, ra)):
            for ref in node.subtree_tensors().values():
                if not adapter.readable(ref.tensor):
                    unreadable.add(id(ref.tensor))
                    plan.problems.append(_no_data(pair_label(pair), side, adapter, ref))
    for op in plan.checks:
        if not ba.readable(op.src.tensor):
            plan.problems.append(_no_data(pair_label(op.pair), "base", ba, op.src))
        else:
            _check_expect(plan, op)
    for kept, dropped in plan.tie_conflicts:
        if not {id(kept.src.tensor), id(dropped.src.tensor), id(kept.dst.tensor)} & unreadable:
            _check_tie(plan, kept, dropped)


def _no_data(where, side, adapter, ref) -> str:
    fix = ("load real weights into the base model (for a meta-device or LazyGuard model: materialise it, "
           "e.g. to_empty() + load_state_dict, or build it outside LazyGuard)" if side == "base" else
           "materialise the raw model first (torch: model.to_empty(device='cpu'); paddle: build it outside "
           "LazyGuard or initialise its parameters)")
    return f"{where}: {side} {ref.path} holds no data (device {adapter.device(ref.tensor)}); {fix}"


def source_value(adapter, op):
    """The torch tensor an op writes: the source view with its row block and transform applied."""
    src = layout.take(adapter.torch_view(op.src.tensor), op.src_part)
    return layout.transformed(src, op.transform, (-1,))


def _check_tie(plan, kept, dropped):
    """A tied raw tensor can hold one value: two different base tensors written into it lose one."""
    import torch

    ba = plan.base.adapter
    a, b = source_value(ba, kept), source_value(ba, dropped)
    if a.numel() == b.numel() and "reshape" in (kept.transform, dropped.transform):
        a, b = a.reshape(-1), b.reshape(-1)
    if a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b):
        return
    plan.problems.append(
        f"{pair_label(dropped.pair)}: raw {dropped.dst.path} is tied to {kept.dst.path} (one tensor), but base "
        f"{kept.src.path} and {dropped.src.path} hold different values, so one of them would be lost; untie "
        f"{dropped.dst.path} in the raw model, tie the base model the same way, or black-list one of the two"
    )


def _shape_problem(where, op, sshape, dshape) -> str:
    msg = (f"{where}: shape mismatch: base {op.src.path} {list(sshape)}"
           f"{'' if op.transform == 'copy' else ' (' + op.transform + ')'} vs raw {op.dst.path} {list(dshape)}")
    if op.transform == "copy" and len(sshape) == 2 and tuple(sshape[::-1]) == tuple(dshape):
        return msg + ("; the layouts look transposed: register a rule for this class pair "
                      "(init_pool.register_maps with Map(..., 'transpose')) - padiff_lite never guesses a transpose")
    return msg + "; build both models with the same sizes, or pair these layers differently with set_layer_map"


def _check_dtype(plan, where, op, sd, dd):
    fs, fd = dtype_family(sd), dtype_family(dd)
    if fs != fd:
        plan.problems.append(f"{where}: base {op.src.path} is {sd} but raw {op.dst.path} is {dd}; "
                             "a transfer does not change the kind of a tensor: build the raw model with a matching dtype")
    elif sd != dd and fs == "float":
        lossless = _WIDTH.get(sd, 0) < _WIDTH.get(dd, 0) or (sd, dd) == ("float16", "float32")
        if not lossless:
            _check_range(plan, where, op, sd, dd)
            plan.casts.append(f"{op.src.path} {sd} -> {op.dst.path} {dd}")
    elif sd != dd and fs == "int":
        _check_range(plan, where, op, sd, dd)
        plan.casts.append(f"{op.src.path} {sd} -> {op.dst.path} {dd}")


def _check_range(plan, where, op, sd, dd):
    """A narrowing cast must not turn finite values into Inf or wrap integers around (only narrowing ops pay this)."""
    import torch

    target = getattr(torch, dd, None)
    if target is None:
        return
    info = torch.finfo(target) if target.is_floating_point else torch.iinfo(target)
    if not plan.base.adapter.readable(op.src.tensor):
        return  # no data to look at (the no-data problem is reported where data is needed)
    src = source_value(plan.base.adapter, op)
    if src.numel() == 0:
        return
    if src.is_floating_point():
        src = src[torch.isfinite(src)]  # NaN/Inf are reported as non-finite, not as out of range
        if src.numel() == 0:
            return
    lo, hi = src.min().item(), src.max().item()
    if lo < info.min or hi > info.max:
        plan.problems.append(
            f"{where}: base {op.src.path} ({sd}) holds values in [{lo:g}, {hi:g}], outside the range of raw "
            f"{op.dst.path} ({dd}, [{info.min:g}, {info.max:g}]); the cast would "
            f"{'turn them into Inf' if target.is_floating_point else 'wrap them around'}: build the raw model "
            f"with dtype {sd}, or rescale the weights"
        )


def _check_expect(plan, op):
    import torch

    view = layout.take(plan.base.adapter.torch_view(op.src.tensor), op.src_part)
    rows = f" {op.src_part}" if op.src_part is not None else ""
    if not bool(torch.all(view == op.value)):
        plan.problems.append(
            f"{pair_label(op.pair)}: base {op.src.path}{rows} has values other than {op.value}, and the raw layer has no "
            f"tensor to hold them; give the raw layer that parameter (e.g. affine=True / weight_attr) or reset "
            f"{op.src.path}{rows} to {op.value}"
        )
