"""``auto_diff`` and its results, kept importable from here; the code lives in ``padiff_lite.verify``."""
from __future__ import annotations

from .verify.diff import PHASES, auto_diff
from .inputs import INPUT_FORMS, split_inputs
from .verify.numerics import compare_arrays
from .verify.results import DiffResult, GradDiff, LayerDiff, NotComparable, StepRecord, WeightDiff

__all__ = ["auto_diff", "DiffResult", "LayerDiff", "GradDiff", "WeightDiff", "NotComparable", "StepRecord",
           "compare_arrays", "split_inputs", "INPUT_FORMS", "PHASES"]
