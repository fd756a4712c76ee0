"""Pairing: which submodule of the base model corresponds to which of the raw model.

Rules, in order: explicit layer maps pair their modules in the order given; a pair whose
classes have a registered special init is transferred as one unit; otherwise children are
matched by name, and those left over are matched by order within their parent when both
sides have the same number left and each such pair has alike classes (same class name, or a
registered pair). Whatever remains is reported, with dotted paths.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import LayerMapError
from .tree import ModelTree, Node


@dataclass(eq=False)
class LayerPair:
    base: Node
    raw: Node
    entry: object  # SpecialInit or None for the default per-tensor rule
    how: str  # "root" | "name" | "order" | "layer_map"


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
    def __init__(self, base, raw, pool):
        self.base, self.raw, self.pool = base, raw, pool
        self.pairs: list[LayerPair] = []
        self.unpaired: list[Unpaired] = []
        self._classes: dict = {}

    def run(self):
        base, raw = self.base, self.raw
        if len(base.layer_map) != len(raw.layer_map):
            raise LayerMapError(
                f"layer maps differ in length: {base.name} ({base.framework}) has {len(base.layer_map)}, "
                f"{raw.name} ({raw.framework}) has {len(raw.layer_map)}; give both models the same number of "
                "modules, in corresponding order"
            )
        bpaths = base.path_of(base.layer_map)
        rpaths = raw.path_of(raw.layer_map)
        btree = ModelTree(base, [id(m) for m in base.layer_map])
        rtree = ModelTree(raw, [id(m) for m in raw.layer_map])
        self._match(btree.build(base.model), rtree.build(raw.model), "root")
        btree.exclude = rtree.exclude = set()
        for bm, bp, rm, rp in zip(base.layer_map, bpaths, raw.layer_map, rpaths):
            self._match(btree.build(bm, bp), rtree.build(rm, rp), "layer_map")
        return self

    def _match(self, b: Node, r: Node, how: str):
        entry = self.pool.lookup(self.base.adapter, b.module, self.raw.adapter, r.module)
        if entry is not None or b.own or r.own:
            self.pairs.append(LayerPair(b, r, entry, how))
        if entry is not None:
            return
        rk = dict(r.children)
        left_b = []
        for name, child in b.children:
            other = rk.pop(name, None)
            if other is None:
                left_b.append(child)
            else:
                self._match(child, other, "name")
        left_r = list(rk.values())
        # modules without tensors take no part in pairing by position (activations, dropout, ...), unless
        # a rule may give them tensors (torch InstanceNorm(affine=False) <-> paddle's with scale/bias)
        left_b = [n for n in left_b if not n.bare or self._ruled(self.base, "base", n)]
        left_r = [n for n in left_r if not n.bare or self._ruled(self.raw, "raw", n)]
        if len(left_b) != len(left_r):  # tied-only subtrees carry nothing new: let them go unpaired
            left_b = [n for n in left_b if n.fresh]
            left_r = [n for n in left_r if n.fresh]
        if len(left_b) == len(left_r) and all(map(self._alike, left_b, left_r)):
            for bc, rc in zip(left_b, left_r):
                self._match(bc, rc, "order")
        else:
            for side, nodes in (("base", left_b), ("raw", left_r)):
                for n in nodes:
                    if n.bare:
                        continue  # nothing to transfer, nothing missing
                    self.unpaired.append(Unpaired(side, n.path, type(n.module).__name__, n.fresh, n))


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
        return self.pool.lookup(self.base.adapter, b.module, self.raw.adapter, r.module) is not None


def pair_models(base, raw, pool) -> Pairing:
    return Pairing(base, raw, pool).run()
