"""Bad input and failures half-way: a named error with the place and the fix, and nothing changed or lost.

test_registry.py and test_pairing.py hold the first cases (special init raising on a paddle raw
model, duplicate decorator key, plugin import failure, wrong signature, nested structure mismatch,
basic bad arguments); this file covers the rest.
"""
import numpy as np
import paddle
import pytest
import torch

from helpers import DIRECTION_IDS, DIRECTIONS, assert_unchanged, inputs_for, snapshot
from padiff_lite import (LayerMapError, PluginImportError, RegistryError, TransferError, add_special_init,
                         assign_weight, create_model, init_pool)
from padiff_lite.models import run
from padiff_lite.special_init import Map, load_plugins

NN = {"torch": torch.nn, "paddle": paddle.nn}


def Base(fw):
    return torch.nn.Module if fw == "torch" else paddle.nn.Layer


# -- special inits failing half-way --------------------------------------------------------------
class Head(paddle.nn.Layer):
    """Paddle head with a torch-layout weight [out, in] (no registered rule: needs a special init)."""

    def __init__(self, i, o):
        super().__init__()
        self.weight = self.create_parameter([o, i])

    def forward(self, x):
        return paddle.matmul(x, self.weight, transpose_y=True)


def headed(fw, tie=False):
    class Headed(Base(fw)):
        def __init__(self):
            super().__init__()
            nn = NN[fw]
            self.embed = nn.Embedding(11, 6)
            self.mid = nn.Linear(6, 6)
            self.head = nn.Linear(6, 11, bias=False) if fw == "torch" else Head(6, 11)
            self.head2 = nn.Linear(6, 11, bias=False) if fw == "torch" else Head(6, 11)
            if tie:
                self.head.weight = self.embed.weight

        def forward(self, ids):
            h = self.mid(self.embed(ids))
            return self.head(h) + self.head2(h)

    return Headed()


def _write(layer, value):
    """Write a numpy array into a torch or paddle layer's weight, as a user's special init would."""
    if isinstance(layer, torch.nn.Module):
        layer.weight.copy_(torch.from_numpy(value))
    else:
        layer.weight.set_value(value)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_second_special_init_raising_restores_what_the_first_wrote(src, dst, scoped_pool):
    key = ("torch", "Linear", "paddle", "Head") if src == "torch" else ("paddle", "Head", "torch", "Linear")
    calls = []

    def init(module, layer):
        calls.append(layer)
        _write(layer, np.full([11, 6], 7.0, "float32"))
        if len(calls) == 2:
            raise ValueError("second head: vocab mismatch")

    add_special_init(*key, init)
    a, b = headed(src), headed(dst)
    snap = snapshot(b)
    with pytest.raises(TransferError) as e:
        assign_weight(a, b)
    msg = str(e.value)
    assert len(calls) == 2
    assert "ValueError: second head: vocab mismatch" in msg and "head2 (" in msg and "the raw model was restored" in msg
    assert "add_special_init(..., override=True)" in msg and "test_reliability" in msg  # where it was registered
    assert_unchanged(b, snap)  # both heads, and the planned tensors (embed, mid) never written


def test_special_init_writing_a_tied_tensor_outside_its_pair_is_restored(scoped_pool):
    """torch raw head.weight is embed.weight: the init writes embed's values through it, then fails."""

    def init(layer, module):
        module.weight.fill_(3.0)
        raise RuntimeError("half-way")

    add_special_init("paddle", "Head", "torch", "Linear", init)
    a, b = headed("paddle"), headed("torch", tie=True)
    before = b.embed.weight.detach().clone()
    with pytest.raises(TransferError, match="half-way"):
        assign_weight(a, b)
    assert b.head.weight is b.embed.weight
    assert torch.equal(b.embed.weight, before)


def test_special_init_replacing_a_paddle_parameter_with_another_shape_is_undone(scoped_pool):

    def init(module, layer):
        layer.weight = layer.create_parameter([3, 3])

    add_special_init("torch", "Linear", "paddle", "Head", init)
    a, b = headed("torch"), headed("paddle")
    original = b.head.weight
    snap = snapshot(b)
    with pytest.raises(TransferError) as e:
        assign_weight(a, b)
    assert "head.weight [11, 6] -> [3, 3]" in str(e.value) and "copy_/set_value" in str(e.value)
    assert b.head.weight is original
    assert_unchanged(b, snap)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_special_init_is_not_run_when_its_layer_holds_no_data(src, dst, scoped_pool):
    key = ("torch", "Linear", "paddle", "Head") if src == "torch" else ("paddle", "Head", "torch", "Linear")
    calls = []
    add_special_init(*key, lambda m, l: calls.append(1))
    if src == "torch":
        with torch.device("meta"):
            a = headed("torch")
    else:
        with paddle.LazyGuard():
            a = headed("paddle")
    b = headed(dst)
    snap = snapshot(b)
    with pytest.raises(TransferError) as e:
        assign_weight(a, b)
    assert "base head.weight holds no data" in str(e.value) and "base head2.weight holds no data" in str(e.value)
    assert calls == []
    assert_unchanged(b, snap)


# -- registry -----------------------------------------------------------------------------------
def test_duplicate_mapping_rule_names_the_key_and_where_it_was_registered(scoped_pool):
    with pytest.raises(RegistryError) as e:
        init_pool.register_maps("torch", "Linear", "paddle", "Linear")(lambda m, l: [Map("weight", "weight")])
    msg = str(e.value)
    assert "torch.Linear -> paddle.Linear is already registered" in msg
    assert "padiff_lite.special_init.init_linear:" in msg and "override=True" in msg
    # the reverse key is checked too: registering only it still collides with the built-in inverted rule
    with pytest.raises(RegistryError, match="paddle.Linear -> torch.Linear is already registered"):
        init_pool.register("paddle", "Linear", "torch", "Linear")(lambda l, m: None)
    assert init_pool["torch", "Linear", "paddle", "Linear"].origin.startswith("padiff_lite.special_init.init_linear")


class GainT(torch.nn.Module):
    def __init__(self, g):
        super().__init__()
        self.g = torch.nn.Parameter(torch.full([1], g))


class GainP(paddle.nn.Layer):
    def __init__(self, g):
        super().__init__()
        self.g = self.create_parameter([1], default_initializer=paddle.nn.initializer.Constant(g))


def test_override_replaces_and_is_used(scoped_pool):
    first, second = [], []
    add_special_init("torch", "GainT", "paddle", "GainP", lambda m, l: first.append(1))
    with pytest.raises(RegistryError, match="torch.GainT -> paddle.GainP is already registered"):
        add_special_init("torch", "GainT", "paddle", "GainP", lambda m, l: second.append(1))
    add_special_init("torch", "GainT", "paddle", "GainP",
                     lambda m, l: (second.append(1), l.g.set_value(m.g.detach().numpy())), override=True)
    a, b = GainT(0.7), GainP(0.1)
    report = assign_weight(a, b)
    assert (first, second) == ([], [1]) and b.g.numpy().tolist() == pytest.approx([0.7])
    assert report.pairs[0].rule == "special init torch.GainT -> paddle.GainP"


def test_override_of_a_built_in_rule_is_used_and_can_be_put_back(scoped_pool):
    with pytest.raises(RegistryError, match="torch.PReLU -> paddle.PReLU is already registered"):
        add_special_init("torch", "PReLU", "paddle", "PReLU", lambda m, l: None)
    add_special_init("torch", "PReLU", "paddle", "PReLU",
                     lambda m, l: l._weight.set_value(m.weight.detach().numpy() * 2), override=True)
    a, b = torch.nn.PReLU(init=0.7), paddle.nn.PReLU(init=0.1)
    assign_weight(a, b)
    assert b._weight.numpy().tolist() == pytest.approx([1.4])


@pytest.mark.parametrize("bad,why", [
    (lambda module, layer, extra: None, "two positional arguments"),
    (lambda: None, "two positional arguments"),
    (lambda *, module, layer: None, "two positional arguments"),
    ("not a function", "must be callable"),
])
def test_special_init_with_a_wrong_signature_is_refused(bad, why):
    with pytest.raises(RegistryError, match=why) as e:
        add_special_init("torch", "Hardswish", "paddle", "Hardswish", bad)
    assert "torch.Hardswish -> paddle.Hardswish" in str(e.value)
    assert ("torch", "Hardswish", "paddle", "Hardswish") not in init_pool
    with pytest.raises(RegistryError, match=why):
        init_pool.register_maps("torch", "Hardswish", "paddle", "Hardswish")(bad)
    assert ("paddle", "Hardswish", "torch", "Hardswish") not in init_pool


@pytest.mark.parametrize("bad", [("torch", "", "paddle", "X"), ("torch", torch.nn.Linear, "paddle", "Linear"),
                                 ("tf", "Dense", "paddle", "Linear")])
def test_malformed_keys_are_refused(bad):
    with pytest.raises(RegistryError, match="class names are strings|framework 'tf'"):
        add_special_init(*bad, lambda m, l: None)


def test_plugins_with_a_syntax_error_or_a_duplicate_key_name_their_file(tmp_path):
    bad = tmp_path / "init_typo.py"
    bad.write_text("def broken(:\n")
    with pytest.raises(PluginImportError) as e:
        load_plugins(tmp_path)
    assert str(bad) in str(e.value) and "SyntaxError" in str(e.value) and "Fix or remove that file" in str(e.value)
    bad.unlink()
    dup = tmp_path / "init_dup.py"
    dup.write_text("from padiff_lite.special_init import init_pool, Map\n"
                   "init_pool.register_maps('torch', 'Linear', 'paddle', 'Linear')(lambda m, l: [])\n")
    with pytest.raises(PluginImportError) as e:
        load_plugins(tmp_path)
    assert str(dup) in str(e.value) and "already registered" in str(e.value)
    assert isinstance(e.value.__cause__, RegistryError)


# -- structure mismatches -----------------------------------------------------------------------
def stack(fw, n, extra_param_at=None, name="blocks"):
    nn = NN[fw]

    class Stack(Base(fw)):
        def __init__(self):
            super().__init__()
            lst = nn.ModuleList if fw == "torch" else nn.LayerList
            setattr(self, name, lst([nn.Linear(4, 4) for _ in range(n)]))
            self.out = nn.LayerNorm(4)
            if extra_param_at is not None:
                layer = getattr(self, name)[extra_param_at]
                if fw == "torch":
                    layer.gain = torch.nn.Parameter(torch.ones(4))
                else:
                    layer.gain = layer.create_parameter([4])

    return Stack()


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_different_list_lengths_name_every_extra_layer(src, dst):
    a, b = stack(src, 5), stack(dst, 3)
    snap = snapshot(b)
    with pytest.raises(TransferError) as e:
        assign_weight(a, b)
    msg = str(e.value)
    assert "unpaired base blocks.3 (Linear, 2 tensors)" in msg and "unpaired base blocks.4 (Linear, 2 tensors)" in msg
    assert "nothing was written" in msg and "set_layer_map" in msg and "strict=False" in msg
    assert_unchanged(b, snap)
    a, b = stack(src, 2), stack(dst, 4)  # and the other way round: raw layers that would get nothing
    with pytest.raises(TransferError, match=r"(?s)unpaired raw blocks\.2 .*unpaired raw blocks\.3 "):
        assign_weight(a, b)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_parameters_only_on_one_side_are_all_listed_for_both_sides(src, dst):
    a, b = stack(src, 3, extra_param_at=0), stack(dst, 3, extra_param_at=2)
    snap = snapshot(b)
    with pytest.raises(TransferError) as e:
        assign_weight(a, b)
    msg = str(e.value)
    assert "raw tensors with no base partner: blocks.2.gain" in msg
    assert "base tensors with no raw partner: blocks.0.gain" in msg
    assert_unchanged(b, snap)
    report = assign_weight(a, b, strict=False)  # the escape hatch: transfer what matches, list the rest
    assert report.missing == ["blocks.2.gain"] and report.unexpected == ["blocks.0.gain"]


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_layers_only_on_one_side_on_both_sides_are_all_listed(src, dst):
    a, b = stack(src, 2, name="blocks"), stack(dst, 3, name="layers")
    snap = snapshot(b)
    with pytest.raises(TransferError) as e:
        assign_weight(a, b)
    msg = str(e.value)
    assert "unpaired base blocks (" in msg and "unpaired raw layers (" in msg
    assert len(e.value.problems) == 1 and "fix:" in e.value.problems[0]
    assert_unchanged(b, snap)


# -- wrong arguments ----------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.zeros(3), None, "model.pt", {"weight": torch.zeros(2)}, torch.zeros(2)])
def test_create_model_and_assign_weight_refuse_non_models(bad):
    with pytest.raises(TypeError, match="takes a torch.nn.Module or a paddle.nn.Layer, got"):
        create_model(bad)
    good = torch.nn.Linear(2, 2)
    snap = snapshot(good)
    with pytest.raises(TypeError, match="build the model first"):
        assign_weight(bad, good)
    with pytest.raises(TypeError, match="build the model first"):
        assign_weight(good, bad)
    assert_unchanged(good, snap)


@pytest.mark.parametrize("kw", [{"strict": "no"}, {"strict": None}, {"check_finite": 1}, {"check_finite": "yes"}])
def test_flags_of_the_wrong_type_are_refused(kw):
    a, b = torch.nn.Linear(2, 2), paddle.nn.Linear(2, 2)
    snap = snapshot(b)
    name = next(iter(kw))
    with pytest.raises(TypeError, match=f"assign_weight\\({name}=...\\) takes True or False"):
        assign_weight(a, b, **kw)
    assert_unchanged(b, snap)


def test_layer_map_arguments_are_checked():
    t = create_model(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)))
    other = paddle.nn.Linear(2, 2)
    with pytest.raises(LayerMapError, match=r"takes torch modules, got paddle.nn.layer.common.Linear"):
        t.set_layer_map([t.model[0], other])
    with pytest.raises(LayerMapError, match="takes a list of torch modules, got Linear"):
        t.set_layer_map(t.model[0])
    with pytest.raises(LayerMapError, match="takes a list of torch modules, got str"):
        t.update_black_list("encoder")
    stray = torch.nn.Linear(2, 2)
    with pytest.raises(LayerMapError, match=r"Sequential \(torch\) does not contain: Linear at 0x"):
        t.update_white_list([t.model[1], stray])
    assert t.layer_map == [] and t.black_list == {} and t.white_list == {}
    with pytest.raises(ValueError, match="auto_layer_map\\(\\) takes 'base' or 'raw', got 'sideways'"):
        t.auto_layer_map("sideways")
    assert isinstance(LayerMapError("x"), ValueError)  # callers may catch ValueError


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_layer_maps_of_different_lengths(src, dst):
    a, b = create_model(stack(src, 3)), create_model(stack(dst, 3))
    a.set_layer_map(list(a.model.blocks))
    b.set_layer_map(list(b.model.blocks)[:2])
    snap = snapshot(b.model)
    with pytest.raises(LayerMapError) as e:
        assign_weight(a, b)
    assert f"Stack ({src}) has 3" in str(e.value) and f"Stack ({dst}) has 2" in str(e.value)
    assert "same number of modules" in str(e.value)
    assert_unchanged(b.model, snap)


# -- NaN / Inf in the source --------------------------------------------------------------------
def poisoned(fw):
    m = NN[fw].Sequential(NN[fw].Linear(3, 4), NN[fw].LayerNorm(4))
    w = np.random.default_rng(1).standard_normal((4, 3) if fw == "torch" else (3, 4)).astype("float32")
    w[0, 0], w[1, 2], w[2, 1] = np.nan, np.inf, -np.inf
    b = np.ones(4, "float32")
    b[3] = np.nan
    if fw == "torch":
        with torch.no_grad():
            m[0].weight.copy_(torch.from_numpy(w))
            m[1].bias.copy_(torch.from_numpy(b))
    else:
        m[0].weight.set_value(w)
        m[1].bias.set_value(b)
    return m


def weight_np(layer):
    """A Linear weight as numpy in torch layout."""
    if isinstance(layer, torch.nn.Module):
        return layer.weight.detach().numpy()
    return layer.weight.numpy().T


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_non_finite_values_are_copied_as_they_are_and_reported(src, dst):
    a, b = poisoned(src), NN[dst].Sequential(NN[dst].Linear(3, 4), NN[dst].LayerNorm(4))
    report = assign_weight(a, b)
    assert report.nonfinite == {"0.weight": 3, "1.bias": 1}
    assert "non-finite values copied" in str(report) and "0.weight: 3" in str(report)
    np.testing.assert_array_equal(weight_np(b[0]), weight_np(a[0]))  # NaN where NaN, +-Inf where +-Inf
    got = weight_np(b[0])
    assert (np.isnan(got).sum(), np.isposinf(got).sum(), np.isneginf(got).sum()) == (1, 1, 1)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_check_finite_refuses_before_writing(src, dst):
    a, b = poisoned(src), NN[dst].Sequential(NN[dst].Linear(3, 4), NN[dst].LayerNorm(4))
    snap = snapshot(b)
    with pytest.raises(TransferError) as e:
        assign_weight(a, b, check_finite=True)
    assert e.value.problems == [
        "base 0.weight holds 3 NaN/Inf values (check_finite=True); fix the source weights or pass "
        "check_finite=False to copy them as they are",
        "base 1.bias holds 1 NaN/Inf value (check_finite=True); fix the source weights or pass "
        "check_finite=False to copy them as they are"]
    assert_unchanged(b, snap)


def test_non_finite_values_reach_special_inits_flagged_and_check_finite_covers_them(scoped_pool):
    add_special_init("torch", "Linear", "paddle", "Head",
                     lambda m, l: l.weight.set_value(m.weight.detach().numpy()))
    a, b = headed("torch"), headed("paddle")
    with torch.no_grad():
        a.head2.weight[0, :2] = float("nan")
    snap = snapshot(b)
    with pytest.raises(TransferError, match="base head2.weight holds 2 NaN/Inf values"):
        assign_weight(a, b, check_finite=True)
    assert_unchanged(b, snap)
    report = assign_weight(a, b)
    assert report.nonfinite == {"head2.weight": 2}


# -- tensors without data -----------------------------------------------------------------------
def lazy(fw, build):
    if fw == "torch":
        with torch.device("meta"):
            return build(fw)
    with paddle.LazyGuard():
        return build(fw)


def small(fw):
    nn = NN[fw]
    bn = nn.BatchNorm1d(4) if fw == "torch" else nn.BatchNorm1D(4)
    return nn.Sequential(nn.Linear(3, 4), bn)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
@pytest.mark.parametrize("check_finite", [False, True])
def test_a_base_model_without_data_is_refused_before_writing(src, dst, check_finite):
    a, b = lazy(src, small), small(dst)
    snap = snapshot(b)
    with pytest.raises(TransferError) as e:
        assign_weight(a, b, check_finite=check_finite)
    msg = str(e.value)
    for path in ("0.weight", "0.bias", "1.weight", "1.bias"):
        assert f"base {path} holds no data" in msg
    assert "meta" in msg if src == "torch" else "undefined" in msg
    assert "load real weights into the base model" in msg and "nothing was written" in msg
    assert_unchanged(b, snap)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_a_raw_model_without_data_is_refused(src, dst):
    a, b = small(src), lazy(dst, small)
    snap = snapshot(a)
    with pytest.raises(TransferError) as e:
        assign_weight(a, b)
    assert "raw 0.weight holds no data" in str(e.value) and "materialise the raw model first" in str(e.value)
    assert_unchanged(a, snap)


# -- non-contiguous and tied tensors ------------------------------------------------------------
class TorchStrided(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 5)
        self.fc.weight = torch.nn.Parameter(torch.randn(3, 5).t())  # [5, 3] with strides of a transpose
        self.register_buffer("table", torch.randn(6, 4)[:, ::2])  # a strided slice

    def forward(self, x):
        return self.fc(x).sum(-1, keepdim=True) * self.table.sum()


class PaddleStrided(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.fc = paddle.nn.Linear(3, 5)
        self.register_buffer("table", paddle.randn([2, 6]).transpose([1, 0]))

    def forward(self, x):
        return self.fc(x).sum(-1, keepdim=True) * self.table.sum()


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_non_contiguous_tensors_on_either_side(src, dst):
    build = {"torch": TorchStrided, "paddle": PaddleStrided}
    a, b = build[src](), build[dst]()
    assert not (a.fc.weight.is_contiguous() if src == "torch" else a.table.is_contiguous())
    x = inputs_for([(2, 3)])
    assert np.abs(run(a, src, x)[0] - run(b, dst, x)[0]).max() > 1e-3
    assign_weight(a, b)
    np.testing.assert_allclose(run(a, src, x)[0], run(b, dst, x)[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(a.table.numpy()), np.asarray(b.table.numpy()))


def lm(fw, tie):
    nn = NN[fw]

    class LM(Base(fw)):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(11, 6)
            if fw == "torch":
                self.decoder = nn.Linear(6, 11, bias=False)
                if tie:
                    self.decoder.weight = self.embed.weight
            else:
                self.decoder = nn.Linear(6, 11, bias_attr=False)  # [6, 11]: cannot be tied to embed [11, 6]

        def forward(self, ids):
            return self.decoder(self.embed(ids))

    return LM()


def test_tied_torch_base_into_untied_paddle_gives_both_tensors_and_equal_outputs():
    a, b = lm("torch", True), lm("paddle", False)
    assign_weight(a, b)
    ids = [np.array([[1, 4, 7]])]
    np.testing.assert_allclose(run(a, "torch", ids)[0], run(b, "paddle", ids)[0], atol=1e-6)
    np.testing.assert_array_equal(b.decoder.weight.numpy().T, b.embed.weight.numpy())


def test_untied_paddle_base_into_tied_torch_when_the_values_agree():
    a, b = lm("paddle", False), lm("torch", True)
    a.decoder.weight.set_value(a.embed.weight.numpy().T)
    report = assign_weight(a, b)
    assert b.decoder.weight is b.embed.weight
    np.testing.assert_array_equal(b.embed.weight.detach().numpy(), a.embed.weight.numpy())
    assert report.tied == ["decoder.weight is tied to embed.weight: it gets embed.weight, not decoder.weight"]


@pytest.mark.parametrize("src", ["paddle", "torch"])
def test_untied_base_into_tied_raw_with_different_values_is_refused(src):
    """The raw model has room for one tensor; copying would silently drop the base decoder weights."""
    a, b = lm(src, False), lm("torch", True)
    snap = snapshot(b)
    with pytest.raises(TransferError) as e:
        assign_weight(a, b)
    msg = str(e.value)
    assert "raw decoder.weight is tied to embed.weight (one tensor)" in msg
    assert "base embed.weight and decoder.weight hold different values" in msg and "untie decoder.weight" in msg
    assert b.decoder.weight is b.embed.weight
    assert_unchanged(b, snap)


def test_tied_paddle_tensors_in_a_same_framework_transfer():
    class P(paddle.nn.Layer):
        def __init__(self, tie):
            super().__init__()
            self.a, self.b = paddle.nn.Embedding(5, 3), paddle.nn.Embedding(5, 3)
            if tie:
                self.b.weight = self.a.weight

    src, dst = P(True), P(True)
    report = assign_weight(src, dst)
    assert dst.b.weight is dst.a.weight and report.tensors == 1
    np.testing.assert_array_equal(dst.a.weight.numpy(), src.a.weight.numpy())
    with pytest.raises(TransferError, match="raw b.weight is tied to a.weight"):
        assign_weight(P(False), P(True))


# -- mapping rules that do not fit the layers they are given ------------------------------------
class Packed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(6, 4))
        self.s = torch.nn.Parameter(torch.randn(4))


class Split(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.a = self.create_parameter([4, 3])
        self.b = self.create_parameter([4, 3])
        self.s = self.create_parameter([4])


@pytest.mark.parametrize("maps,expected", [
    (lambda m, l: [Map("w", "a", "transpose", src_rows=(0, 3)), Map("w", "b", "transpose", src_rows=(3, 9)),
                   Map("s", "s")],
     "part [3:9] does not fit base w of shape [6, 4]"),
    (lambda m, l: [Map("w", "a", "transpose", src_rows=(0, 3)), Map("w", "b", "transpose", src_rows=(3, 6)),
                   Map("s", "s", "transpose")],
     "base s is 1-D, a transpose needs 2-D"),
    (lambda m, l: [Map("w", "a", "transpose", src_rows=(0, 3), dst_rows=(2, 6)), Map("s", "s")],
     "part [2:6] does not fit raw a of shape [4, 3]"),
    (lambda m, l: [Map("w", "a", "transpose", src_rows=(0, 3)), Map("w", "b", src_rows=(3, 6)), Map("s", "s")],
     "shape mismatch: base w [6, 4] vs raw b [4, 3]"),
    (lambda m, l: [Map("s", "s"), m.missing_attribute],
     "failed: AttributeError: 'Packed' object has no attribute 'missing_attribute'; fix the rule"),
])
def test_a_mapping_rule_that_does_not_fit_is_refused_before_writing(maps, expected, scoped_pool):
    init_pool.register_maps("torch", "Packed", "paddle", "Split")(maps)
    a, b = Packed(), Split()
    snap = snapshot(b)
    with pytest.raises(TransferError) as e:
        assign_weight(a, b)
    assert expected in str(e.value) and "<root> (Packed) -> <root> (Split)" in str(e.value)
    assert_unchanged(b, snap)


def test_a_good_mapping_rule_for_the_same_layers_works_both_ways(scoped_pool):
    init_pool.register_maps("torch", "Packed", "paddle", "Split")(lambda m, l: [
        Map("w", "a", "transpose", src_rows=(0, 3)), Map("w", "b", "transpose", src_rows=(3, 6)), Map("s", "s")])
    a, b, c = Packed(), Split(), Packed()
    assign_weight(a, b)
    np.testing.assert_array_equal(np.concatenate([b.a.numpy().T, b.b.numpy().T]), a.w.detach().numpy())
    assign_weight(b, c)
    assert torch.equal(c.w, a.w) and torch.equal(c.s, a.s)


@pytest.mark.parametrize("kw,match", [(dict(transform="rotate"), "Map transform 'rotate' is not one of"),
                                      (dict(src=None, dst=None), "a Map needs a source, a target, or both")])
def test_malformed_maps_are_refused(kw, match):
    args = dict(src="w", dst="w")
    args.update(kw)
    with pytest.raises(RegistryError, match=match):
        Map(**args)


def test_a_source_tensor_the_raw_layer_cannot_hold_must_be_the_constant():
    """paddle BatchNorm scale -> torch BatchNorm(affine=False): only a scale of exactly 1 can be dropped."""
    a, b = paddle.nn.BatchNorm1D(4), torch.nn.BatchNorm1d(4, affine=False)
    a.weight.set_value(np.full([4], 2.0, "float32"))
    snap = snapshot(b)
    with pytest.raises(TransferError) as e:
        assign_weight(a, b)
    assert "base weight has values other than 1.0, and the raw layer has no tensor to hold them" in str(e.value)
    assert "affine=True" in str(e.value)
    assert_unchanged(b, snap)
    a.weight.set_value(np.ones([4], "float32"))
    assign_weight(a, b)
    np.testing.assert_array_equal(b.running_var.numpy(), a._variance.numpy())


def test_internal_framework_names_are_checked():
    from padiff_lite import models

    with pytest.raises(ValueError, match="framework must be 'torch' or 'paddle', got 'jax'"):
        models.mlp("jax")
