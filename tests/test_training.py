"""Training alignment (issue 27): ``auto_diff`` with loss functions, optimizers and several steps compares the
loss, every gradient and every weight after each optimizer step, and names the step and the stage where the two
first differ; a settings check refuses optimizers or modes that are not set up alike; ``single_step`` judges
each layer on the base layer's inputs (and output gradients). Real torch and paddle models, both directions.
"""
from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch

from helpers import DIRECTION_IDS, DIRECTIONS, NN, Base, snapshot, assert_unchanged
from padiff_lite import DiffInputError, assign_weight, auto_diff

X = np.random.default_rng(0).standard_normal((6, 3, 10, 10)).astype("float32")
Y = np.random.default_rng(1).integers(0, 5, size=(6,))


def convnet(fw):
    """conv (no bias) -> BN -> ReLU -> conv -> BN -> ReLU -> pool -> Linear: trains in train mode (BN batch statistics)."""
    nn = NN[fw]
    conv = nn.Conv2d if fw == "torch" else nn.Conv2D
    bn = nn.BatchNorm2d if fw == "torch" else nn.BatchNorm2D
    pool = nn.AdaptiveAvgPool2d(1) if fw == "torch" else nn.AdaptiveAvgPool2D(1)
    no_bias = dict(bias=False) if fw == "torch" else dict(bias_attr=False)
    return nn.Sequential(conv(3, 8, 3, padding=1, **no_bias), bn(8), nn.ReLU(), conv(8, 8, 3, stride=2, **no_bias),
                         bn(8), nn.ReLU(), pool, nn.Flatten(), nn.Linear(8, 5))


def ce(fw):
    """Cross-entropy against the fixed labels Y, in framework ``fw``."""
    if fw == "torch":
        return lambda out: torch.nn.functional.cross_entropy(out, torch.from_numpy(Y))
    return lambda out: paddle.nn.functional.cross_entropy(out, paddle.to_tensor(Y))


def optimizer(fw, model, kind, lr=0.05, wd=0.0, **kw):
    params = model.parameters()
    if fw == "torch":
        cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind]
        return cls(params, lr=lr, weight_decay=wd, **kw)
    cls = {"sgd": paddle.optimizer.SGD, "adam": paddle.optimizer.Adam, "adamw": paddle.optimizer.AdamW}[kind]
    return cls(learning_rate=lr, parameters=params, weight_decay=wd, **kw)


def np_of(t):
    return t.detach().numpy().copy() if isinstance(t, torch.Tensor) else t.numpy().copy()


# -- steps that agree -------------------------------------------------------------------------
@pytest.mark.parametrize("kind,wd", [("sgd", 0.0), ("adam", 0.0), ("adamw", 0.01)])
@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_three_training_steps_agree(src, dst, kind, wd):
    a, b = convnet(src), convnet(dst)
    before = np_of(b[8].weight)
    r = auto_diff(a, b, X, loss_fns=(ce(src), ce(dst)), optimizers=(optimizer(src, a, kind, wd=wd),
                                                                    optimizer(dst, b, kind, wd=wd)), steps=3)
    assert r.ok and r.step is None and r.stage is None, str(r)
    assert len(r.steps) == 3 and r.training and r.phase == "both"
    losses = [s.loss for s in r.steps]
    assert all(abs(lb - lr) < 1e-5 for lb, lr in losses)
    assert losses[2][0] < losses[0][0]  # it trained: the loss went down on both sides
    for s in r.steps:  # every trainable parameter's gradient and weight compared, each step
        assert len(s.grads) == len(s.weights) == 8 and all(g.ok for g in s.grads) and all(w.ok for w in s.weights)
        assert len(s.layers) == 10 and s.first_diff is None
    assert np.abs(np_of(b[8].weight) - before).max() > 1e-3  # the raw model was trained, not only compared
    assert a.training and b.training  # a training run keeps the models' modes


def test_per_step_inputs_and_the_mean_seed_without_a_loss():
    a, b = convnet("torch"), convnet("paddle")
    xs = [X, X[::-1].copy()]
    r = auto_diff(a, b, xs, optimizers=(optimizer("torch", a, "sgd"), optimizer("paddle", b, "sgd")), steps=2)
    assert r.ok, str(r)
    assert [s.loss for s in r.steps] == [None, None]
    # no loss: the backward seed is the mean of the outputs (PaDiff's), so the head's bias gradient is 1/5
    bias = next(g for g in r.steps[0].grads if g.base_param == "8.bias")
    assert bias.scale == pytest.approx(1 / 5, rel=1e-6)


# -- a wrong backward -----------------------------------------------------------------------
class _TorchDoubleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * 2


class _PaddleDoubleGrad(paddle.autograd.PyLayer):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * 2


def chain(fw, blocks=6, wrong_grad_at=None, scale_at=(), hooks=False):
    """``blocks`` blocks of Linear + Tanh; block ``wrong_grad_at`` doubles its gradient on the way back (a custom
    autograd function / PyLayer: the forward is exact); blocks in ``scale_at`` scale their output by 1.001."""
    nn = NN[fw]

    class Block(Base(fw)):
        def __init__(self, i):
            super().__init__()
            self.fc = nn.Linear(12, 12)
            self.act = nn.Tanh()
            self.i = i

        def forward(self, x):
            h = self.fc(x)
            if self.i == wrong_grad_at:
                h = (_TorchDoubleGrad if fw == "torch" else _PaddleDoubleGrad).apply(h)
            if self.i in scale_at:
                h = h * 1.001
            if hooks:
                h.register_hook(lambda g: g)  # a gradient hook registered inside forward
            return self.act(h)

    return nn.Sequential(*[Block(i) for i in range(blocks)], nn.Linear(12, 3))


Z = np.random.default_rng(2).standard_normal((4, 12)).astype("float32")


def mse(fw):
    return lambda out: (out * out).mean()


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_a_wrong_backward_is_located_at_the_backward_stage_with_its_parameter(src, dst):
    a, b = chain(src), chain(dst, wrong_grad_at=2)
    r = auto_diff(a, b, Z, loss_fns=(mse(src), mse(dst)), optimizers=(optimizer(src, a, "sgd"),
                                                                      optimizer(dst, b, "sgd")), steps=2)
    assert not r.ok and (r.step, r.stage) == (0, "backward"), str(r)
    s = r.steps[0]
    assert s.first_diff is None and all(ld.ok for ld in s.layers) and s.loss_ok  # the forward agrees
    assert r.first_grad_diff.base_param in ("2.fc.weight", "2.fc.bias")  # backward order: block 2 first
    assert r.first_grad_diff.raw_param == r.first_grad_diff.base_param
    assert {g.base_param.split(".")[0] for g in s.grads if not g.ok} == {"0", "1", "2"}  # what lies before it
    text = str(r)
    assert "first difference: step 0, stage backward: gradient of base 2.fc." in text


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_single_step_backward_blames_only_the_layer_with_the_wrong_gradient(src, dst):
    a, b = chain(src, blocks=8), chain(dst, blocks=8, wrong_grad_at=5)
    plain = auto_diff(a, b, Z, diff_phase="both")
    assert {g.base_param.split(".")[0] for g in plain.grads if not g.ok} == {"0", "1", "2", "3", "4", "5"}
    single = auto_diff(a, b, Z, diff_phase="both", single_step=True, auto_init=False)
    assert single.stage == "backward" and all(g.ok for g in single.grads), str(single)  # each fed base's gradient
    s = single.steps[0]
    assert [o.base_path for o in s.output_grads if not o.ok] == ["5.fc"]  # only where the doubling happens
    assert s.first_output_grad_diff.max_rel_diff == pytest.approx(0.5, rel=1e-3)  # 2g against g
    assert "the gradient arriving at the output of base 5.fc (Linear)" in str(single)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_single_step_forward_judges_each_layer_on_the_base_layers_inputs(src, dst):
    a, b = chain(src, blocks=10), chain(dst, blocks=10, scale_at=(2, 7))
    plain = auto_diff(a, b, Z)
    bad = {ld.base_path for ld in plain.layers if not ld.ok}
    later = {p for p in bad if p and p.split(".")[0] in ("3", "4", "5", "6", "8", "9")}
    assert plain.first_diff.base_path == "2.act" and len(later) >= 5  # layers after block 2 differ: accumulation
    single = auto_diff(a, b, Z, single_step=True, auto_init=False)
    bad = [(ld.base_path, ld.output) for ld in single.layers if not ld.ok]
    assert bad == [("2.act", "in[0]"), ("7.act", "in[0]")], str(single)  # where the scaling reaches a layer
    f = single.first_diff
    assert (f.base_path, f.inputs_agree) == ("2.act", False) and "code before it that no paired layer" in f.note
    assert "its inputs already differ" in str(single)
    # a layer that itself differs is blamed with its own output, its inputs being base's
    c, d = chain(src, blocks=10), chain(dst, blocks=10)
    assign_weight(c, d)
    spoil = d[6].fc.bias
    if isinstance(spoil, torch.Tensor):
        with torch.no_grad():
            spoil.add_(0.01)
    else:
        spoil.set_value(spoil.numpy() + 0.01)
    single = auto_diff(c, d, Z, single_step=True, auto_init=False)
    assert {ld.base_path for ld in single.layers if not ld.ok} == {"6.fc"}, str(single)
    assert single.first_diff.base_path == "6.fc" and single.first_diff.inputs_agree


# -- settings ---------------------------------------------------------------------------------
@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_mismatched_optimizer_settings_are_refused_before_anything_runs(src, dst):
    a, b = convnet(src), convnet(dst)
    snap = snapshot(b)
    cases = [
        ((optimizer(src, a, "sgd", lr=0.05), optimizer(dst, b, "sgd", lr=0.1)),
         r"learning rate: base 0\.weight 0\.05 .* raw 0\.weight 0\.1 .*\(and 7 more parameters\).*same learning rate"),
        ((optimizer(src, a, "adamw", wd=0.01), optimizer(dst, b, "adamw", wd=0.0)), r"weight decay: base .* 0\.01 .*0\.0"),
        ((optimizer(src, a, "adam"), optimizer(dst, b, "sgd")), r"optimizer: base .* is adam, raw .* is sgd"),
        ((optimizer(src, a, "adam", **({"betas": (0.8, 0.999)} if src == "torch" else {"beta1": 0.8})),
          optimizer(dst, b, "adam")), r"beta1: base .* 0\.8, raw .* 0\.9"),
    ]
    for opts, message in cases:
        with pytest.raises(DiffInputError, match=message):
            auto_diff(a, b, X, loss_fns=(ce(src), ce(dst)), optimizers=opts)
        assert_unchanged(b, snap)  # refused before the transfer: nothing written
    b.eval()
    with pytest.raises(DiffInputError, match=r"train/eval state: base <root> .* train mode, raw <root> .* eval mode"):
        auto_diff(a, b, X, optimizers=(optimizer(src, a, "sgd"), optimizer(dst, b, "sgd")))


def test_where_weight_decay_applies_is_compared_per_parameter():
    a, b = convnet("torch"), convnet("paddle")
    decay = [p for n, p in a.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in a.named_parameters() if not n.endswith("weight")]
    topt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=0.01)
    every = paddle.optimizer.AdamW(learning_rate=0.01, parameters=b.parameters(), weight_decay=0.1)
    with pytest.raises(DiffInputError, match=r"weight decay: base 1\.bias 0\.0 .* raw 1\.bias 0\.1 .*apply_decay_param_fun"):
        auto_diff(a, b, X, loss_fns=(ce("torch"), ce("paddle")), optimizers=(topt, every))
    names = {p.name for n, p in b.named_parameters() if n.endswith("weight")}
    alike = paddle.optimizer.AdamW(learning_rate=0.01, parameters=b.parameters(), weight_decay=0.1,
                                   apply_decay_param_fun=lambda name: name in names)
    r = auto_diff(a, b, X, loss_fns=(ce("torch"), ce("paddle")), optimizers=(topt, alike), steps=3)
    assert r.ok, str(r)


def test_paddle_gradient_clipping_without_a_torch_clip_is_refused_and_a_clipping_callable_agrees():
    a, b = convnet("torch"), convnet("paddle")
    clipped = paddle.optimizer.SGD(learning_rate=0.5, parameters=b.parameters(),
                                   grad_clip=paddle.nn.ClipGradByGlobalNorm(0.01))
    topt = torch.optim.SGD(a.parameters(), lr=0.5)
    with pytest.raises(DiffInputError, match=r"gradient clipping: .*none .*global norm 0\.01 .*clip_grad_norm_"):
        auto_diff(a, b, X, loss_fns=(ce("torch"), ce("paddle")), optimizers=(topt, clipped))

    def torch_step():
        torch.nn.utils.clip_grad_norm_(a.parameters(), 0.01)
        topt.step()
        topt.zero_grad()

    def paddle_step():
        clipped.step()
        clipped.clear_grad()

    r = auto_diff(a, b, X, loss_fns=(ce("torch"), ce("paddle")), optimizers=(torch_step, paddle_step), steps=3)
    assert r.ok, str(r)
    assert "optimizer settings not checked" in "\n".join(r.notes)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_an_optimizer_difference_behind_callables_is_located_at_the_optimizer_stage(src, dst):
    a, b = convnet(src), convnet(dst)
    oa, ob = optimizer(src, a, "sgd", lr=0.05), optimizer(dst, b, "sgd", lr=0.06)

    def stepper(opt):
        def step():
            opt.step()
            opt.zero_grad() if hasattr(opt, "zero_grad") else opt.clear_grad()
        return step

    r = auto_diff(a, b, X, loss_fns=(ce(src), ce(dst)), optimizers=(stepper(oa), stepper(ob)), steps=3)
    assert (r.step, r.stage) == (0, "optimizer"), str(r)
    s = r.steps[0]
    assert s.first_diff is None and s.loss_ok and all(g.ok for g in s.grads) and not all(w.ok for w in s.weights)
    assert r.steps[1].stage == "forward"  # the weights differ from then on
    assert "stage optimizer: weight base 8." in str(r) or "stage optimizer: weight base" in str(r)
    w = s.first_weight_diff
    assert w.after_step and "after the optimizer step" in str(w) and "difference / update (L2)" in str(w)


def test_adam_on_a_vanishing_gradient_is_judged_by_its_noise(monkeypatch):
    """A conv bias before BatchNorm has gradient ~0 (float noise on both sides); Adam scales noise to a full step.
    Isolated (the default), raw's Adam steps on base's gradient and the biases stay together. Running apart
    (``isolate_steps=False``), the two biases move apart: the reference run measures that gradient as pure noise,
    so its values are not judged (``excused``) and the run is OK; without that floor (forced off) it is flagged at
    the optimizer stage, with the note that explains it."""
    nn = NN["torch"]
    pn = NN["paddle"]

    def run(**kw):
        torch.manual_seed(0)
        paddle.seed(0)
        a = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 64, 5))
        b = pn.Sequential(pn.Conv2D(3, 4, 3), pn.BatchNorm2D(4), pn.Flatten(), pn.Linear(4 * 64, 5))
        return auto_diff(a, b, X, loss_fns=(ce("torch"), ce("paddle")),
                         optimizers=(optimizer("torch", a, "adam", lr=0.01), optimizer("paddle", b, "adam", lr=0.01)),
                         **kw)

    def bias(r):
        [w] = [w for w in r.steps[0].weights if w.base_param == "0.bias"]
        return w

    r = run()
    assert r.ok and r.steps[0].isolated and bias(r).norm_rel < 1e-5, str(r)
    r = run(isolate_steps=False)
    assert r.ok and not r.steps[0].isolated, str(r)
    w = bias(r)
    assert w.ok and w.norm_rel > 2e-2 and w.excused == w.total == 4  # far apart, each value's direction is noise
    import padiff_lite.verify.training as training

    monkeypatch.setattr(training, "grad_noise", lambda plan, *references: None)
    r = run(isolate_steps=False)
    assert r.stage == "optimizer" and r.first_weight_diff.base_param == "0.bias", str(r)
    assert any("~0 on both sides" in n and "0.bias" in n for n in r.notes)


# -- forward-only details --------------------------------------------------------------------
@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_a_model_registering_a_gradient_hook_in_forward_compares_forward_only(src, dst):
    a, b = chain(src, hooks=True), chain(dst, hooks=True)
    r = auto_diff(a, b, Z)
    assert r.ok and len(r.layers) > 6, str(r)
    assert any("gradient hook inside forward" in n for n in r.notes)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_backward_phase_compares_gradients_only(src, dst):
    a, b = chain(src), chain(dst, wrong_grad_at=1)
    r = auto_diff(a, b, Z, diff_phase="backward")
    assert r.phase == "backward" and not r.layers and len(r.grads) == 14
    assert (r.step, r.stage) == (0, "backward") and r.first_grad_diff.base_param.startswith("1.fc."), str(r)
    assert not r.training and r.steps[0].weights == []


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_an_optimizer_that_stepped_before_is_refused_and_bad_arguments_are_named(src, dst):
    a, b = convnet(src), convnet(dst)
    oa, ob = optimizer(src, a, "adam"), optimizer(dst, b, "adam")
    auto_diff(a, b, X, loss_fns=(ce(src), ce(dst)), optimizers=(oa, ob))  # both have stepped once: alike
    with pytest.raises(DiffInputError, match=r"optimizer state: base .* has stepped before .* raw .* has not"):
        auto_diff(a, b, X, loss_fns=(ce(src), ce(dst)), optimizers=(oa, optimizer(dst, b, "adam")))
    with pytest.raises(DiffInputError, match=r"loss_fns\[1\] returned a tensor of shape \[6, 5\], not a scalar"):
        auto_diff(a, b, X, loss_fns=(ce(src), lambda out: out))
    with pytest.raises(DiffInputError, match="optimizers must be a pair"):
        auto_diff(a, b, X, optimizers=(oa,))
    with pytest.raises(DiffInputError, match="steps must be a positive integer"):
        auto_diff(a, b, X, steps=0)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_torch_sgd_with_momentum_meets_paddle_momentum(src, dst):
    def momentum(fw, model, nesterov):
        if fw == "torch":
            return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=nesterov)
        return paddle.optimizer.Momentum(learning_rate=0.05, momentum=0.9, parameters=model.parameters(),
                                         use_nesterov=nesterov)

    a, b = convnet(src), convnet(dst)
    r = auto_diff(a, b, X, loss_fns=(ce(src), ce(dst)), optimizers=(momentum(src, a, True), momentum(dst, b, True)),
                  steps=3)
    assert r.ok, str(r)
    with pytest.raises(DiffInputError, match=r"nesterov: base .* True, raw .* False"):
        auto_diff(a, b, X, loss_fns=(ce(src), ce(dst)),
                  optimizers=(momentum(src, a, True), momentum(dst, b, False)))


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_a_different_loss_is_located_at_the_loss_stage_and_padiff_pairs_feed_each_step(src, dst):
    a, b = convnet(src), convnet(dst)
    smoothed = (lambda out: torch.nn.functional.cross_entropy(out, torch.from_numpy(Y), label_smoothing=0.1)) \
        if dst == "torch" else \
        (lambda out: paddle.nn.functional.cross_entropy(out, paddle.to_tensor(Y), label_smoothing=0.1))
    to_b = (lambda v: torch.from_numpy(v)) if src == "torch" else paddle.to_tensor
    to_r = (lambda v: torch.from_numpy(v)) if dst == "torch" else paddle.to_tensor
    items = [({"input": to_b(X)}, {"input": to_r(X)}),  # PaDiff's form, one pair per step (Sequential's keyword)
             ({"input": to_b(X[::-1].copy())}, {"input": to_r(X[::-1].copy())})]
    r = auto_diff(a, b, items, loss_fns=(ce(src), smoothed), steps=2,
                  optimizers=(optimizer(src, a, "sgd"), optimizer(dst, b, "sgd")))
    assert (r.step, r.stage) == (0, "loss") and r.steps[0].first_diff is None, str(r)
    lb, lr = r.steps[0].loss
    assert abs(lr - lb) > 1e-3 and f"base loss {lb:.8g}, raw loss {lr:.8g}" in str(r)


# -- the seed without a loss: what both models return ----------------------------------------------
def two_heads(fw, extra_output: bool):
    """lin1 -> ReLU -> lin2; returns {"pooled": lin2's output} and, when ``extra_output``, also {"hidden": lin1's}
    (as a vision tower returning last_hidden_state beside pooler_output against one returning the pooled part)."""
    nn = NN[fw]

    class TwoHeads(Base(fw)):
        def __init__(self):
            super().__init__()
            self.lin1, self.lin2 = nn.Linear(4, 8), nn.Linear(8, 3)

        def forward(self, x):
            h = self.lin1(x)
            out = {"pooled": self.lin2(h.relu() if fw == "torch" else paddle.nn.functional.relu(h))}
            if extra_output:
                out["hidden"] = h
            return out

    return TwoHeads()


X4 = np.random.default_rng(2).standard_normal((5, 4)).astype("float32")


@pytest.mark.parametrize("extra_on", ["base", "raw"])
@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_without_a_loss_the_seed_is_the_mean_of_what_both_models_return(src, dst, extra_on):
    """One side returns a tensor more ("hidden"): the backward starts from the mean of the tensors both return
    ("pooled"), on both sides, so a correct port agrees; the tensor left out is named. The gradients are those of
    pooled's mean (lin2's bias: 1/3 per value) and their float32 noise floor comes from the same seed."""
    a, b = two_heads(src, extra_on == "base"), two_heads(dst, extra_on == "raw")
    r = auto_diff(a, b, X4, diff_phase="both")
    assert r.ok, str(r)
    grads = {g.base_param: g for g in r.grads}
    assert len(grads) == 4 and all(g.ok for g in grads.values())
    assert grads["lin2.bias"].scale == pytest.approx(1 / 3, rel=1e-6)
    assert grads["lin1.weight"].max_rel_diff < 1e-5 and grads["lin1.weight"].noise < 1e-4
    assert any("left out of the seed" in n and f"{extra_on} out['hidden']" in n for n in r.notes), r.notes


@pytest.mark.parametrize("fw", ["torch", "paddle"])
def test_per_place_gradients_sum_to_the_gradient_of_their_joint_seed(fw):
    """``backward_each`` (the reference run's gradients, one output tensor at a time) is linear: the sum over
    "pooled" and "hidden" equals the gradient of a backward from both at once."""
    from padiff_lite.proxy import create_model
    from padiff_lite.verify.session import backward, backward_each

    m = create_model(two_heads(fw, True))
    x = torch.from_numpy(X4) if fw == "torch" else paddle.to_tensor(X4)
    params = [p for _, p in m.model.named_parameters()]
    read = lambda: [m.adapter.grad(p) for p in params]  # noqa: E731
    each = backward_each(m, m.model(x), read)
    assert set(each) == {"out['pooled']", "out['hidden']"}
    backward(m, m.model(x))
    joint = read()
    m.adapter.clear_grads(m.model)
    assert each["out['hidden']"][2] is None and each["out['hidden']"][3] is None  # lin2 takes no part in "hidden"
    for j, s0, s1 in zip(joint, each["out['pooled']"], each["out['hidden']"]):
        total = s0 if s1 is None else s0 + s1
        assert np.abs(total - j).max() <= 1e-6 * np.abs(j).max()


# -- a parameter without a gradient on one side, an all-zero one on the other -----------------------
def with_spare(fw, uses_spare: bool):
    """lin1 -> lin2, and a ``spare`` Linear that only the model with ``uses_spare`` calls, adding 0 times its output
    (its gradient is all zeros there, None on the other side)."""
    nn = NN[fw]

    class WithSpare(Base(fw)):
        def __init__(self):
            super().__init__()
            self.lin1, self.lin2, self.spare = nn.Linear(4, 8), nn.Linear(8, 3), nn.Linear(4, 3)

        def forward(self, x):
            y = self.lin2(self.lin1(x))
            return y + 0.0 * self.spare(x) if uses_spare else y

    return WithSpare()


@pytest.mark.parametrize("zero_on", ["base", "raw"])
@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_a_weight_without_a_gradient_on_one_side_is_named_with_that_cause(src, dst, zero_on):
    """AdamW skips a parameter without a gradient but decays one whose gradient is zero: the two training runs part
    there (a real difference, as an expert no token reached: a packed tensor against one module per expert). The
    optimizer stage names the spare layer's weights and the cause, whichever side had which."""
    a, b = with_spare(src, zero_on == "base"), with_spare(dst, zero_on == "raw")
    lr, wd = 0.05, 0.1
    r = auto_diff(a, b, X4, loss_fns=(lambda o: o.mean(), lambda o: o.mean()),
                  optimizers=(optimizer(src, a, "adamw", lr=lr, wd=wd), optimizer(dst, b, "adamw", lr=lr, wd=wd)))
    assert (r.step, r.stage) == (0, "optimizer"), str(r)
    s = r.steps[0]
    assert s.first_diff is None and s.loss_ok and all(g.ok for g in s.grads)
    bad = {w.raw_param: w for w in s.weights if not w.ok}
    # (paddle's Linear starts its bias at 0, which decay leaves at 0: spare.bias differs when torch built base)
    assert set(bad) == ({"spare.weight", "spare.bias"} if src == "torch" else {"spare.weight"})
    none_fw, zero_fw = (dst, src) if zero_on == "base" else (src, dst)
    cause = f"not updated by {none_fw}'s optimizer (no gradient), updated by weight decay in {zero_fw}"
    w = bad["spare.weight"]
    assert w.cause.startswith(cause) and cause in str(r)
    # the side with a zero gradient was decoupled-decayed by lr * wd: the difference is that much of the weight
    spare = dict((b if zero_on == "base" else a).named_parameters())["spare.weight"]
    assert w.max_abs_diff == pytest.approx(lr * wd * np.abs(np_of(spare)).max(), rel=1e-3)
    assert not any("~0 on both sides" in n for n in r.notes)  # not the vanishing-gradient explanation
