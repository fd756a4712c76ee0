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
from test_scheduler_state import PAIRS, current_lr, setup, train as train_sched
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
    fresh_lr = current_lr(dst, setup(dst, model(dst, 4), pair)[0])  # where the schedule starts: not moved
    assert not math.isclose(lrs_b[0], fresh_lr, rel_tol=1e-3), (lrs_b, fresh_lr)
    assert moved < AGREE, f"{pair} {src}->{dst}: after 3 more steps the converted run differs by {moved:.2e}"


# -- what the in-memory move refuses is refused through files: file, key and fix named, nothing written -----------
def _saved(tmp_path, fw, make_opt, sched=None):
    """A file of ``fw``'s optimizer after 2 steps (and its scheduler, a torch one as a file of its own)."""
    a = torch_model() if fw == "torch" else fresh_paddle(1)
    opt = make_opt(a)
    sch = sched(opt) if sched is not None else None
    train(fw, a, opt, BATCHES[:2])
    if fw == "torch":
        torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
        if sch is not None:
            torch.save(sch.state_dict(), tmp_path / "scheduler.pt")
        return tmp_path / "optimizer.pt"
    paddle.save(opt.state_dict(), str(tmp_path / "optimizer.pdopt"))
    return tmp_path / "optimizer.pdopt"


def test_refuses_torch_adagrad_lr_decay_both_ways(tmp_path):
    src = _saved(tmp_path, "torch", lambda net: torch.optim.Adagrad(net.parameters(), lr=0.01, lr_decay=0.1))
    msg = _refused(src, tmp_path / "o.pdopt", torch_model, paddle_model, match="lr_decay")
    assert str(src) in msg and "use lr_decay=0" in msg
    src = _saved(tmp_path, "paddle", lambda net: optimizer("paddle", net, "adagrad"))
    msg = _refused(src, tmp_path / "o.pt", paddle_model, torch_model, match="lr_decay",
                   optimizer=lambda net: torch.optim.Adagrad(net.parameters(), lr=0.01, lr_decay=0.1))
    assert "use lr_decay=0" in msg


def test_refuses_rmsprop_momentum_with_a_schedule_both_ways(tmp_path):
    src = _saved(tmp_path, "torch", lambda net: optimizer("torch", net, "rmsprop"),
                 sched=lambda o: torch.optim.lr_scheduler.StepLR(o, 2))
    msg = _refused(src, tmp_path / "o.pdopt", torch_model, paddle_model, match="momentum",
                   scheduler=tmp_path / "scheduler.pt")
    assert f"{src}: param_groups[0]['momentum']" in msg and "constant learning rate or momentum=0" in msg

    def scheduled(net):
        return optimizer("paddle", net, "rmsprop", lr=paddle.optimizer.lr.StepDecay(0.01, 2))
    src = _saved(tmp_path, "paddle", scheduled)
    msg = _refused(src, tmp_path / "o.pt", paddle_model, torch_model, match="LR_Scheduler",
                   optimizer=lambda net: optimizer("torch", net, "rmsprop"))
    assert "constant learning rate or momentum=0" in msg
    # momentum=0 (centered): the buffer is not used, the same files convert
    src = _saved(tmp_path, "paddle", lambda net: optimizer("paddle", net, "rmsprop_centered",
                                                           lr=paddle.optimizer.lr.StepDecay(0.01, 2)))
    report = convert_checkpoint(src, tmp_path / "o.pt", paddle_model, torch_model,
                                optimizer=lambda net: optimizer("torch", net, "rmsprop_centered"))
    assert report.moved == 6 and any("RMSProp epsilon" in n for n in report.notes), report.notes


def test_refuses_one_cycle_that_cycles_momentum_both_ways(tmp_path):
    src = _saved(tmp_path, "torch", lambda net: optimizer("torch", net, "adamw"),
                 sched=lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.01, total_steps=10))
    msg = _refused(src, tmp_path / "o.pdopt", torch_model, paddle_model, match="cycle_momentum",
                   scheduler=tmp_path / "scheduler.pt")
    assert str(tmp_path / "scheduler.pt") in msg and "cycle_momentum=False" in msg
    a = fresh_paddle(1)
    opt_a, sched_a = setup("paddle", a, "onecycle")
    train_sched("paddle", a, opt_a, sched_a, BATCHES[:2])
    paddle.save(opt_a.state_dict(), str(tmp_path / "p.pdopt"))

    def cycling(net):
        o = optimizer("torch", net, "adamw")
        return o, torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.01, total_steps=10, pct_start=0.4)
    _refused(tmp_path / "p.pdopt", tmp_path / "o.pt", paddle_model, torch_model, optimizer=cycling,
             scheduler_out=tmp_path / "s.pt", match="cycle_momentum=False")
    assert not (tmp_path / "s.pt").exists()


def test_refuses_paddle_amsgrad_state(tmp_path):
    src = _saved(tmp_path, "paddle", lambda net: optimizer("paddle", net, "adam", amsgrad=True))
    msg = _refused(src, tmp_path / "o.pt", paddle_model, torch_model, match="moment2_max",
                   optimizer=lambda net: optimizer("torch", net, "adam"))
    assert str(src) in msg and "amsgrad=False" in msg


@pytest.mark.parametrize("pair", ["step", "cosine", "onecycle", "lambda"])
def test_refuses_a_paddle_schedule_that_differs_from_the_torch_file(tmp_path, pair):
    """torch -> paddle with the paddle scheduler named: the torch file's settings are read by sched_state's tables
    and compared, as in memory."""
    from test_scheduler_state import OTHER

    a = torch_model()
    opt_a, sched_a = setup("torch", a, pair)
    train_sched("torch", a, opt_a, sched_a, BATCHES[:3])
    torch.save(opt_a.state_dict(), tmp_path / "optimizer.pt")
    torch.save(sched_a.state_dict(), tmp_path / "scheduler.pt")
    kw = {"f": (lambda e: 0.5 ** e)} if pair == "lambda" else {"n": OTHER[pair]}
    msg = _refused(tmp_path / "optimizer.pt", tmp_path / "o.pdopt", torch_model, paddle_model,
                   scheduler=tmp_path / "scheduler.pt", optimizer=lambda net: setup("paddle", net, pair, **kw),
                   match="schedule (setting )?differs")
    assert str(tmp_path / "scheduler.pt") in msg


def test_refuses_a_torch_schedule_file_of_another_kind(tmp_path):
    a = torch_model()
    opt_a, sched_a = setup("torch", a, "cosine")
    train_sched("torch", a, opt_a, sched_a, BATCHES[:3])
    torch.save(opt_a.state_dict(), tmp_path / "optimizer.pt")
    torch.save(sched_a.state_dict(), tmp_path / "scheduler.pt")
    msg = _refused(tmp_path / "optimizer.pt", tmp_path / "o.pdopt", torch_model, paddle_model,
                   scheduler=tmp_path / "scheduler.pt", optimizer=lambda net: setup("paddle", net, "step"),
                   match="not a torch StepLR state")
    assert "no 'step_size' in the file" in msg


def test_refuses_a_torch_optimizer_or_scheduler_of_another_kind(tmp_path):
    """paddle -> torch: the factory's torch optimizer must be the file's family, its scheduler a covered one."""
    src = _saved(tmp_path, "paddle", lambda net: optimizer("paddle", net, "adamax"))
    msg = _refused(src, tmp_path / "o.pt", paddle_model, torch_model, match="holds Adamax state",
                   optimizer=lambda net: optimizer("torch", net, "adam"))
    assert "build a torch Adamax" in msg

    def exponential(net):
        o = optimizer("torch", net, "adamax")
        return o, torch.optim.lr_scheduler.ExponentialLR(o, 0.9)
    _refused(src, tmp_path / "o.pt", paddle_model, torch_model, optimizer=exponential, match="ExponentialLR")


def torch_adamax_step(net):
    o = optimizer("torch", net, "adamax", lr=0.01)
    return o, torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5)


def test_cli_converts_paddle_adamax_and_its_schedule_to_torch(tmp_path, capsys):
    from pathlib import Path

    from padiff_lite.cli import main

    here = Path(__file__).resolve()
    other = Path(__file__).resolve().parent / "test_optimizer_files.py"
    a = fresh_paddle(1)
    sched_a = paddle.optimizer.lr.StepDecay(0.01, step_size=2, gamma=0.5)
    opt_a = optimizer("paddle", a, "adamax", lr=sched_a)
    train_sched("paddle", a, opt_a, sched_a, BATCHES[:3])
    paddle.save(opt_a.state_dict(), str(tmp_path / "optimizer.pdopt"))
    assert main(["convert", str(tmp_path / "optimizer.pdopt"), str(tmp_path / "optimizer.pt"), "--base",
                 f"{other}:paddle_model", "--raw", f"{other}:torch_model", "--optimizer", f"{here}:torch_adamax_step",
                 "--scheduler-out", str(tmp_path / "scheduler.pt")]) == 0
    out = capsys.readouterr().out
    assert "Adamax: state of 6 of 6 raw parameters moved (steps taken: 3)" in out, out
    b = model("torch", 2)
    assign_weight(a, b)
    opt_b, sched_b = torch_adamax_step(b)
    opt_b.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    sched_b.load_state_dict(torch.load(tmp_path / "scheduler.pt", weights_only=True))
    lrs_a = train_sched("paddle", a, opt_a, sched_a, BATCHES[3:6])
    lrs_b = train_sched("torch", b, opt_b, sched_b, BATCHES[3:6])
    assert lrs_a == pytest.approx(lrs_b, rel=1e-12)
    assert worst(b, a) < AGREE
