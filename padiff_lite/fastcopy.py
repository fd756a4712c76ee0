"""Big copies and transposes in one pass, counting NaN/Inf on the way, split over threads.

torch's transposing copy (``dst.copy_(src.t())``) runs on one core at about 1.5-2.5 GB/s here, works
only on whole matrices, and the NaN/Inf count afterwards reads the source a second time. The optional
C extension ``padiff_lite._fastcopy`` does the copy (plain or transposed) and the count in one pass
over any range of rows, with the GIL released, so a big tensor is cut into pieces that run on several
threads at once (docs/performance.md has the figures).

:func:`pieces` says whether that applies to a copy and returns the pieces as plain callables; when it
returns None (no extension, another device, a dtype change, a layout it does not handle) the caller
copies with torch, as before. The kernel is used only for the kinds of copy where it measured faster than
torch on this CPU (:func:`faster`: its fp32 transpose beats torch on some CPUs and loses on others);
``PADIFF_LITE_FASTCOPY=0`` in the environment switches it off, ``=1`` uses it wherever it applies.
"""
from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger("padiff_lite")

try:
    from . import _fastcopy
except ImportError as exc:  # not compiled (it is optional): torch does the work
    _fastcopy = None
    log.debug("padiff_lite._fastcopy is not built (%s): big copies use torch; reinstall with a C compiler "
              "and the Python headers for the faster path", exc)

# which values count as NaN/Inf, by dtype (the C side tests the exponent bits); other dtypes hold none
_KINDS = {torch.float16: 1, torch.bfloat16: 2, torch.float32: 3, torch.float64: 4}
# dtypes moved as raw bytes: every value is its bits (float8 and complex are left to torch)
_PLAIN = {getattr(torch, name) for name in ("uint8", "int8", "int16", "int32", "int64", "bool", "uint16", "uint32",
                                             "uint64") if hasattr(torch, name)}  # (uint16-64: torch >= 2.3)
# a transpose is cut at multiples of this many source rows (whole cache lines of the destination)
ROW_ALIGN = 64


def available() -> bool:
    """Whether the C extension is importable and not switched off (``PADIFF_LITE_FASTCOPY=0``)."""
    return _fastcopy is not None and os.environ.get("PADIFF_LITE_FASTCOPY", "auto") != "0"


# Whether the kernel beat torch on this machine, per (dtype, transposed): measured once per process (see
# :func:`faster`). ``PADIFF_LITE_FASTCOPY=1`` uses the kernel wherever it applies, ``0`` never, ``auto``
# (the default) where it measured faster.
_FASTER: dict = {}
# the calibration sample: a matrix of this many values (the size class the executor gives the kernel)
SAMPLE_ROWS, SAMPLE_COLS = 1024, 1024
SAMPLE_RUNS = 5
MARGIN = 0.9  # the kernel must take under 90 % of torch's time to be chosen


def faster(dtype, transposed: bool) -> bool:
    """Whether to use the kernel for a big copy (``transposed``: transpose) of ``dtype`` on this CPU.

    Plain copies: always (the kernel reads the source once, copying and counting NaN/Inf together, where torch
    reads it twice: it moves strictly less memory). Transposes: the kernel's tiled transpose beats torch's on some
    CPUs and loses on others (fp32 on AMD EPYC), so both are timed on the same 1024 x 1024 sample, interleaved,
    best of 5 after one untimed run, and the kernel is kept only when it takes under 90 % of torch's time
    (about 30-60 ms once per dtype; the answer is kept per process and in a per-machine cache file, see
    :func:`_cache_path`). ``PADIFF_LITE_FASTCOPY=1`` uses the kernel wherever it applies, ``0`` never."""
    mode = os.environ.get("PADIFF_LITE_FASTCOPY", "auto")
    if mode == "1" or not transposed:
        return True
    key = (dtype, True)
    won = _FASTER.get(key)
    if won is None:
        name = str(dtype).replace("torch.", "")
        cached = _read_cache()
        won = cached.get(name)
        if won is None:
            won = _calibrate(dtype, True)
            cached[name] = won
            _write_cache(cached)
        _FASTER[key] = won
        log.debug("copy kernel vs torch for %s transposes: %s", dtype, "kernel" if won else "torch")
    return won


def _cache_path():
    """``$XDG_CACHE_HOME/padiff_lite`` (or ``~/.cache/padiff_lite``) ``/fastcopy-<cpu and kernel>.json``: the
    calibration's answers for this CPU model and this build of the kernel; None where there is no home."""
    import hashlib
    import platform

    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if not root or root.startswith("~"):
        return None
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    so = getattr(_fastcopy, "__file__", "") or ""
    stamp = f"{cpu}|{so}|{os.path.getsize(so) if so and os.path.exists(so) else 0}|{torch.__version__}"
    return os.path.join(root, "padiff_lite", f"fastcopy-{hashlib.sha1(stamp.encode()).hexdigest()[:16]}.json")


def _read_cache() -> dict:
    import json

    path = _cache_path()
    try:
        with open(path) as fh:
            data = json.load(fh)
        return {k: v for k, v in data.items() if isinstance(v, bool)} if isinstance(data, dict) else {}
    except (OSError, TypeError, ValueError):
        return {}


def _write_cache(data: dict):
    """Best effort (a read-only home just means calibrating again next time); written whole, then renamed."""
    import json

    path = _cache_path()
    if path is None:
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("could not keep the copy-kernel calibration in %s: %s", path, exc)


def _calibrate(dtype, transposed: bool) -> bool:
    import time

    kind = _kind(dtype)
    if kind is None:
        return False
    src = torch.zeros(SAMPLE_ROWS, SAMPLE_COLS, dtype=dtype)
    dst = torch.empty((SAMPLE_COLS, SAMPLE_ROWS) if transposed else (SAMPLE_ROWS, SAMPLE_COLS), dtype=dtype)
    item, n = src.element_size(), src.numel()
    if transposed:
        args = (src.data_ptr(), dst.data_ptr(), SAMPLE_ROWS, SAMPLE_COLS, item, kind, 0, SAMPLE_ROWS)
        kernel = lambda: _fastcopy.transpose(*args)  # noqa: E731
        plain = lambda: (dst.copy_(src.t()), _finite_sum(src))  # noqa: E731
    else:
        args = (src.data_ptr(), dst.data_ptr(), n, item, kind)
        kernel = lambda: _fastcopy.copy(*args)  # noqa: E731
        plain = lambda: (dst.copy_(src), _finite_sum(src))  # noqa: E731
    best = {kernel: float("inf"), plain: float("inf")}
    with torch.no_grad():
        kernel(), plain()  # untimed: the pages of the sample are touched once
        for _ in range(SAMPLE_RUNS):
            for fn in (kernel, plain):
                t0 = time.perf_counter()
                fn()
                best[fn] = min(best[fn], time.perf_counter() - t0)
    # torch unless the kernel is clearly faster: a tie is not worth a path that can only lose elsewhere
    return best[kernel] < MARGIN * best[plain]


def _finite_sum(t):
    """What torch's path reads for the NaN/Inf count: one sum over the source (see execute's scan)."""
    return t.sum(dtype=torch.float32) if t.dtype == torch.float16 else (t.sum() if t.is_floating_point() else None)


def choices() -> dict:
    """``{"float32 transpose": "kernel" | "torch", ...}``: what the calibration chose so far in this process."""
    return {f"{str(d).replace('torch.', '')} {'transpose' if t else 'copy'}": "kernel" if won else "torch"
            for (d, t), won in sorted(_FASTER.items(), key=str)}


def _kind(dtype) -> int | None:
    kind = _KINDS.get(dtype)
    if kind is not None:
        return kind
    return 0 if dtype in _PLAIN else None


def _plain_memory(t) -> bool:
    return (t.device.type == "cpu" and t.layout == torch.strided and t.is_contiguous() and not t.is_conj()
            and not t.is_neg())


def pieces(dst, src, transposed: bool, parts: int) -> list | None:
    """Callables that together write ``src`` (or its transpose) into ``dst`` and each return the number
    of NaN/Inf values they copied; None when the one-pass path does not apply.

    ``dst`` and ``src`` are torch tensors (paddle tensors arrive as DLPack views) of the same dtype, both
    contiguous CPU memory, not overlapping; ``src`` holds ``dst``'s values in ``dst``'s shape (or any
    shape with as many values), or with ``transposed`` it is the 2-D matrix whose transpose ``dst`` is.
    ``parts`` is how many pieces to cut (one per thread that will run them).
    """
    if not available() or dst.dtype != src.dtype or not (_plain_memory(dst) and _plain_memory(src)):
        return None
    kind = _kind(dst.dtype)
    n = dst.numel()
    if kind is None or n == 0 or src.numel() != n or not faster(dst.dtype, transposed):
        return None
    item = dst.element_size()
    d0, s0 = dst.data_ptr(), src.data_ptr()
    if d0 < s0 + n * item and s0 < d0 + n * item:
        return None  # the same memory (a model copied onto itself, a tied view): torch handles overlap
    keep = (dst, src)  # the callables hold the tensors, so their memory lives until every piece has run
    parts = max(1, parts)
    if transposed:
        if src.dim() != 2 or tuple(dst.shape) != (src.shape[1], src.shape[0]):
            return None
        rows, cols = src.shape
        step = -(-rows // parts)
        step = -(-step // ROW_ALIGN) * ROW_ALIGN
        cuts = list(range(0, rows, step)) + [rows]
        return [_Piece(_fastcopy.transpose, (s0, d0, rows, cols, item, kind, a, b), keep)
                for a, b in zip(cuts, cuts[1:])]
    step = -(-n // parts)
    step = -(-step // 4096) * 4096  # cut at multiples of 4096 values (whole pages for any dtype)
    return [_Piece(_fastcopy.copy, (s0 + a * item, d0 + a * item, min(step, n - a), item, kind), keep)
            for a in range(0, n, step)]


class _Piece:
    """One piece of a copy: ``piece()`` runs it and returns its NaN/Inf count."""

    __slots__ = ("fn", "args", "keep")

    def __init__(self, fn, args, keep):
        self.fn, self.args, self.keep = fn, args, keep

    def __call__(self) -> int:
        return self.fn(*self.args)


def mark_written(t):
    """Tell autograd that ``t`` was written in place (the C code wrote its memory behind torch's back),
    so a graph that saved ``t`` refuses to backpropagate through the old values, as after ``copy_``."""
    bump = getattr(torch.autograd.graph, "increment_version", None)
    if bump is not None:
        bump(t)


def copy_counting(dst, src, transposed: bool, pool=None, parts: int = 1) -> int | None:
    """Write ``src`` (or its transpose) into ``dst`` and return its NaN/Inf count, running the pieces on
    ``pool`` (a concurrent.futures executor) when given; None (nothing written) when it does not apply."""
    work = pieces(dst, src, transposed, parts)
    if work is None:
        return None
    if pool is None or len(work) == 1:
        bad = sum(p() for p in work)
    else:
        bad = sum(f.result() for f in [pool.submit(p) for p in work])
    mark_written(dst)
    return bad


def copy_all(dsts: list, srcs: list):
    """``dsts[i].copy_(srcs[i])`` for every i (no two ``dsts`` overlap, no ``srcs`` overlaps a ``dsts``).

    ``torch._foreach_copy_`` does them in one call, which saves torch's per-call overhead for small
    tensors (about a quarter of the copy time of a 16 x 32 transpose here). It is a private API: when
    it is missing or refuses the batch, the copies run one by one (copying again is harmless, since no
    source is a destination of the same batch).
    """
    if not dsts:
        return
    if _foreach_copy is not None:
        try:
            _foreach_copy(dsts, srcs)
            return
        except (RuntimeError, TypeError, ValueError, NotImplementedError):
            pass
    for d, s in zip(dsts, srcs):
        d.copy_(s)


_foreach_copy = getattr(torch, "_foreach_copy_", None)
