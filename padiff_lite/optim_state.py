"""Optimizer state that moves with the weights: ``assign_weight(..., optimizers=(base_opt, raw_opt))``.

Each parameter's per-parameter state tensors (Adam's moments, SGD's momentum buffer) are moved by the plan's own
COPY operations, the parameter's part and transform included (a transposed Linear's moments are transposed, a fused
qkv's moments are cut like its weight), through :func:`layout.pieces` as the executor moves the weights. Counters
are converted: torch keeps Adam's ``step``; paddle keeps ``beta1_pow_acc`` / ``beta2_pow_acc`` = beta**(step + 1),
the powers of the next step.

One :class:`StateTable` per optimizer family says which state tensors move like the parameter and which counter
converts how. Everything is read and checked (:func:`prepare`) before anything is written; :meth:`Moves.write`
snapshots every state tensor it writes (and what it creates) and returns the undo. The hyperparameters are the
user's: a difference is a note in the report, never changed here. Optimizers are the one framework-specific thing
outside the adapters (as in ``verify/settings.py``): a torch optimizer is told by ``param_groups``, a paddle one by
``_parameter_list``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import layout
from .errors import TransferError
from .ops import COPY, FILL


@dataclass(frozen=True)
class StateTable:
    """One optimizer family: the classes on each side, the per-parameter tensors moved like the parameter
    (neutral name, torch state key, paddle accumulator name) and whether it counts steps for bias correction."""

    kind: str
    torch_classes: tuple
    paddle_classes: tuple
    tensors: tuple  # ((neutral, torch key, paddle accumulator), ...)
    steps: bool = False  # Adam: torch "step" <-> paddle beta1_pow_acc / beta2_pow_acc = beta**(step + 1)
    torch_step: bool = False  # torch keeps a "step" its update does not use here; paddle counts nothing
    optional: tuple = ()  # ((torch key, torch group setting), ...): torch keeps the tensor only when it is on
    lr_scaled: tuple = ()  # neutral names paddle keeps multiplied by each step's learning rate (RMSProp momentum)
    starts_at: tuple = ()  # ((neutral, torch group key, paddle attribute), ...): a fresh state's value (not zero);
    # torch creates this state when the optimizer is built, not at the first step
    pows: tuple = ("beta1_pow_acc", "beta2_pow_acc")  # with steps: paddle's power accumulators, beta1's first


ADAM = StateTable("Adam/AdamW", ("Adam", "AdamW"), ("Adam", "AdamW"),
                  (("m1", "exp_avg", "moment1"), ("m2", "exp_avg_sq", "moment2")), steps=True)
MOMENTUM = StateTable("SGD with momentum", ("SGD+momentum",), ("Momentum",), (("buf", "momentum_buffer", "velocity"),))
PLAIN_SGD = StateTable("SGD", ("SGD",), ("SGD",), ())
# torch: v = a*v + (1-a)*g^2, buf = mu*buf + g / (sqrt(v) + eps), p -= lr*buf
# paddle: v = rho*v + (1-rho)*g^2, moment = mu*moment + lr * g / sqrt(v + eps), p -= moment  (moment = lr * buf)
RMSPROP = StateTable("RMSProp", ("RMSprop",), ("RMSProp",),
                     (("v", "square_avg", "mean_square"), ("buf", "momentum_buffer", "momentum"),
                      ("mean", "grad_avg", "mean_grad")), torch_step=True,
                     optional=(("momentum_buffer", "momentum"), ("grad_avg", "centered")), lr_scaled=("buf",))
# both: sum += g^2, p -= lr * g / (sqrt(sum) + eps); the sum starts at initial_accumulator_value
ADAGRAD = StateTable("Adagrad", ("Adagrad",), ("Adagrad",), (("sum", "sum", "moment"),), torch_step=True,
                     starts_at=(("sum", "initial_accumulator_value", "initial_accumulator_value"),))
# torch: u = max(b2*u, |g| + eps); paddle: u = max(b2*u + eps, |g|); both: p -= lr / (1 - b1**t) * m / u
ADAMAX = StateTable("Adamax", ("Adamax",), ("Adamax",), (("m1", "exp_avg", "moment"), ("u", "exp_inf", "inf_norm")),
                    steps=True, pows=("beta1_pow_acc",))
TABLES = (ADAM, MOMENTUM, PLAIN_SGD, RMSPROP, ADAGRAD, ADAMAX)
COVERED = ("torch Adam/AdamW <-> paddle Adam/AdamW", "torch SGD(momentum>0, nesterov or not) <-> paddle Momentum",
           "torch SGD(momentum=0) <-> paddle SGD", "torch RMSprop <-> paddle RMSProp", "torch Adagrad <-> paddle Adagrad",
           "torch Adamax <-> paddle Adamax")
# optimizers one framework has and the other lacks (torch 2.13, paddle 3.3); both have the rest
ONLY = {"torch": ("Adafactor", "Muon", "SparseAdam"), "paddle": ("Lamb",)}
LIBRARY = {"torch": "torch.optim", "paddle": "paddle.optimizer"}
BETA_POWS = ("beta1_pow_acc", "beta2_pow_acc")
TINY = 1e-30  # below this a beta power no longer says the step (float32 underflows near 1e-45)


def _framework(opt) -> str | None:
    if hasattr(opt, "param_groups") and hasattr(opt, "state"):
        return "torch"
    if hasattr(opt, "_parameter_list") and hasattr(opt, "_accumulators"):
        return "paddle"
    return None


def scaler_problem(obj, where: str) -> str | None:
    """An AMP loss scaler given where an optimizer or scheduler belongs: why its state is not moved, and the fix."""
    names = {c.__name__ for c in type(obj).__mro__}
    if not names & {"GradScaler", "AmpScaler", "ShardedGradScaler"}:
        return None
    return (f"{where}: {type(obj).__module__}.{type(obj).__name__} is an AMP loss scaler, not an optimizer or "
            "scheduler; assign_weight does not move a loss scale: torch's GradScaler and paddle's grow and back off "
            "by different rules (torch: x growth_factor after growth_interval finite steps, x backoff_factor at "
            "every overflow; paddle: incr_ratio after incr_every_n_steps, decr_ratio after "
            "decr_every_n_nan_or_inf overflows), so no scaler state continues alike. Pass the optimizers "
            "themselves, and start the raw scaler at the base's current scale (torch GradScaler(init_scale="
            "base.get_scale()), paddle GradScaler(init_loss_scaling=float(base._scale)))")


def _family(opt, fw: str) -> str:
    """The class name a table knows it by: torch's SGD with momentum is "SGD+momentum" (paddle's Momentum)."""
    cls = type(opt).__name__
    if fw == "torch" and cls == "SGD":
        return "SGD+momentum" if any(g.get("momentum", 0) for g in opt.param_groups) else "SGD"
    return cls


def _table(fb: str, cb: str, fr: str, cr: str) -> StateTable | None:
    def fits(t, fw, cls):
        return cls in (t.torch_classes if fw == "torch" else t.paddle_classes)

    return next((t for t in TABLES if fits(t, fb, cb) and fits(t, fr, cr)), None)


def _params(opt, fw: str) -> list:
    if fw == "torch":
        return [p for g in opt.param_groups for p in g["params"]]
    groups = getattr(opt, "_param_groups", None) or opt._parameter_list
    out = []
    for g in groups:
        out += list(g["params"]) if isinstance(g, dict) else [g]
    return out


def _torch_group(opt, p) -> dict:
    return next(g for g in opt.param_groups if any(q is p for q in g["params"]))


def _betas(opt, fw: str, p) -> tuple:
    if fw == "torch":
        return tuple(float(b) for b in _torch_group(opt, p)["betas"])
    return float(opt._beta1), float(opt._beta2)


def _paddle_lr(opt, p) -> float:
    """The learning rate paddle's next step gives parameter ``p`` (the optimizer's, times the parameter's own
    scale)."""
    return float(opt.get_lr()) * float((getattr(p, "optimize_attr", None) or {}).get("learning_rate", 1.0))


def _acc_name(opt, name: str) -> str:
    return f"{opt._name}_{name}" if getattr(opt, "_name", None) is not None else name


def _paddle_acc(opt, name: str, p):
    return opt._accumulators.get(_acc_name(opt, name), {}).get(p.name)


def _is_low(adapter, t) -> bool:
    return adapter.dtype_name(t) in ("float16", "bfloat16")


def _settings_problems(opt, fw: str, side: str, adapter, params) -> list[str]:
    """Settings whose state cannot carry over: AMSGrad's running maximum, paddle's master weights / pending state."""
    out = []
    who = f"{side} ({fw} {type(opt).__name__})"
    if fw == "torch":
        if any(g.get("amsgrad") for g in opt.param_groups):
            out.append(f"{who}: amsgrad=True keeps a running maximum (max_exp_avg_sq) that is not moved; "
                       "use amsgrad=False on both sides")
    else:
        if getattr(opt, "_amsgrad", False):
            out.append(f"{who}: amsgrad=True keeps moment2_max, which is not moved; use amsgrad=False on both sides")
        if getattr(opt, "_master_weights", None) or (getattr(opt, "_multi_precision", False)
                                                       and any(_is_low(adapter, p) for p in params)):
            out.append(f"{who}: multi_precision=True keeps float32 master weights (AMP) for float16/bfloat16 "
                       "parameters; moving them is not supported: move float32 parameters, or pass "
                       "multi_precision=False")
        if getattr(opt, "_accumulators_holder", None):
            out.append(f"{who}: holds a state given to set_state_dict() that paddle has not applied yet; "
                       "pass an optimizer without it (or one that has applied it)")
    return out


def rmsprop_momentum_problem(who: str, momentum: float, scheduled: str | None, lr: float | None) -> str | None:
    """paddle RMSProp keeps its momentum multiplied by each step's learning rate: refused with a scheduled rate
    (``scheduled``: what drives it) or a rate of 0. Shared by the in-memory move and the file converter."""
    if not momentum > 0:
        return None
    if scheduled:
        return (f"{who}: momentum={momentum} with a learning rate driven by {scheduled}: "
                "paddle's RMSProp multiplies each step's learning rate into its momentum (moment = "
                "momentum * moment + lr * g / sqrt(v + eps)), torch's multiplies the whole buffer by the "
                "current rate (p -= lr * buf): with a changing learning rate the two are different updates "
                "and no moved state continues alike; use a constant learning rate or momentum=0")
    if lr is not None and lr == 0:
        return (f"{who}: a learning rate of 0 with momentum={momentum}: paddle's RMSProp keeps its "
                "momentum multiplied by the learning rate, so it cannot be converted; use a non-zero rate")
    return None


def adagrad_decay_problem(who: str, lr_decays) -> str | None:
    """torch Adagrad's lr_decay (a decay by its own step count) has no paddle counterpart."""
    decays = sorted({float(d) for d in lr_decays} - {0.0})
    if not decays:
        return None
    return (f"{who}: lr_decay={decays[0]!r} has no counterpart in paddle's Adagrad (its rate does not "
            "decay with its own step count); use lr_decay=0 on torch (a paddle LRScheduler can decay the rate)")


def _family_problems(table: StateTable, opt, fw: str, side: str, params) -> list[str]:
    """Settings of a covered family that the other framework's update has no counterpart for."""
    who = f"{side} ({fw} {type(opt).__name__})"
    found = []
    if table is RMSPROP and fw == "paddle":
        sched = getattr(opt, "_learning_rate", None)
        scheduled = None if isinstance(sched, (int, float)) else type(sched).__name__
        lr = 0.0 if any(_paddle_lr(opt, p) == 0 for p in params) else None
        found.append(rmsprop_momentum_problem(who, float(getattr(opt, "_momentum", 0.0) or 0.0), scheduled, lr))
    if table is ADAGRAD and fw == "torch":
        found.append(adagrad_decay_problem(who, [g.get("lr_decay", 0.0) for g in opt.param_groups]))
    return [f for f in found if f]


def _fresh_value(table: StateTable, opt, fw: str, param, neutral: str, shape):
    """What a state tensor holds before the first step: zeros, or Adagrad's initial_accumulator_value."""
    z = _zeros(shape)
    for name, torch_key, paddle_attr in table.starts_at:
        if name == neutral:
            value = _torch_group(opt, param).get(torch_key, 0.0) if fw == "torch" else getattr(opt, paddle_attr, 0.0)
            z.fill_(float(value))
    return z


def _not_covered(fb: str, cb: str, fr: str, cr: str) -> str:
    """Why no table fits, naming the class the other framework lacks when that is the reason."""
    for fw, cls, other in ((fb, cb, fr), (fr, cr, fb)):
        if fw != other and cls in ONLY.get(fw, ()):
            return (f"{fw} {cls}: {LIBRARY[other]} has no {cls}, so no {other} optimizer continues a {cls} run "
                    f"(optimizers: base {fb} {cb}, raw {fr} {cr}); keep training it with {fw}, or transfer the "
                    "weights without optimizers= and start a covered optimizer fresh; covered: "
                    + "; ".join(COVERED))
    both = cb.lower() == cr.lower() and fb != fr
    return (f"optimizers: base {fb} {cb}, raw {fr} {cr}: no table moves state between these"
            + (f" (both frameworks have {cb}, but padiff_lite does not move its state yet)" if both else "")
            + "; covered: " + "; ".join(COVERED) + ". Use a covered pair, or transfer the weights without "
            "optimizers= and start the raw optimizer fresh")


@dataclass
class Source:
    """A base parameter's state read into neutral form: torch tensors in the base layout, the step count."""

    tensors: dict = field(default_factory=dict)  # neutral name -> torch tensor (absent: zeros)
    step: int = 0
    extra: dict = field(default_factory=dict)  # what else a reader knows (a file's betas, learning rate)


def _read(opt, fw: str, table: StateTable, adapter, p) -> Source:
    src = Source()
    if fw == "torch":
        st = opt.state.get(p) or {}
        for neutral, key, _ in table.tensors:
            if st.get(key) is not None:
                src.tensors[neutral] = st[key].detach()
        if (table.steps or table.torch_step) and "step" in st:
            src.step = int(round(float(st["step"])))
        return src
    for neutral, _, acc in table.tensors:
        t = _paddle_acc(opt, acc, p)
        if t is not None:
            src.tensors[neutral] = adapter.torch_view(t)
            src.tensors[neutral] = from_paddle_form(table, neutral, src.tensors[neutral], _paddle_lr(opt, p))
    if table.steps:
        pows = [_paddle_acc(opt, name, p) for name in table.pows]
        if all(t is not None for t in pows):
            values = [float(adapter.torch_view(t).reshape(-1)[0]) for t in pows]
            src.step = _step_from_pows(values, _betas(opt, fw, p))
    return src


def _step_from_pows(pows, betas) -> int:
    """The steps taken, from paddle's beta powers beta**(step + 1): from beta1 while its power is not lost to
    underflow (each step divides it by 10 for 0.9: more exact), else from beta2; both lost (beyond ~90,000 steps
    at 0.999): bias correction is 1 in float32 either way, so the step where both powers fall below TINY."""
    for pw, beta in zip(pows, betas):
        if pw > TINY and 0 < beta < 1:
            return max(0, int(round(math.log(pw) / math.log(beta))) - 1)
    return int(math.ceil(math.log(TINY) / math.log(max(b for b in betas if 0 < b < 1))))


step_from_pows = _step_from_pows  # public: the optimizer-file converter (optim_files.py) decodes paddle's powers too


@dataclass
class Target:
    """What one raw parameter's state becomes: per neutral name the new value (a torch tensor in the raw layout),
    the step, and the ops' source parameters that decided it."""

    param: object
    path: str
    values: dict = field(default_factory=dict)
    step: int | None = None
    fresh: bool = True  # every source had no state: the raw state is reset to a fresh one
    extra: dict = field(default_factory=dict)  # the first source's extra


@dataclass
class Moves:
    """The prepared move: checked, nothing written yet. ``write()`` writes and returns the undo."""

    table: StateTable | None = None
    raw_opt: object = None
    raw_fw: str = ""
    adapter: object = None
    targets: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def write(self):
        if self.table is None:
            return lambda: None
        saved = _snapshot(self)
        try:
            for t in self.targets:
                _write_one(self, t)
        except BaseException:
            _restore(self, saved)
            raise
        return lambda: _restore(self, saved)


def _optimizers_of(plan, optimizers) -> tuple:
    """``(base optimizer, raw optimizer, base's framework, raw's)``; TypeError for anything but a pair, TransferError
    naming an optimizer that is none or belongs to the other model."""
    if not (isinstance(optimizers, (tuple, list)) and len(optimizers) == 2):
        raise TypeError("assign_weight(optimizers=...) takes a pair (base_optimizer, raw_optimizer), "
                        f"got {type(optimizers).__name__}")
    bo, ro = optimizers
    fb, fr = _framework(bo), _framework(ro)
    problems = []
    for side, opt, fw, proxy in (("base", bo, fb, plan.base), ("raw", ro, fr, plan.raw)):
        if fw is None:
            problems.append(scaler_problem(opt, f"{side} optimizer") or
                            f"{side} optimizer: {type(opt).__name__} is neither a torch.optim.Optimizer nor a "
                            "paddle.optimizer.Optimizer; pass the optimizers themselves (base's first)")
        elif fw != proxy.framework:
            problems.append(f"{side} optimizer: a {fw} optimizer for the {proxy.framework} model {proxy.name}; "
                            "pass optimizers=(base_optimizer, raw_optimizer), in the order of the models")
    if problems:
        raise TransferError("cannot move the optimizer state; nothing was written", problems)
    return bo, ro, fb, fr


def _imperative_problems(plan, in_raw: dict) -> list:
    """A layer an imperative special init writes says nothing of how its optimizer state maps: one problem per such
    layer holding a parameter of raw's optimizer."""
    problems = []
    for pair in plan.imperative:
        for p in pair.raw.module.parameters():
            if id(p) in in_raw:
                problems.append(f"{pair.raw.path or '<root>'} ({type(pair.raw.module).__name__}) is written by an "
                                "imperative special init, which says nothing of how its optimizer state maps; "
                                "register it as a mapping rule (init_pool.register_maps) to move its state")
                break
    return problems


def prepare(plan, optimizers) -> Moves:
    """Read both optimizers and plan the state move; raise TransferError naming every setting that cannot carry
    over (nothing is written). ``optimizers``: ``(base_opt, raw_opt)``."""
    bo, ro, fb, fr = _optimizers_of(plan, optimizers)
    base, raw = plan.base, plan.raw
    problems = []
    cb, cr = _family(bo, fb), _family(ro, fr)
    table = _table(fb, cb, fr, cr)
    if table is None:
        problems.append(_not_covered(fb, cb, fr, cr))
        raise TransferError("cannot move the optimizer state; nothing was written", problems)
    bparams, rparams = _params(bo, fb), _params(ro, fr)
    problems += _settings_problems(bo, fb, "base", base.adapter, bparams)
    problems += _settings_problems(ro, fr, "raw", raw.adapter, rparams)
    if fb != fr:  # within one framework the same update continues whatever these settings are
        problems += _family_problems(table, bo, fb, "base", bparams)
        problems += _family_problems(table, ro, fr, "raw", rparams)
    in_base = {id(p) for p in bparams}
    in_raw = {id(p): p for p in rparams}
    problems += _imperative_problems(plan, in_raw)
    moves = Moves(table, ro, fr, raw.adapter)
    if problems:
        raise TransferError("cannot move the optimizer state; nothing was written", problems)
    sources: dict = {}

    def new_target(op):
        q = op.dst.tensor
        tgt = Target(q, op.dst.path)
        current = _read(ro, fr, table, raw.adapter, q)
        shape = tuple(raw.adapter.shape(q))
        for neutral, _, _ in table.tensors:
            now = current.tensors.get(neutral)
            tgt.values[neutral] = now.clone() if now is not None else _fresh_value(table, ro, fr, q, neutral, shape)
        return tgt

    def source(op):
        p = op.src.tensor
        if id(p) not in in_base:
            moves.notes.append(f"optimizer state: base {op.src.path} is not in the base optimizer; raw {op.dst.path} "
                               "gets fresh state there")
            return Source()
        if id(p) not in sources:
            sources[id(p)] = _read(bo, fb, table, base.adapter, p)
        return sources[id(p)]

    targets = move_by_ops(plan.ops, in_raw, new_target, source,
                          lambda op, neutral, shape: _fresh_value(table, ro, fr, op.dst.tensor, neutral, shape),
                          problems)
    if problems:
        raise TransferError("cannot move the optimizer state; nothing was written", problems)
    moves.targets = list(targets.values())
    moves.notes += _setting_notes(bo, ro, plan, table)
    moves.notes += _formula_notes(table, bo, fb, ro, fr, moves.targets)
    moved = sum(1 for t in moves.targets if not t.fresh)
    steps = sorted({t.step for t in moves.targets if not t.fresh}) if table.steps else []
    moves.notes.append(f"optimizer state: {table.kind} state of {moved} of {len(moves.targets)} raw parameters moved "
                       f"from base {fb} {type(bo).__name__} to raw {fr} {type(ro).__name__}"
                       + (f" (steps taken: {', '.join(map(str, steps))})" if steps else ""))
    left = [p for p in rparams if all(p is not t.param for t in moves.targets)]
    if left:
        moves.notes.append(f"optimizer state: {len(left)} raw optimizer parameters are written by no copy; "
                           "their state was left as it was")
    return moves


def move_by_ops(ops, in_raw, new_target, source, fresh_value, problems) -> dict:
    """Every raw parameter's new state, moved by the plan's own operations: a COPY moves each state tensor with the
    weight's parts and transform (:func:`layout.pieces`), a FILL zeroes its part. Shared by the in-memory move and
    the file converter. ``new_target(op)``: the raw parameter's :class:`Target` with its starting values;
    ``source(op)``: the base parameter's :class:`Source` (empty: it has no state, the part gets ``fresh_value(op,
    neutral, shape)``); steps that differ within one raw parameter are added to ``problems``.
    Returns ``{id(raw parameter): Target}``."""
    targets: dict = {}
    for op in ops:
        if op.dst is None or id(op.dst.tensor) not in in_raw:
            continue
        tgt = targets.get(id(op.dst.tensor))
        if tgt is None:
            tgt = targets[id(op.dst.tensor)] = new_target(op)
        if op.kind is FILL:
            for value in tgt.values.values():
                for region, _ in layout.pieces(value, None, "copy", value, op.dst_part):
                    region.zero_()
            continue
        if op.kind is not COPY:
            continue
        src = source(op)
        if src.tensors:
            tgt.fresh = False
        if tgt.step is not None and tgt.step != src.step:
            problems.append(f"optimizer state: raw {op.dst.path} is made of base parameters that took different "
                            f"numbers of steps ({tgt.step} and {src.step} for {op.src.path}); one step count "
                            "cannot hold both: step them alike before moving")
        tgt.step = src.step if tgt.step is None else max(tgt.step, src.step)
        for k, v in src.extra.items():
            tgt.extra.setdefault(k, v)
        base_shape = tuple(op.src.tensor.shape)
        for neutral, value in tgt.values.items():
            s = src.tensors.get(neutral)
            s = s if s is not None else (fresh_value(op, neutral, base_shape) if not src.tensors
                                         else _zeros(base_shape))
            for region, v in layout.pieces(s, op.src_part, op.transform, value, op.dst_part):
                region.copy_(v)
    return targets


def pow_values(table: StateTable, betas, step: int) -> list:
    """paddle's beta powers after ``step`` steps, beta**(step + 1) (the powers of the next step), per table.pows."""
    return [beta ** (step + 1) for _, beta in zip(table.pows, betas)]


def to_paddle_form(table: StateTable, neutral: str, value, lr: float):
    """A state tensor as paddle keeps it: RMSProp's momentum multiplied by the learning rate."""
    return value.double() * lr if neutral in table.lr_scaled else value


def from_paddle_form(table: StateTable, neutral: str, value, lr: float):
    """The inverse of :func:`to_paddle_form` (a rate of 0 with momentum is refused before; without, unused)."""
    if neutral not in table.lr_scaled:
        return value
    return value.double() / lr if lr else _zeros(tuple(value.shape))


def kept_by_torch(table: StateTable, key: str, group: dict) -> bool:
    """torch keeps some state only with a setting on (RMSprop's momentum_buffer, grad_avg)."""
    return not any(key == k and not group.get(setting) for k, setting in table.optional)


def _zeros(shape):
    import torch

    return torch.zeros(shape, dtype=torch.float64)  # cast to the state's dtype when written


def _setting_notes(bo, ro, plan, table) -> list[str]:
    """The hyperparameters that differ (learning rate, betas, eps, weight decay, ...): the user's to set alike."""
    from .verify.settings import optimizer_problems, read  # imported here: verify imports transfer

    sb, sr = read(bo), read(ro)
    sb.has_state = sr.has_state = False  # moving it is what this does
    if table is RMSPROP and sb.framework != sr.framework:  # not the same epsilon: _formula_notes says it
        sb.general.pop("epsilon", None)
        sr.general.pop("epsilon", None)
    return [f"optimizer setting differs (left as it is): {line}"
            for line in optimizer_problems(sb, sr, [op for op in plan.ops if op.kind is COPY])]


def _formula_notes(table, bo, fb, ro, fr, targets) -> list[str]:
    """Where the two frameworks' updates differ in a way no state can fix: said with its size on the moved state."""
    if fb == fr:
        return []
    topt = bo if fb == "torch" else ro
    popt = ro if fb == "torch" else bo
    group = topt.param_groups[0]
    return formula_notes(table, float(group.get("eps", 0.0)), float(getattr(popt, "_epsilon", 0.0)),
                         bool(group.get("centered")), [t.values for t in targets if not t.fresh], fb == "paddle")


def formula_notes(table, eps_t: float, eps_p: float | None, centered: bool, values, from_paddle: bool) -> list[str]:
    """The notes of :func:`_formula_notes` from plain values (``values``: each moved parameter's neutral state;
    ``eps_p`` None: the paddle optimizer's epsilon is not known, as in a .pdopt). Shared with the file converter."""
    out = []
    if table is RMSPROP:
        gap = None
        if eps_p is not None:
            gap = 0.0
            for vals in values:
                v = vals["v"].double() - (vals["mean"].double() ** 2 if centered else 0.0)
                v = v.clamp_min(0.0)
                den_t, den_p = v.sqrt() + eps_t, (v + eps_p).sqrt()
                if v.numel():
                    gap = max(gap, float(((den_t - den_p).abs() / den_t).max()))
        out.append(f"optimizer update differs (no state can fix it): RMSProp epsilon: torch divides by "
                   f"sqrt(v) + eps (eps={eps_t:g}), paddle by sqrt(v + epsilon) ("
                   + (f"epsilon={eps_p:g}); on the moved state the two divisors differ by up to {gap:.2g} relative"
                      if eps_p is not None else "its epsilon is the paddle optimizer's")
                   + ("" if eps_p is not None and math.isclose(eps_p, eps_t ** 2, rel_tol=1e-6) else
                      f"; paddle epsilon = torch eps**2 ({eps_t ** 2:g}) makes them nearly equal"))
    if table is ADAMAX:
        gap = max((float((max(eps_t, eps_p or 0.0) / vals["u"].double().clamp_min(1e-300)).max())
                   for vals in values if vals["u"].numel()), default=0.0)
        out.append(f"optimizer update differs (no state can fix it): Adamax epsilon: torch takes max(beta2 * u, "
                   f"|g| + eps) (eps={eps_t:g}), paddle max(beta2 * u + epsilon, |g|) ("
                   + (f"epsilon={eps_p:g}" if eps_p is not None else "its epsilon is the paddle optimizer's")
                   + f"); on the moved state that is up to {min(gap, 1.0):.2g} of the norm u")
    if table.torch_step and from_paddle and values:
        out.append(f"optimizer state: paddle {table.kind} counts no steps; torch's step counter (which its update "
                   "does not use here) starts again at 0")
    return out


# -- writing -----------------------------------------------------------------------------------------------------
def _state_tensors(moves: Moves, q) -> list:
    """The raw state tensors of parameter ``q`` that exist now (torch: (dict, key, tensor); paddle: tensors)."""
    opt, table = moves.raw_opt, moves.table
    if moves.raw_fw == "torch":
        st = opt.state.get(q)
        return [] if st is None else [t for t in st.values() if hasattr(t, "clone")]
    names = [acc for _, _, acc in table.tensors] + (list(table.pows) if table.steps else [])
    return [t for t in (_paddle_acc(opt, n, q) for n in names) if t is not None]


def _snapshot(moves: Moves):
    opt = moves.raw_opt
    if moves.raw_fw == "torch":
        saved = {}
        for t in moves.targets:
            st = opt.state.get(t.param)
            saved[id(t.param)] = (t.param, None if st is None else (st, dict(st), {
                k: v.clone() for k, v in st.items() if hasattr(v, "clone")}))
        return saved
    values = []
    for t in moves.targets:
        for s in _state_tensors(moves, t.param):
            values.append((s, moves.adapter.torch_view(s).clone()))
    return ({k: dict(v) for k, v in opt._accumulators.items()}, set(opt._already_create_accumulator),
            len(opt._opti_name_list), values)


def _restore(moves: Moves, saved):
    opt = moves.raw_opt
    if moves.raw_fw == "torch":
        for param, was in saved.values():
            if was is None:
                opt.state.pop(param, None)
                continue
            st, entries, clones = was
            st.clear()
            st.update(entries)
            for k, c in clones.items():
                st[k].copy_(c)
            opt.state[param] = st
        return
    accs, created, names, values = saved
    for k in list(opt._accumulators):
        if k in accs:
            opt._accumulators[k] = accs[k]
        else:
            del opt._accumulators[k]
    opt._already_create_accumulator.clear()
    opt._already_create_accumulator.update(created)
    del opt._opti_name_list[names:]
    for s, c in values:
        moves.adapter.write(s, c)


def _write_one(moves: Moves, t: Target):
    import torch

    opt, table, q = moves.raw_opt, moves.table, t.param
    step = t.step or 0
    if moves.raw_fw == "torch":
        if t.fresh and not table.starts_at:
            opt.state.pop(q, None)  # exactly the state of a parameter the optimizer has not stepped
            return
        st = opt.state[q]
        group = _torch_group(opt, q)
        for neutral, key, _ in table.tensors:
            if not kept_by_torch(table, key, group):
                continue
            if st.get(key) is None:
                st[key] = torch.zeros_like(q, memory_format=torch.preserve_format)
            st[key].detach().copy_(t.values[neutral])
        if table.torch_step:
            if "step" not in st or not hasattr(st["step"], "copy_"):
                st["step"] = torch.zeros((), dtype=torch.float32, device=q.device if group.get("capturable") else "cpu")
            st["step"].copy_(torch.tensor(float(step)))
        if table.steps:
            group = _torch_group(opt, q)
            on_param = group.get("capturable") or group.get("fused")
            if "step" not in st or not hasattr(st["step"], "copy_"):
                st["step"] = torch.zeros((), dtype=torch.float32, device=q.device if on_param else "cpu")
            st["step"].copy_(torch.tensor(float(step)))
        return
    names = [acc for _, _, acc in table.tensors]
    if any(_paddle_acc(opt, n, q) is None for n in names):
        import paddle

        opt._create_accumulators(paddle.static.default_main_program().global_block(), [q])
    adapter = moves.adapter
    for neutral, _, acc in table.tensors:
        adapter.write(_paddle_acc(opt, acc, q), to_paddle_form(table, neutral, t.values[neutral], _paddle_lr(opt, q)))
    if table.steps:
        for name, value in zip(table.pows, pow_values(table, _betas(opt, "paddle", q), step)):
            acc = _paddle_acc(opt, name, q)
            adapter.write(acc, torch.full(tuple(adapter.shape(acc)), value, dtype=torch.float64))


# public: the optimizer-file converter (optim_files.py) runs the same checks on the optimizers its factories build
family_problems = _family_problems
settings_problems = _settings_problems
params_of = _params
family_of = _family
