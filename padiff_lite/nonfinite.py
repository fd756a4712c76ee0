"""Counting NaN/Inf: what a transfer copies is never hidden (``report.nonfinite``), and ``check_finite`` refuses it.

One function for every caller (the executor, validation, checkpoint conversion), float8 included.
"""
from __future__ import annotations

import math

import torch

# float8 formats whose NaN/Inf are bit patterns: a mask (all of it set: NaN or Inf) or, for the "fnuz" formats
# (0xFF here), the one NaN 0x80. torch cannot sum float8.
_FLOAT8_NAN = {torch.float8_e4m3fn: 0x7F, torch.float8_e5m2: 0x7C, torch.float8_e4m3fnuz: 0xFF,
               torch.float8_e5m2fnuz: 0xFF}


def count(t: torch.Tensor) -> int:
    """How many NaN/Inf ``t`` holds; a float tensor is read once when it holds none."""
    if not t.is_floating_point() or t.numel() == 0:
        return 0
    mask = _FLOAT8_NAN.get(t.dtype)
    if mask is not None:
        bits = t.contiguous().view(torch.uint8)
        return int((bits == 0x80).sum()) if mask == 0xFF else int(((bits & mask) == mask).sum())
    # fp16 sums overflow at 65504: accumulate in fp32; bf16 (fp32's exponent range) sums as it is, ~7x faster
    total = t.sum(dtype=torch.float32) if t.dtype == torch.float16 else t.sum()
    if math.isfinite(total.item()):  # a finite sum means no NaN/Inf
        return 0
    return int((~torch.isfinite(t)).sum())
