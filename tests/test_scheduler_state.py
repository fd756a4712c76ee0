"""The learning-rate schedule's position moves with the weights (issue 29 item 1): ``assign_weight(...,
optimizers=(...), schedulers=(base_sched, raw_sched))``.

For each covered scheduler pair and both directions: AdamW with the schedule trains 3 steps in one framework, weights,
optimizer state and schedule position move, both sides take 3 more steps on the same batches: the learning rate is
equal at every step and the weights agree; the same move without schedulers= visibly differs (the raw schedule
starts over). A schedule that differs is refused naming both values, with model, optimizer and scheduler untouched.
"""
from __future__ import annotations

import math

import paddle
import pytest
import torch

from helpers import DIRECTION_IDS, DIRECTIONS, snapshot, assert_unchanged
from test_optimizer_state import AGREE, BATCHES, assert_state_unchanged, model, opt_state, optimizer, worst
from padiff_lite import TransferError, assign_weight

LR = 0.01
TS, PS = torch.optim.lr_scheduler, paddle.optimizer.lr


def lam(e):
    return 0.8 ** e


def other_lam(e):
    return 0.8 ** e if e < 4 else 0.5  # the same as lam up to step 3: differs only a little ahead


# pair -> (torch scheduler from an optimizer, paddle scheduler), the same schedule
PAIRS = {
    "lambda": (lambda o, **k: TS.LambdaLR(o, k.get("f", lam)), lambda **k: PS.LambdaDecay(LR, k.get("f", lam))),
    "step": (lambda o, **k: TS.StepLR(o, step_size=k.get("n", 2), gamma=0.5),
             lambda **k: PS.StepDecay(LR, step_size=k.get("n", 2), gamma=0.5)),
    "multistep": (lambda o, **k: TS.MultiStepLR(o, milestones=k.get("n", [2, 4]), gamma=0.3),
                  lambda **k: PS.MultiStepDecay(LR, milestones=k.get("n", [2, 4]), gamma=0.3)),
    "cosine": (lambda o, **k: TS.CosineAnnealingLR(o, T_max=k.get("n", 5), eta_min=1e-4),
               lambda **k: PS.CosineAnnealingDecay(LR, T_max=k.get("n", 5), eta_min=1e-4)),
    "linear": (lambda o, **k: TS.LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=k.get("n", 4)),
               lambda **k: PS.LinearLR(LR, total_steps=k.get("n", 4), start_factor=0.25, end_factor=1.0)),
    "warmup": (lambda o, **k: TS.LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=k.get("n", 4)),
               lambda **k: PS.LinearWarmup(LR, warmup_steps=k.get("n", 4), start_lr=LR * 0.25, end_lr=LR)),
    # total 10, pct 0.4: phases end at steps 3 and 9: the moved steps 3, 4, 5 cross from the rise to the annealing
    "onecycle": (lambda o, **k: TS.OneCycleLR(o, max_lr=LR, total_steps=k.get("n", 10), pct_start=0.4,
                                              cycle_momentum=False, div_factor=25.0, final_div_factor=1e3),
                 lambda **k: PS.OneCycleLR(LR, total_steps=k.get("n", 10), phase_pct=0.4, divide_factor=25.0,
                                           end_learning_rate=LR / 25.0 / 1e3)),
    # three phases ending at steps 3, 6 and 19
    "onecycle3": (lambda o, **k: TS.OneCycleLR(o, max_lr=LR, total_steps=k.get("n", 20), pct_start=0.2,
                                               anneal_strategy="linear", three_phase=True, cycle_momentum=False,
                                               div_factor=25.0, final_div_factor=1e3),
                  lambda **k: PS.OneCycleLR(LR, total_steps=k.get("n", 20), phase_pct=0.2, anneal_strategy="linear",
                                            three_phase=True, divide_factor=25.0, end_learning_rate=LR / 25.0 / 1e3)),
}
# the setting that differs in the refusal test, per pair
OTHER = {"lambda": other_lam, "step": 3, "multistep": [2, 5], "cosine": 7, "linear": 6, "warmup": 6,
         "onecycle": 12, "onecycle3": 24}


def setup(fw, net, pair, **kw):
    """AdamW driven by the pair's scheduler on ``fw``: (optimizer, scheduler)."""
    if fw == "torch":
        opt = optimizer(fw, net, "adamw", lr=LR)
        return opt, PAIRS[pair][0](opt, **kw)
    sched = PAIRS[pair][1](**kw)
    return optimizer(fw, net, "adamw", lr=sched), sched


def current_lr(fw, opt) -> float:
    return float(opt.param_groups[0]["lr"]) if fw == "torch" else float(opt.get_lr())


def train(fw, net, opt, sched, batches) -> list:
    """Step optimizer and scheduler on each batch; the learning rate each step used."""
    lrs = []
    for x, y in batches:
        lrs.append(current_lr(fw, opt))
        if fw == "torch":
            loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
            opt.zero_grad()
            loss.backward()
        else:
            loss = paddle.nn.functional.cross_entropy(net(paddle.to_tensor(x)), paddle.to_tensor(y))
            opt.clear_grad()
            loss.backward()
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("pair", list(PAIRS))
@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_the_schedule_continues_step_for_step_after_the_move(src, dst, pair):
    a = model(src, 1)
    opt_a, sched_a = setup(src, a, pair)
    train(src, a, opt_a, sched_a, BATCHES[:3])
    b, c = model(dst, 2), model(dst, 2)
    (opt_b, sched_b), (opt_c, sched_c) = setup(dst, b, pair), setup(dst, c, pair)
    report = assign_weight(a, b, optimizers=(opt_a, opt_b), schedulers=(sched_a, sched_b))
    assign_weight(a, c, optimizers=(opt_a, opt_c))  # weights and optimizer state, not the schedule position
    assert any("position moved" in n and "step 3" in n for n in report.notes), report.notes
    assert sched_b.last_epoch == 3
    lrs_a = train(src, a, opt_a, sched_a, BATCHES[3:6])
    lrs_b = train(dst, b, opt_b, sched_b, BATCHES[3:6])
    lrs_c = train(dst, c, opt_c, sched_c, BATCHES[3:6])
    assert all(math.isclose(x, y, rel_tol=1e-6) for x, y in zip(lrs_a, lrs_b)), (lrs_a, lrs_b)
    assert not math.isclose(lrs_a[0], lrs_c[0], rel_tol=1e-3), (lrs_a, lrs_c)
    moved, unmoved = worst(a, b), worst(a, c)
    assert moved < AGREE, f"after 3 more steps the moved run differs by {moved:.2e}"
    assert unmoved > 10 * AGREE, f"without the schedule the run differs by only {unmoved:.2e}"


def _sched_state(fw, s) -> dict:
    keys = ("last_epoch", "_step_count", "_last_lr") if fw == "torch" else ("last_epoch", "last_lr")
    return {k: getattr(s, k) for k in keys}


def _stepped(src, dst, pair, **raw_kw):
    a, b = model(src, 1), model(dst, 2)
    opt_a, sched_a = setup(src, a, pair)
    opt_b, sched_b = setup(dst, b, pair, **raw_kw)
    train(src, a, opt_a, sched_a, BATCHES[:3])
    train(dst, b, opt_b, sched_b, BATCHES[6:])
    return a, b, opt_a, opt_b, sched_a, sched_b


@pytest.mark.parametrize("pair", list(PAIRS))
@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_a_schedule_that_differs_is_refused_and_nothing_changes(src, dst, pair):
    kw = {"f": OTHER[pair]} if pair == "lambda" else {"n": OTHER[pair]}
    a, b, opt_a, opt_b, sched_a, sched_b = _stepped(src, dst, pair, **kw)
    before, state, pos, lr = snapshot(b), opt_state(opt_b), _sched_state(dst, sched_b), current_lr(dst, opt_b)
    with pytest.raises(TransferError) as err:
        assign_weight(a, b, optimizers=(opt_a, opt_b), schedulers=(sched_a, sched_b))
    msg = str(err.value)
    if pair == "lambda":
        assert "at step 4" in msg, msg
    else:
        base_value = {"step": 2, "multistep": [2, 4], "cosine": 5, "linear": 4, "warmup": 4, "onecycle": 10,
                      "onecycle3": 20}[pair]
        assert f"{base_value!r}" in msg and f"{OTHER[pair]!r}" in msg, msg
    assert_unchanged(b, before)
    assert_state_unchanged(opt_b, state)
    assert _sched_state(dst, sched_b) == pos and current_lr(dst, opt_b) == lr


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_a_scheduler_pair_not_covered_is_refused_by_name(src, dst):
    a, b, opt_a, opt_b, sched_a, _ = _stepped(src, dst, "step")
    if dst == "torch":
        other = TS.OneCycleLR(opt_b, max_lr=LR, total_steps=10)
    else:
        other = PS.OneCycleLR(max_learning_rate=LR, total_steps=10)
        opt_b._learning_rate = other
    before, state = snapshot(b), opt_state(opt_b)
    with pytest.raises(TransferError, match="OneCycleLR: no table moves the position"):
        assign_weight(a, b, optimizers=(opt_a, opt_b), schedulers=(sched_a, other))
    assert_unchanged(b, before)
    assert_state_unchanged(opt_b, state)


def test_a_paddle_warmup_around_another_schedule_is_refused():
    a, b, opt_a, opt_b, sched_a, _ = _stepped("torch", "paddle", "linear")
    warm = PS.LinearWarmup(PS.CosineAnnealingDecay(LR, T_max=5), warmup_steps=4, start_lr=LR * 0.25, end_lr=LR)
    opt_b._learning_rate = warm
    with pytest.raises(TransferError, match="LinearWarmup wraps a CosineAnnealingDecay"):
        assign_weight(a, b, optimizers=(opt_a, opt_b), schedulers=(sched_a, warm))
    assert warm.last_epoch == 0


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_a_failure_while_writing_puts_the_schedule_position_back(src, dst, monkeypatch):
    import padiff_lite.transfer as transfer

    a, b, opt_a, opt_b, sched_a, sched_b = _stepped(src, dst, "cosine")
    before, state, pos, lr = snapshot(b), opt_state(opt_b), _sched_state(dst, sched_b), current_lr(dst, opt_b)

    def failing(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(transfer, "execute", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        assign_weight(a, b, optimizers=(opt_a, opt_b), schedulers=(sched_a, sched_b))
    assert_unchanged(b, before)
    assert_state_unchanged(opt_b, state)
    assert _sched_state(dst, sched_b) == pos and current_lr(dst, opt_b) == lr
    assert sched_b.last_epoch == 1 and sched_a.last_epoch == 3  # the test would see a moved position


def test_schedulers_in_the_wrong_order_are_refused():
    a, b, opt_a, opt_b, sched_a, sched_b = _stepped("torch", "paddle", "step")
    pos = _sched_state("paddle", sched_b)
    with pytest.raises(TransferError, match="does not drive the base optimizer"):
        assign_weight(a, b, optimizers=(opt_a, opt_b), schedulers=(sched_b, sched_a))
    assert _sched_state("paddle", sched_b) == pos


@pytest.mark.parametrize("pair", ["onecycle", "onecycle3"])
def test_one_cycle_gives_the_same_rate_at_every_step_of_the_cycle(pair):
    """paddle's OneCycleLR counts steps like torch's (phase ends at pct * total - 1, ...): the whole cycle, step by
    step, on both sides."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    ts, ps = PAIRS[pair][0](opt), PAIRS[pair][1]()
    rates = []
    for _ in range(ts.total_steps):
        rates.append((float(ts.get_last_lr()[0]), float(ps.last_lr)))
        opt.step()
        ts.step()
        ps.step()
    assert all(math.isclose(t, p, rel_tol=1e-9) for t, p in rates), rates
    assert len({round(t, 9) for t, _ in rates}) > ts.total_steps // 2  # the rate moves: the test would see a shift


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_one_cycle_that_cycles_momentum_is_refused(src, dst):
    """torch's OneCycleLR cycles Adam's beta1 (or SGD's momentum) by default; paddle's cycles only the rate."""
    a, b, opt_a, opt_b, sched_a, sched_b = _stepped(src, dst, "onecycle")
    cycling = TS.OneCycleLR(opt_a if src == "torch" else opt_b, max_lr=LR, total_steps=10, pct_start=0.4)
    sched_a, sched_b = (cycling, sched_b) if src == "torch" else (sched_a, cycling)
    before, state, pos = snapshot(b), opt_state(opt_b), _sched_state(dst, sched_b)
    with pytest.raises(TransferError, match="cycle_momentum=True also cycles Adam's beta1"):
        assign_weight(a, b, optimizers=(opt_a, opt_b), schedulers=(sched_a, sched_b))
    assert_unchanged(b, before)
    assert_state_unchanged(opt_b, state)
    assert _sched_state(dst, sched_b) == pos


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_a_moved_run_passes_auto_diff(src, dst):
    """Issue 29 item 4: AdamW with a linear warm-up trains 3 steps on one side; weights, optimizer state and
    schedule position move; auto_diff (no transfer of its own) then trains both 3 more steps and compares every
    layer, loss, gradient and weight: it reports agreement. The same with the weights alone moved is caught at the
    optimizer stage of the first step."""
    from padiff_lite import auto_diff

    x, y = BATCHES[3]
    loss = {"torch": lambda out: torch.nn.functional.cross_entropy(out, torch.from_numpy(y)),
            "paddle": lambda out: paddle.nn.functional.cross_entropy(out, paddle.to_tensor(y))}

    def stepper(fw, opt, sched):  # auto_diff steps framework optimizers, not schedulers: a callable does both
        def step():
            opt.step()
            sched.step()
            opt.zero_grad() if fw == "torch" else opt.clear_grad()
        return step

    results = {}
    for moved in (True, False):
        a, b = model(src, 1), model(dst, 2)
        (opt_a, sched_a), (opt_b, sched_b) = setup(src, a, "warmup", n=6), setup(dst, b, "warmup", n=6)
        train(src, a, opt_a, sched_a, BATCHES[:3])
        if moved:
            assign_weight(a, b, optimizers=(opt_a, opt_b), schedulers=(sched_a, sched_b))
        else:
            assign_weight(a, b)
        r = auto_diff(a, b, x, auto_init=False, steps=3, loss_fns=(loss[src], loss[dst]),
                      optimizers=(stepper(src, opt_a, sched_a), stepper(dst, opt_b, sched_b)))
        results[moved] = (r, current_lr(src, opt_a), current_lr(dst, opt_b), sched_b.last_epoch, worst(a, b))
    r, lr_a, lr_b, position, diff = results[True]
    assert r.ok and r.step is None and len(r.steps) == 3, str(r)
    assert all(w.ok for s in r.steps for w in s.weights) and len(r.steps[2].weights) == 6
    assert math.isclose(lr_a, lr_b, rel_tol=1e-9) and position == 6
    assert diff < AGREE
    r, *_ = results[False]
    assert not r.ok and r.step == 0 and r.stage == "optimizer", str(r)
