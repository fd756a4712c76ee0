"""Verification by running the models: ``auto_diff`` and the pieces it is made of.

- ``results``: the records a comparison returns (``DiffResult``, ``StepRecord``, layer / gradient / weight diffs);
- ``numerics``: how two tensors are compared (modes, default tolerances);
- ``inputs``: the input forms, per model and per step;
- ``aligned``: comparing two captured outputs of possibly different form (``output_align``);
- ``session``: running both models with hooks, layer by layer (single-step feeding too);
- ``mapped``: gradients and weights compared through the transfer plan's operations;
- ``settings``: the optimizer and train/eval settings check before a training comparison;
- ``training``: one step (forward, loss, backward, optimizer) and the stage where it first differs;
- ``render``: the text report; ``diff``: ``auto_diff`` composing them.
"""
from .diff import PHASES, auto_diff
from .numerics import MODES, Tolerance, compare_arrays
from .results import STAGES, DiffResult, GradDiff, LayerDiff, NotComparable, StepRecord, WeightDiff

__all__ = ["auto_diff", "DiffResult", "StepRecord", "LayerDiff", "GradDiff", "WeightDiff", "NotComparable",
           "compare_arrays", "Tolerance", "MODES", "PHASES", "STAGES"]
