"""How two tensors are compared: the modes, the tolerances, and the figures a comparison reports.

Two modes (``auto_diff(compare_mode=...)``):

- ``"strict"`` (the default): every value. A value is outside tolerance when
  ``|raw - base| > atol + rtol * S``, where ``S`` is the larger of the two tensors' largest finite magnitudes.
  The tolerance is scaled by the tensor, not by each value: float32 accumulation makes errors of the order of
  ``eps * S`` in every value of a deep layer's output, also in values near zero, and an elementwise
  ``rtol * |value|`` calls those a divergence (a correct float32 ResNet-50 port does show 1e-5 there).
  The relative difference reported is ``max |raw - base| / S``, so a tensor agrees exactly when its relative
  difference is at most ``rtol + atol / S``.
- ``"mean"`` (PaDiff's default): the two tensors' means are compared, ``|mean(raw) - mean(base)| <=
  atol + rtol * |mean(base)|`` (PaDiff's ``np.allclose`` of the means). A tensor is one value here: it
  agrees or not; differences that cancel in the mean (permuted channels, a sign flip) are not seen.

When ``auto_diff`` compares gradients or trains, each layer output's tolerance also gets ``NOISE_FACTOR`` times its
float32 noise floor (how far base's output moves when its weights move by a few ulps, ``verify/reference.py``): a
BatchNorm with batch statistics over a few values divides rounding by a small spread (a correct ResNet-50 in train
mode, 2 images of 64x64: 6e-4 of S in layer4; float64: 2e-10).

NaN and Inf are compared by position in both modes: NaN meets NaN, Inf meets Inf of the same sign; any other
pairing with a non-finite value is a mismatch and makes both maxima infinite.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

MODES = ("strict", "mean")
ATOL = 1e-7  # below float32's resolution of values of order 1: only decides for tensors that are ~0 on both sides
RTOL = 1e-4  # of the tensor's largest magnitude; float32 ports of deep networks stay under 1e-5 (docs/design.md)
# Gradients ("strict"): every value, as the forward, |raw - base| <= atol + GRAD_RTOL * S + NOISE_FACTOR * N + floor,
# S the tensor's largest magnitude and N the float32 noise floor of that gradient: how far base's own gradient moves
# when its weights are moved by a few ulps (verify/reference.py). Gradients are sums over the batch and the
# positions; where such sums nearly cancel (BatchNorm with batch statistics over few values) or a ReLU / top-k choice
# flips under 1e-6 of noise, rounding alone moves single values by several % of S in a correct port (ResNet-50,
# train mode, 2 images of 64x64: 30% of S; float64: 3e-10), while well-conditioned gradients agree to ~1e-6 of S.
# N measures which case a tensor is in, on these inputs; GRAD_RTOL is what remains when N is ~0 (a backward bug
# of 0.5% in one tensor is 5e-3 of S there). The floor, GRAD_FLOOR of the model's largest gradient value, keeps a
# gradient that is ~0 on both sides (float noise of a theoretically zero gradient) from counting. Without the
# reference run (compare_mode="mean", or it failed), N is 0.
GRAD_RTOL = 1e-3
GRAD_FLOOR = 1e-6
NOISE_FACTOR = 4.0
# Weights after an optimizer step are judged by the step itself: the difference of the two updates (w_after -
# w_before on each side), in L2 norm, within STEP_RTOL of the norm of base's update, floored at STEP_FLOOR of the
# model's largest update norm, or within NOISE_FACTOR times the relative float32 noise of the gradient the step
# followed when that is larger (a step cannot agree better than its gradient). Values whose gradient is within
# NOISE_FACTOR of its own float32 noise are not judged: float32 does not decide the direction of their step, and
# Adam's division by each gradient's own size makes that a full-size step either way (a bias before BatchNorm, a
# ResNet-50 trained on batch statistics of 2 images). An optimizer set up differently (learning rate, betas,
# epsilon) changes every update by its own relative amount, the well-determined values included. Against the
# weights themselves a 10% learning-rate mistake would be a 1e-4 effect.
STEP_RTOL = 2e-2
STEP_FLOOR = 1e-3
# An isolated step (raw's optimizer given base's gradients, ``auto_diff(isolate_steps=True)``): the two updates differ
# only by the optimizers' own arithmetic, so within ISOLATED_STEP_RTOL of the update's norm, plus the rounding of
# storing the weights (two float32 ulps of each weight: a norm weight of 1.0 updated by 1e-3 holds the update to
# 1e-4). A learning rate 0.5% off is found.
ISOLATED_STEP_RTOL = 1e-3


@dataclass(frozen=True)
class Tolerance:
    atol: float = ATOL
    rtol: float = RTOL
    mode: str = "strict"
    grad_rtol: float = GRAD_RTOL  # gradients, of the tensor's largest magnitude, on top of their noise floor
    step_rtol: float = STEP_RTOL  # weights after an optimizer step, of the update's L2 norm

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"compare_mode must be one of {MODES}, got {self.mode!r}")


def widened(tol: Tolerance, noise: float) -> Tolerance:
    """``tol`` with NOISE_FACTOR times a measured float32 noise floor (an absolute value) added to its atol."""
    if not (noise > 0 and math.isfinite(noise)) or tol.mode != "strict":  # NaN/Inf noise widens nothing
        return tol
    return replace(tol, atol=tol.atol + NOISE_FACTOR * noise)


@dataclass
class Figures:
    """What comparing two tensors found."""

    max_abs: float
    max_rel: float
    mismatched: int  # values outside tolerance (strict), or 1 when the means differ (mean)
    total: int  # values compared (strict), or 1 (mean: one mean per tensor)
    scale: float = 0.0  # the larger of the two tensors' largest finite magnitudes (strict)
    norm_rel: float = 0.0  # ||raw - base|| / max(||base||, ||raw||) (gradients)
    noise: float = 0.0  # the gradient's float32 noise floor (max |reference - base|), relative to ``scale``
    excused: int = 0  # weights after a step: values not judged (their gradient within its float32 noise)

    @property
    def ok(self) -> bool:
        return self.mismatched == 0


_CHUNK = 1 << 18  # values compared at once: the float64 temporaries stay ~16 MB whatever the activation


def compare_arrays(base, raw, atol: float = ATOL, rtol: float = RTOL, mode: str = "strict") -> tuple[float, float, int]:
    """(max abs diff, max rel diff, values outside tolerance) of two numpy arrays; see the module docstring.

    Different shapes: every value mismatches (``output_align.fitted`` makes broadcast-equal or merged shapes one
    shape first). Big arrays are compared in blocks along their first axis.
    """
    f = compare(base, raw, Tolerance(atol, rtol, mode))
    return f.max_abs, f.max_rel, f.mismatched


def compare(base, raw, tol: Tolerance) -> Figures:
    base, raw = np.asarray(base), np.asarray(raw)
    if base.ndim == 0 and raw.ndim == 0:  # a loss: one value
        base, raw = base.reshape(1), raw.reshape(1)
    if base.shape != raw.shape:
        n = max(base.size, raw.size, 1)
        return Figures(math.inf, math.inf, n if tol.mode == "strict" else 1, n if tol.mode == "strict" else 1)
    if base.size == 0:
        return Figures(0.0, 0.0, 0, 0)
    if tol.mode == "mean":
        return _compare_means(base, raw, tol)
    scale = max(_max_finite_abs(base), _max_finite_abs(raw))
    if base.size <= _CHUNK:
        ma, mr, n = _compare_block(base, raw, tol.atol, tol.rtol, scale)
        return Figures(ma, mr, n, base.size, scale)
    step = max(1, _CHUNK // max(1, base.size // base.shape[0]))
    worst_abs = worst_rel = 0.0
    n = 0
    for i in range(0, base.shape[0], step):
        ma, mr, k = _compare_block(base[i:i + step], raw[i:i + step], tol.atol, tol.rtol, scale)
        worst_abs, worst_rel, n = max(worst_abs, ma), max(worst_rel, mr), n + k
    return Figures(worst_abs, worst_rel, n, base.size, scale)


def compare_gradient(base, raw, tol: Tolerance, floor: float, rtol: float, noise: float = 0.0) -> Figures:
    """Two gradients in "strict" mode (see GRAD_RTOL): every value within ``atol + rtol * S + NOISE_FACTOR * noise
    + floor``, ``noise`` the largest value of the gradient's float32 noise (0 when not measured). ``norm_rel`` is
    reported too."""
    f = compare(base, raw, Tolerance(tol.atol + NOISE_FACTOR * noise + floor, rtol, "strict"))
    if f.max_abs == math.inf or f.total == 0:
        return f
    b, r = np.asarray(base, dtype=np.float64), np.asarray(raw, dtype=np.float64)
    big = max(float(np.linalg.norm(b)), float(np.linalg.norm(r)))
    f.norm_rel = float(np.linalg.norm(b - r)) / big if big > 0 else 0.0
    f.noise = noise / f.scale if f.scale > 0 else 0.0
    return f


def compare_step(base_after, raw_after, base_update, raw_update, tol: Tolerance, floor: float, rtol: float,
                 noise=None) -> Figures:
    """Two weights after an optimizer step ("strict", see STEP_RTOL): the figures of the weights themselves, judged by
    their updates (``w_after - w_before`` on each side, so a gap earlier steps left is not counted again):
    ``||raw_update - base_update|| <= max(rtol, NOISE_FACTOR * rho) * max(||base_update||, floor)`` over the values
    ``noise`` judges (``(judged mask, rho)`` from ``mapped.grad_noise``: values whose gradient is larger than its
    float32 noise, rho that noise relative to the gradient; every value and rho 0 when ``noise`` is None).
    ``norm_rel`` is over every value; ``excused`` counts the values not judged."""
    f = compare(base_after, raw_after, Tolerance(tol.atol, rtol, "strict"))
    if f.max_abs == math.inf or f.total == 0:
        return f
    bu, ru = np.asarray(base_update, dtype=np.float64), np.asarray(raw_update, dtype=np.float64)
    d = ru - bu
    nu = float(np.linalg.norm(bu))
    nd = float(np.linalg.norm(d))
    f.norm_rel = nd / nu if nu > 0 else (0.0 if nd == 0 else math.inf)
    mask, rho = noise if noise is not None else (None, 0.0)
    after = np.asarray(base_after)
    if mask is not None and mask.shape == d.shape:
        f.excused = int(mask.size - np.count_nonzero(mask))
        d, bu, after = d[mask], bu[mask], after[mask]
        nd, nu = float(np.linalg.norm(d)), float(np.linalg.norm(bu))
    f.noise = rho
    stored = 2 * float(np.linalg.norm(np.spacing(np.abs(after)).astype(np.float64))) if after.dtype.kind == "f" else 0.0
    ok = nd <= tol.atol * math.sqrt(max(d.size, 1)) + stored + max(rtol, NOISE_FACTOR * rho) * max(nu, floor)
    f.mismatched = 0 if ok else max(1, f.mismatched)
    return f


def _max_finite_abs(a) -> float:
    if a.dtype == bool:
        a = a.astype(np.int8)
    worst = 0.0
    flat = a.reshape(-1)
    for i in range(0, flat.size, _CHUNK):
        block = np.abs(flat[i:i + _CHUNK])
        if np.iscomplexobj(block) or np.issubdtype(block.dtype, np.floating):
            block = block[np.isfinite(block)]
        if block.size:
            worst = max(worst, float(block.max()))
    return worst


def _compare_means(base, raw, tol: Tolerance) -> Figures:
    with np.errstate(invalid="ignore", over="ignore"):
        mb, mr = base.astype(np.complex128 if np.iscomplexobj(base) else np.float64).mean(), \
            raw.astype(np.complex128 if np.iscomplexobj(raw) else np.float64).mean()
    if not (np.isfinite(mb) and np.isfinite(mr)):
        same = (np.isnan(mb) and np.isnan(mr)) or mb == mr
        return Figures(0.0 if same else math.inf, 0.0 if same else math.inf, 0 if same else 1, 1)
    d = float(abs(mr - mb))
    scale = max(float(abs(mb)), float(abs(mr)))
    return Figures(d, d / scale if scale > 0 else 0.0, int(d > tol.atol + tol.rtol * float(abs(mb))), 1)


def _compare_block(base, raw, atol, rtol, scale):
    complex_ = np.iscomplexobj(base) or np.iscomplexobj(raw)
    if not complex_ and np.isfinite(base).all() and np.isfinite(raw).all():
        return compare_finite(base, raw, atol, rtol, scale)
    return compare_general(base, raw, atol, rtol, scale)


def compare_finite(base, raw, atol, rtol, scale):
    """``compare_general`` for real arrays without NaN/Inf, in fewer passes over memory (same results)."""
    d = np.subtract(base.astype(np.float64), raw.astype(np.float64))
    np.abs(d, out=d)
    worst = float(d.max())
    n = int(np.count_nonzero(d > atol + rtol * scale))
    return worst, (worst / scale if scale > 0 else 0.0), n


def compare_general(base, raw, atol, rtol, scale):
    kind = np.complex128 if np.iscomplexobj(base) or np.iscomplexobj(raw) else np.float64
    a, b = base.astype(kind), raw.astype(kind)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        finite = np.isfinite(a) & np.isfinite(b)
        d = np.where(finite, np.abs(a - b), 0.0)
        bad = finite & (d > atol + rtol * scale)
        same_nonfinite = (np.isnan(a) & np.isnan(b)) | (a == b)
        bad_nonfinite = ~finite & ~same_nonfinite
    n = int(bad.sum()) + int(bad_nonfinite.sum())
    if bad_nonfinite.any():
        return math.inf, math.inf, n
    worst = float(d.max())
    return worst, (worst / scale if scale > 0 else 0.0), n


def same_value(a, b) -> bool:
    """Plain values (None, numbers, strings) must be equal; NaN meets NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        return bool(a == b)
    except Exception:  # objects without a truthful ==: not counted as a difference
        return True
