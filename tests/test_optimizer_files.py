"""Optimizer and scheduler checkpoint files (issue 29 item 2): ``convert`` torch ``optimizer.state_dict()`` files
<-> paddle ``.pdopt`` files, with the model factories saying which state belongs to which parameter.

One side trains 3 steps (with a step schedule) and saves its optimizer (and scheduler); the file is converted;
a model of the other framework, built as a fresh process builds it, gets the weights and loads the converted
file with its own framework's loader (``opt.set_state_dict(paddle.load(...))`` / ``opt.load_state_dict(
torch.load(...))``); both sides take 3 more steps on the same batches and every weight is compared (and the
learning rates). A fresh optimizer on the other side visibly differs, so the state is what makes them agree.
Refusals name the file, the key and the fix, and write nothing.
"""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import paddle
import pytest
import torch

from test_optimizer_state import BATCHES, model, weights
from padiff_lite import assign_weight, convert_checkpoint
from test_parts import fused_pool  # noqa: F401 (the fixture)
from padiff_lite.cli import main
from padiff_lite.errors import CheckpointError

AGREE = 1e-5  # measured: about 1e-7 (float32 rounding of the two implementations)
STATE_MATTERS = 1e-3
HERE = Path(__file__).resolve()
LR, STEP, GAMMA = 0.02, 2, 0.5


def torch_model():
    return model("torch", 1)


def paddle_model():
    return model("paddle", 2)


def fresh_paddle(seed=2):
    """A paddle model named as in a process that builds it first (paddle numbers parameters per process)."""
    with paddle.utils.unique_name.guard():
        return model("paddle", seed)


def make(fw, net, kind):
    if fw == "torch":
        opt = (torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=0.01, betas=(0.8, 0.99)) if kind == "adamw"
               else torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9))
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=STEP, gamma=GAMMA)
    sched = paddle.optimizer.lr.StepDecay(LR, step_size=STEP, gamma=GAMMA)
    opt = (paddle.optimizer.AdamW(learning_rate=sched, parameters=net.parameters(), weight_decay=0.01, beta1=0.8,
                                  beta2=0.99) if kind == "adamw"
           else paddle.optimizer.Momentum(learning_rate=sched, momentum=0.9, parameters=net.parameters()))
    return opt, sched


def torch_adamw(net):
    return make("torch", net, "adamw")


def torch_momentum(net):
    return make("torch", net, "momentum")


def train(fw, net, opt, sched, batches):
    lrs = []
    for x, y in batches:
        if fw == "torch":
            loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
            opt.zero_grad()
            loss.backward()
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
        else:
            loss = paddle.nn.functional.cross_entropy(net(paddle.to_tensor(x)), paddle.to_tensor(y))
            opt.clear_grad()
            loss.backward()
            lrs.append(opt.get_lr())
            opt.step()
        sched.step()
    return lrs


def worst(a, b) -> float:
    wa, wb = weights(a), weights(b)
    return max(float(np.abs(wa[k].astype("float64") - wb[k]).max()) for k in wa)


@pytest.mark.parametrize("kind", ["adamw", "momentum"])
def test_torch_files_to_pdopt_and_training_continues(tmp_path, kind):
    a = torch_model()
    opt_a, sched_a = make("torch", a, kind)
    train("torch", a, opt_a, sched_a, BATCHES[:3])
    torch.save(opt_a.state_dict(), tmp_path / "optimizer.pt")
    torch.save(sched_a.state_dict(), tmp_path / "scheduler.pt")
    report = convert_checkpoint(tmp_path / "optimizer.pt", tmp_path / "optimizer.pdopt", torch_model, paddle_model,
                                scheduler=tmp_path / "scheduler.pt")
    assert report.moved == report.parameters == 6, str(report)
    assert report.schedule == {"last_epoch": 3, "lr": LR * GAMMA}

    with paddle.utils.unique_name.guard():  # paddle's side as a process of its own: model, optimizer, steps
        b = model("paddle", 2)
        assign_weight(a, b)
        opt_b, sched_b = make("paddle", b, kind)
        opt_b.set_state_dict(paddle.load(str(tmp_path / "optimizer.pdopt")))
        assert sched_b.last_epoch == 3 and opt_b.get_lr() == pytest.approx(LR * GAMMA)
        lr_a = train("torch", a, opt_a, sched_a, BATCHES[3:6])
        lr_b = train("paddle", b, opt_b, sched_b, BATCHES[3:6])
    c = paddle_model()  # the same move without the optimizer state
    assign_weight(a, c)
    opt_c, sched_c = make("paddle", c, kind)
    with warnings.catch_warnings():  # stepping a schedule ahead without its optimizer, on purpose
        warnings.simplefilter("ignore")
        for _ in range(3):
            sched_c.step()
    train("paddle", c, opt_c, sched_c, BATCHES[3:6])
    assert lr_a == pytest.approx(lr_b, rel=1e-12)
    moved, fresh = worst(a, b), worst(a, c)
    assert moved < AGREE, f"{kind}: after 3 more steps the converted run differs by {moved:.2e}"
    assert fresh > STATE_MATTERS, f"a fresh optimizer differs by only {fresh:.2e}"


@pytest.mark.parametrize("kind", ["adamw", "momentum"])
def test_pdopt_to_torch_files_and_training_continues(tmp_path, kind):
    a = fresh_paddle(1)
    opt_a, sched_a = make("paddle", a, kind)
    train("paddle", a, opt_a, sched_a, BATCHES[:3])
    paddle.save(opt_a.state_dict(), str(tmp_path / "optimizer.pdopt"))
    factory = torch_adamw if kind == "adamw" else torch_momentum
    report = convert_checkpoint(tmp_path / "optimizer.pdopt", tmp_path / "optimizer.pt", paddle_model, torch_model,
                                optimizer=factory, scheduler_out=tmp_path / "scheduler.pt")
    assert report.moved == report.parameters == 6, str(report)
    assert report.schedule == {"last_epoch": 3, "lr": LR * GAMMA}
    if kind == "adamw":
        assert report.steps == [3]

    b, c = torch_model(), torch_model()
    assign_weight(a, b)
    assign_weight(a, c)
    opt_b, sched_b = factory(b)
    opt_b.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    sched_b.load_state_dict(torch.load(tmp_path / "scheduler.pt", weights_only=True))
    opt_c, sched_c = factory(c)
    with warnings.catch_warnings():  # stepping a schedule ahead without its optimizer, on purpose
        warnings.simplefilter("ignore")
        for _ in range(3):
            sched_c.step()
    lr_a = train("paddle", a, opt_a, sched_a, BATCHES[3:6])
    lr_b = train("torch", b, opt_b, sched_b, BATCHES[3:6])
    train("torch", c, opt_c, sched_c, BATCHES[3:6])
    assert lr_a == pytest.approx(lr_b, rel=1e-12)
    moved, fresh = worst(b, a), worst(c, a)
    assert moved < AGREE, f"{kind}: after 3 more steps the converted run differs by {moved:.2e}"
    assert fresh > STATE_MATTERS, f"a fresh optimizer differs by only {fresh:.2e}"


def test_cli_converts_and_a_fresh_paddle_process_loads_it(tmp_path, capsys):
    """The command line, and a .pdopt loaded by a process of its own that builds the model first (no name guard:
    the names a real fresh process gives)."""
    a = torch_model()
    opt_a, sched_a = make("torch", a, "adamw")
    train("torch", a, opt_a, sched_a, BATCHES[:3])
    torch.save(opt_a.state_dict(), tmp_path / "optimizer.pt")
    torch.save(sched_a.state_dict(), tmp_path / "scheduler.pt")
    torch.save(a.state_dict(), tmp_path / "model.pt")
    assert main(["convert", str(tmp_path / "optimizer.pt"), str(tmp_path / "optimizer.pdopt"), "--base",
                 f"{HERE}:torch_model", "--raw", f"{HERE}:paddle_model", "--scheduler",
                 str(tmp_path / "scheduler.pt")]) == 0
    assert "state of 6 of 6 raw parameters moved" in capsys.readouterr().out
    np.save(tmp_path / "x.npy", BATCHES[3][0])
    np.save(tmp_path / "y.npy", BATCHES[3][1])
    script = f"""
import sys, numpy as np, paddle
sys.path.insert(0, {str(HERE.parent)!r})
import test_optimizer_files as T
net = T.model("paddle", 5)
opt, sched = T.make("paddle", net, "adamw")
import torch
sd = torch.load({str(tmp_path / 'model.pt')!r}, weights_only=True)
net.set_state_dict({{k: paddle.to_tensor(v.numpy().T if k == "fc.weight" else v.numpy()) for k, v in sd.items()}})
opt.set_state_dict(paddle.load({str(tmp_path / 'optimizer.pdopt')!r}))
x, y = np.load({str(tmp_path / 'x.npy')!r}), np.load({str(tmp_path / 'y.npy')!r})
loss = paddle.nn.functional.cross_entropy(net(paddle.to_tensor(x)), paddle.to_tensor(y))
loss.backward(); opt.step()
np.save({str(tmp_path / 'fc.npy')!r}, net.fc.weight.numpy().T)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    train("torch", a, opt_a, sched_a, BATCHES[3:4])
    diff = float(np.abs(np.load(tmp_path / "fc.npy") - a.fc.weight.detach().numpy()).max())
    assert diff < AGREE, diff


# -- refusals: file, key and fix named; nothing written ----------------------------------------------------------
def _torch_file(tmp_path, opt_fn, name="optimizer.pt"):
    a = torch_model()
    opt = opt_fn(a)
    train("torch", a, opt, torch.optim.lr_scheduler.StepLR(opt, 5), BATCHES[:2])
    torch.save(opt.state_dict(), tmp_path / name)
    return tmp_path / name


def _refused(src, dst, *args, match, **kw):
    with pytest.raises(CheckpointError, match=match) as exc:
        convert_checkpoint(src, dst, *args, **kw)
    assert not Path(dst).exists()
    assert not [p for p in Path(dst).parent.iterdir() if p.name.startswith(".padiff-tmp-")]
    return str(exc.value)


def test_refuses_param_groups_it_cannot_tell_apart(tmp_path):
    def two_groups(net):
        return torch.optim.AdamW([{"params": [net.fc.weight, net.conv.weight]},
                                  {"params": [p for n, p in net.named_parameters() if n not in ("fc.weight",
                                                                                                "conv.weight")]}])
    src = _torch_file(tmp_path, two_groups)
    msg = _refused(src, tmp_path / "o.pdopt", torch_model, paddle_model, match="2 param groups")
    assert "param_names" in msg and str(src) in msg


def test_named_param_groups_are_read_by_name(tmp_path):
    """torch >= 2.6 saves param_names for optimizers built from named parameters: any grouping is then known."""
    def named(net):
        ps = dict(net.named_parameters())
        return torch.optim.AdamW([{"params": [("fc.weight", ps["fc.weight"]), ("conv.bias", ps["conv.bias"])]},
                                  {"params": [(n, p) for n, p in ps.items() if n not in ("fc.weight", "conv.bias")],
                                   "weight_decay": 0.0}], lr=LR)
    a = torch_model()
    opt_a = named(a)
    train("torch", a, opt_a, torch.optim.lr_scheduler.StepLR(opt_a, 50), BATCHES[:3])
    torch.save(opt_a.state_dict(), tmp_path / "optimizer.pt")
    convert_checkpoint(tmp_path / "optimizer.pt", tmp_path / "optimizer.pdopt", torch_model, paddle_model)
    with paddle.utils.unique_name.guard():  # paddle's side as a process of its own
        b = model("paddle", 2)
        assign_weight(a, b)
        decay = [p.name for n, p in b.named_parameters() if n in ("fc.weight", "conv.bias")]
        opt_b = paddle.optimizer.AdamW(learning_rate=LR, parameters=b.parameters(), weight_decay=0.01,
                                       apply_decay_param_fun=lambda name: name in decay)
        opt_b.set_state_dict(paddle.load(str(tmp_path / "optimizer.pdopt")))
        train("torch", a, opt_a, torch.optim.lr_scheduler.StepLR(opt_a, 50), BATCHES[3:6])
        train("paddle", b, opt_b, paddle.optimizer.lr.StepDecay(LR, 50), BATCHES[3:6])
    assert worst(a, b) < AGREE


def test_refuses_amsgrad_state(tmp_path):
    src = _torch_file(tmp_path, lambda net: torch.optim.Adam(net.parameters(), amsgrad=True))
    msg = _refused(src, tmp_path / "o.pdopt", torch_model, paddle_model, match="max_exp_avg_sq")
    assert str(src) in msg


def test_refuses_pdopt_saved_with_other_parameter_names(tmp_path):
    paddle.nn.Linear(2, 2)  # a process that built other layers first: the model's names start further on
    a = model("paddle", 1)
    opt, sched = make("paddle", a, "adamw")
    train("paddle", a, opt, sched, BATCHES[:2])
    paddle.save(opt.state_dict(), str(tmp_path / "optimizer.pdopt"))
    msg = _refused(tmp_path / "optimizer.pdopt", tmp_path / "optimizer.pt", paddle_model, torch_model,
                   optimizer=torch_adamw, match="name no parameter of the base model")
    assert any(p.name in msg for p in a.parameters()) and "base_model=model" in msg
    # the very model object the optimizer held says its names: then it converts
    report = convert_checkpoint(tmp_path / "optimizer.pdopt", tmp_path / "optimizer.pt", a, torch_model,
                                optimizer=torch_adamw)
    assert report.moved == 6


def test_refuses_pdopt_to_torch_without_the_torch_optimizer(tmp_path):
    a = fresh_paddle(1)
    opt, sched = make("paddle", a, "adamw")
    train("paddle", a, opt, sched, BATCHES[:2])
    paddle.save(opt.state_dict(), str(tmp_path / "optimizer.pdopt"))
    msg = _refused(tmp_path / "optimizer.pdopt", tmp_path / "optimizer.pt", paddle_model, torch_model,
                   match="--optimizer")
    assert "hyperparameter" in msg


def test_refuses_a_torch_schedule_that_differs_from_the_paddle_one(tmp_path):
    a = fresh_paddle(1)
    opt, sched = make("paddle", a, "adamw")
    train("paddle", a, opt, sched, BATCHES[:3])
    paddle.save(opt.state_dict(), str(tmp_path / "optimizer.pdopt"))

    def other(net):
        o = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=0.01, betas=(0.8, 0.99))
        return o, torch.optim.lr_scheduler.StepLR(o, step_size=STEP, gamma=0.1)
    _refused(tmp_path / "optimizer.pdopt", tmp_path / "optimizer.pt", paddle_model, torch_model, optimizer=other,
             scheduler_out=tmp_path / "scheduler.pt", match="the schedules differ")
    assert not (tmp_path / "scheduler.pt").exists()


def test_refuses_other_betas(tmp_path):
    a = fresh_paddle(1)
    opt, sched = make("paddle", a, "adamw")
    train("paddle", a, opt, sched, BATCHES[:3])
    paddle.save(opt.state_dict(), str(tmp_path / "optimizer.pdopt"))
    _refused(tmp_path / "optimizer.pdopt", tmp_path / "optimizer.pt", paddle_model, torch_model,
             optimizer=lambda net: torch.optim.AdamW(net.parameters(), lr=LR), match="betas")


# -- a fused qkv: the moments are cut like the weight, through files ---------------------------------------------
@pytest.mark.parametrize("src", ["torch", "paddle"])
def test_fused_qkv_moments_through_files(fused_pool, tmp_path, src):
    from test_optimizer_state import _train_block, np_of, optimizer
    from test_parts import FusedBlock, SplitBlock

    dst = "paddle" if src == "torch" else "torch"
    build = {"torch": SplitBlock, "paddle": FusedBlock}
    a = build[src]()
    opt_a = optimizer(src, a, "adamw")
    _train_block(a, opt_a, 3)
    files = {"torch": tmp_path / "optimizer.pt", "paddle": tmp_path / "optimizer.pdopt"}
    if src == "torch":
        torch.save(opt_a.state_dict(), files["torch"])
    else:
        paddle.save(opt_a.state_dict(), str(files["paddle"]))
    # a paddle source: the model object itself says its parameter names (this test process built other layers first)
    report = convert_checkpoint(files[src], files[dst], a if src == "paddle" else build[src], build[dst],
                                optimizer=(lambda net: optimizer("torch", net, "adamw")) if dst == "torch" else None)
    assert report.moved == report.parameters
    with paddle.utils.unique_name.guard():  # the loading side as a process of its own
        b = build[dst]()
        assign_weight(a, b)
        opt_b = optimizer(dst, b, "adamw")
        if dst == "paddle":
            opt_b.set_state_dict(paddle.load(str(files["paddle"])))
        else:
            opt_b.load_state_dict(torch.load(files["torch"], weights_only=True))
        _train_block(b, opt_b, 3)
    _train_block(a, opt_a, 3)
    back = build[src]()
    assign_weight(b, back)  # into the source's layout, to compare weight by weight
    diff = max(float(np.abs(np_of(v) - np_of(back.state_dict()[k])).max()) for k, v in a.state_dict().items())
    assert diff < AGREE, f"{src} -> {dst}: {diff:.2e}"


def test_refuses_a_paddle_optimizer_with_other_betas(tmp_path):
    """torch -> paddle with the paddle optimizer named: its betas must be the torch run's (the powers are written for
    those)."""
    src = _torch_file(tmp_path, lambda net: make("torch", net, "adamw")[0])
    msg = _refused(src, tmp_path / "o.pdopt", torch_model, paddle_model, match="betas",
                   optimizer=lambda net: paddle.optimizer.AdamW(parameters=net.parameters()))
    assert "(0.8, 0.99)" in msg
    report = convert_checkpoint(src, tmp_path / "o.pdopt", torch_model, paddle_model,
                                optimizer=lambda net: make("paddle", net, "adamw")[0])
    assert report.moved == 6


def test_a_pdopt_of_adam_accumulators_says_it_was_read_as_adam_state(tmp_path):
    """A .pdopt names no optimizer class and paddle Lamb keeps Adam's accumulators: a Lamb file converts (its moments
    are Adam's moments) and the report says under which assumption, rather than treating it silently as Adam's."""
    a = fresh_paddle(1)
    opt_a = paddle.optimizer.Lamb(learning_rate=LR, parameters=a.parameters(), beta1=0.8, beta2=0.99,
                                  lamb_weight_decay=0.0)
    x, y = BATCHES[0]
    loss = paddle.nn.functional.cross_entropy(a(paddle.to_tensor(x)), paddle.to_tensor(y))
    loss.backward()
    opt_a.step()
    paddle.save(opt_a.state_dict(), str(tmp_path / "optimizer.pdopt"))
    report = convert_checkpoint(tmp_path / "optimizer.pdopt", tmp_path / "optimizer.pt", paddle_model, torch_model,
                                optimizer=torch_adamw)
    assert report.moved == report.parameters == 6, str(report)
    assert any("paddle's Lamb keeps the same accumulators" in n for n in report.notes), report.notes
    # the moments moved are Lamb's own: the first moment of every parameter equals (1 - beta1) * its gradient
    state = torch.load(tmp_path / "optimizer.pt", weights_only=True)["state"]
    grads = [p.grad.numpy() for p in a.parameters()]
    m1 = sorted(float(np.abs(v["exp_avg"].numpy()).sum()) for v in state.values())
    expect = sorted(float(np.abs(0.2 * g).sum()) for g in grads)
    assert np.allclose(m1, expect, rtol=1e-5)
