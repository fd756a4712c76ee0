"""The embedded default job: build a model pair in both frameworks, transfer, verify by outputs."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import models
from .transfer import assign_weight


@dataclass
class DemoResult:
    model: str
    direction: str
    report: object
    max_abs_diff_before: float
    max_abs_diff_after: float
    atol: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff_after <= self.atol

    def __str__(self):
        verdict = "OK" if self.ok else "MISMATCH"
        return (f"{self.report}\n\nverification on a random input: max |base - raw| = "
                f"{self.max_abs_diff_before:.3g} before the transfer, {self.max_abs_diff_after:.3g} after "
                f"(tolerance {self.atol:g}) -> {verdict}")


def run_demo(name: str = "tiny", src: str = "torch", dst: str = "paddle", atol: float = 1e-5, seed: int = 0) -> DemoResult:
    build, shape = models.PAIRS[name]
    base, raw = build(src), build(dst)
    models.warm_up(base, src, shape, seed=seed)
    x = np.random.default_rng(seed + 1).standard_normal(shape).astype("float32")

    def diff():
        a, b = models.run(base, src, [x]), models.run(raw, dst, [x])
        return max(float(np.abs(u - v).max()) for u, v in zip(a, b))

    before = diff()
    report = assign_weight(base, raw)
    return DemoResult(name, f"{src} -> {dst}", report, before, diff(), atol)
