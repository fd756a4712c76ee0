"""Validation: everything that would make a transfer wrong, found before anything is written.

Pure: the plan is read, never changed; a :class:`Validation` comes back. Each check is a function returning
problems, and :func:`check` runs the ones an entry point asks for into one list:

- :func:`validate` - the plan against the tensors: shapes after each transform, dtypes (the kind must agree;
  narrowing casts must fit and are listed), data present, destinations whose elements share memory (made with
  ``expand`` / ``as_strided``: they cannot hold a value per element), constants the raw side cannot hold, tied
  targets;
  and per copy the :class:`.ops.CopyFacts` the executor groups small copies by;
- :func:`unpaired_problem` - ``strict``: tensors without a partner;
- :func:`nonfinite_problems` - ``check_finite``: NaN/Inf in what would be read;
- ``mapping.check_tensors`` - a mapping file's tensors against the plan.

``assign_weight``, ``pair_layers``, ``auto_diff`` and ``convert_checkpoint`` (which adds the checks of its
file, :mod:`.checkpoint_plan`) all go through :func:`check` and raise once with :func:`refuse`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import layout
from .errors import TransferError
from .mapping import Context, Paired, check_tensors
from .ops import AS_IS, FILL, RESHAPE, TRANSPOSE, CopyFacts, Op
from .pairing import LayerPair
from .plan import Plan, pair_label, plan_pairs
from .problems import Problem

_FLOATS = {"float16", "bfloat16", "float32", "float64"}
_WIDTH = {"float16": 16, "bfloat16": 16, "float32": 32, "float64": 64}


@dataclass
class Validation:
    """What validating a plan found: ``problems`` (none: the plan may run), the narrowing ``casts`` it will
    make, and for the executor the copies of whole tensors grouped by what they have in common (``alike``:
    :class:`.ops.CopyFacts` -> the ops, in plan order; small copies alike are moved together)."""

    problems: list[Problem] = field(default_factory=list)
    casts: list[str] = field(default_factory=list)
    alike: dict = field(default_factory=dict)


def check(plan: Plan, *, need_data: bool = True, strict: bool = True, check_finite: bool = False,
          context: Context = Context()) -> Validation:
    """Every check an entry point asks for, in one list: planning's own problems, :func:`validate`, the
    mapping's tensors (when the ``context`` says the user gave it), ``strict`` (unpaired tensors, listed first,
    with the fixes the ``context`` allows) and ``check_finite``."""
    v = validate(plan, need_data)
    problems = list(plan.problems) + v.problems
    if context.paired is Paired.MAPPING and context.mapping is not None:
        problems += check_tensors(context.mapping, plan)
    if strict and (plan.missing or plan.unexpected):
        problems.insert(0, unpaired_problem(plan, context))
    if check_finite:
        problems += nonfinite_problems(plan)
    v.problems = problems
    return v


def refuse(what: str, problems: list[Problem]):
    """Raise one TransferError listing every problem (nothing when there are none). ``what``: "cannot transfer
    a -> b; nothing was written", say."""
    if problems:
        raise TransferError(f"{what} ({len(problems)} problem{'s' * (len(problems) != 1)}):", problems)


def dtype_family(dtype: str) -> str:
    """"float", "complex", "bool" or "int": a transfer may cast within a family, never across."""
    if dtype in _FLOATS or dtype.startswith("float8"):
        return "float"
    if dtype.startswith("complex"):
        return "complex"
    if dtype == "bool":
        return "bool"
    return "int"


def kind_problem(src: str, sd: str, dst: str, dd: str, what: str = "a transfer", where: str = "") -> Problem | None:
    """The problem of copying ``src`` (dtype ``sd``) into ``dst`` (``dd``) across dtype families, or None."""
    if dtype_family(sd) == dtype_family(dd):
        return None
    return Problem(where, f"{src} is {sd} but {dst} is {dd}",
                   f"{what} does not change the kind of a tensor: build the raw model with a matching dtype")


def expect_problem(op: Op, value, where: str, fix: str) -> Problem | None:
    """The problem of a source (torch tensor ``value``, the op's part taken) that must equal ``op.value`` and
    does not, or None. ``where``: how to name the source; ``fix``: the last way out to offer."""
    import torch

    if bool(torch.all(layout.take(value, op.src_part) == op.value)):
        return None
    return Problem(pair_label(op.pair), f"{where} has values other than {op.value}, and the raw layer has no tensor "
                   "to hold them", f"give the raw layer that parameter (e.g. affine=True / weight_attr) or {fix}")


def validate(plan: Plan, need_data: bool = True) -> Validation:
    """The plan against the tensors: what would make the transfer wrong, the casts, the copies alike.

    ``need_data=False`` checks structure, shapes and dtypes only, for models built without storage
    (torch's meta device, ``paddle.LazyGuard``): the base tensors need not hold data, and ``plan.checks``
    (a base tensor must equal a constant) are left to the caller, who reads the values from elsewhere
    (checkpoint conversion reads them from the file).
    """
    v = Validation()
    ba, ra = plan.base.adapter, plan.raw.adapter
    unreadable: set[int] = set()
    # once per tensor: adapter methods bound once (0.04 s of 0.2 s for 12,000 tensors)
    b_shape, r_shape, b_dtype, r_dtype, b_readable, r_readable = (ba.shape, ra.shape, ba.dtype_name, ra.dtype_name,
                                                                  ba.readable, ra.readable)
    r_overlap = ra.overlapping_strides
    shared: set[int] = set()  # destinations refused for sharing memory between their elements (named once)
    # grouped by a plain tuple, named once per group: a NamedTuple per copy costs 0.3-0.5 us more to build and a
    # fact kept per copy as much to free (4 + 3 ms of 300 for 20,000 tensors)
    alike: dict = {}
    for op in plan.ops:
        dst = op.dst.tensor
        if need_data and not r_readable(dst):
            unreadable.add(id(dst))
            v.problems.append(_no_data(pair_label(op.pair), "raw", ra, op.dst))
            continue
        dshape = r_shape(dst)
        if need_data and id(dst) not in shared:
            strides = r_overlap(dst)
            if strides is not None:
                shared.add(id(dst))
                v.problems.append(overlap_problem(pair_label(op.pair), op.dst.path, dshape, strides))
                continue
        want = dshape if op.dst_part is None else layout.region_shape(dshape, op.dst_part)
        if want is None:
            v.problems.append(Problem(pair_label(op.pair), f"part {op.dst_part} does not fit raw {op.dst.path} of "
                                      f"shape {list(dshape)}", "fix the rule's Part"))
            continue
        if op.kind is FILL:
            continue
        src = op.src.tensor
        sshape = b_shape(src)
        if need_data and not b_readable(src):
            unreadable.add(id(src))
            v.problems.append(_no_data(pair_label(op.pair), "base", ba, op.src))
            continue
        got = sshape if op.src_part is None else layout.region_shape(sshape, op.src_part)
        if got is None:
            v.problems.append(Problem(pair_label(op.pair), f"part {op.src_part} does not fit base {op.src.path} of "
                                      f"shape {list(sshape)}", "fix the rule's Part"))
            continue
        if op.transform is TRANSPOSE:
            if len(got) != 2:
                v.problems.append(Problem(pair_label(op.pair), f"base {op.src.path} is {len(got)}-D, a transpose needs 2-D"))
                continue
            got = got[::-1]
        elif op.transform is RESHAPE and math.prod(got) == math.prod(want):
            got = want
        if got != want:
            v.problems.append(_shape_problem(pair_label(op.pair), op, sshape, dshape))
        sd, dd = b_dtype(src), r_dtype(dst)
        if op.src_part is None and op.dst_part is None:
            key = (sshape, dshape, sd, dd, op.transform)
            group = alike.get(key)
            if group is None:
                alike[key] = [op]
            else:
                group.append(op)
        if sd != dd:
            _check_dtype(plan, v, op, sd, dd)
    v.alike = {CopyFacts(*key): ops for key, ops in alike.items()}
    if need_data:  # else shapes only (checkpoint conversion): values are checked against the file
        _check_values(plan, v, unreadable, shared)
    return v


def _check_values(plan: Plan, v: Validation, unreadable: set, shared: set) -> None:
    """What needs the tensors' data: every tensor of a layer a special init writes whole readable (and not sharing
    memory between elements), the constants base must hold (``plan.checks``), and tied tensors that must agree;
    into ``v.problems``. ``unreadable``/``shared``: tensors already named by the copy checks."""
    ba, ra = plan.base.adapter, plan.raw.adapter
    for pair in plan.imperative:  # a special init reads and writes whole layers: all of them must hold data
        for side, node, adapter in (("base", pair.base, ba), ("raw", pair.raw, ra)):
            for ref in node.subtree_tensors().values():
                if not adapter.readable(ref.tensor):
                    unreadable.add(id(ref.tensor))
                    v.problems.append(_no_data(pair_label(pair), side, adapter, ref))
                elif side == "raw" and id(ref.tensor) not in shared:
                    strides = ra.overlapping_strides(ref.tensor)
                    if strides is not None:
                        shared.add(id(ref.tensor))
                        v.problems.append(overlap_problem(pair_label(pair), ref.path, ra.shape(ref.tensor), strides))
    for op in plan.checks:
        if not ba.readable(op.src.tensor):
            v.problems.append(_no_data(pair_label(op.pair), "base", ba, op.src))
            continue
        rows = f" {op.src_part}" if op.src_part is not None else ""
        problem = expect_problem(op, ba.torch_view(op.src.tensor), f"base {op.src.path}{rows}",
                                 f"reset {op.src.path}{rows} to {op.value}")
        if problem:
            v.problems.append(problem)
    for kept, dropped in plan.tie_conflicts:
        if not {id(kept.src.tensor), id(dropped.src.tensor), id(kept.dst.tensor)} & unreadable:
            _check_tie(plan, v, kept, dropped)


def pair_fit(base, raw, pair: LayerPair) -> tuple[list[Problem], list[Problem]]:
    """The fit check of one candidate layer pair (pairing by execution): ``(planning's own problems, every
    problem)`` of transferring this pair alone - shapes after the rule's transforms, tensors left without a partner
    on either side, a rule that refuses it; ``([], [])`` when it fits. Reads no values. An imperative special init
    cannot be checked without running it: it fits."""
    plan = Plan(base, raw, [pair])
    plan_pairs(plan, [pair])
    if plan.imperative:
        return [], []
    return list(plan.problems), plan.problems + validate(plan, need_data=False).problems + \
        [Problem(pair_label(pair), f"base {p} has no partner") for p in plan.unexpected] + \
        [Problem(pair_label(pair), f"raw {p} has no partner") for p in plan.missing]


def pair_problems(base, raw, pair: LayerPair) -> list[Problem]:
    """What would be wrong with transferring this one layer pair (:func:`pair_fit`'s every problem); [] when it
    fits."""
    return pair_fit(base, raw, pair)[1]


def unpaired_problem(plan: Plan, context: Context = Context()) -> Problem:
    """``strict``: one problem listing every tensor without a partner, and how to pair or leave them."""
    lines = []
    for u in plan.unpaired:
        lines.append(f"unpaired {u}: {', '.join(u.tensor_paths())}")
    listed = {p for u in plan.unpaired for p in u.tensor_paths()}
    rest_m = [p for p in plan.missing if p not in listed]
    rest_u = [p for p in plan.unexpected if p not in listed]
    if rest_m:
        lines.append("raw tensors with no base partner: " + ", ".join(rest_m))
    if rest_u:
        lines.append("base tensors with no raw partner: " + ", ".join(rest_u))
    lines += context.notes
    fix = ("pair the layers explicitly with set_layer_map, leave them out with update_black_list, "
           "or pass strict=False to transfer what matches and list the rest")
    cli_fix = "pass --no-strict to convert what matches and list the rest"
    if context.paired is Paired.NAMES and {u.side for u in plan.unpaired} == {"base", "raw"}:
        fix = ("pass example_inputs=<an input both models accept> to pair the layers names leave open by the "
               "order they run (or mapping=<file> to reuse pairs found before); or " + fix)
        cli_fix = None
    return Problem("", "\n    ".join(["structure differs:"] + lines + plan.hints), fix, cli_fix, sep="\n    fix: ")


def nonfinite_problems(plan: Plan) -> list[Problem]:
    """``check_finite``: every base tensor that would be read (planned copies and special-init layers) holding
    NaN or Inf."""
    from . import nonfinite  # imports torch: not at import time (dump checks run without a framework)

    ba = plan.base.adapter
    refs = {id(op.src.tensor): op.src for op in plan.ops if op.src is not None}
    for pair in plan.imperative:
        for ref in pair.base.subtree_tensors().values():
            refs.setdefault(id(ref.tensor), ref)
    out = []
    for ref in refs.values():
        if not ba.readable(ref.tensor):
            continue  # already a "holds no data" problem
        n = nonfinite.count(ba.torch_view(ref.tensor))  # one sum per tensor; counts only when it is not finite
        if n:
            out.append(Problem(f"base {ref.path}", f"holds {n} NaN/Inf value{'s' * (n != 1)} (check_finite=True)",
                               "fix the source weights or pass check_finite=False to copy them as they are", joint=" "))
    return out


def overlap_problem(where: str, path: str, shape, strides) -> Problem:
    """The problem of a destination some of whose elements share memory (it cannot hold a value per element)."""
    return Problem(where, f"raw {path} {list(shape)} has strides {list(strides)}: some of its elements share memory (a "
                   "tensor made with expand or as_strided), so it cannot hold the values of a copy",
                   "give it memory of its own (register the buffer as tensor.clone(), or assign .contiguous() to it) or "
                   "leave it out with update_black_list")


def _no_data(where, side, adapter, ref) -> Problem:
    fix = ("load real weights into the base model (for a meta-device or LazyGuard model: materialise it, "
           "e.g. to_empty() + load_state_dict, or build it outside LazyGuard)" if side == "base" else
           "materialise the raw model first (torch: model.to_empty(device='cpu'); paddle: build it outside "
           "LazyGuard or initialise its parameters)")
    return Problem(where, f"{side} {ref.path} holds no data (device {adapter.device(ref.tensor)})", fix)


def source_value(adapter, op: Op):
    """The torch tensor an op writes, flat: the source view with its part taken and its transform applied."""
    return layout.transformed(layout.take(adapter.torch_view(op.src.tensor), op.src_part), op.transform, (-1,))


def _check_tie(plan: Plan, v: Validation, kept: Op, dropped: Op):
    """A tied raw tensor can hold one value: two different base tensors written into it lose one."""
    import torch

    ba = plan.base.adapter
    a, b = source_value(ba, kept), source_value(ba, dropped)
    if a.numel() == b.numel() and RESHAPE in (kept.transform, dropped.transform):
        a, b = a.reshape(-1), b.reshape(-1)
    if a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b):
        return
    v.problems.append(Problem(
        pair_label(dropped.pair), f"raw {dropped.dst.path} is tied to {kept.dst.path} (one tensor), but base "
        f"{kept.src.path} and {dropped.src.path} hold different values, so one of them would be lost",
        f"untie {dropped.dst.path} in the raw model, tie the base model the same way, or black-list one of the two"))


def _shape_problem(where: str, op: Op, sshape, dshape) -> Problem:
    plain = op.transform is AS_IS
    what = (f"shape mismatch: base {op.src.path} {list(sshape)}"
            f"{'' if plain else ' (' + op.transform + ')'} vs raw {op.dst.path} {list(dshape)}")
    if plain and len(sshape) == 2 and tuple(sshape[::-1]) == tuple(dshape):
        return Problem(where, what, "the layouts look transposed: register a rule for this class pair "
                       "(init_pool.register_maps with Map(..., 'transpose')) - padiff_lite never guesses a transpose")
    return Problem(where, what, "build both models with the same sizes, or pair these layers differently with "
                   "set_layer_map", cli_fix="build both models with the same sizes")


def _check_dtype(plan: Plan, v: Validation, op: Op, sd: str, dd: str):
    where = pair_label(op.pair)
    problem = kind_problem(f"base {op.src.path}", sd, f"raw {op.dst.path}", dd, where=where)
    if problem:
        v.problems.append(problem)
        return
    family = dtype_family(sd)
    if family == "float" and (_WIDTH.get(sd, 0) < _WIDTH.get(dd, 0) or (sd, dd) == ("float16", "float32")):
        return  # widening loses nothing
    if family in ("float", "int"):
        _check_range(plan, v, where, op, sd, dd)
        v.casts.append(f"{op.src.path} {sd} -> {op.dst.path} {dd}")


def _check_range(plan: Plan, v: Validation, where: str, op: Op, sd: str, dd: str):
    """A narrowing cast must not turn finite values into Inf or wrap integers around (only narrowing ops pay this)."""
    if not plan.base.adapter.readable(op.src.tensor):
        return  # no data to look at (the no-data problem is reported where data is needed)
    import torch  # here: values to look at are torch views, and planning without data needs no framework

    target = getattr(torch, dd, None)
    if target is None:
        return
    info = torch.finfo(target) if target.is_floating_point else torch.iinfo(target)
    src = source_value(plan.base.adapter, op)
    if src.is_floating_point():
        src = src[torch.isfinite(src)]  # NaN/Inf are reported as non-finite, not as out of range
    if src.numel() == 0:
        return
    lo, hi = src.min().item(), src.max().item()
    if lo < info.min or hi > info.max:
        v.problems.append(Problem(
            where, f"base {op.src.path} ({sd}) holds values in [{lo:g}, {hi:g}], outside the range of raw "
            f"{op.dst.path} ({dd}, [{info.min:g}, {info.max:g}]); the cast would "
            f"{'turn them into Inf' if target.is_floating_point else 'wrap them around'}",
            f"build the raw model with dtype {sd}, or rescale the weights", sep=": "))
