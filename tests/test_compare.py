"""Issue 4: auto_diff proves a transfer by outputs and names the first layer that diverges."""
import collections
import dataclasses
import math

import numpy as np
import paddle
import pytest
import torch

from helpers import DIRECTION_IDS, DIRECTIONS, SEQ_NAME, deep, inputs_for, tensors_to_write
from padiff_lite import (DiffError, DiffInputError, OutputStructureError, assign_weight, auto_diff, create_model,
                         models)
from padiff_lite.verify import compare_arrays

X = inputs_for([(4, 16)])[0]


def _calls_before(result, first):
    return [ld for ld in result.layers if ld.order < first.order]


# -- faithful ports ------------------------------------------------------------------
@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
@pytest.mark.parametrize("name", ["conv_bn", "tiny"])
def test_faithful_port_is_ok(name, src, dst):
    build, shape = models.PAIRS[name]
    a, b = build(src), build(dst)
    models.warm_up(a, src, shape)
    x = inputs_for([shape], seed=3)[0]
    before = auto_diff(a, b, x, auto_init=False)
    assert not before.ok and before.max_abs_diff > 1e-3  # the check sees untransferred models differ
    result = auto_diff(a, b, x)
    assert result.ok and bool(result) is True
    assert result.first_diff is None and result.mismatched == 0
    assert result.max_abs_diff <= 1e-5 and result.total == math.prod(result_shape(result))
    assert len(result.layers) >= 9 and all(ld.ok for ld in result.layers)
    assert result.transfer is not None and result.transfer.tensors == tensors_to_write(b)
    text = str(result)
    assert text.splitlines()[0].endswith(": OK") and ">>" not in text


def result_shape(result):
    return [int(d) for d in result.output_structure[len("Tensor["):-1].split(",")]


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_faithful_port_is_ok_with_gradients(src, dst):
    result = auto_diff(deep(src), deep(dst), X, diff_phase="both")
    assert result.ok, str(result)
    # every Linear has weight + bias; the Linear transpose was applied to the gradients too
    assert len(result.grads) == 2 * 17 and result.first_grad_diff is None
    assert any("transposed" in g.note for g in result.grads) == (src != dst)


# -- one wrong layer in the middle ----------------------------------------------------
@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_perturbed_weight_is_named_on_both_sides(src, dst):
    a, b = deep(src), deep(dst)
    assign_weight(a, b)
    bad = getattr(b, SEQ_NAME[dst])[4].fc1.bias
    with torch.no_grad():  # perturb one raw tensor after the transfer
        if dst == "torch":
            bad.add_(0.5)
        else:
            bad.set_value(bad.numpy() + 0.5)
    result = auto_diff(a, b, X, auto_init=False)
    assert not result.ok and bool(result) is False
    f = result.first_diff
    assert (f.base_path, f.raw_path) == (f"{SEQ_NAME[src]}.4.fc1", f"{SEQ_NAME[dst]}.4.fc1")
    assert (f.base_class, f.raw_class) == ("Linear", "Linear")
    assert f.base_shape == f.raw_shape == (4, 16)
    assert f.mismatched == 64 and f.total == 64 and f.max_abs_diff == pytest.approx(0.5, abs=1e-5)
    assert f.inputs_agree is True
    earlier = _calls_before(result, f)
    assert len(earlier) == 4 * 4 and all(ld.ok for ld in earlier)  # blocks 0-3: fc1, act, fc2, the block
    assert result.max_abs_diff > 0.1 and result.mismatched > 0
    text = str(result)
    assert f"base {SEQ_NAME[src]}.4.fc1 (Linear)" in text and f"raw  {SEQ_NAME[dst]}.4.fc1 (Linear)" in text
    marked = [ln for ln in text.splitlines() if ln.lstrip().startswith(">>")]
    assert len(marked) == 1 and "fc1 (Linear)" in marked[0] and "DIFF" in marked[0]
    assert "its inputs agree" in text


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_different_activation_module_is_named(src, dst):
    result = auto_diff(deep(src), deep(dst, act_at=5), X)
    assert not result.ok
    f = result.first_diff
    assert (f.base_path, f.raw_path) == (f"{SEQ_NAME[src]}.5.act", f"{SEQ_NAME[dst]}.5.act")
    assert (f.base_class, f.raw_class) == ("ReLU", "GELU")
    assert f.inputs_agree is True and 0 < f.mismatched <= 64
    assert all(ld.ok for ld in _calls_before(result, f))
    assert "act (ReLU) -> act (GELU)" in str(result)


def test_functional_difference_blames_the_first_layer_that_sees_it_and_says_so():
    result = auto_diff(deep("torch"), deep("paddle", functional_at=2), X)
    f = result.first_diff
    assert (f.base_path, f.raw_path) == ("layers.2.fc2", "stages.2.fc2")
    assert f.inputs_agree is False
    assert "its inputs already differ" in str(result)


def test_big_model_tree_is_abbreviated_around_the_divergence():
    a, b = deep("torch", blocks=30), deep("paddle", blocks=30)
    assign_weight(a, b)
    b.stages[17].fc2.weight.set_value(b.stages[17].fc2.weight.numpy() * 2)
    result = auto_diff(a, b, X, auto_init=False)
    assert result.first_diff.base_path == "layers.17.fc2"
    tree = str(result).split("model tree")[1].splitlines()[1:]
    assert len(tree) < 40 and any("more" in ln for ln in tree)
    assert any(ln.lstrip().startswith(">>") and "fc2 (Linear)" in ln for ln in tree)
    assert sum("17 (Block)" in ln for ln in tree) == 1  # the marked layer's parent is shown


# -- structures and inputs -------------------------------------------------------------
def _pairwise(framework, as_tuple):
    nn = models._nn(framework)

    class Two(models._base(framework)):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x, y=None):
            out = self.fc(x) if y is None else self.fc(x) + self.fc(y)
            return (out, {"double": out * 2}) if as_tuple else out

    return Two().eval()


def test_outputs_of_another_form_are_aligned_and_the_rest_listed():
    x = inputs_for([(2, 3)])[0]
    result = auto_diff(_pairwise("torch", True), _pairwise("paddle", False), x)
    assert result.ok and result.total == 4  # out[0] met the raw tensor; the dict only base returns is listed
    note = next(n for n in result.notes if "final outputs" in n)
    assert "base tuple(Tensor[2, 2], dict(double=Tensor[2, 2]))" in note and "raw Tensor[2, 2]" in note
    assert "out[0] with out" in note and "only the base side returns out[1]['double']" in note


def _reduced(framework):
    nn = models._nn(framework)

    class Reduced(models._base(framework)):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x).sum(1)

    return Reduced().eval()


def test_outputs_that_cannot_be_paired_are_a_clear_error():
    x = inputs_for([(2, 3)])[0]
    with pytest.raises(OutputStructureError) as err:
        auto_diff(_pairwise("torch", False), _reduced("paddle"), x)
    msg = str(err.value)
    assert "no tensor of the final outputs can be paired: base returns Tensor[2, 2], raw returns Tensor[2]" in msg
    assert "out [2, 2] vs out [2]: the shapes are neither equal" in msg and "compare a submodule" in msg


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_nested_outputs_are_compared_leaf_by_leaf(src, dst):
    x = inputs_for([(2, 3)])[0]
    result = auto_diff(_pairwise(src, True), _pairwise(dst, True), x)
    assert result.ok and result.total == 8
    assert result.output_structure == "tuple(Tensor[2, 2], dict(double=Tensor[2, 2]))"


@dataclasses.dataclass
class Out:  # a dataclass-like model output (HF/PaddleNLP ModelOutput is an OrderedDict dataclass)
    logits: object
    extra: object = None


def _dataclass_model(framework, scale=2.0):
    nn = models._nn(framework)

    class WithOutput(models._base(framework)):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            y = self.fc(x)
            return Out(y, collections.OrderedDict(scaled=y * scale, n=3))

    return WithOutput().eval()


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_dataclass_outputs_are_compared_field_by_field(src, dst):
    x = inputs_for([(2, 3)])[0]
    ok = auto_diff(_dataclass_model(src), _dataclass_model(dst), x)
    assert ok.ok and ok.output_structure == "Out(logits=Tensor[2, 2], extra=OrderedDict(scaled=Tensor[2, 2], n=int))"
    bad = auto_diff(_dataclass_model(src), _dataclass_model(dst, scale=3.0), x)
    assert not bad.ok and bad.mismatched > 0 and bad.first_diff.base_path == ""  # made in the root's own forward
    assert bad.first_diff.output == "out.extra['scaled']" and bad.first_diff.inputs_agree is True


def test_padiff_input_form_and_numpy_forms():
    x, y = inputs_for([(2, 3), (2, 3)])
    a, b = _pairwise("torch", False), _pairwise("paddle", False)
    kw = auto_diff(a, b, ({"x": torch.from_numpy(x), "y": torch.from_numpy(y)},
                          {"x": paddle.to_tensor(x), "y": paddle.to_tensor(y)}))
    pos = auto_diff(a, b, (x, y), auto_init=False)
    one = auto_diff(a, b, x, auto_init=False)
    assert kw.ok and pos.ok and one.ok
    assert kw.max_abs_diff == pos.max_abs_diff
    assert len(kw.layers) == len(pos.layers) == 3 and len(one.layers) == 2  # fc twice and the root; fc once and root
    # float64 numpy inputs stay float64 in both frameworks
    d64 = auto_diff(a.double(), b.to(dtype="float64"), x.astype("float64"))
    assert d64.ok and d64.max_abs_diff < 1e-12


def test_bad_input_forms_say_which_forms_are_accepted():
    a, b = _pairwise("torch", False), _pairwise("paddle", False)
    for bad in (torch.zeros(2, 3), [1.0, 2.0], ({"x": torch.zeros(2, 3)},), None):
        with pytest.raises(DiffInputError, match="accepted input forms"):
            auto_diff(a, b, bad)
    x = torch.zeros(2, 3)
    with pytest.raises(DiffInputError, match=r"inputs\[0\]\['x'\] is a paddle tensor.*base model's inputs first"):
        auto_diff(a, b, ({"x": paddle.to_tensor(x.numpy())}, {"x": x}))
    assert issubclass(DiffInputError, TypeError)
    with pytest.raises(ValueError, match="diff_phase"):
        auto_diff(a, b, x.numpy(), diff_phase="sideways")


# -- NaN and Inf ------------------------------------------------------------------------
def test_compare_arrays_matches_nan_and_inf_by_position():
    nan, inf = float("nan"), float("inf")
    a = np.array([1.0, nan, inf, -inf, 2.0])
    assert compare_arrays(a, a.copy(), 1e-5, 1e-5) == (0.0, 0.0, 0)
    assert compare_arrays(a, np.array([1.0, 0.0, inf, -inf, 2.0]), 1e-5, 1e-5) == (math.inf, math.inf, 1)
    assert compare_arrays(a, np.array([1.0, nan, -inf, -inf, 2.0]), 1e-5, 1e-5)[2] == 1
    assert compare_arrays(a, np.array([1.0, nan, inf, -inf, 2.5]), 1e-5, 1e-5) == (0.5, 0.2, 1)
    assert compare_arrays(np.zeros(3), np.zeros(4), 1, 1)[2] == 4


def _set(tensor, index, value):
    if isinstance(tensor, torch.Tensor):
        with torch.no_grad():
            tensor[index] = value
    else:
        v = tensor.numpy()
        v[index] = value
        tensor.set_value(v)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_nan_in_both_models_agrees_and_nan_on_one_side_is_found(src, dst):
    a, b = deep(src, blocks=3), deep(dst, blocks=3)
    _set(a.head.bias, 1, float("nan"))
    _set(a.head.bias, 2, float("inf"))
    same = auto_diff(a, b, X)  # NaN and Inf are copied over and met at the same positions
    assert same.ok and same.max_abs_diff < 1e-5
    out = models.run(a, src, [X])[0]
    assert np.isnan(out[:, 1]).all() and np.isinf(out[:, 2]).all()
    _set(b.head.bias, 1, 0.0)  # now the raw side alone has a finite value there
    diff = auto_diff(a, b, X, auto_init=False)
    f = diff.first_diff
    assert not diff.ok and (f.base_path, f.raw_path) == ("head", "head")
    assert f.mismatched == 4 and f.max_abs_diff == math.inf  # one column of 4 rows, never dropped
    assert diff.mismatched == 4 and diff.max_abs_diff == math.inf


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_relu_of_nan_differs_between_frameworks_and_is_found(src, dst):
    # checked here: torch.relu(nan) is nan, paddle's relu(nan) is 0
    x = X.copy()
    x[0, 0] = np.nan
    result = auto_diff(deep(src, blocks=2), deep(dst, blocks=2), x)
    f = result.first_diff
    assert (f.base_path, f.raw_path) == (f"{SEQ_NAME[src]}.0.act", f"{SEQ_NAME[dst]}.0.act")
    assert f.inputs_agree is True and f.max_abs_diff == math.inf


# -- gradients ---------------------------------------------------------------------------
@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_gradient_difference_is_found(src, dst):
    a, b = deep(src, blocks=4), deep(dst, blocks=4)
    w = getattr(b, SEQ_NAME[dst])[2].fc1.weight
    w.register_hook(lambda g: g * 3)  # forward identical, this one gradient is not
    result = auto_diff(a, b, X, diff_phase="both")
    assert result.first_diff is None and result.mismatched == 0
    assert not result.ok
    g = result.first_grad_diff
    assert (g.base_path, g.raw_path) == (f"{SEQ_NAME[src]}.2.fc1", f"{SEQ_NAME[dst]}.2.fc1")
    assert (g.base_param, g.raw_param) == (f"{SEQ_NAME[src]}.2.fc1.weight", f"{SEQ_NAME[dst]}.2.fc1.weight")
    assert g.mismatched > 0 and [x.base_param for x in result.grads if not x.ok] == [g.base_param]
    assert "first gradient difference" in str(result)
    assert all(p.grad is None for p in a.parameters()) and all(p.grad is None for p in b.parameters())


# -- state left as it was ------------------------------------------------------------------
def _hooks(model):
    if isinstance(model, torch.nn.Module):
        return sum(len(m._forward_hooks) for m in model.modules())
    return sum(len(m._forward_post_hooks) for m in model.sublayers(include_self=True))


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_modes_restored_and_hooks_removed_even_on_error(src, dst):
    a, b = deep(src, blocks=2), deep(dst, blocks=2)
    a.train()
    getattr(a, SEQ_NAME[src])[1].eval()  # a mixed state must come back exactly
    modes = [m.training for m in (a.modules() if src == "torch" else a.sublayers(include_self=True))]
    auto_diff(a, b, X)
    assert [m.training for m in (a.modules() if src == "torch" else a.sublayers(include_self=True))] == modes
    assert not b.training
    with pytest.raises(DiffError, match=f"the {src} model Deep failed on the given inputs"):
        auto_diff(a, b, np.zeros((4, 5), "float32"))  # wrong width
    assert _hooks(a) == 0 and _hooks(b) == 0
    assert [m.training for m in (a.modules() if src == "torch" else a.sublayers(include_self=True))] == modes


def test_black_list_is_honoured():
    a, b = deep("torch", blocks=3), deep("paddle", act_at=1, blocks=3)
    pa, pb = create_model(a), create_model(b)
    pa.update_black_list(a.layers[1], "all")
    pb.update_black_list(b.stages[1], "all")
    result = auto_diff(pa, pb, X)  # block 1 is neither transferred nor compared
    assert all(not ld.base_path.startswith("layers.1") for ld in result.layers)
    assert result.layers[0].base_path == "layers.0.fc1" and result.layers[3].base_path == "layers.0"
    f = result.first_diff
    assert f.base_path == "layers.2.fc1" and f.inputs_agree is False  # the first compared layer after it


@pytest.mark.parametrize("name", sorted(models.PAIRS))
def test_keep_empty_pairing_leaves_the_tensor_pairs_unchanged(name):
    from padiff_lite.pairing import pair_models
    from padiff_lite.special_init import init_pool

    build = models.PAIRS[name][0]
    base, raw = create_model(build("torch")), create_model(build("paddle"))
    plain, full = pair_models(base, raw, init_pool), pair_models(base, raw, init_pool, keep_empty=True)
    paths = lambda pairs: [(p.base.path, p.raw.path, p.how) for p in pairs]  # noqa: E731
    assert paths(full.pairs) == paths(plain.pairs) and not plain.unpaired and not full.unpaired
    assert len(full.matched) >= len(plain.matched) >= len(plain.pairs)
    if name in ("mlp", "conv_bn", "tiny"):  # these hold activations/pooling: they are compared too
        assert any(type(p.base.module).__name__ in ("ReLU", "Tanh") for p in full.matched)
