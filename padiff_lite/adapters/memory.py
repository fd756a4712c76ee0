"""Reading and writing many small CPU tensors at once, by address.

A framework without cheap tensor views (paddle: one DLPack capsule per tensor costs about 4 us,
more than copying a 16 x 32 weight) can still hand out each tensor's data pointer cheaply (about
0.2 us). Given the pointers of K tensors of one dtype and size, this module makes ONE torch tensor
over the address range they span and moves all K with one ``index_select`` (read) or
``index_copy_`` (write), touching only the bytes of those tensors: the memory between them
belongs to other objects and is never read or written.

Callers must only pass pointers of dense, contiguous, initialised CPU tensors that stay alive
during the call, each holding ``numel`` values of ``dtype``. The functions refuse (return None or
False, having touched nothing) when the pointers are misaligned or the tensors overlap.
"""
from __future__ import annotations

import ctypes
import math

import numpy as np
import torch

# an interleaved layout of more elements than this is not checked value by value (see overlapping)
OVERLAP_EXACT_MAX = 1 << 24


def overlapping(shape, strides) -> bool:
    """Whether two elements of a tensor of ``shape`` laid out with ``strides`` (in elements) share memory: a
    tensor made with ``expand`` (a stride 0) or ``as_strided``. Every ordinary layout (contiguous, transposed,
    sliced, channels-last) is told apart by its strides alone; an interleaved one (each stride smaller than the
    span of the smaller ones) is told by listing its offsets, up to OVERLAP_EXACT_MAX elements, and counted as
    overlapping beyond (it cannot be told cheaply: refused rather than guessed)."""
    if 0 in shape:
        return False
    dims = sorted((abs(st), n) for n, st in zip(shape, strides) if n != 1)
    span = 0  # the last offset the smaller strides reach
    for st, n in dims:
        if st <= span:  # stride 0, or interleaved
            if st == 0:
                return True
            break
        span += st * (n - 1)
    else:
        return False
    if math.prod(shape) > OVERLAP_EXACT_MAX:
        return True
    offsets = np.zeros(1, dtype=np.int64)
    for st, n in dims:
        offsets = (offsets[:, None] + np.arange(n, dtype=np.int64) * st).reshape(-1)
    return len(np.unique(offsets)) < len(offsets)


def _span(ptrs: list[int], numel: int, dtype):
    """``(rows, index)``: a 2-D torch view of the address range ``ptrs`` span, and the row indices of
    the K tensors' values in order (each tensor is ``numel // width`` consecutive rows), or None."""
    item = torch.empty((), dtype=dtype).element_size()
    addr = np.asarray(ptrs, dtype=np.int64)
    base = int(addr.min())
    offsets = addr - base
    if (offsets % item).any():
        return None  # misaligned: not a tensor of this dtype
    offsets //= item
    order = np.sort(offsets)
    if len(order) > 1 and (np.diff(order) < numel).any():
        return None  # two tensors overlap (views of one storage): writes would race
    # index rows, not values: the widest row that divides numel and every offset (usually the whole
    # tensor or 16 values, as allocators align to 64 bytes) needs the fewest indices
    width = math.gcd(numel, int(np.gcd.reduce(offsets)))
    count = int(order[-1]) + numel  # values from base to the end of the last tensor
    buf = (ctypes.c_byte * (count * item)).from_address(base)
    rows = torch.frombuffer(buf, dtype=dtype).view(-1, width)
    per = numel // width
    index = torch.from_numpy(offsets // width)
    if per > 1:
        index = (index[:, None] + torch.arange(per)).reshape(-1)
    return rows, index


def gather(ptrs: list[int], numel: int, dtype):
    """A new (K, numel) torch tensor holding the K tensors at ``ptrs``, or None (nothing read)."""
    span = _span(ptrs, numel, dtype)
    if span is None:
        return None
    rows, index = span
    return rows.index_select(0, index).view(len(ptrs), numel)


def scatter(ptrs: list[int], values) -> bool:
    """Write ``values[i]`` (a (K, numel) CPU torch tensor) into the tensor at ``ptrs[i]``; False: nothing written."""
    k, numel = values.shape
    span = _span(ptrs, numel, values.dtype)
    if span is None:
        return False
    rows, index = span
    rows.index_copy_(0, index, values.reshape(-1, rows.shape[1]))
    return True
