"""The learning-rate schedule's position moves with the weights: ``assign_weight(..., schedulers=(base, raw))``.

The schedule itself (step size, gamma, milestones, T_max, eta_min, warm-up steps, base learning rate) is the user's:
both schedulers are read into one neutral form per :class:`SchedTable` and a difference is refused, naming both
values. A ``LambdaLR`` / ``LambdaDecay`` is a function nobody can read: both are evaluated at the moved position and
a few steps ahead and refused if they differ. What moves is the position: the raw scheduler's ``last_epoch`` (torch
also ``_step_count`` and ``_last_lr``, paddle ``last_lr``) is set to the base's, and so is the raw optimizer's current
learning rate (torch: every param group's ``lr``; paddle: the optimizer reads its scheduler). :func:`prepare` reads
and checks everything before anything is written; :meth:`SchedMove.write` returns the undo.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import TransferError
from .optim_state import scaler_problem

AHEAD = 4  # a LambdaLR pair is compared at the moved position and this many steps after it


def _torch_base(s) -> float:
    return float(s.base_lrs[0])


def _linear(fw):
    """torch LinearLR / paddle LinearLR / paddle LinearWarmup (float learning rate) in one form."""
    def read(s):
        if fw == "torch":
            b = _torch_base(s)
            return {"start lr": b * s.start_factor, "end lr": b * s.end_factor, "warm-up steps": s.total_iters,
                    "lr after the warm-up": b * s.end_factor}
        if type(s).__name__ == "LinearWarmup":
            return {"start lr": float(s.start_lr), "end lr": float(s.end_lr), "warm-up steps": s.warmup_steps,
                    "lr after the warm-up": s.learning_rate}
        b = float(s.base_lr)
        return {"start lr": b * s.start_factor, "end lr": b * s.end_factor, "warm-up steps": s.total_steps,
                "lr after the warm-up": b * s.end_factor}
    return read


def _base(s, fw) -> float:
    return _torch_base(s) if fw == "torch" else float(s.base_lr)


@dataclass(frozen=True)
class SchedTable:
    """One schedule: its torch and paddle classes and how each reads into neutral settings (None: a function,
    compared by evaluating it)."""

    kind: str
    torch_classes: tuple
    paddle_classes: tuple
    settings: object = None  # fn(framework) -> fn(scheduler) -> {setting: value}


def _step(fw):
    return lambda s: {"base lr": _base(s, fw), "step_size": s.step_size, "gamma": s.gamma}


def _multistep(fw):
    return lambda s: {"base lr": _base(s, fw), "gamma": s.gamma,
                      "milestones": sorted(s.milestones.elements()) if fw == "torch" else sorted(s.milestones)}


def _cosine(fw):
    return lambda s: {"base lr": _base(s, fw), "T_max": s.T_max, "eta_min": float(s.eta_min)}


def _onecycle(fw):
    """torch OneCycleLR / paddle OneCycleLR: the same phases (each ends at step pct * total - 1, the three-phase
    middle one at 2 * pct * total - 2, the last at total - 1) and the same annealing, counted from last_epoch."""
    def read(s):
        if fw == "torch":
            g = s.optimizer.param_groups[0]
            ends = [float(p["end_step"]) for p in s._schedule_phases]
            return {"start lr": float(g["initial_lr"]), "max lr": float(g["max_lr"]), "end lr": float(g["min_lr"]),
                    "total steps": s.total_steps, "phase ends": ends, "anneal": s._anneal_func_type,
                    "three phase": len(ends) == 3}
        ends = [float(e) for e in s._step_config[1:len(s._lr_config)]]
        return {"start lr": float(s._lr_config[0]), "max lr": float(s._lr_config[1]),
                "end lr": float(s._lr_config[-1]), "total steps": s.total_steps, "phase ends": ends,
                "anneal": "cos" if s.anneal_func.__name__ == "_cos_annealing" else "linear",
                "three phase": len(ends) == 3}
    return read


TABLES = (
    SchedTable("lambda", ("LambdaLR",), ("LambdaDecay",)),
    SchedTable("step", ("StepLR",), ("StepDecay",), _step),
    SchedTable("multi-step", ("MultiStepLR",), ("MultiStepDecay",), _multistep),
    SchedTable("cosine annealing", ("CosineAnnealingLR",), ("CosineAnnealingDecay",), _cosine),
    SchedTable("linear warm-up", ("LinearLR",), ("LinearLR", "LinearWarmup"), _linear),
    SchedTable("one-cycle", ("OneCycleLR",), ("OneCycleLR",), _onecycle),
)
COVERED = ("torch LambdaLR <-> paddle LambdaDecay", "StepLR <-> StepDecay", "MultiStepLR <-> MultiStepDecay",
           "CosineAnnealingLR <-> CosineAnnealingDecay", "LinearLR <-> LinearLR / LinearWarmup (float learning rate)",
           "OneCycleLR <-> OneCycleLR (torch with cycle_momentum=False)")


def _framework(s) -> str | None:
    if hasattr(s, "base_lrs") and hasattr(s, "optimizer") and hasattr(s, "last_epoch"):
        return "torch"
    if hasattr(s, "base_lr") and hasattr(s, "last_lr") and hasattr(s, "last_epoch"):
        return "paddle"
    return None


def _lr(s, fw) -> float:
    return float(s._last_lr[0]) if fw == "torch" else float(s.last_lr)


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9,
                                                                                            abs_tol=1e-15)
    return a == b


@dataclass
class SchedMove:
    """The checked move: nothing written yet. ``write()`` writes and returns the undo."""

    raw: object = None
    raw_fw: str = ""
    epoch: int = 0
    lr: float = 0.0
    notes: list = field(default_factory=list)

    def write(self):
        saved = _snapshot(self.raw, self.raw_fw)
        try:
            s = self.raw
            s.last_epoch = self.epoch
            if self.raw_fw == "torch":
                s._step_count = self.epoch + 1
                s._last_lr = [self.lr for _ in s.optimizer.param_groups]
                for g in s.optimizer.param_groups:
                    _set_group_lr(g, self.lr)
            else:
                s.last_lr = self.lr
        except BaseException:
            _restore(self.raw, self.raw_fw, saved)
            raise
        return lambda: _restore(self.raw, self.raw_fw, saved)


def _set_group_lr(g, lr):
    if hasattr(g["lr"], "fill_"):
        g["lr"].fill_(lr)
    else:
        g["lr"] = lr


def _snapshot(s, fw):
    keys = ("last_epoch", "_step_count", "_last_lr") if fw == "torch" else ("last_epoch", "last_lr")
    state = {k: (list(v) if isinstance(v, list) else v) for k, v in vars(s).items() if k in keys}
    lrs = [g["lr"].clone() if hasattr(g["lr"], "clone") else g["lr"] for g in s.optimizer.param_groups] \
        if fw == "torch" else None
    return state, lrs


def _restore(s, fw, saved):
    state, lrs = saved
    for k, v in state.items():
        setattr(s, k, v)
    if lrs is not None:
        for g, lr in zip(s.optimizer.param_groups, lrs):
            if hasattr(g["lr"], "copy_") and hasattr(lr, "clone"):
                g["lr"].copy_(lr)
            else:
                g["lr"] = lr


def _table(cb, cr, fb, fr):
    def fits(t, fw, cls):
        return cls in (t.torch_classes if fw == "torch" else t.paddle_classes)

    return next((t for t in TABLES if fits(t, fb, cb) and fits(t, fr, cr)), None)


def _lambda_values(s, fw, epochs) -> list:
    """The learning rates a lambda schedule gives at ``epochs`` (torch: of every param group)."""
    if fw == "torch":
        return [[float(b) * float(f(e)) for b, f in zip(s.base_lrs, s.lr_lambdas)] for e in epochs]
    return [[float(s.base_lr) * float(s.lr_lambda(e))] for e in epochs]


def table_for(fw: str, cls: str) -> SchedTable | None:
    """The table that knows ``cls`` of framework ``fw`` (each names one class per framework but paddle's warm-up)."""
    return next((t for t in TABLES if cls in (t.torch_classes if fw == "torch" else t.paddle_classes)), None)


def cycle_momentum_problem(who: str, s) -> str | None:
    """torch OneCycleLR with cycle_momentum=True: paddle has no counterpart. ``s``: a scheduler or its state."""
    if not getattr(s, "cycle_momentum", False) or not hasattr(s, "total_steps") or not hasattr(s, "use_beta1"):
        return None
    what = "Adam's beta1" if s.use_beta1 else "the momentum"
    return (f"{who}: torch OneCycleLR with cycle_momentum=True also cycles {what} every step; paddle's OneCycleLR "
            "cycles only the learning rate, so the runs would continue differently; build the torch OneCycleLR with "
            "cycle_momentum=False")


def check_settings(table: SchedTable, bs, fb: str, rs, fr: str, epoch: int, names=None) -> list[str]:
    """The schedules' settings compared by ``table`` (a lambda: evaluated at ``epoch`` and AHEAD steps on). ``bs``
    and ``rs`` are schedulers or objects with their attributes (a torch state_dict() read back from a file);
    ``names``: what to call them (default: their class names)."""
    cb, cr = names or (type(bs).__name__, type(rs).__name__)
    problems = []
    if table.settings is None:
        epochs = list(range(epoch, epoch + AHEAD + 1))
        vb, vr = _lambda_values(bs, fb, epochs), _lambda_values(rs, fr, epochs)
        for e, a, b in zip(epochs, vb, vr):
            if not all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-12) for x in a for y in b):
                problems.append(f"schedule differs: at step {e} the base {cb} gives learning rate {a[0]!r}, the raw "
                                f"{cr} {b[0]!r}; build the raw schedule with the same function and base learning "
                                "rate")
                break
        return problems
    sb, sr = table.settings(fb)(bs), table.settings(fr)(rs)
    for k in sb:
        if not _same(sb[k], sr[k]):
            problems.append(f"schedule setting differs: {k}: base {fb} {cb} {sb[k]!r}, raw {fr} {cr} {sr[k]!r}; "
                            "the schedule is yours to set alike, only its position moves")
    return problems


def prepare(schedulers, optimizers=None) -> SchedMove:
    """Read both schedulers and check them (and that each drives its side's optimizer); raise TransferError
    naming every difference. Nothing is written."""
    if not (isinstance(schedulers, (tuple, list)) and len(schedulers) == 2):
        raise TypeError("assign_weight(schedulers=...) takes a pair (base_scheduler, raw_scheduler), "
                        f"got {type(schedulers).__name__}")
    bs, rs = schedulers
    fb, fr = _framework(bs), _framework(rs)
    problems = []
    for side, s, fw in (("base", bs, fb), ("raw", rs, fr)):
        if fw is None:
            problems.append(scaler_problem(s, f"{side} scheduler") or
                            f"{side} scheduler: {type(s).__name__} is neither a torch.optim.lr_scheduler scheduler "
                            "nor a paddle.optimizer.lr.LRScheduler; pass the schedulers themselves (base's first)")
    if problems:
        raise TransferError("cannot move the learning-rate schedule; nothing was written", problems)
    if optimizers is not None:
        for side, s, fw, opt in (("base", bs, fb, optimizers[0]), ("raw", rs, fr, optimizers[1])):
            drives = s.optimizer is opt if fw == "torch" else getattr(opt, "_learning_rate", None) is s
            if not drives:
                problems.append(f"{side} scheduler: {fw} {type(s).__name__} does not drive the {side} optimizer "
                                f"{type(opt).__name__}; pass schedulers=(base_scheduler, raw_scheduler) in the "
                                "order of optimizers=")
    cb, cr = type(bs).__name__, type(rs).__name__
    table = _table(cb, cr, fb, fr)
    if table is None:
        problems.append(f"schedulers: base {fb} {cb}, raw {fr} {cr}: no table moves the position between these; "
                        "covered: " + "; ".join(COVERED) + ". Use a covered pair, or move without schedulers= and "
                        "set the raw schedule's position yourself")
        raise TransferError("cannot move the learning-rate schedule; nothing was written", problems)
    if fb == "torch" and len({float(b) for b in bs.base_lrs}) > 1:
        problems.append(f"base scheduler: torch {cb} has param groups with different base learning rates "
                        f"{sorted({float(b) for b in bs.base_lrs})}; paddle's scheduler holds one")
    if fr == "torch" and len({float(b) for b in rs.base_lrs}) > 1:
        problems.append(f"raw scheduler: torch {cr} has param groups with different base learning rates "
                        f"{sorted({float(b) for b in rs.base_lrs})}; paddle's scheduler holds one")
    for side, s, fw in (("base", bs, fb), ("raw", rs, fr)):
        if fw == "paddle" and type(s).__name__ == "LinearWarmup" and not isinstance(s.learning_rate, (int, float)):
            problems.append(f"{side} scheduler: paddle LinearWarmup wraps a {type(s.learning_rate).__name__} "
                            "schedule, which has no torch LinearLR counterpart; only a float learning rate after "
                            "the warm-up is covered")
    for side, s, fw in (("base", bs, fb), ("raw", rs, fr)):
        if fw == "torch" and fb != fr:
            problems.append(cycle_momentum_problem(f"{side} scheduler", s))
    problems = [p for p in problems if p]
    if type(bs.last_epoch) is not int or bs.last_epoch < 0:
        problems.append(f"base scheduler: last_epoch={bs.last_epoch!r} is not a step count")
    if problems:
        raise TransferError("cannot move the learning-rate schedule; nothing was written", problems)
    epoch, lr = bs.last_epoch, _lr(bs, fb)
    problems += check_settings(table, bs, fb, rs, fr, epoch)
    if problems:
        raise TransferError("cannot move the learning-rate schedule; nothing was written", problems)
    move = SchedMove(rs, fr, epoch, lr)
    move.notes.append(f"learning-rate schedule: {table.kind} position moved from base {fb} {cb} to raw {fr} {cr} "
                      f"(step {epoch}, learning rate {lr:.6g})")
    return move
