"""Settings of weightless layers, compared while pairing by execution (issue 25 item 5).

Layers without tensors (dropout, pooling) are never paired or copied, yet their settings decide what the model
computes: paddle's ``Dropout(mode="downscale_in_infer")`` scales by ``1 - p`` in eval where torch's Dropout does not;
a max pool with another ``ceil_mode``, padding, kernel or stride gives other maps. When both models run on the
example input (:mod:`padiff_lite.align`), the weightless layers of the kinds below are traced too; each side's calls
are cut into stretches by the calls of the paired layers, and within a stretch the two sequences are aligned by
kind and order. Settings that differ on an aligned pair are returned as problem lines (one per setting, both paths,
both classes, both values); a stretch whose counts or kinds differ is left alone (logged at debug): no refusal
without a pair that is certain.

:data:`KINDS` is the table: kind (the class name lower-cased: torch's ``MaxPool2d`` and paddle's ``MaxPool2D`` are
both ``maxpool2d``) and how each framework's attributes read as one common value. A value that cannot be read
for sure (paddle's ``padding="SAME"``, asymmetric paddings) makes that pair unknown: it is not compared.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

UNKNOWN = object()

_POOL_DIMS = {"1d": 1, "2d": 2, "3d": 3}
KINDS = ({"dropout", "dropout1d", "dropout2d", "dropout3d"}
         | {f"{k}{d}" for k in ("maxpool", "avgpool", "adaptiveavgpool") for d in _POOL_DIMS})
_HOME = {"torch": "torch.nn", "paddle": "paddle.nn"}


def kind_of(module, framework: str) -> str | None:
    """The kind of a module of one of the framework's own classes in KINDS (or a subclass of one), else None."""
    for cls in type(module).__mro__:
        if cls.__name__.lower() in KINDS and cls.__module__.startswith(_HOME.get(framework, "?")):
            return cls.__name__.lower()
    return None


def _tup(value, n):
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return tuple(None if v is None else int(v) for v in value) if len(value) == n else UNKNOWN
    return (int(value),) * n


def _first(module, *names):
    for name in names:
        if hasattr(module, name):
            return getattr(module, name)
    return None


def _paddle_padding(value, n):
    if isinstance(value, str):
        return (0,) * n if value.upper() == "VALID" else UNKNOWN
    if isinstance(value, (list, tuple)) and len(value) == 2 * n and all(isinstance(v, int) for v in value):
        begin, end = value[0::2], value[1::2]
        return tuple(begin) if begin == end else UNKNOWN
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)):
        return UNKNOWN  # [[0, 0], [0, 0], [pad, pad], ...] with the batch and channel axes: not read here
    return _tup(value, n)


def settings_of(module, kind: str, framework: str) -> dict:
    """The settings that decide an eval-mode forward, as {name: common value} (UNKNOWN where unread)."""
    if kind.startswith("dropout"):
        # torch scales in training only, which paddle calls mode="upscale_in_train" (its default)
        mode = "upscale_in_train" if framework == "torch" else getattr(module, "mode", "upscale_in_train")
        return {"mode": mode}
    n = _POOL_DIMS[kind[-2:]]
    if kind.startswith("adaptive"):
        return {"output_size": _tup(_first(module, "output_size", "_output_size"), n)}
    torch = framework == "torch"
    kernel = _tup(_first(module, "kernel_size", "ksize", "_kernel_size"), n)
    stride = _first(module, "stride", "_stride")
    stride = kernel if stride is None or stride == [] else _tup(stride, n)
    padding = _first(module, "padding", "_padding")
    padding = _tup(padding, n) if torch else _paddle_padding(padding, n)
    out = {"kernel_size": kernel, "stride": stride, "padding": padding,
           "ceil_mode": bool(_first(module, "ceil_mode", "_ceil_mode"))}
    if kind.startswith("maxpool"):
        out["dilation"] = _tup(getattr(module, "dilation", 1), n) if torch else (1,) * n
    else:
        divisor = module.divisor_override if torch else _first(module, "divisor", "_divisor")
        out["divisor_override"] = divisor
        if padding is UNKNOWN or any(padding):  # the padded zeros are counted or not only where there are some
            out["count_include_pad"] = (bool(module.count_include_pad) if torch
                                        else not bool(_first(module, "exclusive", "_exclusive")))
    return out


def _show(name, value, framework):
    """The setting as the user wrote it on that side."""
    if name == "mode" and framework == "torch":
        return "no mode (torch scales in training only, as paddle's mode='upscale_in_train')"
    if name == "count_include_pad" and framework == "paddle":
        return f"exclusive={not value}"
    if name == "divisor_override" and framework == "paddle":
        return f"divisor={value!r}"
    if framework == "paddle" and name == "kernel_size":
        name = "kernel_size/ksize"
    if isinstance(value, tuple) and len(set(value)) == 1:
        value = value[0]
    return f"{name}={value!r}"


def weightless(proxy) -> list[tuple[str, object, str]]:
    """(path, module, kind) of every weightless layer of a known kind not black-listed (itself, or under a layer
    black-listed with its sublayers)."""
    out, blocked = [], []
    for path, module in proxy.named_modules():
        mode = proxy.black_list.get(id(module))
        if mode is not None:
            blocked.append((path, mode))
        kind = kind_of(module, proxy.framework)
        if kind is None:
            continue
        if any(path == bp or (mode_ in ("all", "sublayers") and (bp == "" or path.startswith(bp + ".")))
               for bp, mode_ in blocked):
            continue
        out.append((path, module, kind))
    return out


def stretches(events, paired: dict, n_atoms: int):
    """Cut one side's calls into stretches: ``events`` is the call sequence (indices: < n_atoms an atom, others
    weightless layers at ``index - n_atoms``); ``paired`` maps an atom index to its pair number. Returns (the
    sequence of pair numbers called, [weightless indices of each stretch])."""
    marks, groups = [], [[]]
    for e in events:
        if e < n_atoms:
            if e in paired:
                marks.append(paired[e])
                groups.append([])
        else:
            groups[-1].append(e - n_atoms)
    return marks, groups


def mismatches(base, raw, b_layers, r_layers, b_events, r_events, b_paired, r_paired, nb, nr) -> list[str]:
    """Problem lines for the weightless layers whose settings differ (module docstring)."""
    b_marks, b_groups = stretches(b_events, b_paired, nb)
    r_marks, r_groups = stretches(r_events, r_paired, nr)
    if b_marks != r_marks:
        log.debug("weightless settings not compared: the paired layers ran in another order on the two sides")
        return []
    lines = []
    for k, (bg, rg) in enumerate(zip(b_groups, r_groups)):
        if [b_layers[i][2] for i in bg] != [r_layers[j][2] for j in rg]:
            if bg or rg:
                log.debug("weightless settings not compared in stretch %d: base runs %s, raw runs %s", k,
                          [b_layers[i][0] for i in bg], [r_layers[j][0] for j in rg])
            continue
        for i, j in zip(bg, rg):
            (bp, bm, kind), (rp, rm, _) = b_layers[i], r_layers[j]
            bs, rs = settings_of(bm, kind, base.framework), settings_of(rm, kind, raw.framework)
            if any(v is UNKNOWN for v in (*bs.values(), *rs.values())):
                log.debug("weightless settings of %s / %s not compared: a value is not read for sure", bp, rp)
                continue
            for name, bv in bs.items():
                if name in rs and rs[name] != bv:
                    line = (f"base {bp or '<root>'} ({type(bm).__name__}) {_show(name, bv, base.framework)} but raw "
                            f"{rp or '<root>'} ({type(rm).__name__}) {_show(name, rs[name], raw.framework)}")
                    if line not in lines:
                        lines.append(line)
    return lines
