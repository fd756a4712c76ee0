"""The text report of a comparison (``str(DiffResult)``) and the model tree it shows.

The functions take the records (``verify.results``) as they are given and import nothing of the package: the
records render themselves with them, so the results import the rendering, never the other way round.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .results import DiffResult, LayerDiff, TreeLine


def label(path: str) -> str:
    """A dotted path as reports show it: the root module's empty path is ``<root>``."""
    return path or "<root>"


_MAX_TREE = 40
_MAX_NOT_COMPARABLE = 5


def render(r: DiffResult) -> list[str]:
    verdict = "OK" if r.ok else "MISMATCH"
    how = f"{r.phase}, atol={r.atol:g}, rtol={r.rtol:g}" + (", means compared" if r.compare_mode == "mean" else "")
    if r.training:
        how += f", {len(r.steps)} training step{'s' if len(r.steps) != 1 else ''}"
    if r.single_step:
        how += ", single step (each raw layer fed the base layer's inputs)"
    out = [f"auto_diff {r.base} -> {r.raw} ({how}): {verdict}"]
    if r.stage is not None:
        out.append(f"first difference: step {r.step}, stage {r.stage}: {_stage_detail(r)}")
    if r.training:
        out.extend(_render_steps(r))
    if r.transfer is not None:
        out.append(f"weights transferred first: {r.transfer.tensors} tensors in {len(r.transfer.pairs)} layer pairs")
    out.append(f"final outputs {r.output_structure}: max abs diff {r.max_abs_diff:.3g}, max rel diff "
               f"{r.max_rel_diff:.3g}, {r.mismatched} of {r.total} values outside tolerance")
    bad = sum(not ld.ok for ld in r.layers)
    out.append(f"layers compared: {len(r.layers)} calls, {bad} outside tolerance"
               + (f"; {len(r.not_comparable)} calls not comparable" if r.not_comparable else ""))
    f = r.first_diff
    if f is not None:
        out.append(f"first divergence: call {f.order + 1} in the base model's call order"
                   f"{f' (call {f.call + 1} of this module)' if f.call else ''}:")
        out.append(f"  base {label(f.base_path)} ({f.base_class})  {f.output} {list(f.base_shape)}")
        out.append(f"  raw  {label(f.raw_path)} ({f.raw_class})  {f.raw_output or f.output} {list(f.raw_shape)}")
        out.append(f"  max abs diff {f.max_abs_diff:.3g}, max rel diff {f.max_rel_diff:.3g}, "
                   f"{f.mismatched} of {f.total} values outside tolerance")
        if f.note:
            out.append(f"  {f.note}")
        if f.inputs_agree:
            out.append("  its inputs agree: the difference is made inside this layer (its weights or its computation)")
        elif f.inputs_agree is False:
            out.append("  its inputs already differ: the difference comes from code no paired layer covers "
                       "(a functional call in a parent's forward, or an unpaired module) that runs before it")
    elif not r.ok and r.mismatched:
        out.append("no compared layer diverges: the difference is made outside the compared layers")
    g = r.first_grad_diff
    if g is not None:
        out.append(f"first gradient difference (backward order): base {label(g.base_path)} ({g.base_class}) -> "
                   f"raw {label(g.raw_path)} ({g.raw_class})")
        out.append(f"  {g}")
    elif r.phase in ("both", "backward"):
        out.append(f"gradients compared: {len(r.grads)} parameters, all within tolerance")
    w = r.first_weight_diff
    if w is not None:
        out.append(f"first weight difference after the optimizer step (the gradients agreed): base "
                   f"{label(w.base_path)} ({w.base_class}) -> raw {label(w.raw_path)} ({w.raw_class})")
        out.append(f"  {w}")
    for n in r.notes:
        out.append(f"note: {n}")
    for nc in r.not_comparable[:_MAX_NOT_COMPARABLE]:
        out.append(f"not comparable: {nc}")
    if len(r.not_comparable) > _MAX_NOT_COMPARABLE:
        out.append(f"not comparable: ... {len(r.not_comparable) - _MAX_NOT_COMPARABLE} more in result.not_comparable")
    if r.tree:
        out.append("model tree (base -> raw" + ("; '>>' marks the first divergence):" if f else "):"))
        out.extend(_render_tree(r.tree, f))
    return out


def _stage_detail(r: DiffResult) -> str:
    s = r.steps[r.step] if r.steps and r.step is not None and r.step < len(r.steps) else None
    if r.stage == "forward":
        f = s.first_diff if s is not None else r.first_diff
        if f is not None:
            return f"layer base {label(f.base_path)} ({f.base_class}) -> raw {label(f.raw_path)} ({f.raw_class})"
        return "the final outputs differ (no compared layer does)"
    if r.stage == "loss" and s is not None and s.loss is not None:
        return (f"base loss {s.loss[0]:.8g}, raw loss {s.loss[1]:.8g}" + (
            ", while every output agreed: the two loss functions give different values on the same outputs (e.g. "
            "paddle's cross_entropy caps the loss of a value far off, torch's does not)" if s.mismatched == 0
            and all(ld.ok for ld in s.layers) else ""))
    if r.stage == "backward":
        o = s.first_output_grad_diff if s is not None else None
        if o is not None:
            return (f"the gradient arriving at the output of base {label(o.base_path)} ({o.base_class}) -> raw "
                    f"{label(o.raw_path)} ({o.raw_class}) differs although every layer after it was given base's "
                    "gradients: the backward of code that runs after it in forward (its parent's own code or the "
                    "next layer) differs")
        g = s.first_grad_diff if s is not None else r.first_grad_diff
        return (f"gradient of base {g.base_param} -> raw {g.raw_param} (layer base {label(g.base_path)} "
                f"({g.base_class}))")
    if r.stage == "optimizer":
        w = s.first_weight_diff if s is not None else r.first_weight_diff
        return (f"weight base {w.base_param} -> raw {w.raw_param} after the optimizer step, while the gradients "
                "agreed " + (f"({w.cause.split(': ')[0]})" if w.cause else "(the optimizers' settings or state differ)"))
    return ""


def _render_steps(r: DiffResult) -> list[str]:
    out = []
    for s in r.steps:
        loss = f"loss base {s.loss[0]:.8g} raw {s.loss[1]:.8g}" if s.loss is not None else "no loss"
        bad = sum(not ld.ok for ld in s.layers)
        gbad = sum(not g.ok for g in s.grads)
        wbad = sum(not w.ok for w in s.weights)
        out.append(f"step {s.step}: {loss}; layers {bad} of {len(s.layers)} differ, gradients {gbad} of "
                   f"{len(s.grads)}, weights {wbad} of {len(s.weights)}" + (f"; first: {s.stage}" if s.stage else ""))
    return out


def _render_tree(lines: list[TreeLine], first: LayerDiff | None) -> list[str]:
    mark = None
    if first is not None:
        mark = next((i for i, ln in enumerate(lines)
                     if (ln.base_path, ln.raw_path) == (first.base_path, first.raw_path)), None)
    keep = set(range(len(lines)))
    if len(lines) > _MAX_TREE:
        keep = {i for i, ln in enumerate(lines) if ln.depth <= 1}
        if mark is not None:
            target = lines[mark].base_path
            chain = [i for i, ln in enumerate(lines)
                     if ln.base_path == "" or target == ln.base_path or target.startswith(ln.base_path + ".")]
            keep.update(chain)
            for c in chain:  # a few siblings around the marked layer and around each of its ancestors
                parent = lines[c].base_path.rpartition(".")[0]
                sib = [i for i, ln in enumerate(lines) if ln.depth == lines[c].depth
                       and ln.base_path.rpartition(".")[0] == parent]
                at = sib.index(c)
                keep.update(sib[max(0, at - 2):at + 3])
            kids = [i for i, ln in enumerate(lines) if ln.base_path.startswith(target + ".") or
                    (target == "" and ln.depth == 1)]
            keep.update(kids[:6])
        else:  # nothing to point at: as many whole levels as fit
            depth = 1
            while sum(ln.depth <= depth + 1 for ln in lines) <= _MAX_TREE:
                depth += 1
            keep = {i for i, ln in enumerate(lines) if ln.depth <= depth}
    width = max(len("  " * ln.depth + _label(ln)) for ln in lines) + 2
    out, skipped, at = [], 0, 0

    def flush():
        if skipped:
            out.append(f"     {'  ' * at}... {skipped} more")

    for i, ln in enumerate(lines):
        if i not in keep:
            if not skipped:
                at = ln.depth
            skipped += 1
            continue
        flush()
        skipped = 0
        pre = ">> " if i == mark else "   "
        out.append(f"  {pre}{('  ' * ln.depth + _label(ln)).ljust(width)}{ln.status}")
    flush()
    return out


def _label(ln: TreeLine) -> str:
    bname = ln.base_path.rpartition(".")[2] if ln.base_path else "<root>"
    rname = ln.raw_path.rpartition(".")[2] if ln.raw_path else "<root>"
    b = f"{bname} ({ln.base_class})"
    r = f"{rname} ({ln.raw_class})"
    return b if b == r else f"{b} -> {r}"
