"""Big copies and transposes in one pass, counting NaN/Inf on the way, split over threads.

torch's transposing copy (``dst.copy_(src.t())``) runs on one core at about 1.5-2.5 GB/s here, works
only on whole matrices, and the NaN/Inf count afterwards reads the source a second time. The optional
C extension ``padiff_lite._fastcopy`` does the copy (plain or transposed) and the count in one pass
over any range of rows, with the GIL released, so a big tensor is cut into pieces that run on several
threads at once (docs/performance.md has the figures).

:func:`pieces` says whether that applies to a copy and returns the pieces as plain callables; when it
returns None (no extension, another device, a dtype change, a layout it does not handle) the caller
copies with torch, as before. ``PADIFF_LITE_FASTCOPY=0`` in the environment switches it off.
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
    return _fastcopy is not None and os.environ.get("PADIFF_LITE_FASTCOPY", "1") != "0"


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
    if kind is None or n == 0 or src.numel() != n:
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
