"""Verification by running the models: ``auto_diff`` and the pieces it is made of.

- ``results``: the records a comparison returns (``DiffResult``, ``StepRecord``, layer / gradient / weight diffs);
- ``numerics``: how two tensors are compared (modes, default tolerances);
- ``output_align``: a module's output captured as a small tree, and two such trees aligned whatever their form;
- ``aligned``: comparing two captured outputs of possibly different form;
- ``stream``: handing each base call's outputs to raw's matching call;
- ``session``: running both models with hooks, layer by layer (single-step feeding too);
- ``mapped``: gradients and weights compared through the transfer plan's operations (and base's gradients handed
  to raw's optimizer for an isolated step);
- ``reference``: the float32 noise floors (each model run once more with its weights moved by a few ulps);
- ``seeds``: base's loss gradient handed to raw's backward where the two differ by float32 rounding alone;
- ``settings``: the optimizer and train/eval settings check before a training comparison;
- ``training``: one step (forward, loss, backward, optimizer) and the stage where it first differs;
- ``render``: the text report; ``html``: the HTML page; ``diff``: ``auto_diff`` composing them;
- ``dump``, ``dump_check``: offline dumps and comparing them.
"""
from .diff import PHASES, auto_diff
from .numerics import MODES, Tolerance, compare_arrays
from .results import STAGES, DiffResult, GradDiff, LayerDiff, NotComparable, StepRecord, WeightDiff

__all__ = ["auto_diff", "DiffResult", "StepRecord", "LayerDiff", "GradDiff", "WeightDiff", "NotComparable",
           "compare_arrays", "Tolerance", "MODES", "PHASES", "STAGES"]
