"""Pairing: which submodule of the base model corresponds to which of the raw model.

Rules, in order: explicit layer maps pair their modules in the order given; a pair whose
classes have a registered special init is transferred as one unit; otherwise children are
matched by name, and those left over are matched by order within their parent when both
sides have the same number left and each such pair has alike classes (same class name, or a
registered pair). Whatever remains is reported, with dotted paths.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import LayerMapError
from .problems import Problem
from .layout_infer import find_groups, find_packed
from .tree import ModelTree, Node, walk


class How(str, enum.Enum):
    """How a layer pair was found. Equal to its value ("name", ...), which reports and mapping files show."""

    ROOT = "root"  # the two models themselves
    NAME = "name"  # namesake children
    ORDER = "order"  # left-over children, alike, by position within their parents
    LAYER_MAP = "layer_map"  # set_layer_map, in the order given
    EXECUTION = "execution"  # the order the layers ran in (align.py)
    MAPPING = "mapping"  # a mapping given by the user
    INFERRED = "inferred"  # a fused group recognised by structure (layout_infer.py)

    def __str__(self):
        return self.value


@dataclass(eq=False, slots=True)
class LayerPair:
    base: Node
    raw: Node
    entry: object  # SpecialInit or None for the default per-tensor rule
    how: How


@dataclass
class Unpaired:
    side: str  # "base" | "raw"
    path: str
    cls: str
    count: int  # tensors under it
    node: Node = None

    def tensor_paths(self) -> list[str]:
        """Dotted names of the tensors under the module, tied aliases and non-persistent buffers left out."""
        return [r.path for r in self.node.subtree_tensors().values() if r.persistent and not r.alias_of]

    def __str__(self):
        return f"{self.side} {self.path or '<root>'} ({self.cls}, {self.count} tensor{'s' * (self.count != 1)})"


class Pairing:
    """``pairs``: the pairs that carry tensors (what a transfer plans). ``matched``: every pair met,
    parents before children, also those without tensors; with ``keep_empty`` it includes modules
    that hold no tensors at all (activations, pooling), paired by name or else by position when
    the leftovers on both sides are alike. Pairs of tensor-carrying modules never depend on it.
    """

    def __init__(self, base, raw, pool, keep_empty=False):
        self.base, self.raw, self.pool = base, raw, pool
        self.keep_empty = keep_empty
        self.pairs: list[LayerPair] = []
        self.matched: list[LayerPair] = []
        self.unpaired: list[Unpaired] = []
        self._classes: dict = {}
        # (base class, raw class) -> the pool's entry or None: a model repeats a few classes thousands of
        # times. Kept for this pairing only, so a rule registered or removed later is seen by the next one.
        self._rules: dict = {}
        # fused layouts recognised among leftovers (layout_infer), one entry per signature, decided before planning
        self.inferred: dict = {}

    def run(self):
        base, raw = self.base, self.raw
        if base.layer_map_auto or raw.layer_map_auto:
            return self._run_auto()
        if len(base.layer_map) != len(raw.layer_map):
            raise LayerMapError(
                f"layer maps differ in length: {base.name} ({base.framework}) has {len(base.layer_map)}, "
                f"{raw.name} ({raw.framework}) has {len(raw.layer_map)}; give both models the same number of "
                "modules, in corresponding order"
            )
        bpaths = base.path_of(base.layer_map)
        rpaths = raw.path_of(raw.layer_map)
        btree = ModelTree(base, [id(m) for m in base.layer_map], self.keep_empty)
        rtree = ModelTree(raw, [id(m) for m in raw.layer_map], self.keep_empty)
        self._match(btree.build(base.model), rtree.build(raw.model), How.ROOT)
        btree.exclude = rtree.exclude = set()
        for bm, bp, rm, rp in zip(base.layer_map, bpaths, raw.layer_map, rpaths):
            self._match(btree.build(bm, bp), rtree.build(rm, rp), How.LAYER_MAP)
        return self

    def _run_auto(self):
        """``auto_layer_map`` marks units, it does not pair them: the trees are paired as without a layer map
        (names first, then order among alike leftovers), and a marked module meets its counterpart wherever
        that pairing finds it; a pair with a registered rule is a unit either way."""
        base, raw = self.base, self.raw
        for proxy, other in ((base, raw), (raw, base)):
            if proxy.layer_map and not proxy.layer_map_auto:
                raise LayerMapError(
                    f"{proxy.name} ({proxy.framework}) has a layer map from set_layer_map but {other.name} "
                    f"({other.framework}) one from auto_layer_map; use set_layer_map on both models (pairs in the "
                    "order given) or auto_layer_map on both (pairs found by name)")
        btree = ModelTree(base, (), self.keep_empty)
        rtree = ModelTree(raw, (), self.keep_empty)
        self._match(btree.build(base.model), rtree.build(raw.model), How.ROOT)
        return self

    def _rule(self, b: Node, r: Node):
        """The registered entry for this pair's classes, or None."""
        key = (type(b.module), type(r.module))
        if key not in self._rules:
            self._rules[key] = self.pool.lookup(self.base.adapter, b.module, self.raw.adapter, r.module)
        return self._rules[key]

    def _match(self, b: Node, r: Node, how: How):
        key = (type(b.module), type(r.module))
        entry = self._rules[key] if key in self._rules else self._rule(b, r)
        pair = LayerPair(b, r, entry, how)
        self.matched.append(pair)
        if entry is not None or b.own or r.own:
            self.pairs.append(pair)
        if entry is not None or not (b.children or r.children):
            return
        rk = dict(r.children)
        left_b = []
        for name, child in b.children:
            other = rk.get(name)
            # namesakes pair when both carry tensors or neither does; otherwise only as _unlike_pair says
            if other is None or (bool(child.count) != bool(other.count) and not self._unlike_pair(child, other)):
                left_b.append(child)
            else:
                del rk[name]
                self._match(child, other, How.NAME)
        left_r = list(rk.values())
        # Modules that carry no tensors (activations, pooling, dropout) pair among themselves, and only
        # for comparisons (keep_empty). They take no part in pairing by position unless a rule may give
        # them tensors (torch InstanceNorm(affine=False) <-> paddle's with scale/bias).
        weighs_b = [self._weighs(self.base, "base", n) for n in left_b]
        weighs_r = [self._weighs(self.raw, "raw", n) for n in left_r]
        if self.keep_empty:
            empty_b = [n for n, w in zip(left_b, weighs_b) if not w]
            empty_r = [n for n, w in zip(left_r, weighs_r) if not w]
            if len(empty_b) == len(empty_r) and all(map(self._alike, empty_b, empty_r)):
                for bc, rc in zip(empty_b, empty_r):
                    self._match(bc, rc, How.ORDER)
        left_b = [n for n, w in zip(left_b, weighs_b) if w]
        left_r = [n for n, w in zip(left_r, weighs_r) if w]
        if len(left_b) != len(left_r):  # tied-only subtrees carry nothing new: let them go unpaired
            left_b = [n for n in left_b if n.fresh]
            left_r = [n for n in left_r if n.fresh]
        if entry is None and ((b.own and left_r and not left_b) or (r.own and left_b and not left_r)):
            # experts packed in [E, ...] tensors on one side, one module per expert on the other
            packed, used, left_b, left_r = find_packed(self, b, r, left_b, left_r)
            if packed:
                self._take_own(pair, used)
                self._add_inferred(packed)
        if left_b and left_r and not (len(left_b) == len(left_r) and all(map(self._alike, left_b, left_r))):
            # one side fuses what the other splits (q/k/v, gate/up): recognised by names and shapes
            fused, left_b, left_r = find_groups(self, b, r, left_b, left_r)
            self._add_inferred(fused)
        if len(left_b) == len(left_r) and all(map(self._alike, left_b, left_r)):
            for bc, rc in zip(left_b, left_r):
                self._match(bc, rc, How.ORDER)
        else:
            for side, nodes in (("base", left_b), ("raw", left_r)):
                for n in nodes:
                    if n.count:  # a module with nothing to transfer is not missing anything
                        self.unpaired.append(Unpaired(side, n.path, type(n.module).__name__, n.fresh, n))

    def _add_inferred(self, groups: list):
        """The fused groups ``layout_infer`` recognised, each a layer pair of its ``InferredLayout`` entry."""
        for group in groups:
            pair = LayerPair(group.base, group.raw, group.entry, How.INFERRED)
            group.entry.pairs.append(pair)
            self.matched.append(pair)
            self.pairs.append(pair)

    def _take_own(self, pair: LayerPair, used: list):
        """Leave ``used`` (own tensors another pair moves) out of ``pair``'s own tensors; drop the pair when nothing
        of its own is left to move."""
        ids = {id(ref) for ref in used}
        for side in ("base", "raw"):
            node = getattr(pair, side)
            if any(id(ref) in ids for ref in node.own):
                own = [ref for ref in node.own if id(ref) not in ids]
                setattr(pair, side, Node(node.path, node.module, own, node.children, node.count, node.fresh, node.on,
                                         node.bare))
        if not pair.base.own and not pair.raw.own and pair.entry is None and pair in self.pairs:
            self.pairs.remove(pair)

    def _unlike_pair(self, b: Node, r: Node) -> bool:
        """Whether two namesakes pair although only one of them carries tensors: a rule joins their classes."""
        if self._rule(b, r) is not None:
            return True
        # the side without tensors may hold, at any depth, a module that a rule gives tensors to (torch
        # BatchNorm1d(affine=False, track_running_stats=False) in a ModuleList <-> paddle's, which has _mean/_variance)
        proxy, side, empty = (self.base, "base", b) if not b.count else (self.raw, "raw", r)
        return empty.bare and any(self._ruled(proxy, side, node) for node in walk(empty))

    def _weighs(self, proxy, side: str, n: Node) -> bool:
        """Whether ``n`` takes part in pairing by position: it carries tensors, or a rule may give it some."""
        return bool(n.count) or (n.bare and self._ruled(proxy, side, n))

    def _ruled(self, proxy, side: str, n: Node) -> bool:
        """Whether ``n``'s class takes part in a registered pair on this side."""
        key = (side, proxy.framework)
        if key not in self._classes:
            self._classes[key] = self.pool.classes_on(side, proxy.framework)
        return bool(set(proxy.adapter.class_names(n.module)) & self._classes[key])

    def _alike(self, b: Node, r: Node) -> bool:
        """Whether two modules may be paired by position: same class name (any case) or a registered pair."""
        if type(b.module).__name__.lower() == type(r.module).__name__.lower():
            return True
        return self._rule(b, r) is not None


def rule_for(pairing: Pairing, b: Node, r: Node):
    """The registered entry joining the classes of base ``b`` and raw ``r`` (None: the default rule)."""
    return pairing._rule(b, r)


def alike(pairing: Pairing, b: Node, r: Node) -> bool:
    """Whether two modules may pair: same class name (any case) or a registered pair."""
    return pairing._alike(b, r)


def pair_models(base, raw, pool, keep_empty: bool = False, mapping=None) -> Pairing:
    """Pair ``base`` and ``raw`` (ProxyModels): layer maps, names, order; then ``mapping`` (a
    :class:`padiff_lite.mapping.Mapping`, already oriented base -> raw) pairs what those left unpaired."""
    pairing = Pairing(base, raw, pool, keep_empty).run()
    if mapping is not None and mapping.layers:
        apply_mapping(pairing, mapping)
    return pairing


# -- the stage after names: pairs named by a mapping (found by execution, or given by the user) -----------
def own_only(node: Node) -> Node:
    """``node`` without its children: a layer pair of the default rule moves only the module's own tensors."""
    fresh = sum(1 for r in node.own if not r.alias_of)
    return Node(node.path, node.module, node.own, [], len(node.own), fresh, node.on, node.bare)


def apply_mapping(pairing: Pairing, mapping):
    """Pair the layers ``mapping`` names inside the regions that pairing by name left unpaired.

    Names go first: an entry whose two layers are already paired with each other is skipped, one that
    contradicts a pair found by name is refused. A pair whose classes have a registered rule is a unit (its
    whole subtree); any other pair moves the two modules' own tensors, and their children need entries of
    their own. What the mapping does not reach stays unpaired, listed module by module.
    """
    from .errors import MappingError

    regions = {"base": [u for u in pairing.unpaired if u.side == "base"],
               "raw": [u for u in pairing.unpaired if u.side == "raw"]}
    index = {side: {n.path: n for u in us for n in walk(u.node)} for side, us in regions.items()}
    by_name = {"base": {p.base.path: p for p in pairing.matched}, "raw": {p.raw.path: p for p in pairing.matched}}
    used = {"base": {}, "raw": {}}
    problems, added = [], []
    for e in mapping.layers:
        b, r = index["base"].get(e.base), index["raw"].get(e.raw)
        if b is None or r is None:
            pb, pr = by_name["base"].get(e.base), by_name["raw"].get(e.raw)
            if pb is not None and pb is pr:
                continue  # names (or order) already paired these two
            for side, path, node, named in (("base", e.base, b, pb), ("raw", e.raw, r, pr)):
                if node is not None:
                    continue
                if named is not None:
                    other = named.raw.path if side == "base" else named.base.path
                    problems.append(Problem(f"{side} {path or '<root>'}", f"is already paired by {named.how} with "
                                            f"{'raw' if side == 'base' else 'base'} {other or '<root>'} (names go "
                                            "first)", "remove this entry, or rename the layers so that their names "
                                            "differ", joint=" "))
                else:
                    problems.append(Problem(f"{side} {path or '<root>'}", "is not a layer that pairing left open (left "
                                            "out by a black/white list, or inside a layer transferred as a unit)",
                                            "remove this entry", joint=" "))
            continue
        for side, path in (("base", e.base), ("raw", e.raw)):
            if path in used[side]:
                problems.append(Problem(f"{side} {path or '<root>'}", f"is named twice (with {used[side][path]} and "
                                        f"{e.raw if side == 'base' else e.base})", "a layer pairs with one layer",
                                        joint=" "))
        used["base"].setdefault(e.base, e.raw)
        used["raw"].setdefault(e.raw, e.base)
        entry = rule_for(pairing, b, r)
        if entry is None:
            b, r = own_only(b), own_only(r)
        added.append(LayerPair(b, r, entry, How(mapping.how)))
    if problems:
        raise MappingError(f"the mapping does not fit {pairing.base.framework}:{pairing.base.name} -> "
                           f"{pairing.raw.framework}:{pairing.raw.name} ({len(problems)} problem"
                           f"{'s' * (len(problems) != 1)}):", problems)
    if not added:
        return
    whole = {"base": {p.base.path for p in added if p.entry is not None},
             "raw": {p.raw.path for p in added if p.entry is not None}}
    for pair in added:
        pairing.matched.append(pair)
        if pair.entry is not None or pair.base.own or pair.raw.own:
            pairing.pairs.append(pair)
    left = []
    for u in pairing.unpaired:
        side = u.side
        if not any(p in used[side] for p in (n.path for n in walk(u.node))):
            left.append(u)  # untouched by the mapping: listed as before
            continue
        stack = [u.node]
        while stack:
            n = stack.pop()
            if n.path in whole[side]:
                continue
            if n.path not in used[side]:
                node = own_only(n)
                if node.fresh:
                    left.append(Unpaired(side, n.path, type(n.module).__name__, node.fresh, node))
            stack.extend(child for _, child in reversed(n.children))
    pairing.unpaired = left
