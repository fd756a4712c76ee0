"""Trainer checkpoint folders: a transformers ``Trainer`` checkpoint (``checkpoint-N``) -> a PaddleFormers ``Trainer``
checkpoint that ``trainer.train(resume_from_checkpoint=...)`` continues (``convert SRC DST --to paddleformers``, when
SRC holds ``trainer_state.json``).

What a PaddleFormers 1.2 checkpoint is (measured by running its Trainer on a CPU): with the default
``save_checkpoint_format="flex_checkpoint"`` the weights and optimizer state go to paddle.distributed ``.distcp``
files whose metadata are pickled paddle classes, and resuming from them fails on a CPU (``Fleet`` has no ``_hcg``);
with ``None`` it writes ``model.safetensors`` but resumes only from ``model_state.pdparams`` (it cannot resume its own
checkpoint). The format that saves and resumes on one CPU process is ``"unified_checkpoint"``, and it is the one
written here:

- ``config.json`` and ``model-0000k-of-0000n.safetensors`` with ``model.safetensors.index.json``: the model folder
  as :func:`.library_folders.convert_folder` writes it (HuggingFace layout, which both libraries read);
- ``optimizer-0000k-of-0000n.safetensors`` and ``optimizer.safetensors.index.json`` (``"master_weights": false``):
  the accumulators keyed ``<structured parameter name>/<accumulator>_0`` (``moment1_0``, ``moment2_0``,
  ``beta1_pow_acc_0``, ``beta2_pow_acc_0``) in paddle's in-memory layout (a Linear's moments transposed);
- ``scheduler.pdparams``: ``{"last_epoch", "last_lr"}``;
- ``trainer_state.bin``: PaddleFormers' ``TrainerState`` as ``paddle.save`` pickles it.

The torch optimizer's parameter order is the transformers Trainer's own grouping (weight-decay parameters, then the
rest, each in ``named_parameters()`` order); its state moves by the same plan as the weights (:mod:`.optim_files`).
``rng_state.pth`` cannot be translated (torch's and paddle's generators are different algorithms): it is not
carried over and the report says so; ``training_args.bin`` (a pickle of the other library's class) is not read: the
hyperparameters are the resumed run's to set alike, and the report lists the torch optimizer's.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import optim_files
from .checkpoint_plan import names_by_tensor
from .errors import CheckpointError
from .formats import pdparams_pickle as pdparams
from .formats.common import Entry
from .formats.output import OutputFile, sync_folder, temp_name
from .formats.safetensors import SafetensorsWriter
from .library_loaders import build_without_storage
from .prepare import prepare
from .proxy import create_model
from .validate import check, refuse

log = logging.getLogger("padiff_lite.trainer_folders")

HF_FILES = ("optimizer.pt", "scheduler.pt", "trainer_state.json")
PF_OPT_INDEX = "optimizer.safetensors.index.json"
PF_MODEL_INDEX = "model.safetensors.index.json"
# transformers 5's Trainer.get_decay_parameter_names (used as a fallback when transformers.trainer cannot be imported)
DECAY_EXCLUDED = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


def is_trainer_folder(src) -> bool:
    p = Path(src)
    return p.is_dir() and ((p / "trainer_state.json").is_file() or (p / "trainer_state.bin").is_file())


@dataclass
class TrainerFolderReport:
    source: str
    destination: str
    model: object = None  # the model folder's report
    optimizer: object = None  # OptimizerReport
    global_step: int = 0
    notes: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return True

    def __str__(self):
        lines = [f"trainer checkpoint {self.source} -> {self.destination} (step {self.global_step})", str(self.model),
                 str(self.optimizer)]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def convert_trainer_folder(src, dst, to: str, progress=None, optimizer=None) -> TrainerFolderReport:
    """``to="paddleformers"``: SRC is a transformers Trainer checkpoint. ``to="transformers"``: SRC is a PaddleFormers
    unified checkpoint; ``optimizer`` is then a factory called with the transformers model, returning the
    (optimizer, scheduler) the resumed transformers Trainer builds (its param groups and hyperparameters are written:
    torch's load_state_dict replaces the optimizer's settings with the file's, and a PaddleFormers checkpoint holds
    none)."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and not (dst.is_dir() and not any(dst.iterdir())):
        raise CheckpointError(f"{dst} exists and is not an empty folder; a trainer checkpoint is written whole into a "
                              "new (or empty) folder: choose another name or remove it")
    if to == "transformers":
        return _to_transformers(src, dst, optimizer)
    if optimizer is not None:
        raise CheckpointError("optimizer= is for a PaddleFormers -> transformers trainer checkpoint (the torch "
                              "optimizer file needs the torch optimizer's settings); the PaddleFormers side builds its "
                              "own from its TrainingArguments")
    missing = [n for n in HF_FILES if not (src / n).is_file()]
    if missing:
        raise CheckpointError(f"{src}: a transformers Trainer checkpoint holds {', '.join(HF_FILES)}; "
                              f"{', '.join(missing)} missing. Point at the checkpoint-N folder the Trainer wrote")
    state = _trainer_state_json(src / "trainer_state.json")
    report = TrainerFolderReport(str(src), str(dst), global_step=state["global_step"])
    from .library_folders import convert_folder

    with _committed_folder(dst) as tmp:
        report.model = convert_folder(src, tmp, to, weights=_model_weights(src))
        with contextlib.suppress(FileNotFoundError):
            (tmp / "trainer_state.json").unlink()  # copied as an "other file"; PaddleFormers reads trainer_state.bin
        _unified_model_files(tmp)
        report.optimizer = _optimizer(src, tmp, report)
        _trainer_state_bin(tmp / "trainer_state.bin", state, report)
    report.notes.append("rng_state.pth was not carried over: torch's and paddle's random generators are different "
                        "algorithms, so no state of one continues the other's stream; dropout masks and data shuffling "
                        "after the resume differ from the run that never moved (PaddleFormers logs that it found no "
                        "RNG file)")
    report.notes.append("training_args.bin was not read (a pickle of transformers' TrainingArguments): set the resumed "
                        "run's TrainingArguments alike (learning rate, warm-up, max_steps, weight decay, betas, eps, "
                        "max_grad_norm, batch size) and save_checkpoint_format/load_checkpoint_format="
                        "'unified_checkpoint'")
    log.info("converted trainer checkpoint %s -> %s", src, dst)
    return report


def _model_weights(src: Path) -> str:
    for name in ("model.safetensors.index.json", "model.safetensors"):
        if (src / name).is_file():
            return name
    raise CheckpointError(f"{src}: no model.safetensors (or model.safetensors.index.json); a transformers Trainer "
                          "saves the model with safetensors (save_safetensors=True, the default)")


def _trainer_state_json(path: Path) -> dict:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc}); re-create it") from None
    if not isinstance(state, dict) or type(state.get("global_step")) is not int:
        raise CheckpointError(f"{path}: no integer global_step; not a transformers TrainerState")
    return state


def _safetensors_keys(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:  # our own output: the header only
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def _unified_model_files(folder: Path):
    """PaddleFormers' unified checkpoint is recognised by ``model.safetensors.index.json``: a single-file model gets
    the name of a one-shard checkpoint and an index."""
    if (folder / PF_MODEL_INDEX).is_file():
        return
    single = folder / "model.safetensors"
    if not single.is_file():
        raise CheckpointError(f"{folder}: no model.safetensors was written; cannot make a unified checkpoint")
    shard = folder / "model-00001-of-00001.safetensors"
    os.rename(single, shard)
    keys = _safetensors_keys(shard)
    _json(folder / PF_MODEL_INDEX, {"metadata": {"total_size": shard.stat().st_size},
                                    "weight_map": {k: shard.name for k in keys}})


def _json(path: Path, data: dict):
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


@contextlib.contextmanager
def _committed_folder(dst: Path):
    """A temporary folder beside ``dst`` to write into, renamed into place once the body completes (an empty ``dst``
    is replaced); removed, with ``dst`` as it was, when the body raises."""
    tmp = dst.parent / temp_name(dst.name, uuid.uuid4().hex[:12])
    try:
        yield tmp
        sync_folder(tmp)
        if dst.is_dir():
            dst.rmdir()
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _decay_names(model) -> set:
    try:
        from transformers.trainer import Trainer

        return set(Trainer.get_decay_parameter_names(None, model))
    except ImportError:  # transformers.trainer imports datasets/accelerate; the rule itself needs neither
        from transformers.trainer_pt_utils import get_parameter_names

        return set(get_parameter_names(model, [torch.nn.LayerNorm], DECAY_EXCLUDED))


def _optimizer(src: Path, tmp: Path, report) -> object:
    cfg_t = json.loads((src / "config.json").read_text(encoding="utf-8"))
    cfg_p = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
    arch_t, arch_p = cfg_t["architectures"][0], cfg_p["architectures"][0]
    t_model, p_model = _models(cfg_t, cfg_p, "paddleformers", where=f"{src}: ")
    base, raw = create_model(t_model), create_model(p_model)
    prepared = prepare(base, raw, runnable=False)
    plan = prepared.plan
    checked = check(plan, need_data=False, strict=True, context=prepared.context)
    refuse(f"cannot convert the optimizer state of {src} ({arch_t} -> {arch_p}); nothing was written",
           checked.problems)
    decay = _decay_names(t_model)
    named = list(t_model.named_parameters())
    groups = [[p for n, p in named if n in decay and p.requires_grad],
              [p for n, p in named if n not in decay and p.requires_grad]]
    opt_report = optim_files.OptimizerReport(str(src / "optimizer.pt"))
    side = optim_files.read_torch(src / "optimizer.pt", base, opt_report, groups_of_params=groups)
    opt_report.notes = [n for n in opt_report.notes if not n.startswith("hyperparameters")]
    side.schedule = optim_files.read_torch_schedule(src / "scheduler.pt", opt_report)
    opt_report.notes = [n for n in opt_report.notes if not n.startswith("the schedule's settings")]
    if side.table.kind != optim_files.optim_state.ADAM.kind:
        raise CheckpointError(f"{src / 'optimizer.pt'}: holds {side.table.kind} state; PaddleFormers' Trainer builds "
                              "AdamW (optim='adamw'): only AdamW trainer checkpoints are converted")
    targets = optim_files.targets_for(plan, side, raw, opt_report)
    structured = {tid: names[0] for tid, names in names_by_tensor(raw).items()}
    rows = optim_files.paddle_rows(side, targets, lambda p, acc: f"{structured[id(p)]}/{acc}_0")
    shard = tmp / "optimizer-00001-of-00001.safetensors"
    tensors = [(k, torch.from_numpy(np.ascontiguousarray(a))) for k, a in rows]
    writer = SafetensorsWriter(shard, [Entry(k, tuple(t.shape), t.dtype) for k, t in tensors], {"format": "np"})
    try:
        for k, t in tensors:
            writer.add(k, t)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    _json(tmp / PF_OPT_INDEX, {"metadata": {"total_size": shard.stat().st_size},
                               "weight_map": {k: shard.name for k, _ in tensors}, "master_weights": False})
    with OutputFile(tmp / "scheduler.pdparams") as fh:
        w = pdparams.StreamWriter(fh)
        w.start()
        w.add_value("last_epoch", side.schedule["last_epoch"])
        w.add_value("last_lr", side.schedule["lr"])
        w.finish()
        fh.commit()
    opt_report.schedule = {"last_epoch": side.schedule["last_epoch"], "lr": side.schedule["lr"]}
    opt_report.steps = sorted({t.step for t in targets if not t.fresh and t.step is not None})
    g = side.groups[0] if side.groups else {}
    report.notes.append("the torch optimizer's settings (set the PaddleFormers TrainingArguments alike): "
                        + ", ".join(f"{k}={g[k]}" for k in ("lr", "betas", "eps", "weight_decay") if k in g))
    opt_report.outputs = [shard.name, PF_OPT_INDEX, "scheduler.pdparams"]
    return opt_report


def _trainer_state_bin(path: Path, state: dict, report):
    """PaddleFormers' TrainerState, from transformers' trainer_state.json, pickled as paddle.save does."""
    from paddleformers.trainer.trainer_callback import TrainerState

    fields = {f for f in TrainerState.__dataclass_fields__}
    values = {k: state[k] for k in ("epoch", "global_step", "max_steps", "num_train_epochs", "total_flos",
                                    "log_history", "best_metric", "best_model_checkpoint", "trial_name",
                                    "trial_params") if k in state and k in fields}
    batch = state.get("train_batch_size")
    if "consumed_samples" in fields:
        if isinstance(batch, int):
            values["consumed_samples"] = state["global_step"] * batch
            report.notes.append(f"consumed_samples = global_step x train_batch_size = {values['consumed_samples']} "
                                "(one process, no gradient accumulation: trainer_state.json says no more)")
        else:
            report.notes.append("trainer_state.json has no train_batch_size: consumed_samples left at 0")
    ts = TrainerState(**values)
    with open(path, "wb") as fh:
        pickle.dump(ts, fh, protocol=4)
        fh.flush()
        os.fsync(fh.fileno())


# -- PaddleFormers -> transformers ---------------------------------------------------------------------------------
PF_FILES = ("config.json", PF_MODEL_INDEX, PF_OPT_INDEX, "scheduler.pdparams", "trainer_state.bin")
PF_STATE = ("paddleformers.trainer.trainer_callback", "TrainerState")
_ACC_COUNTER = re.compile(r"^(.+)/(\w+?)_(\d+)$")


def _to_transformers(src: Path, dst: Path, optimizer) -> TrainerFolderReport:
    if (src / "model_state").is_dir() or (src / "optimizer_state").is_dir():
        raise CheckpointError(f"{src}: a PaddleFormers flex_checkpoint (model_state/, optimizer_state/ .distcp files "
                              "whose metadata are pickled paddle classes) is not read; save the run with "
                              "save_checkpoint_format='unified_checkpoint' (safetensors) and convert that")
    missing = [n for n in PF_FILES if not (src / n).is_file()]
    if missing:
        raise CheckpointError(f"{src}: a PaddleFormers unified Trainer checkpoint holds {', '.join(PF_FILES)}; "
                              f"{', '.join(missing)} missing. Save with save_checkpoint_format='unified_checkpoint' and "
                              "point at its checkpoint-N folder")
    if optimizer is None:
        raise CheckpointError(f"{src} -> transformers: torch's optimizer.pt holds the param groups with every "
                              "hyperparameter, and the transformers Trainer's load_state_dict replaces its optimizer's "
                              "settings with the file's, but a PaddleFormers checkpoint holds none: pass the optimizer "
                              "the resumed run builds, as a factory called with the transformers model returning "
                              "(optimizer, scheduler) (optimizer= / --optimizer MODULE:CALLABLE)")
    index = json.loads((src / PF_OPT_INDEX).read_text(encoding="utf-8"))
    if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
        raise CheckpointError(f"{src / PF_OPT_INDEX}: no weight_map; not a unified checkpoint's optimizer index")
    if index.get("master_weights") or (src / "master_weights.safetensors.index.json").is_file():
        raise CheckpointError(f"{src}: master_weights: the run kept float32 master weights (AMP); moving them is not "
                              "supported: convert a float32 run (bf16=False, fp16=False)")
    state = pdparams.parse(src / "trainer_state.bin", records=[PF_STATE])
    if not isinstance(state, dict) or type(state.get("global_step")) is not int:
        raise CheckpointError(f"{src / 'trainer_state.bin'}: no integer global_step; not a PaddleFormers TrainerState")
    report = TrainerFolderReport(str(src), str(dst), global_step=state["global_step"])
    from .library_folders import convert_folder

    with _committed_folder(dst) as tmp:
        report.model = convert_folder(src, tmp, "transformers", weights=PF_MODEL_INDEX)
        report.optimizer = _optimizer_to_torch(src, tmp, optimizer, report)
        _trainer_state_json_out(tmp / "trainer_state.json", state, report)
    report.notes.append("rng_state_0.pth was not carried over: paddle's and torch's random generators are different "
                        "algorithms, so no state of one continues the other's stream; dropout masks and data shuffling "
                        "after the resume differ from the run that never moved (transformers logs that it found no RNG "
                        "file)")
    report.notes.append("training_args.bin was not read (a pickle of PaddleFormers' TrainingArguments): the "
                        "hyperparameters written are those of the optimizer factory; set the resumed run's "
                        "TrainingArguments alike")
    return report


def _models(src_cfg: dict, dst_cfg: dict, to: str, where: str = ""):
    """(transformers' model, PaddleFormers') built without storage from the two configs; ``where`` prefixes the
    error naming a class neither library has."""
    import paddleformers.transformers as pft
    import transformers

    cfg_t, cfg_p = (dst_cfg, src_cfg) if to == "transformers" else (src_cfg, dst_cfg)
    arch_t, arch_p = cfg_t["architectures"][0], cfg_p["architectures"][0]
    tcls, pcls = getattr(transformers, arch_t, None), getattr(pft, arch_p, None)
    if tcls is None or pcls is None:
        raise CheckpointError(f"{where}{arch_t} / {arch_p} is not a class of transformers / PaddleFormers")
    _, t_model = build_without_storage("transformers", tcls, cfg_t)
    _, p_model = build_without_storage("paddleformers", pcls, cfg_p)
    return t_model, p_model


def _optimizer_to_torch(src: Path, tmp: Path, factory, report):
    from .formats.files import open_checkpoint

    cfg_p = json.loads((src / "config.json").read_text(encoding="utf-8"))
    cfg_t = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
    t_model, p_model = _models(cfg_p, cfg_t, "transformers")
    base, raw = create_model(p_model), create_model(t_model)
    prepared = prepare(base, raw, runnable=False)
    plan = prepared.plan
    refuse(f"cannot convert the optimizer state of {src}; nothing was written",
           check(plan, need_data=False, strict=True, context=prepared.context).problems)
    opt_report = optim_files.OptimizerReport(str(src / PF_OPT_INDEX))
    table = optim_files.optim_state.ADAM
    accs = {a: n for n, _, a in table.tensors}
    by_name = {}
    for tid, names in names_by_tensor(base).items():
        for n in names:
            by_name[n] = tid
    params = {id(p): p for p in p_model.parameters()}
    ck = open_checkpoint(src / PF_OPT_INDEX)
    side = optim_files.Side(table=table)
    unknown = []
    for key in ck.infos:
        m = _ACC_COUNTER.match(key)
        pid = by_name.get(m.group(1)) if m else None
        acc = m.group(2) if m else None
        if pid is None or (acc not in accs and acc not in optim_files.optim_state.BETA_POWS):
            unknown.append(key)
            continue
        t = ck.get(key)
        s = side.states.setdefault(pid, optim_files.State())
        if acc in accs:
            if tuple(t.shape) != tuple(params[pid].shape):
                raise CheckpointError(f"{ck.path}: {key} has shape {list(t.shape)}, the parameter "
                                      f"{list(params[pid].shape)}; the checkpoint is for another model")
            s.tensors[accs[acc]] = t.to(torch.float64)
        else:
            side.pows.setdefault(pid, {})[acc] = float(t.reshape(-1)[0])
    ck.release()
    if unknown:
        raise CheckpointError(f"{src / PF_OPT_INDEX}: {len(unknown)} entries are no AdamW accumulator of a parameter of "
                              f"{type(p_model).__name__} ({', '.join(unknown[:4])}); only AdamW checkpoints of this "
                              "model are converted")
    opt, sched = optim_files.call_factory(factory, raw, "torch")
    if sched is None:
        raise CheckpointError("the optimizer factory returned no scheduler; return (optimizer, scheduler) as the "
                              "transformers Trainer builds them, so the schedule's position is written")
    betas = {tuple(float(b) for b in g["betas"]) for g in opt.param_groups}
    if len(betas) != 1:
        raise CheckpointError(f"the torch optimizer's param groups have different betas {sorted(betas)}; use one pair")
    one = next(iter(betas))
    optim_files.decode_steps(side, src / PF_OPT_INDEX, lambda pid: one, type(p_model).__name__)
    steps = {s.step for s in side.states.values()}
    if steps != {report.global_step}:
        opt_report.notes.append(f"parameters took {sorted(steps)} optimizer steps, the trainer {report.global_step}")
    side.schedule = optim_files.read_paddle_schedule(src / "scheduler.pdparams")
    targets = optim_files.targets_for(plan, side, raw, opt_report)
    optim_files.write_torch(tmp / "optimizer.pt", raw, side, targets, opt, opt_report)
    optim_files.write_torch_schedule(tmp / "scheduler.pt", side.schedule, sched, opt_report)
    opt_report.family = table.kind
    opt_report.outputs = ["optimizer.pt", "scheduler.pt"]
    return opt_report


def _trainer_state_json_out(path: Path, state: dict, report):
    from transformers.trainer_callback import TrainerControl, TrainerState

    fields = set(TrainerState.__dataclass_fields__)
    values = {k: v for k, v in state.items() if k in fields and k not in ("is_local_process_zero",
                                                                          "is_world_process_zero",
                                                                          "stateful_callbacks")}
    if "stateful_callbacks" in fields:
        # transformers' Trainer, resumed, updates state.stateful_callbacks["TrainerControl"] when it saves the next
        # checkpoint (a KeyError without it); a control with nothing pending, as restore_callback_states_from_checkpoint
        # would restore it
        values["stateful_callbacks"] = {"TrainerControl": TrainerControl().state()}
    consumed, step = state.get("consumed_samples"), state["global_step"]
    if "train_batch_size" in fields and isinstance(consumed, int) and step and consumed % step == 0:
        values["train_batch_size"] = consumed // step
    TrainerState(**values).save_to_json(str(path))
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
