"""Optimizer state moves with the weights (issue 29, in memory): ``assign_weight(..., optimizers=(base, raw))``.

A model with a Linear (stored transposed by paddle), a Conv and a LayerNorm trains 3 steps in one framework; weights
and optimizer state move; both sides then take 3 more steps on the same batches and must agree, while the same move
without the state visibly does not. Both directions, AdamW and SGD with momentum; refusals leave the raw model and
its optimizer exactly as they were.
"""
from __future__ import annotations

import warnings

import numpy as np
import paddle
import pytest
import torch

from test_parts import fused_pool  # noqa: F401 (the fixture)
from helpers import DIRECTION_IDS, DIRECTIONS, NN, Base, assert_unchanged, snapshot
from padiff_lite import TransferError, assign_weight

RNG = np.random.default_rng(0)
BATCHES = [(RNG.standard_normal((4, 2, 4, 4)).astype("float32"), RNG.integers(0, 5, size=(4,))) for _ in range(7)]
AGREE = 1e-5  # measured: about 1e-7 (float32 rounding of two implementations)
STATE_MATTERS = 1e-3  # measured: the run restarted with fresh state is off by about 1e-2


KINDS = ["adamw", "adam", "momentum", "nesterov", "rmsprop", "rmsprop_centered", "adagrad", "adamax"]


def model(fw, seed):
    (torch.manual_seed if fw == "torch" else paddle.seed)(seed)
    nn = NN[fw]

    class Net(Base(fw)):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, padding=1) if fw == "torch" else nn.Conv2D(2, 3, 3, padding=1)
            self.norm = nn.LayerNorm(48)
            self.fc = nn.Linear(48, 5)
            self.act = nn.ReLU()

        def forward(self, x):
            h = self.act(self.conv(x))
            return self.fc(self.norm(h.flatten(1)))

    return Net()


def optimizer(fw, net, kind, lr=0.01, **kw):
    if fw == "torch":
        if kind == "adamw":
            return torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01, **kw)
        if kind == "adam":
            return torch.optim.Adam(net.parameters(), lr=lr, **kw)
        if kind == "momentum":
            return torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, **kw)
        if kind == "nesterov":
            return torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=0.01, **kw)
        if kind.startswith("rmsprop"):
            centered = kind == "rmsprop_centered"
            return torch.optim.RMSprop(net.parameters(), lr=lr, alpha=0.9, eps=1e-8, momentum=0 if centered else 0.5,
                                       centered=centered, weight_decay=0.01, **kw)
        if kind == "adagrad":
            return torch.optim.Adagrad(net.parameters(), lr=lr, eps=1e-10, initial_accumulator_value=0.1,
                                       weight_decay=0.01, **kw)
        if kind == "adamax":
            return torch.optim.Adamax(net.parameters(), lr=lr, weight_decay=0.01, **kw)
        return torch.optim.SGD(net.parameters(), lr=lr)
    if kind == "adamw":
        return paddle.optimizer.AdamW(learning_rate=lr, parameters=net.parameters(), weight_decay=0.01, **kw)
    if kind == "adam":
        return paddle.optimizer.Adam(learning_rate=lr, parameters=net.parameters(), **kw)
    if kind == "momentum":
        return paddle.optimizer.Momentum(learning_rate=lr, momentum=0.9, parameters=net.parameters(), **kw)
    if kind == "nesterov":
        return paddle.optimizer.Momentum(learning_rate=lr, momentum=0.9, use_nesterov=True, weight_decay=0.01,
                                         parameters=net.parameters(), **kw)
    if kind.startswith("rmsprop"):  # epsilon inside the square root: torch's eps**2 is the nearest setting
        centered = kind == "rmsprop_centered"
        return paddle.optimizer.RMSProp(learning_rate=lr, rho=0.9, epsilon=1e-16, momentum=0 if centered else 0.5,
                                        centered=centered, weight_decay=0.01, parameters=net.parameters(), **kw)
    if kind == "adagrad":
        return paddle.optimizer.Adagrad(learning_rate=lr, epsilon=1e-10, initial_accumulator_value=0.1,
                                        weight_decay=0.01, parameters=net.parameters(), **kw)
    if kind == "adamax":
        return paddle.optimizer.Adamax(learning_rate=lr, weight_decay=0.01, parameters=net.parameters(), **kw)
    return paddle.optimizer.SGD(learning_rate=lr, parameters=net.parameters())


def train(fw, net, opt, batches):
    for x, y in batches:
        if fw == "torch":
            loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            loss = paddle.nn.functional.cross_entropy(net(paddle.to_tensor(x)), paddle.to_tensor(y))
            opt.clear_grad()
            loss.backward()
            opt.step()


def weights(net) -> dict:
    """Every weight in torch's layout (paddle's Linear weight transposed back)."""
    out = {}
    for k, v in net.state_dict().items():
        a = v.detach().numpy() if isinstance(v, torch.Tensor) else v.numpy()
        out[k] = a.T if k == "fc.weight" and not isinstance(v, torch.Tensor) else a
    return out


def worst(a, b) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(float(np.abs(wa[k].astype("float64") - wb[k]).max()) for k in wa)


def opt_state(opt) -> dict:
    """Every tensor of an optimizer's state, by (parameter, name), as numpy."""
    if isinstance(opt, torch.optim.Optimizer):
        return {(i, k): v.detach().numpy().copy() for i, p in enumerate(opt.param_groups[0]["params"])
                for k, v in opt.state.get(p, {}).items()}
    return {(k, pn): np.array(v.numpy(), copy=True) for k, d in opt._accumulators.items() for pn, v in d.items()}


def assert_state_unchanged(opt, before):
    now = opt_state(opt)
    assert now.keys() == before.keys(), "optimizer state entries were added or removed"
    for k in before:
        assert np.array_equal(now[k], before[k]), f"optimizer state {k} was changed"


@pytest.mark.parametrize("raw_stepped", [False, True], ids=["raw fresh", "raw stepped"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_training_continues_step_for_step_after_the_move(src, dst, kind, raw_stepped):
    a = model(src, 1)
    opt_a = optimizer(src, a, kind)
    train(src, a, opt_a, BATCHES[:3])
    b, c = model(dst, 2), model(dst, 2)
    opt_b, opt_c = optimizer(dst, b, kind), optimizer(dst, c, kind)
    if raw_stepped:  # the raw optimizer has state of its own already: it is overwritten, not added to
        train(dst, b, opt_b, BATCHES[6:])
    report = assign_weight(a, b, optimizers=(opt_a, opt_b))
    assign_weight(a, c)  # the weights alone: the optimizer starts fresh
    assert any("state of 6 of 6 raw parameters moved" in n for n in report.notes), report.notes
    assert worst(a, b) == 0.0
    for side in ((src, a, opt_a), (dst, b, opt_b), (dst, c, opt_c)):
        train(*side, BATCHES[3:6])
    moved, fresh = worst(a, b), worst(a, c)
    assert moved < AGREE, f"after 3 more steps the moved run differs by {moved:.2e}"
    assert fresh > STATE_MATTERS, f"a fresh optimizer differs by only {fresh:.2e}: the test would not see the state"


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_plain_sgd_has_no_state_and_moves(src, dst):
    a, b = model(src, 1), model(dst, 2)
    opt_a, opt_b = optimizer(src, a, "sgd"), optimizer(dst, b, "sgd")
    train(src, a, opt_a, BATCHES[:2])
    assign_weight(a, b, optimizers=(opt_a, opt_b))
    train(src, a, opt_a, BATCHES[3:5])
    train(dst, b, opt_b, BATCHES[3:5])
    assert worst(a, b) < AGREE


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_nesterov_on_one_side_only_is_reported(src, dst):
    """torch SGD(nesterov=True) and paddle Momentum(use_nesterov=True) step alike (the test above); nesterov on one
    side only is a different update: the state moves, the difference is a note and the runs then differ."""
    a, b = model(src, 1), model(dst, 2)
    opt_a, opt_b = optimizer(src, a, "nesterov"), optimizer(dst, b, "momentum", weight_decay=0.01)
    train(src, a, opt_a, BATCHES[:3])
    report = assign_weight(a, b, optimizers=(opt_a, opt_b))
    lines = [n for n in report.notes if n.startswith("optimizer setting differs")]
    assert len(lines) == 1 and "nesterov" in lines[0] and "True" in lines[0] and "False" in lines[0], report.notes
    train(src, a, opt_a, BATCHES[3:6])
    train(dst, b, opt_b, BATCHES[3:6])
    assert worst(a, b) > 10 * AGREE


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_rmsprop_epsilon_placement_is_reported_with_its_size(src, dst):
    """torch RMSprop divides by sqrt(v) + eps, paddle by sqrt(v + epsilon): with the nearest setting (paddle epsilon
    = eps**2) the runs agree (above); with paddle's default 1e-6 the note says how far apart, and they drift."""
    a, b = model(src, 1), model(dst, 2)
    opt_a, opt_b = optimizer(src, a, "rmsprop"), optimizer(dst, b, "rmsprop")
    (opt_a if src == "paddle" else opt_b)._epsilon = 1e-6  # paddle's default
    train(src, a, opt_a, BATCHES[:3])
    report = assign_weight(a, b, optimizers=(opt_a, opt_b))
    lines = [n for n in report.notes if "RMSProp epsilon" in n]
    assert len(lines) == 1 and "epsilon=1e-06" in lines[0] and "eps**2 (1e-16)" in lines[0], report.notes
    gap = float(lines[0].split("differ by up to ")[1].split(" ")[0])
    assert gap > 1e-3, lines[0]
    assert not any(n.startswith("optimizer setting differs: epsilon") for n in report.notes), report.notes
    train(src, a, opt_a, BATCHES[3:6])
    train(dst, b, opt_b, BATCHES[3:6])
    assert worst(a, b) > 10 * AGREE


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_auto_diff_compares_rmsprop_epsilon_as_eps_squared(src, dst):
    """auto_diff's settings check knows the epsilon placement: paddle epsilon = torch eps**2 is accepted and the
    3 steps agree; the same number on both sides (1e-8, which looks alike) is refused naming eps**2."""
    from padiff_lite import DiffInputError, auto_diff

    x, y = BATCHES[0]
    loss = {"torch": lambda out: torch.nn.functional.cross_entropy(out, torch.from_numpy(y)),
            "paddle": lambda out: paddle.nn.functional.cross_entropy(out, paddle.to_tensor(y))}
    a, b = model(src, 1), model(dst, 2)
    opts = (optimizer(src, a, "rmsprop"), optimizer(dst, b, "rmsprop"))
    r = auto_diff(a, b, x, steps=3, loss_fns=(loss[src], loss[dst]), optimizers=opts)
    assert r.ok, str(r)
    a, b = model(src, 1), model(dst, 2)
    opts = (optimizer(src, a, "rmsprop"), optimizer(dst, b, "rmsprop"))
    (opts[0] if src == "paddle" else opts[1])._epsilon = 1e-8  # torch's number, inside the square root
    before = snapshot(b)
    with pytest.raises(DiffInputError, match="the nearest paddle setting is epsilon = eps\\*\\*2 \\(1e-16\\)"):
        auto_diff(a, b, x, steps=3, loss_fns=(loss[src], loss[dst]), optimizers=opts)
    assert_unchanged(b, before)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_adamax_epsilon_placement_is_reported_with_its_size(src, dst):
    """torch Adamax adds eps to |g|, paddle to beta2 * u: the runs still agree to float rounding (above); the note
    says so with the size on the moved state rather than leaving it unsaid."""
    a, b, opt_a, opt_b = _stepped_pair(src, dst, "adamax", "adamax")
    report = assign_weight(a, b, optimizers=(opt_a, opt_b))
    lines = [n for n in report.notes if "Adamax epsilon" in n]
    assert len(lines) == 1, report.notes
    assert 0 < float(lines[0].split("up to ")[1].split(" ")[0]) < 1e-4, lines[0]
    assert any("(steps taken: 2)" in n for n in report.notes), report.notes


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_rmsprop_momentum_under_a_paddle_schedule_is_refused(src, dst):
    """paddle's RMSProp multiplies each step's learning rate into its momentum, torch's the current one into the
    whole buffer: with a changing rate no moved state continues alike."""
    a, b, opt_a, opt_b = _stepped_pair(src, dst, "rmsprop", "rmsprop")
    paddle_opt = opt_a if src == "paddle" else opt_b
    paddle_opt._learning_rate = paddle.optimizer.lr.StepDecay(0.01, step_size=2)
    model_before, state_before = snapshot(b), opt_state(opt_b)
    with pytest.raises(TransferError, match="with a changing learning rate the two are different updates") as e:
        assign_weight(a, b, optimizers=(opt_a, opt_b))
    assert "StepDecay" in str(e.value)
    assert_unchanged(b, model_before)
    assert_state_unchanged(opt_b, state_before)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_adagrad_lr_decay_is_refused(src, dst):
    a, b, opt_a, opt_b = _stepped_pair(src, dst, "adagrad", "adagrad")
    (opt_a if src == "torch" else opt_b).param_groups[0]["lr_decay"] = 0.1
    model_before, state_before = snapshot(b), opt_state(opt_b)
    with pytest.raises(TransferError, match="lr_decay=0.1 has no counterpart in paddle's Adagrad"):
        assign_weight(a, b, optimizers=(opt_a, opt_b))
    assert_unchanged(b, model_before)
    assert_state_unchanged(opt_b, state_before)


def test_adagrad_parameters_paddle_never_stepped_start_at_the_initial_value_in_torch():
    """torch builds Adagrad's state with the optimizer (sum = initial_accumulator_value, step 0): a parameter paddle
    has no state for gets exactly that, not zeros and not a missing entry."""
    a, b = model("paddle", 1), model("torch", 2)
    opt_a, opt_b = optimizer("paddle", a, "adagrad"), optimizer("torch", b, "adagrad")
    a.fc.weight.stop_gradient = True  # paddle never steps it: no accumulator
    train("paddle", a, opt_a, BATCHES[:2])
    a.fc.weight.stop_gradient = False
    train("torch", b, opt_b, BATCHES[6:])
    assign_weight(a, b, optimizers=(opt_a, opt_b))
    st = opt_b.state[b.fc.weight]
    assert float(st["step"]) == 0 and torch.all(st["sum"] == 0.1)
    moved = opt_b.state[b.fc.bias]["sum"].numpy()
    assert np.allclose(moved, opt_a._accumulators["moment"][a.fc.bias.name].numpy(), rtol=0, atol=0)
    train("paddle", a, opt_a, BATCHES[3:6])
    train("torch", b, opt_b, BATCHES[3:6])
    assert worst(a, b) < AGREE


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_lamb_is_refused_naming_that_torch_has_none(src, dst):
    a, b = model(src, 1), model(dst, 2)
    lamb = lambda net: paddle.optimizer.Lamb(learning_rate=0.01, parameters=net.parameters())  # noqa: E731
    opt_a = lamb(a) if src == "paddle" else optimizer(src, a, "adamw")
    opt_b = lamb(b) if dst == "paddle" else optimizer(dst, b, "adamw")
    train(src, a, opt_a, BATCHES[:2])
    train(dst, b, opt_b, BATCHES[6:])
    model_before, state_before = snapshot(b), opt_state(opt_b)
    with pytest.raises(TransferError, match="paddle Lamb: torch.optim has no Lamb"):
        assign_weight(a, b, optimizers=(opt_a, opt_b))
    assert_unchanged(b, model_before)
    assert_state_unchanged(opt_b, state_before)


@pytest.mark.parametrize("cls", ["NAdam", "RAdam", "Rprop"])
def test_an_optimizer_both_have_but_not_covered_is_refused_by_name(cls):
    a, b = model("torch", 1), model("paddle", 2)
    opt_a = getattr(torch.optim, cls)(a.parameters(), lr=0.01)
    opt_b = getattr(paddle.optimizer, cls)(learning_rate=0.01, parameters=b.parameters())
    train("torch", a, opt_a, BATCHES[:1])
    before = snapshot(b)
    with pytest.raises(TransferError, match=f"both frameworks have {cls}, but padiff_lite does not move its state"):
        assign_weight(a, b, optimizers=(opt_a, opt_b))
    assert_unchanged(b, before)


def _stepped_pair(src, dst, base_kind, raw_kind, **raw_kw):
    a, b = model(src, 1), model(dst, 2)
    opt_a, opt_b = optimizer(src, a, base_kind), optimizer(dst, b, raw_kind, **raw_kw)
    train(src, a, opt_a, BATCHES[:2])
    train(dst, b, opt_b, BATCHES[6:])
    return a, b, opt_a, opt_b


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_a_pair_not_covered_is_refused_and_nothing_changes(src, dst):
    a, b, opt_a, opt_b = _stepped_pair(src, dst, "adamw", "momentum")
    model_before, state_before = snapshot(b), opt_state(opt_b)
    assert state_before
    with pytest.raises(TransferError, match="no table moves state between these") as e:
        assign_weight(a, b, optimizers=(opt_a, opt_b))
    assert "AdamW" in str(e.value) and ("Momentum" in str(e.value) or "SGD+momentum" in str(e.value))
    assert_unchanged(b, model_before)
    assert_state_unchanged(opt_b, state_before)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_amsgrad_is_refused_and_nothing_changes(src, dst):
    a, b, opt_a, opt_b = _stepped_pair(src, dst, "adamw", "adamw", amsgrad=True)
    model_before, state_before = snapshot(b), opt_state(opt_b)
    with pytest.raises(TransferError, match="amsgrad=True"):
        assign_weight(a, b, optimizers=(opt_a, opt_b))
    assert_unchanged(b, model_before)
    assert_state_unchanged(opt_b, state_before)


@pytest.mark.parametrize("raw_stepped", [False, True], ids=["raw fresh", "raw stepped"])
@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_a_failure_while_writing_puts_the_optimizer_state_back(src, dst, raw_stepped, monkeypatch):
    import padiff_lite.transfer as transfer

    a, b = model(src, 1), model(dst, 2)
    opt_a, opt_b = optimizer(src, a, "adamw"), optimizer(dst, b, "adamw")
    train(src, a, opt_a, BATCHES[:2])
    if raw_stepped:
        train(dst, b, opt_b, BATCHES[6:])
    model_before, state_before = snapshot(b), opt_state(opt_b)

    def failing(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(transfer, "execute", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        assign_weight(a, b, optimizers=(opt_a, opt_b))
    assert_unchanged(b, model_before)
    assert_state_unchanged(opt_b, state_before)
    monkeypatch.undo()
    assign_weight(a, b, optimizers=(opt_a, opt_b))  # and the optimizer still works after the undo
    train(src, a, opt_a, BATCHES[3:5])
    train(dst, b, opt_b, BATCHES[3:5])
    assert worst(a, b) < AGREE


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_differing_hyperparameters_are_reported_not_changed(src, dst):
    a, b = model(src, 1), model(dst, 2)
    opt_a, opt_b = optimizer(src, a, "adamw"), optimizer(dst, b, "adamw", lr=0.02)
    train(src, a, opt_a, BATCHES[:1])
    report = assign_weight(a, b, optimizers=(opt_a, opt_b))
    lines = [n for n in report.notes if n.startswith("optimizer setting differs")]
    assert len(lines) == 1 and "learning rate" in lines[0] and "0.02" in lines[0], report.notes
    lr = opt_b.param_groups[0]["lr"] if dst == "torch" else opt_b.get_lr()
    assert lr == pytest.approx(0.02)


def test_optimizers_in_the_wrong_order_are_refused():
    a, b = model("torch", 1), model("paddle", 2)
    opt_a, opt_b = optimizer("torch", a, "adamw"), optimizer("paddle", b, "adamw")
    before = snapshot(b)
    with pytest.raises(TransferError, match="in the order of the models"):
        assign_weight(a, b, optimizers=(opt_b, opt_a))
    assert_unchanged(b, before)


# -- fused layouts: the moments are cut like the weights, by the plan's own parts ----------------------------------------
def _train_block(net, opt, steps):
    from test_parts import X as BX

    for i in range(steps):
        x = BX * (1.0 + 0.1 * i)
        if isinstance(net, torch.nn.Module):
            loss = (net(torch.from_numpy(x)) ** 2).mean()
            opt.zero_grad()
        else:
            loss = (net(paddle.to_tensor(x)) ** 2).mean()
            opt.clear_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_fused_qkv_moments_are_split_like_the_weight(fused_pool, src, dst):
    from test_parts import FusedBlock, SplitBlock

    build = {"torch": SplitBlock, "paddle": FusedBlock}
    a, b, c = build[src](), build[dst](), build[dst]()
    opt_a, opt_b, opt_c = (optimizer(fw, m, "adamw") for fw, m in ((src, a), (dst, b), (dst, c)))
    _train_block(a, opt_a, 3)
    assign_weight(a, b, optimizers=(opt_a, opt_b))
    assign_weight(a, c)
    for m, o in ((a, opt_a), (b, opt_b), (c, opt_c)):
        _train_block(m, o, 3)
    moved, fresh = build[src](), build[src]()
    assign_weight(b, moved)  # back into the source's layout, to compare weight by weight
    assign_weight(c, fresh)
    diff = lambda x: max(float(np.abs(np_of(v) - np_of(x.state_dict()[k])).max()) for k, v in a.state_dict().items())  # noqa: E731
    assert diff(moved) < AGREE, f"moved state: {diff(moved):.2e}"
    assert diff(fresh) > STATE_MATTERS, f"fresh state: {diff(fresh):.2e}"


def np_of(t):
    return t.detach().numpy() if isinstance(t, torch.Tensor) else t.numpy()


def test_parts_that_took_different_numbers_of_steps_are_refused(fused_pool):
    from test_parts import FusedBlock, SplitBlock

    a, b = SplitBlock(), FusedBlock()
    a.k_proj.weight.requires_grad_(False)  # never stepped: no state, while q and v took 2 steps
    opt_a, opt_b = optimizer("torch", a, "adamw"), optimizer("paddle", b, "adamw")
    _train_block(a, opt_a, 2)
    _train_block(b, opt_b, 1)
    model_before, state_before = snapshot(b), opt_state(opt_b)
    with pytest.raises(TransferError, match="took different numbers of steps") as e:
        assign_weight(a, b, optimizers=(opt_a, opt_b))
    assert "qkv_proj.weight" in str(e.value)
    assert_unchanged(b, model_before)
    assert_state_unchanged(opt_b, state_before)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_a_layer_of_an_imperative_special_init_is_refused(scoped_pool, src, dst):
    def copy_fc(module, layer):  # PaDiff style: writes the raw layer itself
        w = module.weight.detach().numpy() if src == "torch" else module.weight.numpy()
        b = module.bias.detach().numpy() if src == "torch" else module.bias.numpy()
        if dst == "paddle":
            layer.weight.set_value(w.T)
            layer.bias.set_value(b)
        else:
            with torch.no_grad():
                layer.weight.copy_(torch.from_numpy(w.T))
                layer.bias.copy_(torch.from_numpy(b))

    other = "paddle" if src == "torch" else "torch"
    scoped_pool.register(src, "Linear", other, "Linear", override=True)(copy_fc)  # put back after the test
    a, b, opt_a, opt_b = _stepped_pair(src, dst, "adamw", "adamw")
    model_before, state_before = snapshot(b), opt_state(opt_b)
    with pytest.raises(TransferError, match="imperative special init") as e:
        assign_weight(a, b, optimizers=(opt_a, opt_b))
    assert "fc (Linear)" in str(e.value)
    assert_unchanged(b, model_before)
    assert_state_unchanged(opt_b, state_before)
    report = assign_weight(a, b)  # without optimizers= the special init runs as before
    assert worst(a, b) == 0.0 and report.tensors


@pytest.mark.parametrize("steps", [0, 1, 7, 300, 2000, 20000])
def test_the_step_count_is_read_back_from_paddles_float32_beta_powers(steps):
    """paddle multiplies its beta powers in float32 once per step; beta1 = 0.9's power underflows after ~1000
    steps, so the count then comes from beta2's."""
    from padiff_lite.optim_state import _step_from_pows

    b1, b2 = np.float32(0.9), np.float32(0.999)
    p1, p2 = b1, b2  # beta**(0 + 1) before the first step
    for _ in range(steps):
        p1, p2 = np.float32(p1 * b1), np.float32(p2 * b2)
    assert _step_from_pows([float(p1), float(p2)], (0.9, 0.999)) == steps


@pytest.mark.parametrize("where", ["optimizers", "schedulers"])
@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_an_amp_loss_scaler_is_refused_naming_why(src, dst, where):
    """A loss scaler's state does not move (the two frameworks grow and back off by different rules): given in
    place of the raw optimizer or scheduler it is refused by name, with the fix, and nothing changes."""
    a, b, opt_a, opt_b = _stepped_pair(src, dst, "adamw", "adamw")
    with warnings.catch_warnings():  # paddle: "AmpScaler can only be enabled on CUDAPlace ..." on a CPU
        warnings.simplefilter("ignore", UserWarning)
        scaler = torch.amp.GradScaler("cpu") if dst == "torch" else paddle.amp.GradScaler()
    model_before, state_before = snapshot(b), opt_state(opt_b)
    kw = {"optimizers": (opt_a, scaler)} if where == "optimizers" else {"schedulers": (scaler, scaler)}
    with pytest.raises(TransferError, match="is an AMP loss scaler") as e:
        assign_weight(a, b, **kw)
    assert "GradScaler" in str(e.value) and ("init_scale" in str(e.value) and "init_loss_scaling" in str(e.value))
    assert_unchanged(b, model_before)
    assert_state_unchanged(opt_b, state_before)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_paddle_master_weights_are_refused(src, dst):
    """paddle's multi_precision=True keeps float32 master weights for bfloat16 parameters, and files the moments
    under the master weight's name: moving only the moments would leave the master copy stale. Refused on either
    side. (Paddle has no CPU bfloat16 matmul, so its state is built by the optimizer's own _create_accumulators
    rather than by a step.)"""
    torch.manual_seed(0)
    paddle.seed(0)
    tnet = torch.nn.Linear(4, 3).to(torch.bfloat16)
    topt = torch.optim.AdamW(tnet.parameters(), lr=0.01)
    tnet(torch.ones(2, 4, dtype=torch.bfloat16)).float().sum().backward()
    topt.step()
    pnet = paddle.nn.Linear(4, 3)
    pnet.to(dtype="bfloat16")
    popt = paddle.optimizer.AdamW(learning_rate=0.01, parameters=pnet.parameters(), multi_precision=True)
    if src == "paddle":
        popt._create_accumulators(paddle.static.default_main_program().global_block(), pnet.parameters())
        assert popt._master_weights  # the state the refusal is about exists
    a, b, opt_a, opt_b = (tnet, pnet, topt, popt) if src == "torch" else (pnet, tnet, popt, topt)
    def everything():  # bfloat16 has no numpy type: compared as float32 (exact for bfloat16 values)
        f32 = lambda t: t.detach().float().numpy() if isinstance(t, torch.Tensor) else t.astype("float32").numpy()  # noqa: E731
        out = {("model", k): f32(v) for k, v in b.state_dict().items()}
        if dst == "torch":
            out.update({(i, k): f32(v) for i, p in enumerate(topt.param_groups[0]["params"])
                        for k, v in topt.state.get(p, {}).items()})
        else:
            out.update({(k, n): f32(v) for k, d in popt._accumulators.items() for n, v in d.items()})
        return out

    before = everything()
    side = "raw" if dst == "paddle" else "base"
    with pytest.raises(TransferError, match=f"{side} \\(paddle AdamW\\): multi_precision=True keeps float32 master"):
        assign_weight(a, b, optimizers=(opt_a, opt_b))
    after = everything()
    assert after.keys() == before.keys() and all(np.array_equal(after[k], before[k]) for k in before)
