"""Every optimizer family and schedule the in-memory move covers, through files (issue 29 item 2).

Optimizers: one side trains 3 steps with a constant learning rate, saves ``optimizer.state_dict()``
(``torch.save`` / ``paddle.save``), the file is converted, the other framework's model gets the weights and loads
the converted file with its own loader; both sides take 3 more steps on the same batches and every weight is
compared. Schedules: AdamW driven by each covered schedule, the torch ``scheduler.state_dict()`` file <-> the
``.pdopt``'s ``LR_Scheduler``; the learning rate of every further step is compared too. Refusals name the file, the
key and the fix, and write nothing.
"""
from __future__ import annotations

import math

import paddle
import pytest
import torch

from test_optimizer_files import _refused, fresh_paddle, paddle_model, torch_model
from test_optimizer_state import AGREE, BATCHES, KINDS, model, optimizer, train, worst
from test_scheduler_state import PAIRS, setup, train as train_sched
from padiff_lite import assign_weight, convert_checkpoint

STATE_MATTERS = 1e-4  # a fresh optimizer on the other side differs by more (measured per family in the report)


def _load(fw, opt, path):
    if fw == "paddle":
        opt.set_state_dict(paddle.load(str(path)))
    else:
        opt.load_state_dict(torch.load(path, weights_only=True))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("src", ["torch", "paddle"])
def test_every_family_continues_step_for_step_through_files(tmp_path, src, kind):
    dst = "paddle" if src == "torch" else "torch"
    files = {"torch": tmp_path / "optimizer.pt", "paddle": tmp_path / "optimizer.pdopt"}
    a = torch_model() if src == "torch" else fresh_paddle(1)
    opt_a = optimizer(src, a, kind)
    train(src, a, opt_a, BATCHES[:3])
    if src == "torch":
        torch.save(opt_a.state_dict(), files["torch"])
        report = convert_checkpoint(files["torch"], files["paddle"], torch_model, paddle_model)
    else:
        paddle.save(opt_a.state_dict(), str(files["paddle"]))
        report = convert_checkpoint(files["paddle"], files["torch"], paddle_model, torch_model,
                                    optimizer=lambda net: optimizer("torch", net, kind))
    assert report.moved == report.parameters == 6, str(report)
    with paddle.utils.unique_name.guard():  # the loading side as a process of its own
        b = model(dst, 2)
        assign_weight(a, b)
        opt_b = optimizer(dst, b, kind)
        _load(dst, opt_b, files[dst])
        c = model(dst, 3)  # the same move without the optimizer state
        assign_weight(a, c)
        opt_c = optimizer(dst, c, kind)
        train(src, a, opt_a, BATCHES[3:6])
        train(dst, b, opt_b, BATCHES[3:6])
        train(dst, c, opt_c, BATCHES[3:6])
    moved, fresh = worst(a, b), worst(a, c)
    print(f"{kind} {src}->{dst}: moved {moved:.2e}, fresh {fresh:.2e}")
    assert moved < AGREE, f"{kind} {src}->{dst}: after 3 more steps the converted run differs by {moved:.2e}"
    assert fresh > STATE_MATTERS, f"{kind}: a fresh optimizer differs by only {fresh:.2e}"


@pytest.mark.parametrize("pair", list(PAIRS))
@pytest.mark.parametrize("src", ["torch", "paddle"])
def test_every_schedule_continues_step_for_step_through_files(tmp_path, src, pair):
    dst = "paddle" if src == "torch" else "torch"
    a = torch_model() if src == "torch" else fresh_paddle(1)
    opt_a, sched_a = setup(src, a, pair)
    train_sched(src, a, opt_a, sched_a, BATCHES[:3])
    if src == "torch":
        torch.save(opt_a.state_dict(), tmp_path / "optimizer.pt")
        torch.save(sched_a.state_dict(), tmp_path / "scheduler.pt")
        report = convert_checkpoint(tmp_path / "optimizer.pt", tmp_path / "optimizer.pdopt", torch_model,
                                    paddle_model, scheduler=tmp_path / "scheduler.pt",
                                    optimizer=lambda net: setup("paddle", net, pair))
    else:
        paddle.save(opt_a.state_dict(), str(tmp_path / "optimizer.pdopt"))
        report = convert_checkpoint(tmp_path / "optimizer.pdopt", tmp_path / "optimizer.pt", paddle_model,
                                    torch_model, optimizer=lambda net: setup("torch", net, pair),
                                    scheduler_out=tmp_path / "scheduler.pt")
    assert report.schedule["last_epoch"] == 3, str(report)
    with paddle.utils.unique_name.guard():
        b = model(dst, 2)
        assign_weight(a, b)
        opt_b, sched_b = setup(dst, b, pair)
        if dst == "paddle":
            opt_b.set_state_dict(paddle.load(str(tmp_path / "optimizer.pdopt")))
        else:
            opt_b.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
            sched_b.load_state_dict(torch.load(tmp_path / "scheduler.pt", weights_only=True))
        assert sched_b.last_epoch == 3
        lrs_a = train_sched(src, a, opt_a, sched_a, BATCHES[3:6])
        lrs_b = train_sched(dst, b, opt_b, sched_b, BATCHES[3:6])
    lr_gap = max(abs(x - y) / abs(x) for x, y in zip(lrs_a, lrs_b))
    moved = worst(a, b)
    print(f"{pair} {src}->{dst}: lr rel gap {lr_gap:.1e}, weights {moved:.2e}, lrs {lrs_a}")
    assert all(math.isclose(x, y, rel_tol=1e-6) for x, y in zip(lrs_a, lrs_b)), (lrs_a, lrs_b)
    assert moved < AGREE, f"{pair} {src}->{dst}: after 3 more steps the converted run differs by {moved:.2e}"
