"""Optimizer and scheduler checkpoint files: torch ``optimizer.state_dict()`` (``torch.save``) <-> paddle
``optimizer.state_dict()`` (``paddle.save``, ``.pdopt``), with the model factories (or a mapping) saying which
state belongs to which parameter, and the same plan as the weights (a transposed Linear's moments are transposed,
a fused qkv's moments are cut like its weight).

How state is tied to parameters:

- torch keys each parameter's state by its index in the optimizer's ``param_groups`` (groups in order, then
  parameters in order). A file whose groups carry ``param_names`` (optimizers built from ``named_parameters()``)
  says which parameter each index is. Otherwise one group is read as ``model.parameters()`` in order (every
  shape checked, the assumption said in the report); several groups without names cannot be told apart and are
  refused. Writing a torch file takes the torch optimizer the run will load it into (``optimizer=``, a factory
  called with the raw model): its param groups, with their hyperparameters, are the file's groups, because
  ``load_state_dict`` replaces the groups' settings with the file's.
- paddle keys each accumulator by ``<parameter name>_<accumulator>_<n>`` (``linear_0.w_0_moment1_0``), and the
  parameter names are made by a per-process counter (``paddle.utils.unique_name``) when the layers are built. A
  process that builds the model first gets the names a fresh build gives, so factories are called under a
  fresh name generator (a model object passed in keeps its names). Structured names (``model.layers.0...`` with
  ``.`` before the accumulator, PaddleFormers' checkpoints) are read too. A file whose names fit neither is
  refused. Paddle saves no hyperparameters: betas come from the torch side.

Counters: torch's per-parameter ``step`` <-> paddle's ``beta1_pow_acc`` / ``beta2_pow_acc`` = beta**(step + 1).
Schedules: torch ``scheduler.state_dict()`` (its own file) <-> the ``.pdopt``'s ``LR_Scheduler`` entry
(``last_epoch``, ``last_lr``); only the position moves, the settings are the user's (listed in the report).
Output is written like every converter's: temporary files, renamed into place at the end (:mod:`.atomic`).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import optim_state, sched_state
from .checkpoint_plan import names_by_tensor
from .errors import CheckpointError
from .factories import build_model, load_factory
from .formats import pdparams_pickle as pdparams
from .formats.common import numpy_to_torch
from .formats.output import AtomicOutput, OutputFile, output_error
from .formats.torchfile import load_object as load_torch_object
from .interrupts import terminate_like_interrupt
from .prepare import prepare
from .validate import check, refuse

log = logging.getLogger("padiff_lite.optim_files")

PADDLE_SUFFIX = ".pdopt"
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
SCHED_KEY = "LR_Scheduler"
STRUCTURED_KEY = "StructuredToParameterName@@"  # paddle.save adds it to every dict (a name table, empty here)
_COUNTER = re.compile(r"^(.*)_(\d+)$")
# paddle accumulators of settings whose state does not carry over: named in the refusal
NOT_MOVED = {"moment2_max": "the paddle optimizer ran with amsgrad=True, whose running maximum (moment2_max) is "
                            "not moved; use amsgrad=False on both sides"}


def is_optimizer_conversion(src, dst) -> bool:
    """A ``.pdopt`` on either side makes a conversion an optimizer-state one."""
    return Path(src).suffix == PADDLE_SUFFIX or Path(dst).suffix == PADDLE_SUFFIX


@dataclass
class OptimizerReport:
    source: str
    outputs: list = field(default_factory=list)
    family: str = ""
    parameters: int = 0  # raw parameters whose state was written
    moved: int = 0  # of which with state from the source (others fresh)
    steps: list = field(default_factory=list)
    schedule: dict | None = None  # the position written (last_epoch, lr)
    notes: list = field(default_factory=list)

    def __str__(self):
        lines = [f"optimizer state {self.source} -> {', '.join(self.outputs)}",
                 f"  {self.family}: state of {self.moved} of {self.parameters} raw parameters moved"
                 + (f" (steps taken: {', '.join(map(str, self.steps))})" if self.steps else "")]
        if self.schedule is not None:
            lines.append(f"  schedule position: step {self.schedule['last_epoch']}, learning rate "
                         f"{self.schedule['lr']:.6g}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


State = optim_state.Source  # one parameter's state in neutral form: torch tensors in its side's layout, the step


@dataclass
class Side:
    """The state read from a file, tied to the base model's parameters (by ``id``)."""

    table: object = None
    states: dict = field(default_factory=dict)  # id(param) -> _State
    betas: dict = field(default_factory=dict)  # id(param) -> (beta1, beta2) (torch source only)
    groups: list = field(default_factory=list)  # torch source: the param groups' settings (for the report)
    schedule: dict | None = None  # {"last_epoch": int, "lr": float, "settings": {...}}
    pows: dict = field(default_factory=dict)  # paddle source: id(param) -> {beta power name: value}
    lrs: dict = field(default_factory=dict)  # torch source: id(param) -> its group's learning rate (lr_scaled state)
    starts: dict = field(default_factory=dict)  # torch source: neutral -> a fresh state's value (Adagrad)
    paddle_scaled: bool = False  # paddle source: lr_scaled state is still multiplied by the learning rate


# -- entry point -------------------------------------------------------------------------------------------------
def convert_optimizer(src, dst, base_model, raw_model, *, mapping=None, optimizer=None, scheduler=None,
                      scheduler_out=None) -> OptimizerReport:
    """Convert the optimizer checkpoint ``src`` (of ``base_model``'s optimizer) into ``dst`` for ``raw_model``.

    src/dst: a torch file (``.pt``/``.pth``/``.bin``, ``torch.save(optimizer.state_dict())``) and a ``.pdopt``
        (``paddle.save(optimizer.state_dict())``), one of each.
    base_model, raw_model: as for :func:`convert_checkpoint` (structure only).
    optimizer: a factory ``fn(raw_model) -> optimizer`` or ``-> (optimizer, scheduler)`` (or "module:callable")
        building the optimizer the output is for. Needed when writing a torch file (its param groups and
        hyperparameters are the file's); when writing a ``.pdopt`` it is checked against the source (class, betas).
    scheduler: torch -> paddle: the torch ``scheduler.state_dict()`` file whose position goes into the ``.pdopt``'s
        LR_Scheduler. paddle -> torch: a paddle scheduler file (``scheduler.pdparams``) when the ``.pdopt`` has none.
    scheduler_out: paddle -> torch: where to write the torch scheduler state (the factory must return the scheduler).

    Raises CheckpointError / TransferError naming the file, the key and the fix; nothing is written then.
    """
    src, dst = Path(src), Path(dst)
    if src.suffix == PADDLE_SUFFIX and dst.suffix in TORCH_SUFFIXES:
        direction = "paddle->torch"
    elif src.suffix in TORCH_SUFFIXES and dst.suffix == PADDLE_SUFFIX:
        direction = "torch->paddle"
    else:
        raise CheckpointError(f"{src} -> {dst}: an optimizer state converts between a torch file "
                              f"({'/'.join(TORCH_SUFFIXES)}) and a paddle {PADDLE_SUFFIX} file; name one of each")
    if not src.is_file():
        raise CheckpointError(f"{src}: no such file; check the path")
    for p in (scheduler, ):
        if p is not None and not Path(p).is_file():
            raise CheckpointError(f"{p}: no such scheduler file; check the path")
    if scheduler_out is not None and direction == "torch->paddle":
        raise CheckpointError(f"scheduler_out={scheduler_out}: a .pdopt holds its schedule (LR_Scheduler); give the "
                              "torch scheduler file as scheduler= instead")
    if scheduler is not None and direction == "paddle->torch" and Path(scheduler).suffix in TORCH_SUFFIXES:
        raise CheckpointError(f"{scheduler}: reading paddle -> torch, the scheduler input is paddle's "
                              "(scheduler.pdparams, or the .pdopt's LR_Scheduler); name the torch file to write as "
                              "scheduler_out (--scheduler-out)")
    if Path(dst).is_dir():
        raise CheckpointError(f"{dst} is a folder; name the output file")
    to_paddle = direction == "torch->paddle"
    base, _ = _build(base_model, "base", paddle_side=not to_paddle)
    raw, _ = _build(raw_model, "raw", paddle_side=to_paddle)
    for proxy, role, want in ((base, "base", "paddle" if not to_paddle else "torch"),
                              (raw, "raw", "paddle" if to_paddle else "torch")):
        if proxy.framework != want:
            raise CheckpointError(f"{src} -> {dst}: the {role} model {proxy.name} is a {proxy.framework} model, but "
                                  f"the {role} side of this conversion is a {want} file; pass the {want} model as "
                                  f"--{role} (the base model is the one {src.name} was saved for)")
    prepared = prepare(base, raw, mapping=mapping, runnable=False)
    plan = prepared.plan
    checked = check(plan, need_data=False, strict=True, context=prepared.context)
    refuse(f"cannot convert {src} ({base.framework}:{base.name} -> {raw.framework}:{raw.name}); nothing was written",
           checked.problems)

    report = OptimizerReport(str(src))
    if to_paddle:
        side = read_torch(src, base, report)
        if scheduler is not None:
            side.schedule = read_torch_schedule(Path(scheduler), report)
        target_opt, target_sched = call_factory(optimizer, raw, "paddle") if optimizer is not None else (None, None)
        if target_opt is not None:
            _check_paddle_optimizer(target_opt, side, src)
        _check_family(side, src, "paddle", target_opt, raw, scheduled=f"the schedule of {scheduler}"
                      if scheduler is not None else None)
        if target_sched is not None and side.schedule is not None:
            _check_schedules(side.schedule, Path(scheduler), target_sched, side)
    else:
        side = _read_paddle(src, base, report)
        if scheduler is not None:
            if side.schedule is not None:
                raise CheckpointError(f"{src} holds its schedule (LR_Scheduler); do not give another one "
                                      f"({scheduler})")
            side.schedule = read_paddle_schedule(Path(scheduler))
        if optimizer is None:
            raise CheckpointError(f"{src} -> {dst}: a torch optimizer file holds the param groups with every "
                                  "hyperparameter, and torch's load_state_dict replaces the optimizer's settings with "
                                  "the file's, but a .pdopt holds none: pass the torch optimizer the run will load it "
                                  "into, as a factory called with the model (optimizer=fn / --optimizer "
                                  "MODULE:CALLABLE, returning the optimizer, or (optimizer, scheduler))")
        target_opt, target_sched = call_factory(optimizer, raw, "torch")
        family = optim_state.family_of(target_opt, "torch")
        if family not in side.table.torch_classes:
            raise CheckpointError(f"{src}: holds {side.table.kind} state, but the factory's torch optimizer is "
                                  f"{family}; build a torch {' or '.join(side.table.torch_classes)} (covered: "
                                  + "; ".join(optim_state.COVERED) + ")")
        if target_sched is not None and sched_state.table_for("torch", type(target_sched).__name__) is None:
            raise CheckpointError(f"the factory's torch scheduler is a {type(target_sched).__name__}; no table moves a "
                                  "paddle schedule's position into it; covered: " + "; ".join(sched_state.COVERED))
        _check_family(side, src, "torch", target_opt, raw, scheduled="the LR_Scheduler of the .pdopt (a paddle "
                      "LRScheduler)" if side.schedule is not None else None)
        if target_sched is not None:
            problem = sched_state.cycle_momentum_problem(f"the factory's torch {type(target_sched).__name__}",
                                                         target_sched)
            if problem:
                raise CheckpointError(f"{problem}; nothing was written")
        if side.table.steps:
            betas = {tuple(float(b) for b in g["betas"]) for g in target_opt.param_groups}
            if len(betas) != 1:
                raise CheckpointError(f"the torch optimizer's param groups have different betas {sorted(betas)}; a "
                                      "paddle optimizer has one pair, so its powers decode with one: use one")
            one = next(iter(betas))
            decode_steps(side, src, lambda pid: one, base.name)
        if side.schedule is not None and scheduler_out is None:
            report.notes.append(f"{src}: the schedule's position (last_epoch {side.schedule['last_epoch']}, learning "
                                f"rate {side.schedule['lr']:.6g}) was not written: name a torch scheduler file "
                                "(scheduler_out= / --scheduler-out) to carry it over")
        if scheduler_out is not None:
            if side.schedule is None:
                raise CheckpointError(f"{src} holds no LR_Scheduler entry (the paddle optimizer had a float learning "
                                      "rate); there is no schedule position to write to "
                                      f"{scheduler_out}: leave scheduler_out out, or give scheduler= a paddle "
                                      "scheduler file")
            if target_sched is None:
                raise CheckpointError(f"scheduler_out={scheduler_out}: the optimizer factory returned no scheduler; "
                                      "return (optimizer, scheduler) so the torch scheduler's settings are written "
                                      "(torch's load_state_dict replaces them with the file's)")
    targets = targets_for(plan, side, raw, report)
    report.notes += _formula_notes(side, target_opt, to_paddle, targets)
    finals = [dst] + ([Path(scheduler_out)] if scheduler_out is not None else [])
    sources = [src] + ([Path(scheduler)] if scheduler is not None else [])
    try:
        with terminate_like_interrupt(), AtomicOutput(finals, sources) as out:
            if to_paddle:
                _write_paddle(out.tmp(dst), raw, side, targets, report)
            else:
                write_torch(out.tmp(dst), raw, side, targets, target_opt, report)
                if scheduler_out is not None:
                    write_torch_schedule(out.tmp(Path(scheduler_out)), side.schedule, target_sched, report)
            out.commit()
    except (OSError, RuntimeError) as exc:
        err = output_error(exc, dst)
        if err is None:
            raise
        raise err from exc
    report.outputs = [str(p) for p in finals]
    log.info("converted optimizer state %s -> %s: %d parameters", src, dst, report.parameters)
    return report


# -- models and factories ----------------------------------------------------------------------------------------
def _build(spec, role: str, paddle_side: bool):
    """build_model; a paddle model made here gets the parameter names a fresh process gives it."""
    if not paddle_side:
        return build_model(spec, role)
    import paddle

    with paddle.utils.unique_name.guard():
        return build_model(spec, role)


def call_factory(spec, raw, framework: str):
    fn = load_factory(spec, "optimizer") if isinstance(spec, str) else spec
    if not callable(fn):
        raise CheckpointError(f"optimizer= must be a factory called with the {framework} model, got "
                              f"{type(fn).__name__}")
    try:
        made = fn(raw.model)
    except Exception as exc:
        hint = ""
        if "meta" in str(exc):
            hint = ("; the model it gets is built without storage (on the meta device: no weights are read for "
                    "this), so build the optimizer over its parameters without moving or running it (for a "
                    "transformers Trainer's own: Trainer.get_optimizer_cls_and_kwargs(args, model) over the "
                    "get_decay_parameter_names grouping, and transformers.get_scheduler; constructing a Trainer "
                    "moves the model)")
        raise CheckpointError(f"optimizer factory {getattr(fn, '__qualname__', fn)!r} raised "
                              f"{type(exc).__name__}: {exc}; it is called with the {framework} model and must return "
                              f"its optimizer (or (optimizer, scheduler)){hint}") from exc
    opt, sched = (made if isinstance(made, (tuple, list)) and len(made) == 2 else (made, None))
    ok = (hasattr(opt, "param_groups") and hasattr(opt, "state")) if framework == "torch" else \
        hasattr(opt, "_parameter_list")
    if not ok:
        raise CheckpointError(f"optimizer factory returned {type(opt).__name__}, not a {framework} optimizer "
                              f"(the output file is for {framework})")
    return opt, sched


def _torch_params(proxy) -> list:
    seen, out = set(), []
    for p in proxy.model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _table_for(keys: set, framework: str, where: str):
    """The optim_state table whose per-parameter tensors are exactly ``keys`` (torch state keys / paddle
    accumulator names, counters aside)."""
    fits = []
    for t in optim_state.TABLES:
        if not t.tensors:
            continue
        if framework == "torch":
            names = {k for _, k, _ in t.tensors}
            required = names - {k for k, _ in t.optional}  # kept only with a setting on
            extra = {"step"} if t.steps or t.torch_step else set()
        else:
            names = required = {a for _, _, a in t.tensors}
            extra = set(t.pows) if t.steps else set()
        if keys and keys <= names | extra and required <= keys:
            fits.append(t)
    if len(fits) == 1:
        return fits[0]
    covered = "; ".join(optim_state.COVERED)
    if not fits:
        raise CheckpointError(f"{where}: its per-parameter state {sorted(keys)} is no optimizer this converter knows "
                              f"(covered: {covered}); state such as AMSGrad's max_exp_avg_sq does not carry over: "
                              "save it from a covered optimizer")
    raise CheckpointError(f"{where}: its state {sorted(keys)} fits several optimizers ({', '.join(t.kind for t in fits)})"
                          "; pass optimizer= to say which")


# -- reading -----------------------------------------------------------------------------------------------------
def _torch_index(src: Path, groups: list, base, report, groups_of_params=None) -> dict:
    """A torch optimizer file's parameter indices -> (base parameter, param group index): by the names torch saves
    (``param_names``), by the caller's grouping, or for one unnamed group by ``base.parameters()`` order; refused
    where the file cannot say which index is which parameter."""
    params = _torch_params(base)
    by_index = {}
    named = all(isinstance(g, dict) and "param_names" in g for g in groups)
    if groups_of_params is not None and not named:
        sizes = [len(g.get("params", [])) for g in groups]
        want = [len(g) for g in groups_of_params]
        if sizes != want:
            raise CheckpointError(f"{src}: param groups of sizes {sizes}, but the trainer's grouping of {base.name} "
                                  f"gives {want}; the file is not this model's trainer optimizer")
        for gi, (g, ps) in enumerate(zip(groups, groups_of_params)):
            for i, p in zip(g["params"], ps):
                by_index[i] = (p, gi)
    elif named:
        names = dict(base.model.named_parameters())
        for gi, g in enumerate(groups):
            for i, n in zip(g["params"], g["param_names"]):
                if n not in names:
                    raise CheckpointError(f"{src}: param_groups[{gi}] names parameter {n!r}, which the base model "
                                          f"{base.name} does not have; pass the model the optimizer was built for")
                by_index[i] = (names[n], gi)
    elif len(groups) == 1:
        idx = list(groups[0].get("params", []))
        if len(idx) != len(params):
            raise CheckpointError(f"{src}: its one param group holds {len(idx)} parameters, the base model {base.name} "
                                  f"has {len(params)}; which index is which parameter cannot be known. Build the "
                                  "optimizer from model.parameters() (or named_parameters(), whose names torch saves)")
        by_index = {i: (p, 0) for i, p in zip(idx, params)}
        report.notes.append(f"{src}: one param group without names: index k is read as the k-th of "
                            f"{base.name}.parameters() (every state shape checked against it)")
    else:
        sizes = [len(g.get("params", [])) for g in groups]
        raise CheckpointError(f"{src}: {len(groups)} param groups (sizes {sizes}) without param_names: which index "
                              "is which parameter cannot be known from the file. Build the optimizer from "
                              "named_parameters() groups (torch then saves param_names), or use one group")
    return by_index


def read_torch(src: Path, base, report, groups_of_params=None) -> Side:
    """A torch optimizer file's state tied to ``base``'s parameters. ``groups_of_params``: the parameters of each
    param group, in order, when the caller knows how the optimizer was built (a trainer's own grouping)."""
    obj = load_torch_object(src)
    if not (isinstance(obj, dict) and isinstance(obj.get("state"), dict) and isinstance(obj.get("param_groups"), list)):
        what = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{src}: not a torch optimizer state dict (expected the keys 'state' and 'param_groups', "
                              f"found {what}); save optimizer.state_dict() with torch.save")
    groups = obj["param_groups"]
    by_index = _torch_index(src, groups, base, report, groups_of_params)
    keys = set()
    for i, st in obj["state"].items():
        if not isinstance(st, dict):
            raise CheckpointError(f"{src}: state[{i!r}] is a {type(st).__name__}, not a dict of tensors")
        keys |= set(st)
    side = Side(groups=[{k: v for k, v in g.items() if k not in ("params", "param_names")} for g in groups])
    if not obj["state"]:
        raise CheckpointError(f"{src}: the optimizer holds no state (it has not stepped, or it keeps none, like plain "
                              "SGD): there is nothing to convert; start the other side's optimizer fresh")
    side.table = _table_for(keys, "torch", str(src))
    for i, st in obj["state"].items():
        if i not in by_index:
            raise CheckpointError(f"{src}: state[{i!r}] belongs to no parameter of the param groups; the file is not "
                                  "one optimizer's state_dict()")
        p, gi = by_index[i]
        s = State()
        for neutral, key, _ in side.table.tensors:
            t = st.get(key)
            if t is None:
                continue
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(p.shape):
                raise CheckpointError(f"{src}: state[{i}][{key!r}] has shape "
                                      f"{list(getattr(t, 'shape', []))}, but parameter {i} of {base.name} "
                                      f"({_pname(base, p)}) is {list(p.shape)}; the file is for another model or its "
                                      "parameters are in another order")
            s.tensors[neutral] = t.detach().to(torch.float64) if t.dtype != torch.float64 else t.detach()
        if side.table.steps:
            if "step" not in st:
                raise CheckpointError(f"{src}: state[{i}] has no 'step'; the file is not a torch "
                                      f"{side.table.kind} state")
            s.step = int(round(float(st["step"])))
        side.states[id(p)] = s
    for i, (p, gi) in by_index.items():
        lr = groups[gi].get("lr")
        side.lrs[id(p)] = float(lr) if isinstance(lr, (int, float)) or hasattr(lr, "item") else None
        if side.table.steps:
            betas = groups[gi].get("betas")
            if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
                raise CheckpointError(f"{src}: param_groups[{gi}] has no betas; the file is not a torch Adam/AdamW "
                                      "state")
            side.betas[id(p)] = (float(betas[0]), float(betas[1]))
    for neutral, key, _ in side.table.starts_at:
        side.starts[neutral] = float(side.groups[0].get(key, 0.0)) if side.groups else 0.0
    problem = (optim_state.adagrad_decay_problem(f"{src} (torch {side.table.kind}, param_groups[*]['lr_decay'])",
                                                 [g.get("lr_decay", 0.0) for g in side.groups])
               if side.table is optim_state.ADAGRAD else None)
    if problem:
        raise CheckpointError(f"{problem}; nothing was written")
    report.family = side.table.kind
    settings = {k: v for k, v in side.groups[0].items() if isinstance(v, (int, float, tuple, list, bool))} \
        if side.groups else {}
    report.notes.append(f"hyperparameters are the paddle optimizer's to set alike (a .pdopt holds none); the torch "
                        f"file's: {settings}" + (f" (and {len(side.groups) - 1} more groups)" if len(side.groups) > 1
                                                 else ""))
    return side


def _pname(proxy, p) -> str:
    names = names_by_tensor(proxy).get(id(p))
    return names[0] if names else "?"


def read_torch_schedule(path: Path, report) -> dict:
    obj = load_torch_object(path)
    if not (isinstance(obj, dict) and "last_epoch" in obj and "_last_lr" in obj):
        what = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: not a torch scheduler state dict (expected 'last_epoch' and '_last_lr', found "
                              f"{what}); save scheduler.state_dict() with torch.save")
    lrs = [float(x) for x in obj["_last_lr"]]
    if not lrs or len(set(lrs)) > 1:
        raise CheckpointError(f"{path}: _last_lr holds {lrs}; a paddle scheduler holds one learning rate, so the "
                              "param groups must share it")
    epoch = obj["last_epoch"]
    if type(epoch) is not int or epoch < 0:
        raise CheckpointError(f"{path}: last_epoch={epoch!r} is not a step count")
    settings = {k: v for k, v in obj.items() if k not in ("last_epoch", "_last_lr", "_step_count", "verbose",
                                                          "_get_lr_called_within_step", "_is_initial", "lr_lambdas")}
    problem = sched_state.cycle_momentum_problem(f"{path}", _TorchSchedView(obj, []))
    if problem:
        raise CheckpointError(f"{problem}; nothing was written")
    report.notes.append(f"the schedule's settings are the paddle scheduler's to set alike (only the position moves); "
                        f"the torch file's: {settings}")
    return {"last_epoch": epoch, "lr": lrs[0], "settings": settings, "state": obj}


def _paddle_value(v):
    if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], pdparams.ArrayRef):
        return v[1]  # paddle's reducer of a Tensor: (name, array)
    return v


def _array(path: Path, ref: pdparams.ArrayRef, key: str) -> torch.Tensor:
    if pdparams.unsupported(ref) or ref.dtype.kind not in "fiu":
        raise CheckpointError(f"{path}: {key} is not an array of numbers")
    a = np.empty(ref.shape, dtype=ref.dtype)
    pdparams.read_array(path, ref, memoryview(a.reshape(-1).view(np.uint8)) if a.size else memoryview(b""))
    return numpy_to_torch(a)


def _parse_paddle(path: Path) -> dict:
    obj = pdparams.parse(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not an optimizer state dict; save "
                              "optimizer.state_dict() with paddle.save")
    try:
        return pdparams.unwrap_big_params(obj)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def read_paddle_schedule(path: Path, obj=None) -> dict:
    obj = _parse_paddle(path) if obj is None else obj
    if not (isinstance(obj, dict) and "last_epoch" in obj and "last_lr" in obj):
        raise CheckpointError(f"{path}: not a paddle scheduler state (expected 'last_epoch' and 'last_lr', found "
                              f"{sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__}); save "
                              "scheduler.state_dict() with paddle.save")
    epoch, lr = obj["last_epoch"], obj["last_lr"]
    if type(epoch) is not int or epoch < 0 or not isinstance(lr, (int, float)):
        raise CheckpointError(f"{path}: LR_Scheduler last_epoch={epoch!r}, last_lr={lr!r}: not a step count and a "
                              "learning rate")
    extra = {k: v for k, v in obj.items() if k not in ("last_epoch", "last_lr")}
    return {"last_epoch": epoch, "lr": float(lr), "settings": extra}


def _paddle_keys(src: Path, entries: dict, base) -> tuple:
    """``({(id(parameter), accumulator): file key}, {id(parameter): parameter})``: each key of a .pdopt matched to a
    parameter of ``base`` by paddle's naming (``<param name>_<accumulator>_0``, or a structured name) and to the
    accumulator it holds; refused for keys that name no parameter or two keys of one accumulator."""
    params = list(base.model.parameters())
    cands = {}
    for p in params:
        cands.setdefault(p.name, p)
    structured = {}
    for tid, names in names_by_tensor(base).items():
        for n in names:
            structured[n] = tid
    by_id = {id(p): p for p in params}
    all_accs = sorted({a for t in optim_state.TABLES for _, _, a in t.tensors} | set(optim_state.BETA_POWS)
                      | set(NOT_MOVED), key=len, reverse=True)
    found: dict = {}  # (id(param), acc) -> key
    unmatched = []
    for key in entries:
        m = _COUNTER.match(key)
        stem = m.group(1) if m else key
        hit = None
        for acc in all_accs:
            for sep in ("_", "."):
                if stem.endswith(sep + acc):
                    pname = stem[:-len(acc) - 1]
                    p = cands.get(pname) if sep == "_" else by_id.get(structured.get(pname))
                    if p is not None:
                        hit = (p, acc)
                        break
            if hit:
                break
        if hit is None:
            unmatched.append(key)
            continue
        if (id(hit[0]), hit[1]) in found:
            raise CheckpointError(f"{src}: {key} and {found[(id(hit[0]), hit[1])]} are both the {hit[1]} of "
                                  f"{_pname(base, hit[0])}; the file holds two optimizers' state")
        found[(id(hit[0]), hit[1])] = key
    if unmatched:
        fresh = ", ".join(p.name for p in params[:3])
        raise CheckpointError(
            f"{src}: {len(unmatched)} entries name no parameter of the base model {base.name} "
            f"({', '.join(unmatched[:4])}{' ...' if len(unmatched) > 4 else ''}). Paddle names accumulators after the "
            f"parameters' names, which a process numbers as it builds layers; a fresh build of {base.name} gives "
            f"{fresh} ... The file was saved in a process that built other layers first (or from another model): "
            "pass that very model object (Python: convert_checkpoint(..., base_model=model)), or save the optimizer "
            "from a process that builds this model first")
    return found, by_id


def _read_paddle(src: Path, base, report) -> Side:
    obj = _parse_paddle(src)
    if "master_weights" in obj:
        raise CheckpointError(f"{src}: master_weights: the paddle optimizer kept float32 master weights (AMP, "
                              "multi_precision=True); moving them is not supported: save from a float32 run with "
                              "multi_precision=False")
    side = Side()
    if SCHED_KEY in obj:
        side.schedule = read_paddle_schedule(src, obj[SCHED_KEY])
    entries = {k: _paddle_value(v) for k, v in obj.items() if k not in (SCHED_KEY, STRUCTURED_KEY)}
    bad = [str(k) for k, v in entries.items() if not (isinstance(k, str) and isinstance(v, pdparams.ArrayRef))]
    if bad:
        raise CheckpointError(f"{src}: entries that are not accumulator arrays: {', '.join(bad[:5])}; save "
                              "optimizer.state_dict() with paddle.save")
    if not entries:
        raise CheckpointError(f"{src}: the optimizer holds no state (it has not stepped, or it keeps none, like plain "
                              "SGD): there is nothing to convert; start the other side's optimizer fresh")
    found, by_id = _paddle_keys(src, entries, base)
    accs = {acc for (_, acc) in found}
    for acc in sorted(accs & set(NOT_MOVED)):
        key = next(k for (_, a), k in found.items() if a == acc)
        raise CheckpointError(f"{src}: {key}: {NOT_MOVED[acc]}; nothing was written")
    side.table = _table_for(accs, "paddle", str(src))
    side.paddle_scaled = bool(side.table.lr_scaled)
    report.family = side.table.kind
    if side.table is optim_state.ADAM:  # paddle Lamb keeps the very same accumulators, and a .pdopt names no class
        report.notes.append(f"{src}: read as Adam/AdamW state (moment1, moment2, beta powers): a .pdopt does not record "
                            "its optimizer's class, and paddle's Lamb keeps the same accumulators. If this file came "
                            "from paddle Lamb (torch.optim has no Lamb), its moments now continue under the torch "
                            "optimizer you gave, whose update differs from Lamb's layer-wise trust ratio")
    pows = {}
    for (pid, acc), key in found.items():
        p = by_id[pid]
        t = _array(src, entries[key], key)
        s = side.states.setdefault(pid, State())
        if acc in optim_state.BETA_POWS:
            if t.numel() != 1:
                raise CheckpointError(f"{src}: {key} has shape {list(t.shape)}; a beta power is one number")
            pows.setdefault(pid, {})[acc] = float(t.reshape(-1)[0])
            continue
        neutral = next(n for n, _, a in side.table.tensors if a == acc)
        if tuple(t.shape) != tuple(p.shape):
            raise CheckpointError(f"{src}: {key} has shape {list(t.shape)}, but {_pname(base, p)} ({p.name}) of "
                                  f"{base.name} is {list(p.shape)}; the file is for another model")
        s.tensors[neutral] = t.to(torch.float64)
    side.pows = pows
    return side


def decode_steps(side: Side, src, betas_of, base_name: str):
    """paddle beta powers -> step counts with the target optimizer's betas; refused when they fit no step."""
    names = side.table.pows
    for pid, s in side.states.items():
        pw = side.pows.get(pid, {})
        if set(pw) != set(names):
            raise CheckpointError(f"{src}: a parameter of {base_name} has moments but beta powers {sorted(pw)}, not "
                                  f"{list(names)}; the file is not one {side.table.kind} optimizer's state")
        betas = betas_of(pid)
        values = [pw[n] for n in names]
        step = optim_state.step_from_pows(values, betas)
        for v, want, b, n in zip(values, optim_state.pow_values(side.table, betas, step), betas, names):
            if v > optim_state.TINY and not math.isclose(v, want, rel_tol=1e-4):
                raise CheckpointError(f"{src}: {n}={v!r} is not {b}**(step + 1) for the step {step} the other power "
                                      f"gives; the betas of the torch optimizer ({betas}) are not the paddle run's: "
                                      "build it with the same betas")
        s.step = step


def _check_paddle_optimizer(opt, side: Side, src):
    cls = type(opt).__name__
    if cls not in side.table.paddle_classes:
        raise CheckpointError(f"{src}: holds {side.table.kind} state, but the paddle optimizer is {cls}; build a "
                              f"{' or '.join(side.table.paddle_classes)}")
    if side.table.steps:
        have = (float(opt._beta1), float(opt._beta2))
        for b in set(side.betas.values()):
            if not all(math.isclose(x, y, rel_tol=1e-9) for x, y in zip(b, have)):
                raise CheckpointError(f"{src}: the torch run's betas are {b}, the paddle optimizer's {have}; build it "
                                      "with the same betas (the beta powers written are for the torch run's)")
    if getattr(opt, "_name", None):
        raise CheckpointError(f"the paddle optimizer has name={opt._name!r}, which prefixes its accumulators' names; "
                              "build it without name= (the file is written with paddle's default names)")


def _check_family(side: Side, src, out_fw: str, target_opt, raw, scheduled):
    """What optim_state refuses in memory for this family, on the file's settings and the factory's optimizer
    (torch Adagrad's lr_decay, paddle RMSProp's momentum with a scheduled or zero rate, AMSGrad)."""
    table, problems = side.table, []
    if target_opt is not None:
        params = optim_state.params_of(target_opt, out_fw)
        problems += optim_state.settings_problems(target_opt, out_fw, "raw", raw.adapter, params)
        problems += optim_state.family_problems(table, target_opt, out_fw, "raw", params)
    if table is optim_state.RMSPROP:
        torch_groups = side.groups if out_fw == "paddle" else target_opt.param_groups
        for i, g in enumerate(torch_groups):
            where = (f"{src}: param_groups[{i}]['momentum']" if out_fw == "paddle" else
                     f"the factory's torch RMSprop, param_groups[{i}]['momentum']")
            momentum = float(g.get("momentum", 0.0) or 0.0)
            lr = g.get("lr")
            problems.append(optim_state.rmsprop_momentum_problem(where, momentum, scheduled,
                                                                 float(lr) if lr is not None else None))
    problems = list(dict.fromkeys(p for p in problems if p))
    if problems:
        raise CheckpointError(f"cannot convert {src}; nothing was written: " + "; ".join(problems))


def _formula_notes(side: Side, target_opt, to_paddle: bool, targets) -> list:
    if side.table not in (optim_state.RMSPROP, optim_state.ADAMAX, optim_state.ADAGRAD):
        return []
    group = (side.groups[0] if side.groups else {}) if to_paddle else target_opt.param_groups[0]
    eps_p = float(target_opt._epsilon) if to_paddle and target_opt is not None else None
    return optim_state.formula_notes(side.table, float(group.get("eps", 0.0)), eps_p, bool(group.get("centered")),
                                     [t.values for t in targets if not t.fresh], not to_paddle)


def _check_schedules(schedule: dict, path: Path, paddle_sched, side: Side):
    """torch -> paddle with the paddle scheduler named (the factory returned it): the torch file's schedule read by
    sched_state's tables, as in memory, and compared with it. A lambda's function is not in the file: the paddle
    one is checked at the file's position."""
    cls = type(paddle_sched).__name__
    table = sched_state.table_for("paddle", cls)
    if table is None:
        raise CheckpointError(f"the factory's paddle scheduler is a {cls}; no table moves a torch schedule's position "
                              "into it; covered: " + "; ".join(sched_state.COVERED))
    epoch, lr = schedule["last_epoch"], schedule["lr"]
    names = (f"{path} ({table.torch_classes[0]})", cls)
    if table.settings is None:
        got = float(paddle_sched.base_lr) * float(paddle_sched.lr_lambda(epoch))
        problems = [] if math.isclose(got, lr, rel_tol=1e-6, abs_tol=1e-12) else [
            f"schedule differs: at step {epoch} {path} has learning rate {lr!r}, the paddle {cls} gives {got!r}; "
            "build it with the same function and base learning rate"]
    else:
        try:
            problems = sched_state.check_settings(table, _TorchSchedView(schedule["state"], side.groups), "torch",
                                                  paddle_sched, "paddle", epoch, names=names)
        except (AttributeError, KeyError, TypeError, IndexError) as exc:
            problems = [f"{path}: not a torch {table.torch_classes[0]} state ({str(exc).strip(chr(39))}), but the factory's paddle "
                        f"scheduler is a {cls}; build the paddle counterpart of the torch run's scheduler"]
    if problems:
        raise CheckpointError(f"cannot convert {path}; nothing was written: " + "; ".join(problems))


class _TorchSchedView:
    """A torch scheduler's state_dict() read as the scheduler (attributes), its optimizer's param groups from the
    optimizer file: what sched_state's tables read."""

    def __init__(self, state: dict, groups: list):
        self.__dict__.update(state)
        self.optimizer = type("Groups", (), {"param_groups": groups})()

    def __getattr__(self, name):  # only for what the state dict lacks
        raise AttributeError(f"no {name!r} in the file")


# -- planning the target state ---------------------------------------------------------------------------------
def targets_for(plan, side: Side, raw, report) -> list:
    """Every raw parameter's new state, moved by the plan's ops as in memory (:func:`optim_state.move_by_ops`)."""
    table = side.table
    raw_params = list(raw.model.parameters())
    if raw.framework == "torch":
        raw_params = _torch_params(raw)
    in_raw = {id(p) for p in raw_params}
    for pair in plan.imperative:
        refuse("cannot convert the optimizer state; nothing was written",
               [f"{pair.raw.path or '<root>'} ({type(pair.raw.module).__name__}) is written by an imperative special "
                "init, which says nothing of how its optimizer state maps; register it as a mapping rule "
                "(init_pool.register_maps) to move its state"])

    def new_target(op):
        q = op.dst.tensor
        return optim_state.Target(q, op.dst.path, {n: _fresh(side, n, tuple(q.shape)) for n, _, _ in table.tensors})

    def source(op):
        pid = id(op.src.tensor)
        s = side.states.get(pid)
        if s is None:
            return optim_state.Source()
        if pid in side.betas:
            s.extra["betas"] = side.betas[pid]
        if side.lrs.get(pid) is not None:
            s.extra["lr"] = side.lrs[pid]
        return s

    problems = []
    targets = optim_state.move_by_ops(plan.ops, in_raw, new_target, source,
                                      lambda op, neutral, shape: _fresh(side, neutral, shape), problems)
    refuse("cannot convert the optimizer state; nothing was written", problems)
    out = [targets[id(p)] for p in raw_params if id(p) in targets]
    left = [p for p in raw_params if id(p) not in targets]
    if left:
        report.notes.append(f"{len(left)} raw parameters are written by no copy of the plan; they get fresh state")
        for p in left:
            out.append(optim_state.Target(p, _pname(raw, p), {n: _fresh(side, n, tuple(p.shape))
                                                              for n, _, _ in table.tensors}))
    report.parameters = len(out)
    report.moved = sum(1 for t in out if not t.fresh)
    return out


def _fresh(side: Side, neutral: str, shape) -> torch.Tensor:
    """A state tensor before the first step: zeros, or (torch Adagrad file) its initial_accumulator_value."""
    return torch.full(shape, side.starts.get(neutral, 0.0), dtype=torch.float64)


# -- writing -----------------------------------------------------------------------------------------------------
def _float_dtype(p) -> np.dtype:
    name = str(p.dtype).replace("paddle.", "").replace("torch.", "")
    if name in ("float16", "bfloat16"):
        raise CheckpointError(f"parameter {getattr(p, 'name', '')} is {name}: its optimizer state lives in float32 "
                              "master weights (AMP), which this converter does not move; convert a float32 model")
    return np.dtype(name if name in ("float32", "float64") else "float32")


def paddle_rows(side: Side, targets, key) -> list:
    """The paddle accumulators of every target as ``[(file key, numpy array)]``: moments in the parameter's dtype,
    then (Adam) the beta powers beta**(step + 1) as float32 ``[1]``. ``key(param, accumulator)`` names each."""
    table, rows = side.table, []
    for t in targets:
        dt = _float_dtype(t.param)
        for neutral, _, acc in table.tensors:  # paddle loads every accumulator it makes from the file: all written
            value = optim_state.to_paddle_form(table, neutral, t.values[neutral], t.extra.get("lr") or 0.0)
            rows.append((key(t.param, acc), value.numpy().astype(dt)))
    if table.steps:
        default = next(iter(side.betas.values()))
        for i, name in enumerate(table.pows):
            for t in targets:
                value = optim_state.pow_values(table, t.extra.get("betas") or default, t.step or 0)[i]
                rows.append((key(t.param, name), np.array([value], dtype=np.float32)))
    return rows


def _write_paddle(path: Path, raw, side: Side, targets, report):
    with OutputFile(path) as fh:
        w = pdparams.StreamWriter(fh)
        w.start()
        for key, a in paddle_rows(side, targets, lambda p, acc: f"{p.name}_{acc}_0"):
            a = np.ascontiguousarray(a)
            w.add(key, a.reshape(-1).view(np.uint8).data if a.size else b"", a.shape, a.dtype)
        if side.schedule is not None:
            w.add_value(SCHED_KEY, {"last_epoch": side.schedule["last_epoch"], "last_lr": side.schedule["lr"]})
            report.schedule = {"last_epoch": side.schedule["last_epoch"], "lr": side.schedule["lr"]}
        else:
            report.notes.append("no scheduler file was given: the .pdopt has no LR_Scheduler entry; a paddle optimizer "
                                "driven by an LRScheduler (other than LambdaDecay) needs one: give scheduler=")
        w.finish()
        fh.commit()
    report.steps = sorted({t.step for t in targets if not t.fresh and t.step is not None})


def write_torch(path: Path, raw, side: Side, targets, opt, report):
    table = side.table
    tmpl = opt.state_dict()
    index = {}
    k = 0
    for g in opt.param_groups:
        for p in g["params"]:
            index[id(p)] = k
            k += 1
    groups = copy.deepcopy(tmpl["param_groups"])
    missing = [t.path for t in targets if id(t.param) not in index and not t.fresh]
    if missing:
        raise CheckpointError(f"the torch optimizer from the factory does not hold {', '.join(missing[:5])}, whose "
                              "state the file has; build it over every trainable parameter of the model it is given")
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    state = {}
    for t in targets:
        if id(t.param) not in index:
            continue
        if t.fresh:
            if table.starts_at and index[id(t.param)] in tmpl["state"]:  # torch builds this state eagerly
                state[index[id(t.param)]] = copy.deepcopy(tmpl["state"][index[id(t.param)]])
            continue
        group = group_of[id(t.param)]
        dt = t.param.dtype if t.param.dtype in (torch.float32, torch.float64) else torch.float32
        st = {}
        if table.steps or table.torch_step:
            st["step"] = torch.tensor(float(t.step or 0), dtype=torch.float32)
        for neutral, key, _ in table.tensors:
            if not optim_state.kept_by_torch(table, key, group):
                continue
            value = t.values[neutral]
            if side.paddle_scaled:  # read from a .pdopt: RMSProp's momentum still holds paddle's learning rate
                value = optim_state.from_paddle_form(table, neutral, value, float(group["lr"]))
            st[key] = value.to(dt).contiguous()
        state[index[id(t.param)]] = st
    if side.schedule is not None:
        for g in groups:
            g["lr"] = side.schedule["lr"]
    with OutputFile(path) as fh:
        torch.save({"state": state, "param_groups": groups}, fh)
        fh.commit()
    report.steps = sorted({t.step for t in targets if not t.fresh and t.step is not None})


def write_torch_schedule(path: Path, schedule: dict, sched, report):
    tmpl = sched.state_dict()
    if "last_epoch" not in tmpl or "_last_lr" not in tmpl:
        raise CheckpointError(f"the factory's scheduler {type(sched).__name__} has no last_epoch/_last_lr in its "
                              "state_dict(); it is not a torch LR scheduler")
    out = dict(tmpl)
    epoch, lr = schedule["last_epoch"], schedule["lr"]
    out["last_epoch"] = epoch
    out["_step_count"] = epoch + 1
    out["_last_lr"] = [lr for _ in tmpl["_last_lr"]]
    expected = _torch_lr_at(sched, epoch)
    if expected is not None and not math.isclose(expected, lr, rel_tol=1e-6, abs_tol=1e-12):
        raise CheckpointError(f"the torch scheduler {type(sched).__name__} from the factory gives learning rate "
                              f"{expected!r} at step {epoch}, the paddle file says {lr!r}: the schedules differ; "
                              "build the torch scheduler with the paddle run's settings")
    with OutputFile(path) as fh:
        torch.save(out, fh)
        fh.commit()
    report.schedule = {"last_epoch": epoch, "lr": lr}
    if expected is None:
        report.notes.append(f"the torch scheduler {type(sched).__name__} has no closed form: its learning rate at "
                            f"step {epoch} was not checked against the paddle file's {lr:.6g}")


def _torch_lr_at(sched, epoch: int):
    """What the (fresh) torch scheduler gives at ``epoch``, without stepping it; None when it cannot say."""
    s = copy.copy(sched)
    s.__dict__ = dict(sched.__dict__)
    s.last_epoch = epoch
    if type(s).__name__ == "LambdaLR":
        return float(s.base_lrs[0]) * float(s.lr_lambdas[0](epoch))
    if type(s).__name__ == "OneCycleLR":  # its get_lr is a closed form of last_epoch (it warns outside step())
        with warnings.catch_warnings(), contextlib.suppress(Exception):
            warnings.simplefilter("ignore")
            return float(s.get_lr()[0])
    if hasattr(s, "_get_closed_form_lr"):
        with contextlib.suppress(Exception):
            return float(s._get_closed_form_lr()[0])
    return None


__all__ = ["OptimizerReport", "convert_optimizer", "is_optimizer_conversion"]
