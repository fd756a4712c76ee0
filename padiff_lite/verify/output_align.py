"""Aligning what two modules return, so that a correct port is never blamed for its output's form.

``capture`` turns a module's output (or inputs) into a small tree of ``Node``s holding numpy copies
of the tensors. ``align`` pairs the tensors of two such trees:

- fields with the same name (dicts, dataclasses, HF ``ModelOutput``) are paired by name, whatever
  the classes are called (``MoeCausalLMOutputWithPast`` meets ``MoECausalLMOutputWithPast``);
  fields only one side has are listed, not failed;
- sequences of the same length are paired position by position;
- a bare tensor meets the first element of a sequence (a module returning ``out`` against one
  returning ``(out, attention_weights)``), the rest of the sequence is listed;
- anything else is paired by the position of its tensors: when both sides hold as many tensors,
  one by one; when one side names its fields and the other does not (a ``ModelOutput`` against a
  tuple or a bare tensor), each tensor of the shorter side meets the first unused tensor of the
  other whose shape fits (``logits`` tried first); two unnamed structures holding different numbers
  of tensors cannot be aligned (a router returning ``(logits, scores, indices)`` against
  ``(scores, indices)`` would otherwise pair logits with scores);
- two tensors fit when their shapes are equal, when one broadcasts to the other with as many
  dimensions (``[1, S, D]`` against ``[B, S, D]``; a scalar never stands for a tensor) or when they are equal with leading dimensions merged (``[B*S, H]``
  against ``[B, S, H]``, tokens flattened). Anything else is "not comparable", with the reason.

Objects that are neither tensors, containers nor plain values (a KV cache, say) are left out.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

PLAIN = (type(None), bool, int, float, str)


@dataclass
class Node:
    kind: str  # "tensor", "named", "seq", "value", "object"
    type: str  # class name ("Tensor" for tensors)
    value: object = None  # numpy array (tensor) or plain value
    items: list = field(default_factory=list)  # [(key, Node)]: str keys for named, int for seq
    keyed: bool = False  # a named node reached by [key] (a Mapping, the inputs), not by .field

    @property
    def nbytes(self) -> int:
        if self.kind == "tensor":
            return int(self.value.nbytes)
        return sum(n.nbytes for _, n in self.items)

    def __str__(self):
        if self.kind == "tensor":
            return f"Tensor{list(self.value.shape)}"
        if self.kind == "named":
            return f"{self.type}(" + ", ".join(f"{k}={n}" for k, n in self.items) + ")"
        if self.kind == "seq":
            return f"{self.type}(" + ", ".join(str(n) for _, n in self.items) + ")"
        return self.type


def capture(obj, adapter) -> Node:
    """A tree of ``obj`` with an independent numpy copy of every tensor (``adapter.snapshot``)."""
    if adapter.is_tensor(obj):
        return Node("tensor", "Tensor", adapter.snapshot(obj))
    if isinstance(obj, Mapping):
        return Node("named", type(obj).__name__, items=[(k, capture(obj[k], adapter)) for k in obj], keyed=True)
    if isinstance(obj, (tuple, list)):
        return Node("seq", type(obj).__name__, items=[(i, capture(x, adapter)) for i, x in enumerate(obj)])
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return Node("named", type(obj).__name__,
                    items=[(f.name, capture(getattr(obj, f.name), adapter)) for f in dataclasses.fields(obj)])
    if isinstance(obj, PLAIN):
        return Node("value", type(obj).__name__, obj)
    return Node("object", type(obj).__name__)


def live_tensors(obj, adapter, where: str = "out") -> list:
    """Every tensor of ``obj`` itself (not a copy) with its place, named and ordered as ``tensors(capture(obj))``
    names them: what a place found by ``align`` refers to in the live output (a backward seed)."""
    if adapter.is_tensor(obj):
        return [(where, obj)]
    if isinstance(obj, Mapping):
        items, keyed = [(k, obj[k]) for k in obj], True
    elif isinstance(obj, (tuple, list)):
        items, keyed = list(enumerate(obj)), False
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items, keyed = [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)], False
    else:
        return []
    out = []
    for k, v in items:
        sub = f"{where}[{k}]" if isinstance(k, int) else (f"{where}[{k!r}]" if keyed else f"{where}.{k}")
        out += live_tensors(v, adapter, sub)
    return out


def capture_inputs(args, kwargs, adapter) -> Node:
    """A module's inputs: positional ones under 0, 1, ...; keyword ones under their names."""
    items = [(i, capture(a, adapter)) for i, a in enumerate(args)]
    items += [(k, capture(v, adapter)) for k, v in (kwargs or {}).items()]
    return Node("named", "inputs", items=items, keyed=True)


def _sub(where: str, node: Node, key) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}[{key!r}]" if node.keyed else f"{where}.{key}"


def tensors(node: Node, where: str) -> list[tuple[str, np.ndarray]]:
    """Every tensor below ``node`` in order, with its place."""
    if node.kind == "tensor":
        return [(where, node.value)]
    out = []
    for k, n in node.items:
        out += tensors(n, _sub(where, node, k))
    return out


# -- shapes ---------------------------------------------------------------------
def fit(bshape: tuple, rshape: tuple) -> str | None:
    """How two shapes can be compared: "same", "broadcast", "merged" (leading dims merged) or None."""
    bshape, rshape = tuple(bshape), tuple(rshape)
    if bshape == rshape:
        return "same"
    try:
        common = np.broadcast_shapes(bshape, rshape)
    except ValueError:
        common = None
    if common is not None and common in (bshape, rshape) and len(bshape) == len(rshape):
        return "broadcast"
    if bshape and rshape and math.prod(bshape) == math.prod(rshape) and len(bshape) != len(rshape):
        short, long_ = sorted((bshape, rshape), key=len)
        k = len(short) - 1  # trailing dims kept, leading dims of the longer shape merged into one
        if short[1:] == long_[len(long_) - k:] and short[0] == math.prod(long_[:len(long_) - k]):
            return "merged"
    return None


def fitted(b: np.ndarray, r: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    """Views of ``b`` and ``r`` with one shape (the larger for broadcasting, the merged for merged)."""
    if how == "broadcast":
        return tuple(np.broadcast_arrays(b, r))
    if how == "merged":
        shape = min((b.shape, r.shape), key=len)
        return b.reshape(shape), r.reshape(shape)
    return b, r


# -- alignment ------------------------------------------------------------------------
@dataclass
class Pair:
    base_where: str
    raw_where: str
    base: object  # numpy array or plain value
    raw: object
    how: str = "same"  # "same", "broadcast", "merged", "value"


@dataclass
class Alignment:
    pairs: list[Pair] = field(default_factory=list)
    only_base: list[str] = field(default_factory=list)  # tensors only the base side returns
    only_raw: list[str] = field(default_factory=list)
    unaligned: list[str] = field(default_factory=list)  # reasons some tensors could not be paired
    notes: list[str] = field(default_factory=list)

    @property
    def comparable(self) -> bool:
        return any(p.how != "value" for p in self.pairs) or (bool(self.pairs) and not self.unaligned)

    def reason(self) -> str:
        parts = list(self.unaligned)
        if self.only_base:
            parts.append("only the base side returns " + ", ".join(self.only_base))
        if self.only_raw:
            parts.append("only the raw side returns " + ", ".join(self.only_raw))
        return "; ".join(parts) or "no tensors on either side"


def align(b: Node, r: Node, bw: str = "out", rw: str = "out") -> Alignment:
    """Pair the tensors (and plain values) of two captured outputs; see the module docstring."""
    acc = Alignment()
    _align(b, r, bw, rw, acc, top=True)
    return acc


def pair_tensors(bw, rw, bv, rv, acc: Alignment):
    how = fit(bv.shape, rv.shape)
    if how is None:
        acc.unaligned.append(f"{bw} {list(bv.shape)} vs {rw} {list(rv.shape)}: the shapes are neither equal, "
                             "broadcastable nor equal with leading dimensions merged")
        return
    if how == "broadcast":
        acc.notes.append(f"{bw} {list(bv.shape)} and {rw} {list(rv.shape)} compared after broadcasting")
    elif how == "merged":
        acc.notes.append(f"{bw} {list(bv.shape)} and {rw} {list(rv.shape)} compared with leading dimensions merged")
    acc.pairs.append(Pair(bw, rw, bv, rv, how))


def _has_tensor(n: Node) -> bool:
    return n.kind == "tensor" or any(_has_tensor(c) for _, c in n.items)


def _align(b: Node, r: Node, bw, rw, acc: Alignment, top=False):
    if b.kind == "tensor" and r.kind == "tensor":
        pair_tensors(bw, rw, b.value, r.value, acc)
        return
    if b.kind == "value" and r.kind == "value":
        acc.pairs.append(Pair(bw, rw, b.value, r.value, "value"))
        return
    if b.kind == "object" or r.kind == "object":  # caches and other opaque objects are left out
        return
    if b.kind == "named" and r.kind == "named":
        rkeys = dict(r.items)
        common = [k for k, _ in b.items if k in rkeys]
        if common:
            if top and b.type != r.type:
                same = b.type.lower() == r.type.lower()
                acc.notes.append(f"base returns {b.type}, raw {r.type}"
                                 + (" (the names differ only in case)" if same else "") + ": aligned by field names")
            bkeys = dict(b.items)
            for k in common:
                _align(bkeys[k], rkeys[k], _sub(bw, b, k), _sub(rw, r, k), acc)
            for k, n in b.items:
                if k not in rkeys and _has_tensor(n):
                    acc.only_base.append(_sub(bw, b, k))
            for k, n in r.items:
                if k not in bkeys and _has_tensor(n):
                    acc.only_raw.append(_sub(rw, r, k))
            return
    if b.kind == "seq" and r.kind == "seq" and len(b.items) == len(r.items):
        for (i, bn), (_, rn) in zip(b.items, r.items):
            _align(bn, rn, _sub(bw, b, i), _sub(rw, r, i), acc)
        return
    if (b.kind == "tensor") != (r.kind == "tensor") and "seq" in (b.kind, r.kind):
        # a bare tensor against (tensor, extras...): the main output and what one side returns besides
        seq, bare, seq_is_base = (b, r, True) if b.kind == "seq" else (r, b, False)
        head = seq.items[0][1] if seq.items else None
        if head is not None and head.kind == "tensor" and fit(head.value.shape, bare.value.shape):
            sw = _sub(bw if seq_is_base else rw, seq, 0)
            if seq_is_base:
                pair_tensors(sw, rw, head.value, bare.value, acc)
            else:
                pair_tensors(bw, sw, bare.value, head.value, acc)
            rest = [w for w, _ in tensors(seq, bw if seq_is_base else rw)][1:]
            (acc.only_base if seq_is_base else acc.only_raw).extend(rest)
            return
    if b.kind in ("value", "tensor") and r.kind in ("value", "tensor"):  # a tensor against None
        (acc.only_base if b.kind == "tensor" else acc.only_raw).append(bw if b.kind == "tensor" else rw)
        return
    _by_position(b, r, bw, rw, acc, top)


def _by_position(b: Node, r: Node, bw, rw, acc: Alignment, top: bool):
    bt, rt = tensors(b, bw), tensors(r, rw)
    if not bt or not rt:
        acc.only_base.extend(w for w, _ in bt)
        acc.only_raw.extend(w for w, _ in rt)
        return
    if len(bt) == len(rt):
        if top:
            acc.notes.append(f"base returns {b}, raw {r}: aligned by the position of their tensors")
        for (w1, v1), (w2, v2) in zip(bt, rt):
            pair_tensors(w1, w2, v1, v2, acc)
        return
    if (b.kind == "named") != (r.kind == "named"):
        # one side names its fields: each tensor of the shorter side meets the first unused one that fits
        few, many, few_is_base = (bt, rt, True) if len(bt) < len(rt) else (rt, bt, False)
        many = sorted(many, key=lambda t: not t[0].endswith(("['logits']", ".logits")))  # logits first
        used = set()
        for w, v in few:
            hit = next((j for j, (_, mv) in enumerate(many) if j not in used and fit(v.shape, mv.shape)), None)
            if hit is None:
                (acc.only_base if few_is_base else acc.only_raw).append(w)
                continue
            used.add(hit)
            mw, mv = many[hit]
            if few_is_base:
                pair_tensors(w, mw, v, mv, acc)
            else:
                pair_tensors(mw, w, mv, v, acc)
        rest = [w for j, (w, _) in enumerate(many) if j not in used]
        (acc.only_raw if few_is_base else acc.only_base).extend(rest)
        if acc.pairs:
            acc.notes.append(f"base returns {b}, raw {r}: tensors aligned by position and shape")
        return
    acc.unaligned.append(f"{len(bt)} tensors on the base side, {len(rt)} on the raw side, and with no field names "
                         "on either side there is no telling which tensor matches which")
