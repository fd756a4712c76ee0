"""Comparing two captured outputs (``output_align`` trees): every aligned pair of tensors, then one verdict."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import output_align
from ..errors import OutputStructureError
from .numerics import Tolerance, compare, same_value


@dataclass
class Compared:
    output: str
    raw_output: str
    base_shape: tuple
    raw_shape: tuple
    max_abs: float
    max_rel: float
    mismatched: int
    total: int
    note: str


def compare_aligned(al: output_align.Alignment, tol: Tolerance) -> Compared | None:
    """Compare every aligned pair; None when no tensor could be paired."""
    if not any(p.how != "value" for p in al.pairs):
        return None
    worst_abs = worst_rel = 0.0
    mismatched = total = 0
    shown = None
    for p in al.pairs:
        if p.how == "value":  # plain values (None, numbers, strings) must be equal; NaN meets NaN
            ma, mr, n, size = 0.0, 0.0, int(not same_value(p.base, p.raw)), 1
            bshape = rshape = ()
        else:
            b, r = output_align.fitted(p.base, p.raw, p.how)
            f = compare(b, r, tol)
            ma, mr, n, size = f.max_abs, f.max_rel, f.mismatched, f.total
            bshape, rshape = tuple(p.base.shape), tuple(p.raw.shape)
        worst_abs, worst_rel = max(worst_abs, ma), max(worst_rel, mr)
        mismatched += n
        total += size
        if shown is None or (n and not shown[4]):
            shown = (p.base_where, p.raw_where, bshape, rshape, n)
    notes = list(al.notes)
    if al.only_base or al.only_raw or al.unaligned:
        notes.append("not compared: " + al.reason())
    return Compared(shown[0], shown[1], shown[2], shown[3], worst_abs, worst_rel, mismatched, total, "; ".join(notes))


def compare_final(bfinal, rfinal, base, raw, tol: Tolerance):
    """(max abs, max rel, mismatched, total, notes, places) of the models' own outputs; ``places``: the
    (base place, raw place) of every pair of tensors compared (what both models return: the backward seed)."""
    al = output_align.align(bfinal, rfinal)
    notes = []
    c = compare_aligned(al, tol)
    if c is None:
        bt, rt = output_align.tensors(bfinal, "out"), output_align.tensors(rfinal, "out")
        if bt and rt and output_align.fit(bt[0][1].shape, rt[0][1].shape):
            al = output_align.Alignment()
            output_align.pair_tensors(bt[0][0], rt[0][0], bt[0][1], rt[0][1], al)
            c = compare_aligned(al, tol)
            notes.append(f"the final outputs differ in structure (base {bfinal}, raw {rfinal}): the first tensors "
                         f"were compared ({bt[0][0]} with {rt[0][0]})")
        else:
            raise OutputStructureError(
                f"{base.framework}:{base.name} vs {raw.framework}:{raw.name}: no tensor of the final outputs can be "
                f"paired: base returns {bfinal}, raw returns {rfinal} ({al.reason()}); make one model return the "
                "other's tensors (wrap it, or pick the output with a small module), or compare a submodule")
    elif str(bfinal) != str(rfinal):
        extra = [n for n in al.notes if not n.startswith("base returns")]
        if bfinal.type != rfinal.type and bfinal.type.lower() == rfinal.type.lower():
            extra.insert(0, "the class names differ only in case")
        if al.only_base or al.only_raw or al.unaligned:
            extra.append("not compared: " + al.reason())
        notes.append(f"final outputs of a different form (base {bfinal}, raw {rfinal}): compared "
                     + ", ".join(p.base_where if p.base_where == p.raw_where else f"{p.base_where} with {p.raw_where}"
                                 for p in al.pairs if p.how != "value")
                     + "".join(f"; {n}" for n in extra))
    places = [(p.base_where, p.raw_where) for p in al.pairs if p.how != "value"]
    return c.max_abs, c.max_rel, c.mismatched, c.total, notes, places


def inputs_agree(bnode, rnode, tol: Tolerance):
    if bnode is None or rnode is None:
        return None
    al = output_align.align(bnode, rnode, "in", "in")
    pairs = [p for p in al.pairs if p.how != "value"]
    if not pairs:
        return None
    return all(compare(*output_align.fitted(p.base, p.raw, p.how), tol).ok for p in pairs)


def noise_of(clean, ref) -> float:
    """The largest |clean - ref| over the floating tensors found at the same place with the same shape in two
    captured trees (0.0 when none): how far rounding-sized changes move this output."""
    if clean is None or ref is None:
        return 0.0
    theirs = dict(output_align.tensors(ref, "out"))
    worst = 0.0
    for where, a in output_align.tensors(clean, "out"):
        b = theirs.get(where)
        if b is None or b.shape != a.shape or a.dtype.kind not in "fc" or b.dtype.kind not in "fc":
            continue
        with np.errstate(invalid="ignore", over="ignore"):
            d = np.abs(a.astype(np.float64) - b.astype(np.float64))
        d = d[np.isfinite(d)]
        if d.size:
            worst = max(worst, float(d.max()))
    return worst
