"""The model as padiff_lite sees it: a tree of modules with their own tensors.

Black and white lists are applied here, non-persistent buffers are left out (as state_dict does), tied tensors are found here (a tensor met a second
time is an alias of the first), and the subtree counts that pairing needs are computed once.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(eq=False, slots=True)
class TensorRef:
    path: str  # dotted path in the whole model, e.g. "encoder.0.weight"
    tensor: object
    kind: str  # "param" | "buffer"
    persistent: bool
    alias_of: str | None = None  # path of the first occurrence when the tensor is tied


@dataclass(eq=False, slots=True)
class Node:
    path: str
    module: object
    own: list[TensorRef] = field(default_factory=list)
    children: list[tuple[str, "Node"]] = field(default_factory=list)
    count: int = 0  # tensors in the subtree, aliases included
    fresh: int = 0  # tensors in the subtree that are not aliases
    on: bool = True  # the module itself is taken (black/white lists): its output is compared
    bare: bool = False  # the module and its children hold no tensors at all (not just none that the lists let in)

    def local(self, ref: TensorRef) -> str:
        """``ref``'s dotted name relative to this node."""
        return ref.path[len(self.path) + 1:] if self.path else ref.path

    def subtree_tensors(self) -> dict[str, TensorRef]:
        """Every tensor under this node by its dotted name relative to this node."""
        cut = len(self.path) + 1 if self.path else 0  # local(ref), without a call per tensor: 4 % of planning
        out = {}
        for ref in self.own:
            out[ref.path[cut:]] = ref
        for _, child in self.children:
            for node in walk(child):
                for ref in node.own:
                    out[ref.path[cut:]] = ref
        return out


def walk(node: Node):
    """``node`` and every node below it, parents first."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(child for _, child in reversed(n.children))


class ModelTree:
    """Builds Nodes for a ProxyModel, skipping ``exclude`` modules (explicitly paired elsewhere).

    ``keep_empty`` keeps modules without tensors (activations, pooling, containers of them) that the
    lists leave on; the output comparison hooks them, the transfer never sees them.
    """

    def __init__(self, proxy, exclude_ids=(), keep_empty=False):
        self.proxy = proxy
        self.adapter = proxy.adapter
        self.seen: dict[int, str] = {}  # id(tensor) -> path of its first occurrence
        self.exclude = set(exclude_ids)
        self.white = proxy.white_list
        self.black = proxy.black_list
        self.keep_empty = keep_empty
        self.lists = bool(self.white or self.black)
        self.tree_parts = self.adapter.tree_parts  # (params, buffers, transient names, children) of a module

    def build(self, module, path: str = "", on: bool | None = None) -> Node:
        if on is None:
            on = not self.white
        return self._build(module, path, on, blocked=False)

    def _switches(self, module, on: bool, blocked: bool) -> tuple[bool, bool, bool]:
        """(own tensors taken, children taken, white list blocked below) for ``module`` under the lists."""
        own_on = kids_on = on
        mode = self.white.get(id(module))
        if mode and not blocked:
            own_on = own_on or mode in ("self", "all")
            kids_on = kids_on or mode in ("sublayers", "all")
        mode = self.black.get(id(module))
        if mode in ("self", "all"):
            own_on = False
        if mode in ("sublayers", "all"):
            kids_on, blocked = False, True
        return own_on, kids_on, blocked

    def _build(self, module, path, on, blocked):
        # measured at 10k modules: one loop for parameters and buffers together builds the tree 9-17 % slower,
        # the children loop without its guards and locals 9 %
        own_on = kids_on = on
        if self.lists:
            own_on, kids_on, blocked = self._switches(module, on, blocked)
        params, buffers, transient, children = self.tree_parts(module)
        prefix = f"{path}." if path else ""
        own = []
        bare = True  # no persistent tensor here nor below
        fresh = 0  # minus the aliases among own tensors
        seen = self.seen
        for name, tensor in params.items():
            if tensor is None:
                continue
            bare = False
            if own_on:
                p = prefix + name
                first = seen.setdefault(id(tensor), p)
                if first == p:
                    own.append(TensorRef(p, tensor, "param", True, None))
                else:
                    own.append(TensorRef(p, tensor, "param", True, first))
                    fresh -= 1
        if buffers:
            for name, tensor in buffers.items():
                if tensor is None or name in transient:
                    continue  # like state_dict(): non-persistent buffers (derived caches) are not part of the weights
                bare = False
                if own_on:
                    p = prefix + name
                    first = seen.setdefault(id(tensor), p)
                    if first == p:
                        own.append(TensorRef(p, tensor, "buffer", True, None))
                    else:
                        own.append(TensorRef(p, tensor, "buffer", True, first))
                        fresh -= 1
        count = len(own)
        fresh += count
        kids = []
        if children:
            exclude, keep_empty, white = self.exclude, self.keep_empty, self.white
            for name, child in children.items():
                if child is None or (exclude and id(child) in exclude):
                    continue
                if not kids_on and not white:
                    bare = False
                    continue
                sub = self._build(child, prefix + name, kids_on, blocked)
                bare = bare and sub.bare
                # a bare child is kept: a rule may pair it with a counterpart that holds tensors (torch
                # InstanceNorm(affine=False) <-> paddle InstanceNorm with scale/bias)
                if sub.count or sub.bare or (keep_empty and (sub.on or sub.children)):
                    kids.append((name, sub))
                    count += sub.count
                    fresh += sub.fresh
        return Node(path, module, own, kids, count, fresh, own_on, bare)
