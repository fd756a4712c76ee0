"""Trainer checkpoint folders (issue 29 item 3): a transformers Trainer checkpoint -> a PaddleFormers Trainer
checkpoint that PaddleFormers' own ``Trainer.train(resume_from_checkpoint=...)`` continues.

transformers' Trainer does not run here (it needs ``accelerate``, not installed), so its checkpoint is written with
the pieces its ``_save_checkpoint`` uses: ``save_pretrained``, ``torch.save(optimizer.state_dict())`` of AdamW over
the Trainer's own parameter grouping (``get_parameter_names`` with its weight-decay rule), the state of
``get_linear_schedule_with_warmup``, ``TrainerState.save_to_json`` and an ``rng_state.pth``. PaddleFormers' Trainer
does run on a CPU (with ``unified_checkpoint`` files and ``amp_master_grad=False``); both libraries import
``datasets``, whose pyarrow here needs numpy 2 (numpy 1.26 is installed), so an empty stand-in module is put in its
place (neither Trainer uses it with a map-style dataset of our own).

A tiny Llama trains 3 steps with AdamW and a linear warm-up in torch; the folder is converted; PaddleFormers' Trainer
resumes it for steps 4 and 5; torch continues on the very items PaddleFormers' loader gave; every weight is
compared. A fresh optimizer at step 3 visibly differs.
"""
from __future__ import annotations

import copy
import importlib.machinery
import sys
import types
import warnings

import numpy as np
import pytest
import torch

import library_models as L
import paddle
import transformers
from padiff_lite import assign_weight, convert_checkpoint
from padiff_lite.errors import CheckpointError
from padiff_lite.trainer_folders import DECAY_EXCLUDED

LR, WARMUP, TOTAL, DONE, BATCH, WD = 1e-3, 2, 5, 3, 2, 0.01
AGREE = 1e-5  # measured: 1.2e-7 after 2 more steps (a fresh optimizer: 1.8e-3)
STATE_MATTERS = 1e-4


def _datasets_stand_in(monkeypatch):
    """pyarrow (imported by datasets) needs numpy 2 here; the Trainers only look for datasets' classes. The stand-in
    leaves sys.modules with the test."""
    try:
        import datasets  # noqa: F401
    except ImportError:
        ds = types.ModuleType("datasets")
        ds.Dataset = type("Dataset", (), {})
        ds.IterableDataset = type("IterableDataset", (), {})
        ds.__spec__ = importlib.machinery.ModuleSpec("datasets", None)
        monkeypatch.setitem(sys.modules, "datasets", ds)


def item(i):
    ids = L.ids(1, 7, seed=100 + i)[0]
    return {"input_ids": ids, "labels": ids}


def torch_step(model, opt, sched, ids):
    ids = torch.from_numpy(ids)
    logits = model(input_ids=ids).logits
    # PaddleFormers' criterion takes the labels as given (no shift): the same loss here
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def hf_optimizer(model):
    """AdamW over the transformers Trainer's grouping (decay parameters first), with its linear warm-up."""
    from transformers.trainer_pt_utils import get_parameter_names

    decay = set(get_parameter_names(model, [torch.nn.LayerNorm], DECAY_EXCLUDED))
    named = list(model.named_parameters())
    opt = torch.optim.AdamW([{"params": [p for n, p in named if n in decay], "weight_decay": WD},
                             {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}], lr=LR)
    return opt, transformers.get_linear_schedule_with_warmup(opt, WARMUP, TOTAL)


def hf_checkpoint(folder):
    from transformers.trainer_callback import TrainerState

    model = L.torch_llama().train()
    opt, sched = hf_optimizer(model)
    for s in range(DONE):
        torch_step(model, opt, sched, np.stack([item(BATCH * s + k)["input_ids"] for k in range(BATCH)]))
    model.save_pretrained(folder)
    torch.save(opt.state_dict(), folder / "optimizer.pt")
    torch.save(sched.state_dict(), folder / "scheduler.pt")
    TrainerState(global_step=DONE, max_steps=TOTAL, epoch=DONE * BATCH / 16, num_train_epochs=1,
                 train_batch_size=BATCH).save_to_json(str(folder / "trainer_state.json"))
    torch.save({"cpu": torch.get_rng_state()}, folder / "rng_state.pth")
    return model, opt, sched


class Items(paddle.io.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        return item(int(i))


def test_transformers_trainer_checkpoint_resumes_in_paddleformers_trainer(tmp_path, monkeypatch):
    _datasets_stand_in(monkeypatch)
    from paddleformers.trainer import Trainer

    src = tmp_path / "checkpoint-3"
    t_model, opt, sched = hf_checkpoint(src)
    fresh = copy.deepcopy(t_model)
    report = convert_checkpoint(src, tmp_path / "pf-checkpoint-3", to="paddleformers")
    text = str(report)
    assert report.optimizer.moved == report.optimizer.parameters == len(list(t_model.parameters()))
    assert report.optimizer.steps == [DONE] and report.global_step == DONE
    assert "rng_state.pth was not carried over" in text

    p_model = L.paddle_llama(seed=9)
    batches = []  # what PaddleFormers' Trainer feeds (its resumed loader's order is its own business)
    forward = type(p_model).forward

    def recording(self, *args, **kwargs):
        batches.append(kwargs["input_ids"].numpy().copy())
        return forward(self, *args, **kwargs)
    monkeypatch.setattr(type(p_model), "forward", recording)
    trainer = Trainer(model=p_model, args=pf_args(tmp_path / "pf-run"), train_dataset=Items())
    trainer.train(resume_from_checkpoint=str(tmp_path / "pf-checkpoint-3"))
    assert trainer.state.global_step == TOTAL
    assert len(batches) == TOTAL - DONE

    f_opt, f_sched = hf_optimizer(fresh)  # the same continuation with a fresh optimizer, for contrast
    with warnings.catch_warnings():  # the schedule moved ahead without its optimizer, on purpose
        warnings.simplefilter("ignore")
        for _ in range(DONE):
            f_sched.step()
    for ids in batches:
        torch_step(t_model, opt, sched, ids)
        torch_step(fresh, f_opt, f_sched, ids)
    back = L.torch_llama(seed=4)
    assign_weight(p_model, back)
    want, got, other = t_model.state_dict(), back.state_dict(), fresh.state_dict()
    moved = max(float((want[k] - got[k]).abs().max()) for k in want)
    differs = max(float((other[k] - got[k]).abs().max()) for k in want)
    assert moved < AGREE, f"PaddleFormers' resumed run differs from torch's by {moved:.2e}"
    assert differs > STATE_MATTERS, f"a fresh optimizer differs by only {differs:.2e}"


def test_refuses_a_trainer_folder_without_its_optimizer(tmp_path):
    src = tmp_path / "checkpoint-3"
    hf_checkpoint(src)
    (src / "optimizer.pt").unlink()
    with pytest.raises(CheckpointError, match="optimizer.pt missing"):
        convert_checkpoint(src, tmp_path / "out", to="paddleformers")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".padiff-tmp-")]


def pf_args(out, **kw):
    from paddleformers.trainer import TrainingArguments

    settings = dict(output_dir=str(out), per_device_train_batch_size=BATCH, max_steps=TOTAL, learning_rate=LR,
                    warmup_steps=WARMUP, lr_scheduler_type="linear", weight_decay=WD, max_grad_norm=0.0,
                    logging_steps=100, save_steps=1000, report_to="none", device="cpu", seed=0, amp_master_grad=False,
                    save_checkpoint_format="unified_checkpoint", load_checkpoint_format="unified_checkpoint",
                    dataloader_num_workers=0)
    return TrainingArguments(**{**settings, **kw})


def test_paddleformers_trainer_checkpoint_resumes_in_torch(tmp_path, monkeypatch):
    """PaddleFormers' Trainer runs 5 steps and saves at step 3; the checkpoint is converted; transformers' model,
    optimizer and schedule load it the way its Trainer's resume does (from_pretrained, load_state_dict of
    optimizer.pt and scheduler.pt, TrainerState.load_from_json) and take steps 4 and 5 on PaddleFormers' batches."""
    _datasets_stand_in(monkeypatch)
    from paddleformers.trainer import Trainer
    from transformers.trainer_callback import TrainerState

    p_model = L.paddle_llama(seed=1)
    batches = []
    forward = type(p_model).forward

    def recording(self, *args, **kwargs):
        batches.append(kwargs["input_ids"].numpy().copy())
        return forward(self, *args, **kwargs)
    monkeypatch.setattr(type(p_model), "forward", recording)
    Trainer(model=p_model, args=pf_args(tmp_path / "pf", save_steps=DONE), train_dataset=Items()).train()
    src = tmp_path / "pf" / f"checkpoint-{DONE}"
    report = convert_checkpoint(src, tmp_path / "hf-checkpoint", to="transformers", optimizer=hf_optimizer)
    assert report.optimizer.moved == report.optimizer.parameters and report.optimizer.steps == [DONE]
    assert "rng_state_0.pth was not carried over" in str(report)

    out = tmp_path / "hf-checkpoint"
    t_model = transformers.LlamaForCausalLM.from_pretrained(out, attn_implementation="eager").train()
    opt, sched = hf_optimizer(t_model)
    opt.load_state_dict(torch.load(out / "optimizer.pt", weights_only=True))
    sched.load_state_dict(torch.load(out / "scheduler.pt", weights_only=True))
    assert TrainerState.load_from_json(str(out / "trainer_state.json")).global_step == DONE
    fresh = copy.deepcopy(t_model)
    f_opt, f_sched = hf_optimizer(fresh)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(DONE):
            f_sched.step()
    for ids in batches[DONE:]:
        torch_step(t_model, opt, sched, ids)
        torch_step(fresh, f_opt, f_sched, ids)
    back = L.torch_llama(seed=4)
    assign_weight(p_model, back)
    want, got, other = back.state_dict(), t_model.state_dict(), fresh.state_dict()
    moved = max(float((want[k] - got[k]).abs().max()) for k in want)
    differs = max(float((want[k] - other[k]).abs().max()) for k in want)
    assert moved < AGREE, f"torch's resumed run differs from PaddleFormers' by {moved:.2e}"
    assert differs > STATE_MATTERS, f"a fresh optimizer differs by only {differs:.2e}"


def test_paddleformers_checkpoint_to_transformers_needs_the_torch_optimizer(tmp_path):
    src = tmp_path / "checkpoint-3"  # refused before any file is read: the names are enough
    src.mkdir()
    for name in ("config.json", "model.safetensors.index.json", "optimizer.safetensors.index.json",
                 "scheduler.pdparams", "trainer_state.bin"):
        (src / name).write_text("{}")
    with pytest.raises(CheckpointError, match="--optimizer"):
        convert_checkpoint(src, tmp_path / "out", to="transformers")
    assert not (tmp_path / "out").exists()


def test_refuses_a_flex_checkpoint(tmp_path):
    src = tmp_path / "checkpoint-3"
    (src / "model_state").mkdir(parents=True)
    (src / "trainer_state.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="unified_checkpoint"):
        convert_checkpoint(src, tmp_path / "out", to="transformers", optimizer=hf_optimizer)
    assert not (tmp_path / "out").exists()
