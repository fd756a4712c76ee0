"""What a comparison returns: plain records of layers, gradients, weights and training steps."""
from __future__ import annotations

from dataclasses import dataclass, field

from .render import label, render

STAGES = ("forward", "loss", "backward", "optimizer")


@dataclass
class LayerDiff:
    """One call of a pair of modules compared: the k-th call of the base module with the k-th of the raw one."""

    base_path: str
    raw_path: str
    base_class: str
    raw_class: str
    call: int  # 0 for the first call of this module, 1 for the second, ...
    order: int  # position of this call in the base model's call order (0 = the first module to finish)
    output: str  # the output the shapes refer to ("out", "out[0]", "out['logits']")
    base_shape: tuple
    raw_shape: tuple
    max_abs_diff: float
    max_rel_diff: float
    mismatched: int  # values outside atol + rtol * |base|
    total: int
    inputs_agree: bool | None = None  # only for the first divergence; None when the inputs hold no tensors
    note: str = ""  # how the outputs were aligned (broadcast, merged dimensions, fields left out)
    raw_output: str = ""  # the raw output the shapes refer to, when it is not at the same place as the base one
    noise: float = 0.0  # float32 noise floor of this output (max |reference - base|, absolute; 0: not measured)

    @property
    def ok(self) -> bool:
        return self.mismatched == 0

    def __str__(self):
        return (f"base {label(self.base_path)} ({self.base_class}) {list(self.base_shape)} vs raw {label(self.raw_path)} "
                f"({self.raw_class}) {list(self.raw_shape)}: max abs diff {self.max_abs_diff:.3g}, max rel diff "
                f"{self.max_rel_diff:.3g}, {self.mismatched} of {self.total} values outside tolerance")


@dataclass
class NotComparable:
    """A call whose outputs cannot be aligned between the two sides: listed, never counted as a difference."""

    base_path: str
    raw_path: str
    base_class: str
    raw_class: str
    call: int
    order: int
    reason: str
    base_structure: str
    raw_structure: str

    def __str__(self):
        return (f"base {label(self.base_path)} ({self.base_class}) returns {self.base_structure}, raw "
                f"{label(self.raw_path)} ({self.raw_class}) returns {self.raw_structure}: {self.reason}")


@dataclass
class GradDiff:
    """The gradient of one base parameter (mapped to the raw layout) compared with its raw partner's."""

    base_path: str  # the layer
    raw_path: str
    base_class: str
    raw_class: str
    base_param: str  # dotted path of the parameter in the whole model
    raw_param: str
    base_shape: tuple
    raw_shape: tuple
    max_abs_diff: float
    max_rel_diff: float
    mismatched: int
    total: int
    note: str = ""  # the layout mapping applied, or which side had no gradient
    scale: float = 0.0  # the largest magnitude of the two tensors compared
    norm_rel: float = 0.0  # ||raw - base|| / max(||base||, ||raw||) (gradients), or / ||update|| (weights)
    noise: float = 0.0  # gradients: how far float32 moves base's gradient (max |reference - base| / scale)

    @property
    def ok(self) -> bool:
        return self.mismatched == 0

    def __str__(self):
        return (f"grad of base {self.base_param} {list(self.base_shape)} vs raw {self.raw_param} "
                f"{list(self.raw_shape)}{' (' + self.note + ')' if self.note else ''}: max abs diff "
                f"{self.max_abs_diff:.3g}, max rel diff {self.max_rel_diff:.3g} (float32 noise of this gradient "
                f"{self.noise:.3g}), {self.mismatched} of {self.total} values outside tolerance")



@dataclass
class WeightDiff(GradDiff):
    """A parameter compared with its partner: after an optimizer step of a training run (``StepRecord.weights``),
    or, when a plain comparison's outputs differ, as it stands against what the transfer writes from base
    (``DiffResult.weight_diffs``, ``after_step`` False)."""

    after_step: bool = True
    excused: int = 0  # after a step: values not judged, their gradient within its float32 noise (numerics.STEP_RTOL)
    # after a step, why it differs when known: one side had no gradient (not updated), the other a zero one
    cause: str = ""

    def __str__(self):
        if self.after_step:
            where, judged = "after the optimizer step", f", difference / update (L2) {self.norm_rel:.3g}"
            if self.excused:
                judged += (f" ({self.excused} of {self.total} values not judged: their gradient is within its "
                           "float32 noise)")
        else:
            where, judged = "as the transfer maps it (no optimizer step ran)", ""
        return (f"weight base {self.base_param} {list(self.base_shape)} vs raw {self.raw_param} "
                f"{list(self.raw_shape)} {where}{' (' + self.note + ')' if self.note else ''}: "
                f"max abs diff {self.max_abs_diff:.3g}, max rel diff {self.max_rel_diff:.3g}{judged}"
                + (", outside tolerance" if self.mismatched else "") + (f": {self.cause}" if self.cause else ""))


@dataclass
class TreeLine:
    depth: int
    base_path: str
    raw_path: str
    base_class: str
    raw_class: str
    status: str


@dataclass
class StepRecord:
    """One training step (or the one pass of a comparison without training): what each stage found."""

    step: int
    max_abs_diff: float = 0.0  # over the final outputs
    max_rel_diff: float = 0.0
    mismatched: int = 0
    total: int = 0
    layers: list[LayerDiff] = field(default_factory=list)  # every compared call, in base call order
    not_comparable: list[NotComparable] = field(default_factory=list)
    first_diff: LayerDiff | None = None
    loss: tuple | None = None  # (base loss, raw loss) as floats; None without loss_fns
    loss_ok: bool = True
    grads: list[GradDiff] = field(default_factory=list)  # in backward order
    first_grad_diff: GradDiff | None = None
    output_grads: list[LayerDiff] = field(default_factory=list)  # single_step: gradients arriving at layer outputs
    first_output_grad_diff: LayerDiff | None = None
    weights: list[WeightDiff] = field(default_factory=list)  # after the optimizer step, in backward order
    first_weight_diff: WeightDiff | None = None
    stage: str | None = None  # the first stage of this step that differs
    isolated: bool = False  # raw's optimizer stepped on base's gradients (``auto_diff(isolate_steps=...)``)

    @property
    def ok(self) -> bool:
        return self.stage is None


@dataclass
class DiffResult:
    base: str  # "torch:Net"
    raw: str
    phase: str
    atol: float
    rtol: float
    max_abs_diff: float  # over the final outputs (of the step shown: the first differing one, else the first)
    max_rel_diff: float
    mismatched: int  # final output values outside tolerance
    total: int
    output_structure: str  # the base model's output, e.g. "CausalLMOutputWithPast(logits=Tensor[2, 9, 128], ...)"
    first_diff: LayerDiff | None = None
    first_grad_diff: GradDiff | None = None
    layers: list[LayerDiff] = field(default_factory=list)  # every compared call, in base call order
    grads: list[GradDiff] = field(default_factory=list)  # every compared gradient, in backward order
    notes: list[str] = field(default_factory=list)
    transfer: object = None  # the TransferReport when auto_init ran
    tree: list[TreeLine] = field(default_factory=list)
    not_comparable: list[NotComparable] = field(default_factory=list)  # calls whose outputs cannot be aligned
    raw_output_structure: str = ""
    peak_held_bytes: int = 0  # the most bytes of base outputs held at once, waiting for raw's matching call
    interleaved: bool = False  # base ran a layer ahead of raw in a second thread
    compare_mode: str = "strict"
    single_step: bool = False
    training: bool = False  # loss functions, optimizers or several steps were given
    steps: list[StepRecord] = field(default_factory=list)  # one per step (one record without training)
    step: int | None = None  # index of the first step where something differs
    stage: str | None = None  # "forward" | "loss" | "backward" | "optimizer": where, in that step
    first_weight_diff: WeightDiff | None = None
    # when the outputs differ (no training): planned copies whose raw region does not hold base's value as the
    # transfer maps it, each named to its part (rows of a fused qkv_proj, an expert of a packed tensor)
    weight_diffs: list[WeightDiff] = field(default_factory=list)

    def to_html(self, path) -> str:
        """Write one self-contained HTML page (model tree, per-layer chart, steps) to ``path``; returns the path."""
        from .html import write_html

        return write_html(self, path)

    @property
    def ok(self) -> bool:
        return (self.mismatched == 0 and self.first_diff is None and self.first_grad_diff is None
                and self.stage is None)

    def __bool__(self):
        return self.ok

    def __str__(self):
        return "\n".join(render(self))
