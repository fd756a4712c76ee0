"""Compare two dumps (padiff_lite.verify.dump) in a process that imports neither framework.

The two models are rebuilt as trees of plain objects from the structure each dump holds and paired by the same
code as in memory (:func:`padiff_lite.prepare.prepare`: pairing by names, layer
maps, registered rules, positions), so a weight is compared with the tensor a transfer would have written it to,
after the rule's transform (a Linear weight transposed between torch and paddle, a fused or packed tensor's
part). Module calls are paired through the layer pairs (the k-th call of a base module with the k-th call of its
partner); calls of modules names leave unpaired are paired by the order they ran, when their classes and output
shapes agree. Values are read with numpy (``safetensors``' numpy reader).

``compare_mode``: "strict" compares every value (``|raw - base| <= atol + rtol * |base|``); "mean" compares the
two tensors' means that way (PaDiff's default).
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DumpError
from .dump import DumpFile, has_kind, leaf_folders

MODES = ("strict", "mean", "abs_mean")


# -- models of plain data ----------------------------------------------------------------------------------------
class DumpTensor:
    __slots__ = ("path", "shape", "dtype", "kind", "transposed")

    def __init__(self, path, shape, dtype, kind, transposed):
        self.path, self.shape, self.dtype, self.kind, self.transposed = path, tuple(shape), dtype, kind, transposed


class DumpModule:
    """A module of a dump: its own tensors, children and the plain settings it was dumped with (rules read
    settings such as ``num_heads`` or ``bias``), reachable as attributes as on a real module."""

    def __init__(self, path, attrs=None):
        self.path = path
        self._parameters: dict = {}
        self.buffers: dict = {}
        self.children: dict = {}
        self.attrs: dict = dict(attrs or {})

    @property
    def params(self):
        return self._parameters

    def __getattr__(self, name):
        d = self.__dict__
        for table in ("children", "_parameters", "buffers", "attrs"):
            if table in d and name in d[table]:
                return d[table][name]
        raise AttributeError(f"{type(self).__name__} at {d.get('path')!r} has no {name!r} in its dump (only "
                             "settings of plain values are dumped)")


_CLASSES: dict = {}


def _class_for(names: tuple) -> type:
    """A Python class named ``names[0]`` whose bases are named ``names[1:]`` (pairing and the registry look rules
    up by class names with bases, and cache by class)."""
    if names not in _CLASSES:
        base = _class_for(names[1:]) if len(names) > 1 else DumpModule
        _CLASSES[names] = type(names[0], (base,), {})
    return _CLASSES[names]


class DumpAdapter:
    """The structure part of padiff_lite's adapter contract over :class:`DumpModule` (what pairing and planning
    read; nothing here holds a value)."""

    def __init__(self, framework: str):
        self.name = framework

    def owns(self, obj) -> bool:
        return isinstance(obj, (DumpModule, DumpTensor))

    def is_module(self, obj) -> bool:
        return isinstance(obj, DumpModule)

    def is_tensor(self, obj) -> bool:
        return isinstance(obj, DumpTensor)

    def named_children(self, module):
        return module.children.items()

    def own_tensors(self, module):
        return ([(n, t, "param", True) for n, t in module.params.items() if t is not None]
                + [(n, t, "buffer", True) for n, t in module.buffers.items()])

    def tree_parts(self, module):
        return module.params, module.buffers, (), module.children

    def class_names(self, module) -> list[str]:
        return [c.__name__ for c in type(module).__mro__ if c not in (DumpModule, object)]

    def get_tensor(self, module, dotted: str):
        obj = module
        for part in dotted.split("."):
            obj = obj.children.get(part) or obj.params.get(part) or obj.buffers.get(part) \
                if isinstance(obj, DumpModule) else None
            if obj is None:
                return None
        return obj if isinstance(obj, DumpTensor) else None

    def stored_transposed(self, module, name: str) -> bool:
        t = module.params.get(name) if module.params.get(name) is not None else module.buffers.get(name)
        return bool(t is not None and t.transposed)

    def shape(self, t) -> tuple:
        return t.shape

    def dtype_name(self, t) -> str:
        return t.dtype

    def readable(self, t) -> bool:
        return True

    def device(self, t) -> str:
        return "dump"

    def overlapping_strides(self, t):
        return None  # a dumped tensor is contiguous


def rebuild(meta: dict):
    """A ProxyModel over plain objects from a dump's structure, with its black/white lists and layer map."""
    from ..proxy import ProxyModel

    s = meta["structure"]
    by_path, tensors = {}, {}
    for m in s["modules"]:
        mod = _class_for(tuple(m["classes"]) or ("Module",))(m["path"], m.get("attrs"))
        prefix = f"{m['path']}." if m["path"] else ""
        for t in m["tensors"]:
            ref = tensors.get(t.get("same_as"))  # a tied tensor is one object, as in the model: pairing sees the tie
            if ref is None:
                ref = DumpTensor(prefix + t["name"], t["shape"], t["dtype"], t["kind"], t.get("transposed", False))
                tensors[ref.path] = ref
            (mod.params if t["kind"] == "param" else mod.buffers)[t["name"]] = ref
        for name in m.get("empty", ()):
            mod.params[name] = None
        by_path[m["path"]] = (mod, m["children"])
    for path, (mod, children) in by_path.items():
        for name in children:
            child = by_path.get(f"{path}.{name}" if path else name)
            if child is not None:
                mod.children[name] = child[0]
    if "" not in by_path:
        raise DumpError(f"the dump of {meta.get('name')} has no root module; write it again")
    proxy = ProxyModel(by_path[""][0], meta.get("name"), DumpAdapter(s["framework"]))
    lists = s.get("lists") or {}
    for table, attr in (("white", "white_list"), ("black", "black_list")):
        for path, mode in (lists.get(table) or {}).items():
            if path in by_path:
                getattr(proxy, attr)[id(by_path[path][0])] = mode
    layer_map = [by_path[p][0] for p in lists.get("layer_map") or [] if p in by_path]
    if layer_map:
        proxy.layer_map = layer_map
        proxy.layer_map_auto = bool(lists.get("layer_map_auto"))
    return proxy


# -- numbers ------------------------------------------------------------------------------------------------------
def compare_values(base, raw, atol: float, rtol: float, mode: str = "strict") -> tuple[bool, float, float, int]:
    """(agree, max abs diff, max rel diff, values outside tolerance). NaN equals NaN, Inf equals Inf of its sign."""
    if mode not in MODES:
        raise ValueError(f"compare_mode must be one of {MODES}, got {mode!r}")
    a, b = np.asarray(base, dtype=np.float64), np.asarray(raw, dtype=np.float64)
    if mode != "strict":
        if a.size == 0 and b.size == 0:
            return True, 0.0, 0.0, 0
        a = np.abs(a).mean() if mode == "abs_mean" else a.mean()
        b = np.abs(b).mean() if mode == "abs_mean" else b.mean()
        a, b = np.asarray(a), np.asarray(b)
    if a.size == 0:
        return True, 0.0, 0.0, 0
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        finite = np.isfinite(a) & np.isfinite(b)
        d = np.where(finite, np.abs(a - b), 0.0)
        scale = np.maximum(np.abs(a), np.abs(b))
        rel = np.where(finite & (scale > 0), d / np.where(scale > 0, scale, 1.0), 0.0)
        bad = finite & (d > atol + rtol * np.abs(a))
        bad_nonfinite = ~finite & ~((np.isnan(a) & np.isnan(b)) | (a == b))
    n = int(bad.sum()) + int(bad_nonfinite.sum())
    if bad_nonfinite.any():
        return False, math.inf, math.inf, n
    return n == 0, float(d.max()), float(rel.max()), n


def _fit(a: np.ndarray, b: np.ndarray):
    """The two arrays in one shape (equal, broadcast-equal with as many dimensions, or the same values with leading
    dimensions merged), or None."""
    if a.shape == b.shape:
        return a, b
    if a.ndim == b.ndim:
        try:
            shape = np.broadcast_shapes(a.shape, b.shape)
        except ValueError:
            shape = None
        if shape is not None and shape in (a.shape, b.shape):
            return np.broadcast_to(a, shape), np.broadcast_to(b, shape)
    if a.size == b.size and a.shape[-1:] == b.shape[-1:]:
        return a.reshape(b.shape), b
    return None


def _part(arr: np.ndarray, part):
    """``layout.take`` for numpy: the value of a resolved ``Part`` of ``arr``."""
    if part is None:
        return arr
    if part.index is not None:
        arr = arr[part.index]
    if not part.blocks:
        return arr
    pieces = [np.take(arr, range(a, b), axis=part.axis) for a, b in part.blocks]
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=part.axis)


def _transformed(arr: np.ndarray, transform: str, shape):
    if transform == "transpose":
        return arr.T
    if transform == "reshape" and tuple(arr.shape) != tuple(shape):
        return arr.reshape(shape)
    return arr


# -- results -------------------------------------------------------------------------------------------------------
@dataclass
class TensorDiff:
    stage: str  # "forward" | "backward" | "weights" | "grads"
    step: int | None
    rank: int | None
    base_path: str
    raw_path: str
    base_class: str = ""
    raw_class: str = ""
    call: int | None = None
    where: str = ""
    max_abs: float = 0.0
    max_rel: float = 0.0
    bad: int = 0
    total: int = 0
    note: str = ""
    order: int = 0  # when the base call finished (forward/backward: children before parents), else the tensor's

    def __str__(self):
        at = "" if self.step is None and self.rank is None else f" [step {self.step}, rank {self.rank}]"
        call = f" call {self.call}" if self.call else ""
        where = f" {self.where}" if self.where and self.where != "out" else ""
        head = (f"{self.stage}{at}: {self.base_path or '<root>'} ({self.base_class}) -> "
                f"{self.raw_path or '<root>'} ({self.raw_class}){call}{where}")
        if self.note:
            return f"{head}: {self.note}"
        return f"{head}: max |diff| {self.max_abs:.3g}, max rel {self.max_rel:.3g}, {self.bad} of {self.total} values"


@dataclass
class DumpCheck:
    """The comparison of two dumps: true when every compared tensor agrees and nothing is left unpaired."""

    base: str
    raw: str
    kinds: tuple
    atol: float
    rtol: float
    compare_mode: str
    diffs: list = field(default_factory=list)  # TensorDiff, by step, rank, stage, order
    problems: list = field(default_factory=list)  # what could not be compared and makes the result false
    notes: list = field(default_factory=list)
    compared: int = 0  # tensors compared

    @property
    def ok(self) -> bool:
        return not self.diffs and not self.problems

    def __bool__(self):
        return self.ok

    @property
    def first(self) -> TensorDiff | None:
        return self.diffs[0] if self.diffs else None

    def __str__(self):
        lines = [f"compare dumps {self.base} (base) vs {self.raw} (raw): {', '.join(self.kinds)}; "
                 f"{self.compare_mode}, atol={self.atol:g}, rtol={self.rtol:g}; {self.compared} tensors compared: "
                 + ("OK" if self.ok else f"{len(self.diffs)} differ, {len(self.problems)} problems")]
        if self.first is not None:
            lines.append(f"first difference: {self.first}")
        lines += [f"  {d}" for d in self.diffs[1:20]]
        if len(self.diffs) > 20:
            lines.append(f"  ... and {len(self.diffs) - 20} more")
        lines += [f"problem: {p}" for p in self.problems]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_html(self, path) -> str:
        """Write a self-contained HTML page of this comparison; returns its path."""
        e = html.escape
        rows = "".join(
            f"<tr class='bad'><td>{e(d.stage)}</td><td>{e(str(d.step))}</td><td>{e(str(d.rank))}</td>"
            f"<td>{e(d.base_path or '<root>')} ({e(d.base_class)})</td><td>{e(d.raw_path or '<root>')} "
            f"({e(d.raw_class)})</td><td>{d.max_abs:.3g}</td><td>{d.max_rel:.3g}</td><td>{e(d.note)}</td></tr>"
            for d in self.diffs)
        items = "".join(f"<li>{e(p)}</li>" for p in self.problems + self.notes)
        verdict = "OK" if self.ok else "DIFFERENT"
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>padiff-lite compare-dumps</title><style>"
                "body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:2px 6px}.bad{background:#fdd}"
                f"</style></head><body><h1>{e(verdict)}</h1><p>{e(self.base)} (base) vs {e(self.raw)} (raw); "
                f"{e(', '.join(self.kinds))}; {e(self.compare_mode)}, atol={self.atol:g}, rtol={self.rtol:g}; "
                f"{self.compared} tensors compared</p>"
                "<table><tr><th>stage</th><th>step</th><th>rank</th><th>base</th><th>raw</th><th>max |diff|</th>"
                f"<th>max rel</th><th>note</th></tr>{rows}</table><ul>{items}</ul></body></html>")
        Path(path).write_text(page)
        return str(path)


# -- checks ----------------------------------------------------------------------------------------------------------
def check_dumps(base, raw, kinds=("report", "weights", "grads"), *, atol: float = 1e-5, rtol: float = 1e-5,
                compare_mode: str = "strict", diff_phase: str = "both", pool=None) -> DumpCheck:
    """Compare the dumps under ``base`` and ``raw`` (a dump root with ``step_N/rank_M`` folders, ``rank_M``
    folders, or one dump folder), step by step and rank by rank, for each of ``kinds`` both hold.

    ``diff_phase`` (report only): "forward" compares module outputs, "backward" the gradients that reached them,
    "both" both. ``pool``: the rules registry to pair with (default: padiff_lite's). Raises :class:`DumpError`
    when a folder is not a dump; a step or rank present on one side only, or a kind none of the folders hold, is
    a problem of the result."""
    if compare_mode not in MODES:
        raise ValueError(f"compare_mode must be one of {MODES}, got {compare_mode!r}")
    if diff_phase not in ("forward", "backward", "both"):
        raise ValueError(f"diff_phase must be 'forward', 'backward' or 'both', got {diff_phase!r}")
    result = DumpCheck(str(base), str(raw), tuple(kinds), atol, rtol, compare_mode)
    from ..special_init import registry

    pool = registry(pool)
    leaves_b, leaves_r = leaf_folders(base), leaf_folders(raw)
    for key in sorted(set(leaves_b) | set(leaves_r), key=lambda k: (k[0] or -1, k[1] or -1)):
        if key not in leaves_b or key not in leaves_r:
            side = "base" if key in leaves_b else "raw"
            result.problems.append(f"step {key[0]}, rank {key[1]} is dumped on the {side} side only "
                                   f"({(leaves_b.get(key) or leaves_r.get(key))}); dump the same steps and ranks")
    for key in sorted(set(leaves_b) & set(leaves_r), key=lambda k: (k[0] or -1, k[1] or -1)):
        fb, fr = leaves_b[key], leaves_r[key]
        found = False
        for kind in kinds:
            if has_kind(fb, kind) and has_kind(fr, kind):
                found = True
                ctx = _Leaf(result, key[0], key[1], pool, fb, fr)
                db, dr = DumpFile(fb, kind), DumpFile(fr, kind)
                if kind == "report":
                    ctx.report(db, dr, diff_phase)
                else:
                    ctx.tensors(db, dr, kind)
            elif has_kind(fb, kind) or has_kind(fr, kind):
                side = "base" if has_kind(fb, kind) else "raw"
                result.problems.append(f"{kind} of step {key[0]}, rank {key[1]} is dumped on the {side} side only "
                                       f"({fb if side == 'base' else fr})")
        if not found:
            result.problems.append(f"{fb} and {fr} hold none of {', '.join(kinds)} on both sides; dump them first")
    result.diffs.sort(key=lambda d: (d.step if d.step is not None else -1, d.rank if d.rank is not None else -1,
                                     ("forward", "backward", "weights", "grads").index(d.stage), d.order))
    return result


def check_report(base, raw, **kw) -> DumpCheck:
    return check_dumps(base, raw, ("report",), **kw)


def check_weights(base, raw, **kw) -> DumpCheck:
    return check_dumps(base, raw, ("weights",), **kw)


def check_grads(base, raw, **kw) -> DumpCheck:
    return check_dumps(base, raw, ("grads",), **kw)


def check_params(base, raw, **kw) -> DumpCheck:
    return check_dumps(base, raw, ("weights", "grads"), **kw)


class _Leaf:
    """The comparison of one step of one rank."""

    def __init__(self, result: DumpCheck, step, rank, pool, fb: Path, fr: Path):
        self.result, self.step, self.rank, self.pool = result, step, rank, pool
        self.folders = (fb, fr)

    def _models(self, db: DumpFile, dr: DumpFile):
        return rebuild(db.meta), rebuild(dr.meta)

    def _prepared(self, db: DumpFile, dr: DumpFile, keep_empty: bool = False):
        """The two rebuilt models paired once: names, then (with both reports) the in-memory pairing by execution on
        the recorded call orders for what names leave open. Ambiguous pairs are a problem of the result, and the
        models are then paired by names alone."""
        from ..errors import AmbiguousPairingError
        from ..prepare import prepare

        base, raw = self._models(db, dr)
        fb, fr = self.folders
        traces = None
        if has_kind(fb, "report") and has_kind(fr, "report"):
            calls_b, calls_r = DumpFile(fb, "report").meta["calls"], DumpFile(fr, "report").meta["calls"]
            traces = lambda mb, mr: (_trace(calls_b, mb), _trace(calls_r, mr))  # noqa: E731
        try:
            return prepare(base, raw, traces=traces, pool=self.pool, keep_empty=keep_empty)
        except AmbiguousPairingError as exc:
            self.result.problems.append(f"step {self.step}, rank {self.rank}: {exc}")
            return prepare(base, raw, pool=self.pool, keep_empty=keep_empty)

    def _diff(self, stage, bpath, rpath, bcls, rcls, **kw) -> TensorDiff:
        return TensorDiff(stage, self.step, self.rank, bpath, rpath, bcls, rcls, **kw)

    # weights / gradients -------------------------------------------------------------------------------------
    def tensors(self, db: DumpFile, dr: DumpFile, kind: str):
        from ..ops import COPY

        r = self.result
        plan = self._prepared(db, dr).plan
        base, raw = plan.base, plan.raw
        where = f"{kind} of step {self.step}, rank {self.rank}"
        for u in plan.unpaired:
            r.problems.append(f"{where}: {u} has no counterpart: {', '.join(u.tensor_paths()[:6])}")
        if plan.unexpected or plan.missing:
            left = [f"base {x}" for x in plan.unexpected] + [f"raw {x}" for x in plan.missing]
            r.problems.append(f"{where}: {len(left)} tensors no pair reaches, not compared: {', '.join(left[:8])}"
                              + (" ..." if len(left) > 8 else ""))
        for p in plan.imperative:
            r.notes.append(f"{where}: {p.base.path} -> {p.raw.path} is paired by an imperative special init, which "
                           "dumps cannot replay; compare it in memory (auto_diff)")
        for msg in plan.problems:
            r.problems.append(f"{where}: {msg}")
        have_b, have_r = set(db.meta.get("tensors", [])), set(dr.meta.get("tensors", []))
        none_b, none_r = set(db.meta.get("no_grad", [])), set(dr.meta.get("no_grad", []))
        for i, op in enumerate(plan.ops):
            if op.kind is not COPY:
                continue
            bpath, rpath = op.src.path, op.dst.path
            bname = op.src.alias_of or bpath
            rname = op.dst.alias_of or rpath
            bcls, rcls = type(op.pair.base.module).__name__, type(op.pair.raw.module).__name__
            if kind == "grads" and op.src.kind == "buffer":
                continue
            if bname not in have_b or rname not in have_r:
                if kind == "grads" and (bname in none_b) and (rname in none_r):
                    continue  # neither has a gradient
                if kind == "grads" and (bname in none_b or rname in none_r):
                    side = "base" if bname in none_b else "raw"
                    other = dr.get(rname) if side == "base" else db.get(bname)
                    r.compared += 1
                    if not np.any(other):  # no gradient is a zero gradient
                        continue
                    r.diffs.append(self._diff(kind, bpath, rpath, bcls, rcls, order=i,
                                              note=f"no gradient on the {side} side, the other has one"))
                    continue
                r.problems.append(f"{where}: {bname if bname not in have_b else rname} is listed in the structure "
                                  "but not dumped")
                continue
            value = _transformed(_part(db.get(bname), op.src_part), op.transform, None)
            target = _part(dr.get(rname), op.dst_part)
            if op.transform == "reshape":
                value = value.reshape(target.shape)
            r.compared += 1
            if value.shape != target.shape:
                r.diffs.append(self._diff(kind, bpath, rpath, bcls, rcls, order=i,
                                          note=f"shapes {list(value.shape)} (base, after {op.transform}) and "
                                               f"{list(target.shape)} (raw) differ"))
                continue
            ok, ma, mr, bad = compare_values(value, target, r.atol, r.rtol, r.compare_mode)
            if not ok:
                r.diffs.append(self._diff(kind, bpath, rpath, bcls, rcls, order=i, max_abs=ma, max_rel=mr,
                                          bad=bad, total=int(target.size)))

    # module calls -------------------------------------------------------------------------------------------
    def report(self, db: DumpFile, dr: DumpFile, diff_phase: str):
        r = self.result
        pairing = self._prepared(db, dr, keep_empty=True).pairing
        base, raw = pairing.base, pairing.raw
        calls_b = _calls_by_path(db.meta["calls"])
        calls_r = _calls_by_path(dr.meta["calls"])
        done_b, done_r, matched = set(), set(), []
        for pair in pairing.matched:
            if not (pair.base.on and pair.raw.on):
                continue
            if pair.base.path in done_b or pair.raw.path in done_r:
                continue
            done_b.add(pair.base.path)
            done_r.add(pair.raw.path)
            cb, cr = calls_b.get(pair.base.path, []), calls_r.get(pair.raw.path, [])
            matched += list(zip(cb, cr))
            if len(cb) != len(cr) and cb and cr:
                r.notes.append(f"{pair.base.path or '<root>'} -> {pair.raw.path or '<root>'} ran {len(cb)} times on "
                               f"the base side and {len(cr)} on the raw side; the extra calls were not compared")
        on_b = {p.path for p in _nodes_on(pairing, "base")}
        on_r = {p.path for p in _nodes_on(pairing, "raw")}
        left_b = [c for c in db.meta["calls"] if c.get("api") or (c["path"] not in done_b and c["path"] in on_b)]
        left_r = [c for c in dr.meta["calls"] if c.get("api") or (c["path"] not in done_r and c["path"] in on_r)]
        extra, lost = _by_order(left_b, left_r)
        matched += extra
        if lost:
            shown = ", ".join(f"{c['path'] or '<root>'} ({c['class']})" for c in lost[:6])
            r.notes.append(f"step {self.step}, rank {self.rank}: {len(lost)} base calls have no counterpart by name "
                           f"nor by order, class and shape and were not compared: {shown}")
        for cb, cr in sorted(matched, key=lambda p: p[0].get("end", p[0]["order"])):
            if diff_phase in ("forward", "both"):
                self._outputs(db, dr, cb, cr, "forward")
            if diff_phase in ("backward", "both"):
                self._outputs(db, dr, cb, cr, "backward")

    def _outputs(self, db, dr, cb, cr, stage):
        r = self.result
        ob, orr = cb["outputs"], cr["outputs"]
        if stage == "backward":
            pairs = [(a, b) for a, b in _align(ob, orr) if a["grad"] or b["grad"]]
        else:
            pairs = _align(ob, orr)
        if pairs is None or (not pairs and stage == "forward" and (ob or orr)):
            r.notes.append(f"{cb['path'] or '<root>'} -> {cr['path'] or '<root>'} call {cb['call']}: outputs of a "
                           f"different form ({len(ob)} and {len(orr)} tensors), not compared")
            return
        for a, b in pairs:
            end = cb.get("end", cb["order"])
            # backward: gradients flow from the last call to the first, so the last call is met first
            kw = dict(call=cb["call"], where=a["where"], order=-end if stage == "backward" else end)
            if stage == "backward":
                if not (a["grad"] and b["grad"]):
                    side = "base" if not a["grad"] else "raw"
                    other = db.get(a["grad"]) if a["grad"] else dr.get(b["grad"])
                    r.compared += 1
                    if not np.any(other):  # no gradient is a zero gradient (paddle gives unused outputs zeros)
                        continue
                    r.diffs.append(self._diff(stage, cb["path"], cr["path"], cb["class"], cr["class"],
                                              note=f"no gradient reached the {side} output, the other's is not "
                                                   "zero", **kw))
                    continue
                va, vb = db.get(a["grad"]), dr.get(b["grad"])
            else:
                va, vb = db.get(a["key"]), dr.get(b["key"])
            r.compared += 1
            fit = _fit(va, vb)
            if fit is None:
                r.diffs.append(self._diff(stage, cb["path"], cr["path"], cb["class"], cr["class"],
                                          note=f"shapes {list(va.shape)} and {list(vb.shape)} differ", **kw))
                continue
            ok, ma, mr, bad = compare_values(fit[0], fit[1], r.atol, r.rtol, r.compare_mode)
            if not ok:
                r.diffs.append(self._diff(stage, cb["path"], cr["path"], cb["class"], cr["class"], max_abs=ma,
                                          max_rel=mr, bad=bad, total=int(fit[1].size), **kw))


def _trace(calls, modules):
    """The :class:`padiff_lite.trace.CallTrace` of ``modules`` (DumpModules) in recorded ``calls``: by first call
    finished, as a forward hook sees them."""
    from ..trace import CallTrace

    index = {m.path: i for i, m in enumerate(modules)}
    trace = CallTrace()
    for c in sorted(calls, key=lambda c: c.get("end", c["order"])):
        i = index.get(c["path"])
        if i is None or c.get("api"):
            continue
        if i not in trace.counts:
            trace.order.append(i)
            trace.counts[i] = 0
        trace.counts[i] += 1
    return trace


def _calls_by_path(calls) -> dict:
    out: dict = {}
    for c in calls:
        out.setdefault(c["path"], []).append(c)
    return out


def _nodes_on(pairing, side):
    proxy = pairing.base if side == "base" else pairing.raw
    from ..tree import ModelTree, walk

    return [n for n in walk(ModelTree(proxy, keep_empty=True).build(proxy.model)) if n.on]


def _alike(a: str, b: str) -> bool:
    return a.lower() == b.lower()


def _shapes(call) -> list:
    return [tuple(o["shape"]) for o in call["outputs"]]


def _by_order(left_b, left_r):
    """Calls of modules names did not pair, paired in the order they ran when their classes are alike and their
    output shapes equal; returns (pairs, base calls left)."""
    pairs, lost, j = [], [], 0
    for cb in left_b:
        k = j
        while k < len(left_r) and not (_alike(cb["class"], left_r[k]["class"]) and _shapes(cb) == _shapes(left_r[k])):
            k += 1
        if k < len(left_r):
            pairs.append((cb, left_r[k]))
            j = k + 1
        else:
            lost.append(cb)
    return pairs, lost


def _align(ob: list, orr: list):
    """Output tensors paired: by field name when both name them, else by position; a single tensor against the
    first of several; None when they cannot be paired."""
    if len(ob) == len(orr):
        names_b, names_r = [o["where"] for o in ob], [o["where"] for o in orr]
        if set(names_b) == set(names_r) and names_b != names_r and all(n.startswith(".") for n in names_b):
            by = {o["where"]: o for o in orr}
            return [(o, by[o["where"]]) for o in ob]
        return list(zip(ob, orr))
    if len(ob) == 1 or len(orr) == 1:
        return [(ob[0], orr[0])] if ob and orr else []
    return None
