"""Pairing by execution: run both models once and align the two call sequences.

The stage after pairing by name (names always go first: this only decides what they left open):

1. *Atoms.* Inside the regions names left unpaired, each side is cut into atoms: a module whose class
   takes part in a registered rule with some class of the other side's open region is one atom (a unit,
   its whole subtree); any other module that owns tensors is an atom for its own tensors, and its children
   are looked at in turn. So a registered unit facing plain parts (paddle ``TransformerEncoderLayer`` against
   HF's ``BertLayer``) is dissolved into its parts, down to the ``Linear``/``LayerNorm`` that meet.
2. *Trace* (:mod:`padiff_lite.trace`). Both models run once on the example input with a hook on every
   atom; each side becomes the sequence of its atoms in the order of their first call.
3. *Fit.* A base atom fits a raw atom when their classes are alike (same name, or a registered pair) and the
   pair plans without a problem: every tensor has a partner and the shapes agree after the rule's transforms
   (the check is the caller's ``fit``: this stage imports neither planning nor validation).
4. *Align* (:func:`align`, pure). Atoms that fit exactly one atom of the other side, which fits only them,
   are paired whatever their order. The rest are aligned in call order (the longest order-keeping sequence
   of fitting pairs); when two alignments of that length pair differently, the layers involved are
   ambiguous and the whole pairing is refused with the candidates named. Nothing is guessed.

The result is a :class:`padiff_lite.mapping.Mapping` (``how="execution"``) that pairing applies after names.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import AmbiguousPairingError, PairingError
from .mapping import LayerEntry, Mapping
from .problems import Problem
from .pairing import How, LayerPair, Node, alike, own_only, rule_for, walk
from .special_init.registry import RuleKind, rule_label
from .settings import mismatches, weightless


# -- the pure step ---------------------------------------------------------------
@dataclass
class Alignment:
    pairs: list[tuple[int, int]]  # (base position, raw position), in base call order
    ambiguous: list[tuple[str, int, list[int]]]  # ("base", i, [raw candidates]) / ("raw", j, [base candidates])


def align(n_base: int, n_raw: int, fits) -> Alignment:
    """Align two call sequences of lengths ``n_base`` and ``n_raw``; ``fits(i, j)`` says whether base
    position i may pair with raw position j. See the module docstring for the rules."""
    ok = [[bool(fits(i, j)) for j in range(n_raw)] for i in range(n_base)]
    col_hits = [sum(ok[i][j] for i in range(n_base)) for j in range(n_raw)]
    anchors = {}
    for i, row in enumerate(ok):
        if sum(row) == 1:
            j = row.index(True)
            if col_hits[j] == 1:
                anchors[i] = j
    bs = [i for i in range(n_base) if i not in anchors]
    taken = set(anchors.values())
    rs = [j for j in range(n_raw) if j not in taken]
    n, m = len(bs), len(rs)
    # fw[a][b]: longest order-keeping pairing of bs[:a] with rs[:b]; bw[a][b]: of bs[a:] with rs[b:]
    fw = [[0] * (m + 1) for _ in range(n + 1)]
    for a in range(n):
        row, nxt, oka = fw[a], fw[a + 1], ok[bs[a]]
        for b in range(m):
            nxt[b + 1] = max(row[b + 1], nxt[b], row[b] + 1 if oka[rs[b]] else 0)
    bw = [[0] * (m + 1) for _ in range(n + 1)]
    for a in range(n - 1, -1, -1):
        row, nxt, oka = bw[a], bw[a + 1], ok[bs[a]]
        for b in range(m - 1, -1, -1):
            row[b] = max(nxt[b], row[b + 1], nxt[b + 1] + 1 if oka[rs[b]] else 0)
    total = fw[n][m]
    cand = [(a, b) for a in range(n) for b in range(m)
            if ok[bs[a]][rs[b]] and fw[a][b] + 1 + bw[a + 1][b + 1] == total]
    pairs = sorted(list(anchors.items()) + [(bs[a], rs[b]) for a, b in cand])
    if len(cand) == total:
        return Alignment(pairs, [])
    by_b, by_r = {}, {}
    for a, b in cand:
        by_b.setdefault(bs[a], []).append(rs[b])
        by_r.setdefault(rs[b], []).append(bs[a])
    ambiguous = [("base", i, js) for i, js in by_b.items() if len(js) > 1]
    ambiguous += [("raw", j, is_) for j, is_ in by_r.items() if len(is_) > 1]
    if not ambiguous:  # one candidate each, but their call orders cross: which pairs hold is not decided
        ambiguous = [("base", bs[a], [rs[b]]) for a, b in cand]
    return Alignment([], ambiguous)


# -- atoms ---------------------------------------------------------------------------
@dataclass(eq=False)
class Atom:
    node: Node  # the whole subtree for a unit, the module's own tensors otherwise
    unit: bool


def atoms(pairing, side: str, regions: list[Node], other_regions: list[Node]) -> list[Atom]:
    """The atoms of one side's open regions (module docstring, step 1), parents before children."""
    proxy = pairing.base if side == "base" else pairing.raw
    registered = pairing.pool.classes_on(side, proxy.framework)
    others = {}
    for region in other_regions:
        for n in walk(region):
            others.setdefault(type(n.module), n)
    units: dict[type, bool] = {}

    def is_unit(n: Node) -> bool:
        t = type(n.module)
        if t not in units:
            units[t] = bool(set(proxy.adapter.class_names(n.module)) & registered) and any(
                rule_for(pairing, *((n, m) if side == "base" else (m, n))) is not None for m in others.values())
        return units[t]

    out = []
    for region in regions:
        stack = [region]
        while stack:
            n = stack.pop()
            if not n.count:
                continue
            if is_unit(n):
                out.append(Atom(n, True))
                continue
            if any(not r.alias_of for r in n.own):
                out.append(Atom(own_only(n), False))
            stack.extend(child for _, child in reversed(n.children))
    return out


def _describe(atom: Atom, adapter) -> str:
    shapes = ", ".join(f"{atom.node.local(r)} {list(adapter.shape(r.tensor))}"
                       for r in atom.node.subtree_tensors().values() if not r.alias_of)
    return f"{atom.node.path or '<root>'} ({type(atom.node.module).__name__}: {shapes})"


# -- the stage -----------------------------------------------------------------------
def mapping_from_calls(pairing, traces, fit, check_settings: bool = False) -> Mapping | None:
    """Pair by execution what names left open in ``pairing`` (:class:`padiff_lite.pairing.Pairing`); a Mapping
    (``how="execution"``), or None when names pair everything or only one side has anything left (then running the
    models cannot help). :func:`padiff_lite.prepare.prepare` applies it to the same pairing.

    ``traces(base modules, raw modules)`` returns the two :class:`padiff_lite.trace.CallTrace` (from a run, or from
    recorded calls such as a dump's report). ``fit(pair)`` is the fit check of one candidate layer pair (step 3):
    ``(planning's own problems, every problem)`` of transferring that pair alone, given by the caller so that this
    stage needs neither planning nor validation. Raises AmbiguousPairingError naming the candidates when call order,
    classes and shapes do not decide, PairingError when a model fails on the input, and (``check_settings``) when
    weightless layers running between paired layers differ in their settings (:mod:`padiff_lite.settings`).
    """
    base, raw = pairing.base, pairing.raw
    b_regions = [u.node for u in pairing.unpaired if u.side == "base"]
    r_regions = [u.node for u in pairing.unpaired if u.side == "raw"]
    open_ = bool(b_regions and r_regions)
    b_wl, r_wl = (weightless(base), weightless(raw)) if check_settings else ([], [])
    if not (b_wl and r_wl):
        b_wl, r_wl = [], []  # nothing to compare: nothing more is traced
        if not open_:
            return None
    b_atoms = atoms(pairing, "base", b_regions, r_regions) if open_ else []
    r_atoms = atoms(pairing, "raw", r_regions, b_regions) if open_ else []
    # with weightless layers to compare, the layers names paired run hooked too: they cut the calls into stretches
    named = [p for p in pairing.pairs if p.how != How.ROOT] if b_wl else []
    nb, nr = len(b_atoms), len(r_atoms)
    bt, rt = traces([a.node.module for a in b_atoms] + [p.base.module for p in named] + [m for _, m, _ in b_wl],
                    [a.node.module for a in r_atoms] + [p.raw.module for p in named] + [m for _, m, _ in r_wl])
    if b_wl:  # the other layers took part in the run only: the atoms' call orders are as without them
        bt.order, rt.order = [i for i in bt.order if i < nb], [j for j in rt.order if j < nr]
        bt.counts = {i: c for i, c in bt.counts.items() if i < nb}
        rt.counts = {j: c for j, c in rt.counts.items() if j < nr}
    bseq, rseq = [b_atoms[i] for i in bt.order], [r_atoms[j] for j in rt.order]
    fit_cache: dict = {}

    def signature(atom, adapter):
        return tuple((atom.node.local(r), tuple(adapter.shape(r.tensor)), adapter.dtype_name(r.tensor))
                     for r in atom.node.subtree_tensors().values())

    def fits(i, j):
        b, r = bseq[i], rseq[j]
        if not alike(pairing, b.node, r.node):
            return False
        entry = rule_for(pairing, b.node, r.node)
        if entry is None and ((b.unit and b.node.children) or (r.unit and r.node.children)):
            return False  # a unit's children would be left behind by the default rule
        key = (type(b.node.module), type(r.node.module), signature(b, base.adapter), signature(r, raw.adapter))
        if key not in fit_cache:
            fit_cache[key] = not fit(LayerPair(b.node, r.node, entry, How.EXECUTION))[1]
        return fit_cache[key]

    refused: dict = {}

    def refused_only(i, j):
        """Whether the pair fits but for a rule refusing its settings (a BatchNorm's eps, ...): such a pair is made
        among the layers left over, so that the refusal names the mismatch and both paths, not two unpaired layers."""
        b, r = bseq[i], rseq[j]
        if not alike(pairing, b.node, r.node):
            return False
        entry = rule_for(pairing, b.node, r.node)
        key = (type(b.node.module), type(r.node.module), id(b.node), id(r.node))
        if entry is None or entry.kind != RuleKind.MAPPING:
            return False
        if key not in refused:
            planned, every = fit(LayerPair(b.node, r.node, entry, How.EXECUTION))
            refused[key] = bool(planned) and every == planned
        return refused[key]

    result = align(len(bseq), len(rseq), fits)
    if not result.ambiguous:
        paired_b, paired_r = {i for i, _ in result.pairs}, {j for _, j in result.pairs}
        left_b = [i for i in range(len(bseq)) if i not in paired_b]
        left_r = [j for j in range(len(rseq)) if j not in paired_r]
        if left_b and left_r:
            extra = align(len(left_b), len(left_r), lambda a, c: refused_only(left_b[a], left_r[c]))
            if not extra.ambiguous:
                result.pairs = sorted(result.pairs + [(left_b[a], left_r[c]) for a, c in extra.pairs])
    if result.ambiguous:
        lines, cands = [], []
        for side, k, others in result.ambiguous:
            mine, theirs = (bseq, rseq) if side == "base" else (rseq, bseq)
            adapter, other_adapter = (base.adapter, raw.adapter) if side == "base" else (raw.adapter, base.adapter)
            other_side = "raw" if side == "base" else "base"
            names = [theirs[o].node.path or "<root>" for o in others]
            cands.append((side, mine[k].node.path, names))
            lines.append(Problem(f"{side} {_describe(mine[k], adapter)}", "fits " + " and ".join(
                f"{other_side} {_describe(theirs[o], other_adapter)}" for o in others)
                + (" equally: classes, shapes and call order do not tell them apart" if len(others) > 1
                   else ", but call orders cross"), joint=" "))
        raise AmbiguousPairingError(
            f"cannot pair {base.framework}:{base.name} -> {raw.framework}:{raw.name} by execution: "
            f"{len(lines)} layer{'s' * (len(lines) != 1)} fit more than one candidate; nothing was written. Fix: pair "
            "them with mapping={'base.path': 'raw.path', ...} (or set_layer_map), or rename them so that names pair them:",
            lines, cands)
    if b_wl:
        b_marks = {nb + k: ("name", k) for k in range(len(named))}
        r_marks = {nr + k: ("name", k) for k in range(len(named))}
        b_marks.update({bt.order[i]: ("execution", k) for k, (i, _) in enumerate(result.pairs)})
        r_marks.update({rt.order[j]: ("execution", k) for k, (_, j) in enumerate(result.pairs)})
        lines = mismatches(base, raw, b_wl, r_wl, bt.events, rt.events, b_marks, r_marks,
                           nb + len(named), nr + len(named))
        if lines:
            raise PairingError(
                f"cannot pair {base.framework}:{base.name} -> {raw.framework}:{raw.name} by execution: "
                f"{len(lines)} setting{'s' * (len(lines) != 1)} of weightless layers running between paired layers "
                "differ, so the two models compute different functions and equal weights would not give equal "
                "outputs; nothing was written. Fix: build the raw model with the same setting, or black-list the "
                "layer (create_model(model).update_black_list([layer])) to accept the difference:", lines)
        if not open_:
            return None
    notes = []
    for side, seq_atoms, trace, proxy in (("base", b_atoms, bt, base), ("raw", r_atoms, rt, raw)):
        never = [seq_atoms[i].node.path for i in trace.never_ran(len(seq_atoms))]
        if never:
            notes.append(f"{side} layers that never ran on the example input (not paired by execution): "
                         + ", ".join(never))
        shared = [f"{seq_atoms[i].node.path} ({c} calls)" for i, c in trace.counts.items() if c > 1]
        if shared:
            notes.append(f"{side} layers that ran more than once (paired by their first call): " + ", ".join(shared))
    mapping = Mapping(base.framework, base.name, raw.framework, raw.name, notes=notes, how=How.EXECUTION)
    for i, j in result.pairs:
        b, r = bseq[i].node, rseq[j].node
        mapping.layers.append(LayerEntry(b.path, r.path, type(b.module).__name__, type(r.module).__name__,
                                         How.EXECUTION, rule_label(rule_for(pairing, b, r))))
    return mapping
