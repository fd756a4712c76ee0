"""The special-init registry: decorator and run-time registration, duplicates, overrides, signatures and keys
refused at registration, plugins, rollback."""
import numpy as np
import paddle
import pytest
import torch

from helpers import LMHead, assert_refused, inputs_for
from padiff_lite import (PluginImportError, RegistryError, TransferError, add_special_init, assign_weight,
                         create_model, init_pool)
from padiff_lite.models import run
from padiff_lite.special_init import Map, load_plugins


def lm(fw):
    if fw == "torch":
        return torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Tanh(), torch.nn.Linear(6, 9, bias=False))
    return paddle.nn.Sequential(paddle.nn.Linear(6, 6), paddle.nn.Tanh(), LMHead(6, 9))


def _copy_head_t2p(module, layer):
    layer.weight.set_value(module.weight.detach().numpy())  # no transpose: same [vocab, hidden] layout


def _copy_head_p2t(layer, module):
    module.weight.copy_(torch.from_numpy(layer.weight.numpy()))


@pytest.mark.parametrize("direction", ["torch->paddle", "paddle->torch"])
def test_add_special_init_at_run_time_for_a_custom_head(direction, scoped_pool):
    add_special_init("torch", "Linear", "paddle", "LMHead", _copy_head_t2p)
    add_special_init("paddle", "LMHead", "torch", "Linear", _copy_head_p2t)
    src, dst = direction.split("->")
    a, b = lm(src), lm(dst)
    x = inputs_for([(3, 6)])
    assert np.abs(run(a, src, x)[0] - run(b, dst, x)[0]).max() > 1e-3
    report = assign_weight(a, b)
    np.testing.assert_allclose(run(a, src, x)[0], run(b, dst, x)[0], atol=1e-6)
    head = "torch.Linear -> paddle.LMHead" if src == "torch" else "paddle.LMHead -> torch.Linear"
    assert [p.rule for p in report.pairs] == [f"mapping {src}.Linear -> {dst}.Linear", f"special init {head}"]


def test_decorator_registration_and_duplicate_key(scoped_pool):

    @init_pool.register("torch", "Tanh", "paddle", "Tanh")
    def first(module, layer):
        pass

    with pytest.raises(RegistryError) as e:
        init_pool.register("torch", "Tanh", "paddle", "Tanh")(lambda m, l: None)
    assert "torch.Tanh -> paddle.Tanh" in str(e.value) and "test_registry" in str(e.value)
    assert "override=True" in str(e.value)
    def second(module, layer):
        pass

    init_pool.register("torch", "Tanh", "paddle", "Tanh", override=True)(second)
    assert init_pool["torch", "Tanh", "paddle", "Tanh"].func is second


def test_wrong_signature_is_refused_at_registration():
    with pytest.raises(RegistryError, match="two positional arguments"):
        add_special_init("torch", "Foo", "paddle", "Foo", lambda module: None)
    assert ("torch", "Foo", "paddle", "Foo") not in init_pool
    with pytest.raises(RegistryError, match="framework 'jax'"):
        add_special_init("jax", "Foo", "paddle", "Foo", lambda m, l: None)


def test_a_plugin_that_fails_to_import_is_named(tmp_path):
    (tmp_path / "init_aaa_ok.py").write_text("X = 1\n")
    bad = tmp_path / "init_broken.py"
    bad.write_text("import this_module_does_not_exist\n")
    with pytest.raises(PluginImportError) as e:
        load_plugins(tmp_path)
    assert str(bad) in str(e.value) and "this_module_does_not_exist" in str(e.value)


def test_plugins_in_a_folder_register_their_inits(tmp_path, scoped_pool):
    (tmp_path / "init_soft.py").write_text(
        "from padiff_lite.special_init import init_pool\n"
        "@init_pool.register('torch', 'Softsign', 'paddle', 'Softsign')\n"
        "def soft(module, layer):\n    pass\n")
    load_plugins(tmp_path)
    assert ("torch", "Softsign", "paddle", "Softsign") in init_pool


class Scaled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4, 3))

    def forward(self, x):
        return x @ self.w.T


class ScaledP(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.w = self.create_parameter([3, 4])

    def forward(self, x):
        return x @ self.w


def test_unregistered_transposed_layout_is_refused_not_guessed(scoped_pool):
    a, b = Scaled(), ScaledP()
    e = assert_refused(lambda: assign_weight(a, b), TransferError, b)
    assert "w [4, 3] vs raw w [3, 4]" in str(e) and "never guesses a transpose" in str(e)
    init_pool.register_maps("torch", "Scaled", "paddle", "ScaledP")(lambda m, l: [Map("w", "w", "transpose")])
    x = inputs_for([(2, 3)])
    assign_weight(a, b)
    np.testing.assert_allclose(run(a, "torch", x)[0], run(b, "paddle", x)[0], atol=1e-6)
    a2 = Scaled()
    assign_weight(b, a2)  # the inverted rule
    np.testing.assert_allclose(run(a2, "torch", x)[0], run(b, "paddle", x)[0], atol=1e-6)


def test_a_rule_changed_between_two_transfers_is_used_by_the_next(scoped_pool):
    """Pairing remembers the rule of each class pair for one transfer only: a rule registered, replaced
    or removed afterwards is what the next transfer uses (every layer of the class, not only the first)."""
    a = torch.nn.Sequential(*[Scaled() for _ in range(3)])
    b = paddle.nn.Sequential(*[ScaledP() for _ in range(3)])
    init_pool.register_maps("torch", "Scaled", "paddle", "ScaledP")(lambda m, l: [Map("w", "w", "transpose")])
    report = assign_weight(a, b)
    assert [p.rule for p in report.pairs] == ["mapping torch.Scaled -> paddle.ScaledP"] * 3

    def refuse(module, layer):
        raise TransferError("the new rule refuses this pair")

    init_pool.register_maps("torch", "Scaled", "paddle", "ScaledP", override=True)(refuse)
    with pytest.raises(TransferError) as e:
        assign_weight(a, b)
    assert str(e.value).count("the new rule refuses this pair") == 3
    init_pool.remove("torch", "Scaled", "paddle", "ScaledP")
    with pytest.raises(TransferError) as e:
        assign_weight(a, b)
    assert "never guesses a transpose" in str(e.value) and "refuses" not in str(e.value)


def test_special_init_that_raises_half_way_restores_everything(scoped_pool):

    def half(module, layer):
        layer.weight.set_value(np.zeros([9, 6], "float32"))
        raise RuntimeError("boom after writing")

    add_special_init("torch", "Linear", "paddle", "LMHead", half)
    a, b = lm("torch"), lm("paddle")
    e = assert_refused(lambda: assign_weight(a, b), TransferError, b)
    assert "boom after writing" in str(e) and "2 (Linear) -> 2 (LMHead)" in str(e)
    assert isinstance(e.__cause__, RuntimeError)


def test_special_init_that_replaces_a_tensor_with_another_shape_is_undone(scoped_pool):

    def swap(layer, module):
        module.weight = torch.nn.Parameter(torch.zeros(5, 5))

    add_special_init("paddle", "LMHead", "torch", "Linear", swap)
    a, b = lm("paddle"), lm("torch")
    assert_refused(lambda: assign_weight(a, b), TransferError, b, match=r"changed tensor shapes")
    assert tuple(b[2].weight.shape) == (9, 6)


def test_bad_arguments():
    with pytest.raises(TypeError, match="numpy.ndarray"):
        create_model(np.zeros(3))
    proxy = create_model(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="sideways"):
        proxy.auto_layer_map("sideways")
    with pytest.raises(ValueError, match="does not contain: Linear"):
        proxy.set_layer_map([torch.nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="mode must be one of"):
        proxy.update_black_list([proxy.model], "some")
    a = create_model(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)))
    b = create_model(paddle.nn.Sequential(paddle.nn.Linear(2, 2), paddle.nn.Linear(2, 2)))
    a.set_layer_map([a.model[0], a.model[1]])
    b.set_layer_map([b.model[0]])
    with pytest.raises(ValueError, match="layer maps differ in length: Sequential \\(torch\\) has 2"):
        assign_weight(a, b)


# -- duplicates, overrides, signatures, keys, plugin files ----------------------------------------------


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
