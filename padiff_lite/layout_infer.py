"""Fused layouts recognised by structure, not by class: a pairing step.

When pairing by name leaves tensors open under a paired module because one side fuses what the other splits,
this module looks at the leftover children (their attribute names and shapes) for the standard fusions:

- *q/k/v*: three projections (``q_proj``/``k_proj``/``v_proj``, ``query``/``key``/``value``) against one
  (``qkv_proj``, ``query_key_value``, ...); layouts: plain concatenation ``[q | k | v]``, grouped per key/value
  head (for each KV head: its group's query heads, its key head, its value head; PaddleFormers' ``qkv_proj``),
  which for as many KV heads as heads is the per-head interleave ``[q_h | k_h | v_h]``;
- *gate/up*: two projections (``gate_proj``/``up_proj``) against one (``up_gate_proj``, ``gate_up_proj``);
  layouts ``[gate | up]``, ``[up | gate]`` and interleaved rows ``[g0, u0, g1, u1, ...]``;
- *packed experts*: N alike expert modules against ``[E, ...]`` tensors, in either orientation.

Heads come from the modules (``num_heads``, ``num_key_value_heads``, ``head_dim`` and the like) or their
``config``; without them every head size that divides the shapes is a candidate.

Each group becomes one :class:`Group` (the two parents, restricted to the group's children) whose entry is an
:class:`InferredLayout`: plain data, its candidates as ``Map`` lists in names local to the parents; pairing makes a
layer pair of it. One entry serves every group of the same signature (classes, names and shapes), so a model's 80
layers are decided once. Deciding is a planning step, :mod:`padiff_lite.layout_decide`; while it plans private
copies of a unit under one candidate, :func:`forcing` makes the entries recognised here come out decided.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass, field

from .layout import Part, features
from .special_init.maps import grouped_qkv, stacked
from .special_init.registry import Map
from .tree import Node

ORIGIN = "padiff_lite.layout_infer"

# the forced choice of a verification's own sub-plan: signature -> candidate name
_FORCED: contextvars.ContextVar[dict] = contextvars.ContextVar("padiff_lite_forced_layouts", default={})

QKV_ROLES = {"q": ("q", "query", "wq", "q_lin"), "k": ("k", "key", "wk", "k_lin"), "v": ("v", "value", "wv", "v_lin")}
GATE_UP_ROLES = {"gate": ("gate", "w1", "gate_lin"), "up": ("up", "w3", "up_lin")}


@contextlib.contextmanager
def forcing(choices: dict):
    """Within the block, an entry recognised with a signature in ``choices`` (signature -> candidate name) comes out
    decided that way (``how`` "forced"), and ``("transposed", key)`` marks a namesake copy tried transposed."""
    token = _FORCED.set({**_FORCED.get(), **choices})
    try:
        yield
    finally:
        _FORCED.reset(token)


def _stem(name: str) -> str:
    s = name.lower()
    for suffix in ("_proj", "_projection", "_linear", "proj"):
        if s.endswith(suffix) and len(s) > len(suffix):
            return s[: -len(suffix)]
    return s


def is_fused_qkv(name: str) -> bool:
    s = _stem(name)
    return "qkv" in s or s in ("query_key_value", "in")


def is_fused_gate_up(name: str) -> bool:
    s = _stem(name)
    return ("gate" in s and "up" in s) or s in ("w13", "w1_w3", "fc1_gate")


@dataclass(frozen=True)
class Linear:
    """A leftover child that is a plain projection: a 2-D ``weight`` (and maybe a 1-D ``bias``), no children."""

    name: str  # attribute name under the parent
    node: object
    out: int
    inp: int
    bias: bool
    transposed: bool  # weight stored [in, out] (paddle's Linear)


def as_linear(adapter, name, node) -> Linear | None:
    """``node`` as a :class:`Linear` named ``name``, or None when it is not a plain projection."""
    if node.children or not node.own:
        return None
    refs = {node.local(r): r for r in node.own}
    if set(refs) - {"weight", "bias"} or "weight" not in refs:
        return None
    shape = tuple(adapter.shape(refs["weight"].tensor))
    if len(shape) != 2:
        return None
    transposed = bool(adapter.stored_transposed(node.module, "weight"))
    out, inp = (shape[1], shape[0]) if transposed else shape
    if "bias" in refs and tuple(adapter.shape(refs["bias"].tensor)) != (out,):
        return None
    return Linear(name, node, out, inp, "bias" in refs, transposed)


@dataclass(frozen=True)
class Candidate:
    name: str  # "grouped per KV head (4 heads, 2 KV heads, head_dim 16)"
    maps: tuple  # Maps in names local to the two parents
    head_dim: int | None = None  # what a run of the unit needs for its rotary inputs


@dataclass(eq=False)
class InferredLayout:
    """An inferred rule for one signature of fused group; quacks like a registered mapping rule for the planner."""

    what: str  # "q_proj/k_proj/v_proj <-> qkv_proj"
    signature: tuple
    candidates: list
    inp: int = 0  # input features of the projections (the width of a random input to the unit)
    chosen: Candidate | None = None
    how: str = ""  # how the candidate was chosen
    kind: str = "mapping"
    origin: str = ORIGIN
    note: str = ""
    caveat: str = ""
    inverted: bool = False
    pairs: list = field(default_factory=list)  # the layer pairs using it (the first is the one run)

    @property
    def key(self) -> str:
        return f"inferred {self.what}: {self.chosen.name if self.chosen else 'undecided'}"

    def maps(self, base_module, raw_module) -> list:
        return list(self.chosen.maps)

    def caveat_for(self, base_module, raw_module) -> str:
        return ""

    def describe(self) -> str:
        return f"layout inferred ({self.how}): {self.what} {self.chosen.name}"


@dataclass(frozen=True)
class Group:
    """One fused group found: the two parents restricted to it (``base``, ``raw``: tree Nodes) and its ``entry``;
    pairing makes it a layer pair (and adds that pair to ``entry.pairs``)."""

    base: Node
    raw: Node
    entry: InferredLayout


# -- finding the groups (pure: names, shapes, attributes) --------------------------------------------
def _read(obj, names):
    for n in names:
        v = getattr(obj, n, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


HEAD_DIM_NAMES = ("head_dim", "attention_head_size", "head_size")
HEADS_NAMES = ("num_heads", "num_attention_heads", "n_heads", "n_head")


def _heads(modules, q_out: int, k_out: int) -> list[tuple[int, int, int]]:
    """(heads, KV heads, head_dim) the parents' attributes or configs give and the shapes allow; else every
    head size that divides the shapes."""
    for m in modules:
        for obj in (m, getattr(m, "config", None)):
            if obj is None:
                continue
            d = _read(obj, HEAD_DIM_NAMES)
            nh = _read(obj, HEADS_NAMES)
            if d is None and nh and q_out % nh == 0:
                d = q_out // nh
            if d and q_out % d == 0 and k_out % d == 0:
                return [(q_out // d, k_out // d, d)]
    g = math.gcd(q_out, k_out)
    return [(q_out // d, k_out // d, d) for d in range(8, g + 1) if g % d == 0 and (q_out // d) % (k_out // d) == 0]


def _gated_heads(modules, blocks: int, d: int) -> int | None:
    """The number of attention heads when the query projection holds twice as many head-sized blocks (a query and
    an output gate per head, ``[query | gate]``, as Qwen3-Next's gated attention), else None."""
    for m in modules:
        for obj in (m, getattr(m, "config", None)):
            nh = _read(obj, HEADS_NAMES) if obj is not None else None
            if nh and 2 * nh == blocks and _read(obj, HEAD_DIM_NAMES) in (None, d):
                return nh
    return None


def _maps(split: list, fused: Linear, parts, split_is_base: bool) -> tuple:
    maps = []
    for lin, part in zip(split, parts):
        transform = "transpose" if lin.transposed != fused.transposed else "copy"
        pairs = [("weight", transform)] + ([("bias", "copy")] if lin.bias and fused.bias else [])
        for leaf, tf in pairs:
            a, b = f"{lin.name}.{leaf}", f"{fused.name}.{leaf}"
            if split_is_base:
                maps.append(Map(a, b, tf, dst_part=part))
            else:
                maps.append(Map(b, a, tf, src_part=part))
    return tuple(maps)


def qkv_candidates(q, k, v, fused, split_is_base, modules) -> list[Candidate]:
    out = []
    seen = set()

    def add(name, parts, d=None):
        if parts not in seen:
            seen.add(parts)
            out.append(Candidate(name, _maps([q, k, v], fused, parts, split_is_base), d))

    heads = _heads(modules, q.out, k.out) if k.out == v.out else []
    d0 = heads[0][2] if len(heads) == 1 else None
    add("concatenated [q | k | v]", tuple(stacked(q.out, k.out, v.out)), d0)
    for nh, nkv, d in heads:
        shape = "interleaved per head [q | k | v]" if nh == nkv else "grouped per KV head [q heads | k | v]"
        gated = _gated_heads(modules, nh, d) if len(heads) == 1 else None
        count = f"{nh} heads" if gated is None else f"{nh} query blocks: {gated} heads, each [query | gate]"
        add(f"{shape} ({count}, {nkv} KV heads, head_dim {d})", tuple(grouped_qkv(nh, nkv, d)), d)
    return out


def gate_up_candidates(gate, up, fused, split_is_base) -> list[Candidate]:
    n = gate.out
    g, u = stacked(n, n)
    inter_g = features(*[(2 * i, 2 * i + 1) for i in range(n)])
    inter_u = features(*[(2 * i + 1, 2 * i + 2) for i in range(n)])
    return [Candidate("[gate | up]", _maps([gate, up], fused, (g, u), split_is_base)),
            Candidate("[up | gate]", _maps([gate, up], fused, (u, g), split_is_base)),
            Candidate("interleaved [gate0, up0, gate1, up1, ...]", _maps([gate, up], fused, (inter_g, inter_u),
                                                                         split_is_base))]


def match_roles(linears: list[Linear], roles: dict) -> dict | None:
    found = {}
    for lin in linears:
        stem = _stem(lin.name)
        for role, names in roles.items():
            if stem in names:
                if role in found:
                    return None
                found[role] = lin
    return found if len(found) == len(roles) else None


def find_groups(pairing, b, r, left_b: list, left_r: list) -> tuple[list, list, list]:
    """The fused groups among the leftover children of the paired ``b`` and ``r``: ``(groups, left_b, left_r)``,
    one :class:`Group` (parents restricted to the group) per group, and the leftovers no group took."""
    sides = {"base": (pairing.base.adapter, b, left_b), "raw": (pairing.raw.adapter, r, left_r)}
    lin = {side: [x for x in (as_linear(ad, n.path.rpartition(".")[2], n) for n in left) if x is not None]
           for side, (ad, _, left) in sides.items()}
    groups, taken = [], set()
    for split_side, fused_side in (("base", "raw"), ("raw", "base")):
        for kind, roles, is_fused in (("q/k/v", QKV_ROLES, is_fused_qkv), ("gate/up", GATE_UP_ROLES, is_fused_gate_up)):
            split = match_roles([x for x in lin[split_side] if id(x.node) not in taken], roles)
            fused = [x for x in lin[fused_side] if id(x.node) not in taken and is_fused(x.name)]
            if split is None or len(fused) != 1:
                continue
            f = fused[0]
            parts = [split[role] for role in roles]
            if (any(p.inp != f.inp for p in parts) or sum(p.out for p in parts) != f.out
                    or any(p.bias != f.bias for p in parts)):
                continue
            split_is_base = split_side == "base"
            signature = (type(b.module), type(r.module), split_side, kind,
                         tuple((p.name, p.out, p.inp, p.bias) for p in parts), (f.name, f.out, f.inp, f.bias))
            entry = pairing.inferred.get(signature)
            if entry is None:
                if kind == "q/k/v":
                    cands = qkv_candidates(*parts, f, split_is_base, (b.module, r.module))
                else:
                    cands = gate_up_candidates(*parts, f, split_is_base)
                what = f"{'/'.join(p.name for p in parts)} <-> {f.name}" if split_is_base else \
                    f"{f.name} <-> {'/'.join(p.name for p in parts)}"
                entry = InferredLayout(what, signature, cands, f.inp)
                forced = _FORCED.get().get(signature)
                if forced is not None:
                    entry.chosen = next(c for c in cands if c.name == forced)
                    entry.how = "forced"
                pairing.inferred[signature] = entry
            nodes = {"base": [], "raw": []}
            nodes[split_side] = [p.node for p in parts]
            nodes[fused_side] = [f.node]
            restricted = []
            for side in ("base", "raw"):
                parent = sides[side][1]
                kids = [(n.path.rpartition(".")[2], n) for n in nodes[side]]
                restricted.append(Node(parent.path, parent.module, [], kids, sum(n.count for _, n in kids),
                                       sum(n.fresh for _, n in kids), parent.on, False))
            groups.append(Group(restricted[0], restricted[1], entry))
            taken.update(id(n) for ns in nodes.values() for n in ns)
    return groups, [n for n in left_b if id(n) not in taken], [n for n in left_r if id(n) not in taken]


# -- packed experts: N expert modules <-> one [E, ...] tensor per projection ---------------------------------
def _role(name: str) -> str:
    """``gate_up`` for a fused gate/up name, else the stem (``down_proj`` -> ``down``, ``gate_proj`` -> ``gate``)."""
    for suffix in ("_weight", ".weight"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return "gate_up" if is_fused_gate_up(name) else _stem(name)


def _expert_tensors(adapter, node) -> dict | None:
    """``{local name: (role, leaf, torch-layout shape, stored transposed)}`` of one expert module's tensors."""
    out = {}
    for ref in node.subtree_tensors().values():
        if ref.alias_of:
            continue
        local = node.local(ref)
        owner, _, leaf = local.rpartition(".")
        module = node.module
        for part in owner.split(".") if owner else ():
            module = getattr(module, part, None)
        shape = tuple(adapter.shape(ref.tensor))
        transposed = bool(module is not None and adapter.stored_transposed(module, leaf))
        out[local] = (_role(owner or leaf), leaf, shape[::-1] if transposed else shape, transposed)
    return out


def _packed_options(name: str, rest: tuple, first: dict) -> list:
    """How the packed tensor ``name`` (``rest``: its shape after the expert axis) can hold one expert's tensors
    (``first``: :func:`_expert_tensors` of an expert): ``[(label, [(expert local name, (blocks, axis) or None,
    transform)])]``, one entry per orientation and, for a fused gate/up, per order of the halves."""
    role, leaf = _role(name), ("bias" if "bias" in name else "weight")
    same = [k for k, v in first.items() if v[0] == role and v[1] == leaf]
    split = [k for k, v in first.items() if v[1] == leaf and role == "gate_up" and v[0] in ("gate", "up")]
    opts = []
    if len(same) == 1:
        k = same[0]
        _, _, tshape, transposed = first[k]
        for label, orient in (("[E, out, in]", tshape), ("[E, in, out]", tshape[::-1])):
            if rest == orient and len(rest) == 2:
                flip = (label == "[E, in, out]") != transposed
                opts.append((f"{name} {label}", [(k, None, "transpose" if flip else "copy")]))
            elif rest == orient and len(rest) == 1 and label == "[E, out, in]":
                opts.append((f"{name} [E, out]", [(k, None, "copy")]))
    elif len(split) == 2:
        g = next(k for k in split if first[k][0] == "gate")
        u = next(k for k in split if first[k][0] == "up")
        (_, _, gs, gt), (_, _, us, ut) = first[g], first[u]
        if gs == us and len(rest) == 2:
            for label, axis, orient in (("[E, out, in]", 0, (2 * gs[0], gs[1])),
                                        ("[E, in, out]", 1, (gs[1], 2 * gs[0]))):
                if rest != orient:
                    continue
                m = gs[0]
                halves = {"[gate | up]": (((0, m),), ((m, 2 * m),)),
                          "[up | gate]": (((m, 2 * m),), ((0, m),)),
                          "interleaved": (tuple((2 * i, 2 * i + 1) for i in range(m)),
                                          tuple((2 * i + 1, 2 * i + 2) for i in range(m)))}
                for order, (gb, ub) in halves.items():
                    steps = []
                    for k, blocks, transposed in ((g, gb, gt), (u, ub, ut)):
                        flip = (label == "[E, in, out]") != transposed
                        steps.append((k, (blocks, axis), "transpose" if flip else "copy"))
                    opts.append((f"{name} {label} {order}", steps))
    return opts


def find_packed(pairing, b, r, left_b: list, left_r: list):
    """Experts packed in ``[E, ...]`` tensors on one side (own tensors of ``b`` or ``r``) against E alike expert
    modules on the other (leftover children). Returns ``(groups, consumed own refs, left_b, left_r)``."""
    from itertools import product

    for packed_side, packed, experts in (("base", b, left_r), ("raw", r, left_b)):
        other_side = "raw" if packed_side == "base" else "base"
        if not packed.own or not experts or len({type(n.module) for n in experts}) != 1:
            continue
        pa = (pairing.base if packed_side == "base" else pairing.raw).adapter
        ea = (pairing.raw if packed_side == "base" else pairing.base).adapter
        n = len(experts)
        refs = [ref for ref in packed.own if not ref.alias_of and len(pa.shape(ref.tensor)) >= 2
                and pa.shape(ref.tensor)[0] == n]
        if not refs:
            continue
        per = [_expert_tensors(ea, e) for e in experts]
        if any(p.keys() != per[0].keys() or any(p[k][2] != per[0][k][2] for k in p) for p in per):
            continue
        first = per[0]
        options = []  # per packed tensor: [(label, [(expert local name, Part on the packed entry or None, transform)])]
        covered = set()
        for ref in refs:
            opts = _packed_options(packed.local(ref), tuple(pa.shape(ref.tensor))[1:], first)
            if opts:
                options.append((ref, opts))
                covered.update(k for _, steps in opts for k, _, _ in steps)
        if not options or covered != set(first):
            continue  # not every expert tensor has a packed counterpart: not this layout
        split_is_base = packed_side == "base"
        signature = ("packed", type(b.module), type(r.module), packed_side, n,
                     tuple((packed.local(ref), tuple(pa.shape(ref.tensor))) for ref, _ in options),
                     type(experts[0].module), tuple((k, v[2]) for k, v in first.items()))
        entry = pairing.inferred.get(signature)
        if entry is None:
            cands = []
            for combo in product(*[opts for _, opts in options]):
                maps = []
                for (ref, _), (_, steps) in zip(options, combo):
                    pname = packed.local(ref)
                    for e, expert in enumerate(experts):
                        prefix = expert.path.rpartition(".")[2]
                        for k, part, tf in steps:
                            p_part = Part(index=e) if part is None else Part(part[0], part[1], e)
                            if split_is_base:
                                maps.append(Map(pname, f"{prefix}.{k}", tf, src_part=p_part))
                            else:
                                maps.append(Map(f"{prefix}.{k}", pname, tf, dst_part=p_part))
                cands.append(Candidate("; ".join(label for label, _ in combo), tuple(maps)))
            names = ", ".join(packed.local(ref) for ref, _ in options)
            what = (f"packed experts {names} <-> {n} expert modules" if split_is_base
                    else f"{n} expert modules <-> packed experts {names}")
            entry = InferredLayout(what, signature, cands, 0)
            forced = _FORCED.get().get(signature)
            if forced is not None:
                entry.chosen, entry.how = next(c for c in cands if c.name == forced), "forced"
            pairing.inferred[signature] = entry
        used = [ref for ref, _ in options]
        kids = [(e.path.rpartition(".")[2], e) for e in experts]
        p_node = Node(packed.path, packed.module, used, [], len(used), len(used), packed.on, False)
        e_node = Node((r if split_is_base else b).path, (r if split_is_base else b).module, [], kids,
                      sum(e.count for e in experts), sum(e.fresh for e in experts), True, False)
        group = Group(p_node, e_node, entry) if split_is_base else Group(e_node, p_node, entry)
        ids = {id(e) for e in experts}
        return ([group], used, [x for x in left_b if id(x) not in ids], [x for x in left_r if id(x) not in ids])
    return [], [], left_b, left_r


# -- namesakes of transposed shapes ---------------------------------------------------------------------------
TRANSPOSED_LINEAR = "transposed: one side is a Linear stored [in, out]"
TRANSPOSED_BY_RUN = "transposed: the shapes allow nothing else and running the unit agrees"


def forced_transpose(key: str) -> bool:
    """Whether a verification's sub-plan is trying the transposed copy of the namesake ``key``."""
    return bool(_FORCED.get().get(("transposed", key)))


def transposed_namesake(ba, bmod, ra, rmod, leaf: str, bshape, rshape) -> str:
    """Why a namesake 2-D tensor of two shapes that are each other's transpose is copied transposed ("" when it is
    not): one side stores it as a Linear ``[in, out]`` and the other not (a router ``[E, H]`` against a Linear
    ``[H, E]``), or, neither being a Linear, transposing is the only layout the shapes allow (not square)."""
    if len(bshape) != 2 or tuple(bshape) != tuple(rshape)[::-1] or bshape[0] == bshape[1]:
        return ""
    if ba.stored_transposed(bmod, leaf) != ra.stored_transposed(rmod, leaf):
        return TRANSPOSED_LINEAR
    return TRANSPOSED_BY_RUN
