"""The settings check before a training comparison: both optimizers' hyperparameters and the models' modes.

A training run can only agree when both sides are set up alike: the same kind of optimizer, learning rate,
betas, epsilon, momentum, weight decay on the same parameters, gradient clipping, and the same train/eval
state. Differences there are set-up mistakes, not porting bugs, so ``auto_diff`` refuses before running
(``DiffInputError``, every mismatch named with both settings and the fix) instead of running N steps to report a
difference "at the optimizer stage" that the user then has to trace back to a constructor argument. Optimizers
given as callables cannot be read: their differences show up at the optimizer stage of the run instead.

Framework knowledge about optimizers lives here (the model adapters know models, not optimizers): a torch
optimizer is told by its ``param_groups``, a paddle one by its ``_parameter_list``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import DiffInputError
from .render import label


@dataclass
class OptimizerSettings:
    framework: str
    cls: str
    kind: str  # "sgd", "momentum", "adam", "adamw", or the class name
    general: dict = field(default_factory=dict)  # betas, eps, momentum, nesterov, amsgrad, grad clipping, ...
    per_param: dict = field(default_factory=dict)  # id(parameter) -> {"lr": ..., "weight decay": ...}
    schedule: str = ""  # what drives the learning rate, when it can be seen
    has_state: bool = False  # moments or momentum buffers exist: it has stepped before


def is_framework_optimizer(opt) -> bool:
    return hasattr(opt, "param_groups") and hasattr(opt, "zero_grad") or hasattr(opt, "_parameter_list")


def step(opt) -> None:
    """One optimizer step: a framework optimizer's ``step()``, or the user's callable (which also clears)."""
    if is_framework_optimizer(opt):
        opt.step()
    else:
        opt()


def read(opt) -> OptimizerSettings | None:
    if hasattr(opt, "param_groups") and hasattr(opt, "zero_grad"):
        return _read_torch(opt)
    if hasattr(opt, "_parameter_list"):
        return _read_paddle(opt)
    return None


def _read_torch(opt) -> OptimizerSettings:
    cls = type(opt).__name__
    groups = opt.param_groups
    g0 = groups[0] if groups else {}
    kind = {"Adam": "adam", "AdamW": "adamw", "SGD": "sgd"}.get(cls, cls.lower())
    if kind == "sgd" and g0.get("momentum", 0):
        kind = "momentum"
    if kind == "adam" and g0.get("decoupled_weight_decay"):
        kind = "adamw"  # torch's Adam(decoupled_weight_decay=True) is AdamW
    general = {}
    if "betas" in g0:
        general["beta1"], general["beta2"] = (float(b) for b in g0["betas"])
    for key, name in (("eps", "epsilon"), ("momentum", "momentum"), ("nesterov", "nesterov"),
                      ("amsgrad", "amsgrad")):
        if key in g0 and not (key == "momentum" and kind == "sgd"):
            general[name] = g0[key] if isinstance(g0[key], bool) else float(g0[key])
    if cls == "RMSprop":
        general["rho"], general["centered"] = float(g0["alpha"]), bool(g0["centered"])
    if "initial_accumulator_value" in g0:
        general["initial accumulator value"] = float(g0["initial_accumulator_value"])
    if g0.get("maximize"):
        general["maximize"] = True
    if g0.get("dampening"):
        general["dampening"] = float(g0["dampening"])
    general["gradient clipping"] = "none (torch optimizers do not clip)"
    per = {}
    for g in groups:
        for p in g["params"]:
            per[id(p)] = {"learning rate": float(g["lr"]), "weight decay": float(g.get("weight_decay", 0.0))}
    return OptimizerSettings("torch", cls, kind, general, per, "", any(bool(v) for v in opt.state.values()))


def _clip(c) -> str:
    if c is None:
        return "none (torch optimizers do not clip)"
    name = type(c).__name__
    if hasattr(c, "clip_norm"):
        return f"{'global norm' if 'Global' in name else 'norm per parameter'} {float(c.clip_norm):g} ({name})"
    if hasattr(c, "max"):
        return f"value [{float(c.min):g}, {float(c.max):g}] ({name})"
    return name


def _decay_coeff(reg) -> float:
    if reg is None:
        return 0.0
    if isinstance(reg, (int, float)):
        return float(reg)
    if "L1" in type(reg).__name__:
        return math.nan  # no torch optimizer has L1 decay: never equal
    return float(getattr(reg, "_coeff", getattr(reg, "_regularization_coeff", 0.0)))


def _read_paddle(opt) -> OptimizerSettings:
    cls = type(opt).__name__
    kind = {"Adam": "adam", "AdamW": "adamw", "SGD": "sgd", "Momentum": "momentum"}.get(cls, cls.lower())
    general = {}
    for attr, name in (("_beta1", "beta1"), ("_beta2", "beta2"), ("_epsilon", "epsilon"), ("_momentum", "momentum"),
                       ("_use_nesterov", "nesterov"), ("_amsgrad", "amsgrad")):
        v = getattr(opt, attr, None)
        if v is not None:
            general[name] = v if isinstance(v, bool) else float(v)
    if cls == "RMSProp":
        general["rho"], general["centered"] = float(opt._rho), bool(opt._centered)
    if hasattr(opt, "initial_accumulator_value"):
        general["initial accumulator value"] = float(opt.initial_accumulator_value)
    if kind == "momentum":
        general.setdefault("nesterov", False)
    if kind in ("adam", "adamw"):
        general.setdefault("amsgrad", False)
    general["gradient clipping"] = _clip(getattr(opt, "_grad_clip", None))
    lr = float(opt.get_lr())
    sched = getattr(opt, "_learning_rate", None)
    schedule = "" if isinstance(sched, (int, float)) else type(sched).__name__
    per = {}
    groups = getattr(opt, "_param_groups", None) or [{"params": list(opt._parameter_list)}]
    if groups and not isinstance(groups[0], dict):
        groups = [{"params": list(groups)}]
    decide = getattr(opt, "_apply_decay_param_fun", None)
    for g in groups:
        for p in g["params"]:
            scale = float((getattr(p, "optimize_attr", None) or {}).get("learning_rate", 1.0))
            if kind == "adamw":
                wd = g.get("weight_decay", getattr(opt, "_weight_decay", 0.0))
                wd = _decay_coeff(wd)
                if decide is not None and not decide(p.name):
                    wd = 0.0
            else:
                own = getattr(p, "regularizer", None)
                wd = _decay_coeff(own) if own is not None else _decay_coeff(
                    g.get("weight_decay", getattr(opt, "regularization", None)))
                if kind == "momentum" and own is None and not wd:
                    wd = float(getattr(opt, "_regularization_coeff", 0.0) or 0.0)
            per[id(p)] = {"learning rate": lr * scale, "weight decay": wd}
    state = any(len(v) for v in getattr(opt, "_accumulators", {}).values())
    return OptimizerSettings("paddle", cls, kind, general, per, schedule, state)


def _differs(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return True
        return abs(a - b) > 1e-9 * max(abs(a), abs(b), 1e-30) and abs(a - b) > 1e-12
    return a != b


_FIX = {
    "learning rate": "give both optimizers the same learning rate (torch lr=, paddle learning_rate=)",
    "weight decay": "decay the same parameters by the same amount (torch: param groups with weight_decay=; paddle "
                    "AdamW: weight_decay= and apply_decay_param_fun=, others: weight_decay= or ParamAttr regularizer)",
    "in the optimizer": "give each optimizer all the parameters the other one updates",
    "gradient clipping": "clip alike: drop paddle's grad_clip, or pass the torch side as a callable that calls "
                         "torch.nn.utils.clip_grad_norm_(params, max_norm) before optimizer.step()",
}


def optimizer_problems(pb: OptimizerSettings, pr: OptimizerSettings, ops) -> list[str]:
    """One line per setting that differs (kind, each general setting, per-parameter lr / weight decay)."""
    out = []
    who = f"base ({pb.framework} {pb.cls})", f"raw ({pr.framework} {pr.cls})"
    if pb.kind != pr.kind:
        out.append(f"optimizer: {who[0]} is {pb.kind}, {who[1]} is {pr.kind}; use the same algorithm on both sides "
                   "(torch SGD with momentum = paddle Momentum, torch Adam/AdamW = paddle Adam/AdamW)")
        return out
    if pb.has_state != pr.has_state:
        out.append(f"optimizer state: {who[0] if pb.has_state else who[1]} has stepped before (its moments / "
                   f"momentum buffers are set), {who[1] if pb.has_state else who[0]} has not; start both optimizers "
                   "fresh, or carry the state over (paddle keeps beta1_pow_acc = beta1**(step + 1), torch a step "
                   "count)")
    general_b, general_r = dict(pb.general), dict(pr.general)
    if pb.kind == "rmsprop" and pb.framework != pr.framework:  # torch sqrt(v) + eps, paddle sqrt(v + epsilon)
        t, p = (general_b, general_r) if pb.framework == "torch" else (general_r, general_b)
        eps_t, eps_p = t.pop("epsilon", None), p.pop("epsilon", None)
        if eps_t is not None and eps_p is not None and _differs(eps_t ** 2, eps_p):
            out.append(f"epsilon: torch RMSprop divides by sqrt(v) + eps (eps={eps_t:g}), paddle RMSProp by "
                       f"sqrt(v + epsilon) (epsilon={eps_p:g}); the nearest paddle setting is epsilon = eps**2 "
                       f"({eps_t ** 2:g})")
    for key in sorted(set(general_b) | set(general_r)):
        a, b = general_b.get(key), general_r.get(key)
        if a is None or b is None:
            if key in ("maximize", "dampening"):
                out.append(f"{key}: {who[0]} {a}, {who[1]} {b}; the other framework has no such setting: remove it")
            continue
        if _differs(a, b):
            fix = _FIX.get(key, f"set {key} alike on both optimizers")
            out.append(f"{key}: {who[0]} {a}, {who[1]} {b}; {fix}")
    seen: dict[str, list] = {}
    for op in ops:
        sb, sr = pb.per_param.get(id(op.src.tensor)), pr.per_param.get(id(op.dst.tensor))
        if (sb is None) != (sr is None):
            seen.setdefault("in the optimizer", []).append(
                (op, "updated" if sb else "not updated", "updated" if sr else "not updated"))
            continue
        if sb is None:
            continue
        for key in ("learning rate", "weight decay"):
            if _differs(sb[key], sr[key]):
                seen.setdefault(key, []).append((op, sb[key], sr[key]))
    for key, rows in seen.items():
        op, a, b = rows[0]
        more = f" (and {len(rows) - 1} more parameters)" if len(rows) > 1 else ""
        out.append(f"{key}: base {op.src.path} {a} in {who[0]}, raw {op.dst.path} {b} in {who[1]}{more}; {_FIX[key]}")
    return out


def mode_problems(base, raw, pairs) -> list[str]:
    """Paired modules in different train/eval state, and dropout that is active (random masks differ)."""
    out = []
    for pair in pairs:
        bm, rm = pair.base.module, pair.raw.module
        tb, tr = base.adapter.is_training(bm), raw.adapter.is_training(rm)
        if tb != tr:
            out.append(f"train/eval state: base {label(pair.base.path)} ({type(bm).__name__}) is in "
                       f"{'train' if tb else 'eval'} mode, raw {label(pair.raw.path)} ({type(rm).__name__}) in "
                       f"{'train' if tr else 'eval'} mode; call .train() or .eval() on both models alike")
            if not pair.base.path:
                break  # the roots differ: every module below would be listed again
    for side, proxy in (("base", base), ("raw", raw)):
        for path, m in proxy.named_modules():
            p = getattr(m, "p", None)
            if "Dropout" in type(m).__name__ and isinstance(p, (int, float)) and p > 0 and proxy.adapter.is_training(m):
                out.append(f"dropout: {side} {label(path)} ({type(m).__name__}, p={p}) is in train mode: the two "
                           "frameworks draw different random masks; set p=0 (or call .eval() on the dropout "
                           "modules of both models) for the comparison")
    return out


def check(base, raw, pairs, ops, optimizers, training: bool) -> list[str]:
    """Notes on what could not be checked; raises DiffInputError naming every mismatch found."""
    problems, notes = [], []
    if optimizers is not None:
        sb, sr = read(optimizers[0]), read(optimizers[1])
        if sb is None or sr is None:
            notes.append("optimizer settings not checked (an optimizer was given as a callable): a difference "
                         "there shows at the optimizer stage")
        else:
            problems += optimizer_problems(sb, sr, ops)
            if sb.schedule or sr.schedule:
                notes.append(f"learning rate schedule: only the current rate is compared (base "
                             f"{sb.schedule or 'constant'}, raw {sr.schedule or 'constant'}); framework optimizers "
                             "are stepped, their schedulers are not: pass callables that step both")
    if training:
        problems += mode_problems(base, raw, pairs)
    if problems:
        raise DiffInputError(f"{base.framework}:{base.name} and {raw.framework}:{raw.name} are not set up alike for "
                             "a training comparison; nothing was run:\n" + "\n".join("  - " + p for p in problems))
    return notes
