"""Trainer checkpoint folders (issue 29 item 3): a checkpoint written by one library's real ``Trainer`` is converted
and the other library's real ``Trainer.train(resume_from_checkpoint=...)`` continues it, on a CPU.

Both Trainers run a tiny Llama with AdamW and a linear warm-up for 5 steps in a fixed data order (transformers:
``train_sampling_strategy="sequential"``; PaddleFormers: ``dataloader_shuffle=False``) and save at step 3; the
checkpoint-3 of one is converted and resumed by the other for steps 4 and 5; the result is compared, weight by weight,
with the run that never moved (the one that wrote the checkpoint, as it went on). For contrast, transformers' Trainer
resumes the same checkpoint with a fresh optimizer state in ``optimizer.pt``.

The two models' losses are not written alike: transformers' ``LlamaForCausalLM`` shifts the labels (token t predicts
label t+1) and its Trainer divides the summed loss by the count of labels != -100 before the shift; PaddleFormers'
takes label t for token t and divides by its own count. So each side gets the labels that make the same loss:
``[-100, ids[1:]]`` for transformers, ``[ids[1:], -100]`` for PaddleFormers. Neither Trainer finds an RNG file it can
use after the move (the converter does not carry it over; both log that and go on); the tiny Llama has no dropout and
the data order is fixed, so nothing random is drawn after the resume.
"""
from __future__ import annotations

import functools
import shutil

import numpy as np
import pytest
import torch

import library_models as L
import paddle
from padiff_lite import assign_weight, convert_checkpoint
from padiff_lite.errors import CheckpointError

LR, WARMUP, TOTAL, DONE, BATCH, WD, ITEMS = 1e-3, 2, 5, 3, 2, 0.01, 16
AGREE = 1e-5  # measured: 1.2e-7 both directions after the 2 resumed steps (a fresh optimizer: 1.1e-3)
STATE_MATTERS = 1e-4


def ids_of(i):
    return L.ids(1, 7, seed=100 + i)[0]


class HFItems(torch.utils.data.Dataset):
    def __len__(self):
        return ITEMS

    def __getitem__(self, i):
        ids = ids_of(i)
        return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(np.concatenate([[-100], ids[1:]]))}


class PFItems(paddle.io.Dataset):
    def __len__(self):
        return ITEMS

    def __getitem__(self, i):
        ids = ids_of(int(i))
        return {"input_ids": ids, "labels": np.concatenate([ids[1:], [-100]])}


def hf_args(out, **kw):
    from transformers import TrainingArguments

    settings = dict(output_dir=str(out), per_device_train_batch_size=BATCH, max_steps=TOTAL, learning_rate=LR,
                    warmup_steps=WARMUP, lr_scheduler_type="linear", weight_decay=WD, max_grad_norm=0.0,
                    optim="adamw_torch", logging_steps=100, save_strategy="steps", save_steps=1000, report_to="none",
                    use_cpu=True, seed=0, train_sampling_strategy="sequential", dataloader_num_workers=0,
                    disable_tqdm=True)
    return TrainingArguments(**{**settings, **kw})


def pf_args(out, **kw):
    from paddleformers.trainer import TrainingArguments

    settings = dict(output_dir=str(out), per_device_train_batch_size=BATCH, max_steps=TOTAL, learning_rate=LR,
                    warmup_steps=WARMUP, lr_scheduler_type="linear", weight_decay=WD, max_grad_norm=0.0,
                    logging_steps=100, save_steps=1000, report_to="none", device="cpu", seed=0, amp_master_grad=False,
                    save_checkpoint_format="unified_checkpoint", load_checkpoint_format="unified_checkpoint",
                    dataloader_num_workers=0, dataloader_shuffle=False, disable_tqdm=True)
    return TrainingArguments(**{**settings, **kw})


def hf_optimizer_factory(out):
    """The (optimizer, scheduler) transformers' Trainer builds for these arguments (its create_optimizer_and_scheduler
    step by step: the model handed over is on the meta device, which a Trainer would try to move): what a
    PaddleFormers checkpoint is written into (param groups and hyperparameters)."""
    def build(model):
        from transformers import Trainer, get_scheduler

        args = hf_args(out)
        decay = set(Trainer.get_decay_parameter_names(None, model))
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [{"params": [p for n, p in named if n in decay], "weight_decay": args.weight_decay},
                  {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
        opt = cls(groups, **kwargs)
        return opt, get_scheduler(args.lr_scheduler_type, opt, num_warmup_steps=args.get_warmup_steps(TOTAL),
                                  num_training_steps=TOTAL)
    return build


def recording(monkeypatch, model, to_numpy):
    """The input_ids each forward call of the model's class gets, in order."""
    batches, forward = [], type(model).forward

    @functools.wraps(forward)  # transformers' Trainer drops the batch keys its forward's signature does not name
    def record(self, *args, **kwargs):
        batches.append(to_numpy(kwargs["input_ids"]).copy())
        return forward(self, *args, **kwargs)
    monkeypatch.setattr(type(model), "forward", record)
    return batches


def hf_train(model, out, resume=None, monkeypatch=None, **kw):
    from transformers import Trainer

    batches = recording(monkeypatch, model, lambda t: t.numpy()) if monkeypatch else None
    trainer = Trainer(model=model, args=hf_args(out, **kw), train_dataset=HFItems())
    trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
    assert trainer.state.global_step == TOTAL
    return trainer, batches


def pf_train(model, out, resume=None, monkeypatch=None, **kw):
    from paddleformers.trainer import Trainer

    batches = recording(monkeypatch, model, lambda t: t.numpy()) if monkeypatch else None
    trainer = Trainer(model=model, args=pf_args(out, **kw), train_dataset=PFItems())
    trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
    assert trainer.state.global_step == TOTAL
    return trainer, batches


def with_fresh_optimizer(src, dst):
    """A copy of a transformers checkpoint whose optimizer.pt holds a new AdamW's (empty) state: the resume that
    keeps the weights and the schedule but restarts the moments."""
    shutil.copytree(src, dst)
    model = L.torch_llama(seed=4)
    opt, _ = hf_optimizer_factory(dst.parent / "fresh-args")(model)
    torch.save(opt.state_dict(), dst / "optimizer.pt")
    return dst


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory):
    """transformers' Trainer: 5 steps, checkpoint at step 3 (the run that never moves)."""
    out = tmp_path_factory.mktemp("hf-run")
    trainer, _ = hf_train(L.torch_llama(), out, save_steps=DONE)
    return out / f"checkpoint-{DONE}", {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.fixture(scope="module")
def pf_run(tmp_path_factory):
    """PaddleFormers' Trainer: 5 steps, checkpoint at step 3 (the run that never moves)."""
    out = tmp_path_factory.mktemp("pf-run")
    trainer, _ = pf_train(L.paddle_llama(seed=1), out, save_steps=DONE)
    back = L.torch_llama(seed=4)
    assign_weight(trainer.model, back)
    return out / f"checkpoint-{DONE}", back.state_dict()


def test_transformers_trainer_checkpoint_resumes_in_paddleformers_trainer(tmp_path, monkeypatch, hf_run):
    src, never_moved = hf_run
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json", "rng_state.pth"} <= {
        p.name for p in src.iterdir()}
    report = convert_checkpoint(src, tmp_path / "pf-checkpoint", to="paddleformers")
    n_params = len(list(L.torch_llama().parameters()))
    assert report.optimizer.moved == report.optimizer.parameters == n_params
    assert report.optimizer.steps == [DONE] and report.global_step == DONE
    assert "rng_state.pth was not carried over" in str(report)

    p_model = L.paddle_llama(seed=9)  # other weights: the resume loads the checkpoint's
    pf_trainer, pf_batches = pf_train(p_model, tmp_path / "pf", resume=tmp_path / "pf-checkpoint",
                                      monkeypatch=monkeypatch)
    assert len(pf_batches) == TOTAL - DONE
    for s, got in enumerate(pf_batches):  # the items the run that never moved took at steps 4 and 5
        assert np.array_equal(got, np.stack([ids_of(BATCH * (DONE + s) + k) for k in range(BATCH)]))
    back = L.torch_llama(seed=4)
    assign_weight(p_model, back)
    moved = max_diff(never_moved, back.state_dict())

    fresh, _ = hf_train(L.torch_llama(seed=4), tmp_path / "fresh",
                        resume=with_fresh_optimizer(src, tmp_path / "fresh-checkpoint"))
    differs = max_diff(never_moved, fresh.model.state_dict())
    print(f"transformers -> PaddleFormers Trainer: max |diff| {moved:.2e} after {TOTAL - DONE} resumed steps "
          f"(a fresh optimizer: {differs:.2e})")
    assert moved < AGREE, f"PaddleFormers' resumed run differs from transformers' by {moved:.2e}"
    assert differs > STATE_MATTERS, f"a fresh optimizer differs by only {differs:.2e}"
    assert float(pf_trainer.lr_scheduler.get_lr()) == pytest.approx(0.0, abs=1e-12)  # the linear decay's end


def test_paddleformers_trainer_checkpoint_resumes_in_transformers_trainer(tmp_path, monkeypatch, pf_run):
    src, never_moved = pf_run
    out = tmp_path / "hf-checkpoint"
    report = convert_checkpoint(src, out, to="transformers", optimizer=hf_optimizer_factory(tmp_path / "args"))
    assert report.optimizer.moved == report.optimizer.parameters and report.optimizer.steps == [DONE]
    assert "rng_state_0.pth was not carried over" in str(report)

    t_model = L.torch_llama(seed=4)  # other weights: the resume loads the checkpoint's
    trainer, hf_batches = hf_train(t_model, tmp_path / "hf", resume=out, monkeypatch=monkeypatch)
    assert len(hf_batches) == TOTAL - DONE
    for s, got in enumerate(hf_batches):
        assert np.array_equal(got, np.stack([ids_of(BATCH * (DONE + s) + k) for k in range(BATCH)]))
    moved = max_diff(never_moved, trainer.model.state_dict())
    monkeypatch.undo()

    fresh, _ = hf_train(L.torch_llama(seed=4), tmp_path / "fresh",
                        resume=with_fresh_optimizer(out, tmp_path / "fresh-checkpoint"))
    differs = max_diff(never_moved, fresh.model.state_dict())
    print(f"PaddleFormers -> transformers Trainer: max |diff| {moved:.2e} after {TOTAL - DONE} resumed steps "
          f"(a fresh optimizer: {differs:.2e})")
    assert moved < AGREE, f"transformers' resumed run differs from PaddleFormers' by {moved:.2e}"
    assert differs > STATE_MATTERS, f"a fresh optimizer differs by only {differs:.2e}"
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


def test_refuses_a_trainer_folder_without_its_optimizer(tmp_path, hf_run):
    src = shutil.copytree(hf_run[0], tmp_path / f"checkpoint-{DONE}")
    (src / "optimizer.pt").unlink()
    with pytest.raises(CheckpointError, match="optimizer.pt missing"):
        convert_checkpoint(src, tmp_path / "out", to="paddleformers")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".padiff-tmp-")]


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
        convert_checkpoint(src, tmp_path / "out", to="transformers", optimizer=hf_optimizer_factory(tmp_path / "args"))
    assert not (tmp_path / "out").exists()


def test_a_factory_that_moves_the_meta_model_is_told_how_to_build_the_optimizer(tmp_path, pf_run):
    """Constructing transformers' Trainer moves the model to its device; the converter's model has no storage."""
    def via_trainer(model):
        from transformers import Trainer

        trainer = Trainer(model=model, args=hf_args(tmp_path / "args"))
        trainer.create_optimizer_and_scheduler(num_training_steps=TOTAL)
        return trainer.optimizer, trainer.lr_scheduler
    with pytest.raises(CheckpointError, match="meta device.*get_optimizer_cls_and_kwargs"):
        convert_checkpoint(pf_run[0], tmp_path / "out", to="transformers", optimizer=via_trainer)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".padiff-tmp-")]
