"""Planning: turn layer pairs into a list of plain operations (:mod:`.ops`).

Nothing here writes to a model or reads a value. ``build_plan`` returns a :class:`Plan`; its ``problems`` are
what planning itself found (a rule that fails, parts that overlap). :mod:`.validate` checks the plan against
the tensors (shapes, dtypes, data, constants, ties) and the caller's demands (strict, check_finite, a file).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import layout
from .errors import PadiffError, PairingError
from .layout_infer import TRANSPOSED_LINEAR, forced_transpose, transposed_namesake
from .ops import COPY, EXPECT, FILL, TRANSPOSE, Op
from .pairing import LayerPair, Pairing, Unpaired, pair_models
from .problems import Problem
from .special_init import registry
from .special_init.registry import RuleKind
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
    problems: list[Problem] = field(default_factory=list)  # planning's own (validation's: validate.check)
    notes: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)  # how to fix unpaired tensors (for the strict error)
    caveats: dict = field(default_factory=dict)  # semantics weights cannot fix -> the pairs it applies to
    tied: list[str] = field(default_factory=list)
    tie_conflicts: list[tuple] = field(default_factory=list)  # (kept op, dropped op) writing one tied target
    inferred: dict = field(default_factory=dict)  # a transposed namesake's note -> the layer pairs it applies to
    pending: dict = field(default_factory=dict)  # namesakes only the shapes say are transposed -> their copies
    shapes_seen: dict = field(default_factory=dict)  # (base class, raw class) -> whether namesakes' shapes differ


def pair_label(pair: LayerPair) -> str:
    b, r = pair.base, pair.raw
    return (f"{b.path or '<root>'} ({type(b.module).__name__}) -> "
            f"{r.path or '<root>'} ({type(r.module).__name__})")


# -- building ------------------------------------------------------------------
def build_plan(base, raw, pool=None, mapping=None, decider=None) -> Plan:
    """Pair and plan ``base`` -> ``raw`` (ProxyModels) with the rules of ``pool`` (default: the global
    ``init_pool``). ``mapping``: a :class:`padiff_lite.mapping.Mapping` (oriented base -> raw) pairing what
    names leave open; ``decider``: as :func:`plan_from`. Not validated: see :func:`padiff_lite.validate.check`. The
    entry points start from :func:`padiff_lite.prepare.prepare` instead, which pairs once, plans from that pairing
    and gives planning its decider."""
    return plan_from(pair_models(base, raw, registry(pool), mapping=mapping), mapping, decider)


def plan_from(pairing: Pairing, mapping=None, decider=None) -> Plan:
    """Plan a :class:`padiff_lite.pairing.Pairing` (names, then ``mapping`` already applied to it): every pair's
    operations, the fused layouts it recognised decided, what is left unpaired listed.

    ``decider`` (a :class:`padiff_lite.layout_decide.Decider`, given by :mod:`padiff_lite.prepare`) decides the fused
    layouts pairing recognised (by the shapes, a mapping, or running the unit) and confirms namesakes only the shapes
    say are transposed. Without one, an undecided fused layout is refused and such namesakes are left as they are
    (validation refuses their shapes)."""
    base, raw = pairing.base, pairing.raw
    plan = Plan(base, raw, pairing.pairs, unpaired=pairing.unpaired)
    if pairing.inferred:  # fused layouts recognised by structure
        if decider is None:
            _refuse_undecided(pairing.inferred.values())
        else:
            plan.notes += decider.layouts(pairing.inferred.values(), base, raw, mapping, pairing.matched)
    for u in pairing.unpaired:
        (plan.unexpected if u.side == "base" else plan.missing).extend(u.tensor_paths())
    plan_pairs(plan, pairing.pairs)
    if plan.pending:
        if decider is not None:
            decider.transposes(plan, pairing.matched, mapping)
        else:
            plan.hints += [f"{pair_label(ops[0].pair)}: {key} look transposed; planned without running the unit, "
                           "so not confirmed (padiff_lite.prepare runs it)" for key, ops in plan.pending.items()]
    _dedupe_targets(plan)
    _check_parts(plan)
    plan.notes += [_caveat_note(caveat, pairs) for caveat, pairs in plan.caveats.items()]
    plan.notes += [_caveat_note(note, pairs) for note, pairs in plan.inferred.items()]
    plan.missing = _in_model_order(raw, plan.missing)
    plan.unexpected = _in_model_order(base, plan.unexpected)
    return plan


def _refuse_undecided(entries):
    undecided = [e for e in entries if e.chosen is None]
    if undecided:
        e = undecided[0]
        raise PairingError(
            f"{pair_label(e.pairs[0])}: {e.what} fit {len(e.candidates)} layouts and this plan was made without "
            "deciding them. Nothing was written. Fix: plan through padiff_lite.prepare.prepare(base, raw).plan, which "
            "decides them (by the shapes, a mapping, or running the unit)")


def plan_pairs(plan: Plan, pairs):
    """Add the layer pairs' operations to ``plan``: each rule's maps, the default copy by name, or the pair kept
    aside for its imperative special init."""
    for pair in pairs:
        if pair.entry is None:
            _plan_default(plan, pair)
        elif pair.entry.kind == RuleKind.MAPPING:
            _plan_maps(plan, pair)
        else:
            plan.imperative.append(pair)


def _in_model_order(proxy, paths: list[str]) -> list[str]:
    """``paths`` once each, in state_dict order (a module's own tensors, then its children's)."""
    if not paths:
        return []  # the usual case: no need to walk the model again
    order = {p: i for i, p in enumerate(ModelTree(proxy).build(proxy.model).subtree_tensors())}
    return sorted(dict.fromkeys(paths), key=lambda p: order.get(p, len(order)))


def _plan_default(plan: Plan, pair: LayerPair):
    b, r = pair.base, pair.raw
    # names local to each module (what Node.local gives, cut here once per tensor: see subtree_tensors)
    b_cut, r_cut = len(b.path) + 1 if b.path else 0, len(r.path) + 1 if r.path else 0
    rk = {}
    for ref in r.own:
        rk[ref.path[r_cut:]] = ref
    # namesakes of differing shapes are looked at for the first pair of each class pair only (a shape costs ~1 us a
    # tensor, +15 % planning time for models of default-rule layers); a later mismatch is refused by validation
    classes = (type(b.module), type(r.module))
    look = plan.shapes_seen.get(classes)
    if look is None:
        look = plan.shapes_seen[classes] = any(
            len(plan.base.adapter.shape(ref.tensor)) == 2 and ref.path[b_cut:] in rk
            and plan.base.adapter.shape(ref.tensor) != plan.raw.adapter.shape(rk[ref.path[b_cut:]].tensor)
            for ref in b.own)
    for ref in b.own:
        name = ref.path[b_cut:]
        other = rk.pop(name, None)
        if other is not None:
            bs, rs = (plan.base.adapter.shape(ref.tensor), plan.raw.adapter.shape(other.tensor)) if look else ((), ())
            if bs != rs and len(bs) == 2:  # a router [E, H] against a Linear [H, E], or the same class stored so
                why = transposed_namesake(plan.base.adapter, b.module, plan.raw.adapter, r.module, name, bs, rs)
                key = f"{type(b.module).__name__}.{name} {list(bs)} -> {type(r.module).__name__}.{name} {list(rs)}"
                if why == TRANSPOSED_LINEAR or (why and forced_transpose(key)):
                    plan.ops.append(Op(COPY, ref, other, pair, TRANSPOSE))
                    plan.inferred.setdefault(f"{key}: layout inferred ({why})", []).append(pair)
                    continue
                if why:  # only the shapes say so: transposed once running the unit shows it (verify_transposes)
                    op = Op(COPY, ref, other, pair)
                    plan.ops.append(op)
                    plan.pending.setdefault(key, []).append(op)
                    continue
            plan.ops.append(Op(COPY, ref, other, pair))
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
            plan.problems.append(Problem(pair_label(pair), f"{exc} (rule {entry.key}, {entry.origin})"))
        else:
            plan.problems.append(Problem(pair_label(pair), f"rule {entry.key} ({entry.origin}) failed: "
                                         f"{type(exc).__name__}: {exc}",
                                         "fix the rule, or register another for this class pair with override=True"))
        return
    # the common case first: a tensor on each side; then the rule's fills, checks and absent tensors
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
                plan.problems.append(Problem(pair_label(pair), f"rule {entry.key} ({entry.origin}): {exc}",
                                             "fix the rule's Part"))
                used_b.add(m.src)
                used_r.add(m.dst)
                continue
        if src is not None and dst is not None:
            used_b.add(m.src)
            used_r.add(m.dst)
            ops.append(Op(COPY, src, dst, pair, m.transform, src_part, dst_part))
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
            plan.ops.append(Op(FILL, None, dst, pair, dst_part=dst_part, value=m.value))
        elif src is not None and m.value is not None:
            plan.checks.append(Op(EXPECT, src, None, pair, src_part=src_part, value=m.value))
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
            plan.problems.append(Problem(
                pair_label(op.pair), f"raw {op.dst.path}{op.dst_part or ''} and {prev.dst.path}{prev.dst_part or ''} "
                f"overlap: two maps ({prev.describe()}; {op.describe()}) write the same values", "fix the rule's maps"))
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
            plan.problems.append(Problem(
                pair_label(b.pair), f"raw {ref.path}{a.dst_part or ''} and {ref.path}{b.dst_part or ''} overlap: two "
                f"maps ({a.describe()}; {b.describe()}) write the same values", "fix the rule's Parts"))
            continue
        total = math.prod(shape)
        done = layout.covered(shape, [op.dst_part for op in ops])
        if done < total and ref.persistent and not ref.alias_of:
            plan.missing.append(ref.path)
            plan.hints.append(f"{pair_label(ops[0].pair)}: raw {ref.path} {list(shape)} is written in parts that cover "
                              f"{done} of its {total} values; the rest would keep its old values: add maps for the "
                              "rest, or fix the rule's Parts")
