"""padiff_lite.compat: PaDiff's names, defaults and return values, on models built here (both frameworks)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
import torch

from padiff_lite import compat
from padiff_lite.compat import checker, dump_tools
from padiff_lite.compat.interfaces.diff_utils import default_loss

ROOT = Path(__file__).resolve().parent.parent


class TNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(6, 8)
        self.act = torch.nn.ReLU()
        self.fc2 = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class PNet(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.fc1 = paddle.nn.Linear(6, 8)
        self.act = paddle.nn.ReLU()
        self.fc2 = paddle.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


@pytest.fixture(autouse=True)
def _root(tmp_path):
    old = dump_tools.get_dump_root_path()
    dump_tools.set_dump_root_path(str(tmp_path / "padiff_dump"))
    yield
    dump_tools.set_dump_root_path(old)


def _x():
    return np.random.default_rng(0).standard_normal((4, 6)).astype("float32")


@pytest.mark.parametrize("base_fw", ["torch", "paddle"])
def test_auto_diff_returns_true_or_false_and_keeps_the_result(base_fw):
    x = _x()
    t, p = compat.create_model(TNet()), compat.create_model(PNet())
    base, raw = (t, p) if base_fw == "torch" else (p, t)
    tin, pin = {"x": torch.tensor(x)}, {"x": paddle.to_tensor(x)}
    inputs = [tin, pin] if base_fw == "torch" else [pin, tin]
    assert compat.auto_diff(base, raw, inputs, auto_init=False, atol=1e-4) is False  # different random weights
    assert compat.last_result().first_diff.base_path == "fc1"
    assert compat.auto_diff(base, raw, inputs, atol=1e-4) is True  # auto_init (PaDiff's default) transfers
    res = compat.last_result()
    assert res.phase == "both" and res.max_abs_diff < 1e-5 and len(res.grads) == 4  # PaDiff default: grads too
    # PaDiff's auto_diff also leaves each model's report under <dump_path>/auto_diff
    bp, rp = base, raw
    assert checker.check_report(bp.dump_path + "/auto_diff", rp.dump_path + "/auto_diff", cfg={"atol": 1e-4})
    assert checker.last_check().compared == 4


def test_auto_weights_is_auto_init_and_unknown_options_are_logged(caplog):
    x = _x()
    inputs = [{"x": torch.tensor(x)}, {"x": paddle.to_tensor(x)}]
    assert compat.auto_diff(TNet(), PNet(), inputs, auto_weights=False, atol=1e-4) is False
    with caplog.at_level("WARNING", logger="padiff_lite.compat"):
        assert compat.auto_diff(TNet(), PNet(), inputs, loss_fn=None, atol=1e-4) is True
    assert "loss_fn ignored" in caplog.text


def test_proxy_model_dumps_every_dump_freq_steps_and_checks_find_a_spoiled_weight():
    x = _x()
    p = compat.create_model(PNet(), "p", dump_freq=2)
    t = compat.create_model(TNet(), "t", dump_freq=2)
    assert compat.assign_weight(p, t) is True
    for step in range(3):
        if step == 2:
            with torch.no_grad():
                t.model.fc2.weight.mul_(1.1)
        for m, inp in ((p, paddle.to_tensor(x)), (t, torch.tensor(x))):
            out = m(inp)
            m.backward(out.mean())
            m.try_dump()
    rank = "rank_0"
    assert sorted(os.listdir(p.dump_path)) == ["step_0", "step_2"]  # step 1 is not dumped
    assert compat.check_report(p.dump_path + "/step_0", t.dump_path + "/step_0", cfg={"atol": 1e-5}) is True
    assert compat.check_params(p.dump_path + "/step_0", t.dump_path + "/step_0", cfg={"atol": 1e-5}) is True
    # the gradients accumulate without an optimizer, equally on both sides
    assert compat.check_grads(p.dump_path + f"/step_2/{rank}", t.dump_path + f"/step_2/{rank}",
                              cfg={"atol": 1e-5}) is False  # fc2's weight changes fc1's gradient
    assert compat.check_weights(p.dump_path + "/step_2", t.dump_path + "/step_2", cfg={"atol": 1e-5}) is False
    diffs = checker.last_check().diffs
    assert [(d.base_path, d.step) for d in diffs] == [("fc2.weight", 2)]
    assert 0.09 < diffs[0].max_rel < 0.1
    assert compat.check_report(p.dump_path + "/step_2", t.dump_path + "/step_2", cfg={"atol": 1e-5}) is False
    assert checker.last_check().first.base_path == "fc2"


def test_dump_tools_and_proxy_params():
    x = _x()
    p, t = compat.create_model(PNet()), compat.create_model(TNet())
    compat.assign_weight(p, t)
    for m, inp in ((p, paddle.to_tensor(x)), (t, torch.tensor(x))):
        m.backward(default_loss(m(inp), m.framework))
    t.model.zero_grad()  # torch drops its gradients: None, where paddle has them
    for m in (p, t):
        dump_tools.dump_weights(m, m.dump_path)
        dump_tools.dump_grads(m, m.dump_path)
    assert compat.check_weights(p.dump_path, t.dump_path, cfg={"atol": 1e-5}) is True
    assert compat.check_grads(p.dump_path, t.dump_path, cfg={"atol": 1e-5}) is False
    assert {d.note for d in checker.last_check().diffs} == {"no gradient on the raw side, the other has one"}
    params = p.parameters(recursively=True)
    assert params[0].grad() is not None and params[0].shape() == [6, 8]
    assert all(q.grad() is None for q in t.parameters(recursively=True))


def test_lists_by_class_and_white_list_voids_black_list():
    p = compat.create_model(PNet())
    p.update_black_list([p.model.fc1], "all")
    assert len(p.black_list) == 1
    p.update_white_list_with_class(paddle.nn.Linear, mode="all")
    assert set(p.white_list) == {id(p.model.fc1), id(p.model.fc2)}
    assert p.black_list == {}  # PaDiff: a white list makes the black list void
    t = compat.create_model(TNet())
    t.update_white_list_with_class(torch.nn.Linear, mode="all")
    x = _x()
    assert compat.auto_diff(p, t, [{"x": paddle.to_tensor(x)}, {"x": torch.tensor(x)}], atol=1e-4) is True
    assert {ld.base_path for ld in compat.last_result().layers} == {"fc1", "fc2"}  # act is not compared


def test_check_dataloader():
    data = [np.random.default_rng(i).standard_normal((3, 4)).astype("float32") for i in range(3)]
    assert compat.check_dataloader((paddle.to_tensor(d) for d in data), (torch.tensor(d) for d in data)) is True
    spoiled = [d + (i == 1) for i, d in enumerate(data)]
    assert compat.check_dataloader((paddle.to_tensor(d) for d in data), (torch.tensor(d) for d in spoiled)) is False
    with pytest.raises(RuntimeError, match="difference number"):
        compat.check_dataloader(iter(data), iter(data[:2]))


def test_default_loss_is_the_mean():
    x = _x()
    assert float(default_loss(torch.tensor(x), "torch")) == pytest.approx(float(x.mean()), rel=1e-6)
    pair = (paddle.to_tensor(x), paddle.to_tensor(x * 2))
    assert float(default_loss(pair, "paddle")) == pytest.approx(float((x.mean() + 2 * x.mean()) / 2), rel=1e-5)


def test_api_check_records_functional_calls_in_a_models_own_forward(tmp_path):
    code = r'''
import json, os, sys
os.environ["PADIFF_API_CHECK"] = "ON"
from padiff_lite.compat import create_model
import paddle
class L(paddle.nn.Layer):
    def __init__(s):
        super().__init__(); s.linear1 = paddle.nn.Linear(4, 4); s.relu = paddle.nn.functional.relu
    def forward(s, x):
        return s.relu(s.linear1(x)) * 2 + 1
m = create_model(L(), dump_freq=1)
m(paddle.rand((2, 4)))
print(json.dumps([[c.path, c.classes[0]] for c in m.recorder.calls] + [len(m.report.items)]))
'''
    import json
    import subprocess

    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == [
        ["", "L"], ["linear1", "Linear"], [":paddle.nn.functional.relu", "relu"], [":paddle.Tensor.__mul__", "__mul__"],
        [":paddle.Tensor.__add__", "__add__"], 10]  # the Linear's own F.linear is not recorded


PADIFF = os.environ.get("PADIFF_SRC", "/tmp/padiff-src")


@pytest.mark.skipif(not (Path(PADIFF) / "tests" / "test_check_dataloader.py").exists(),
                    reason=f"no PaDiff checkout at {PADIFF} (set PADIFF_SRC; CI has none: PaDiff's code is not "
                           "vendored)")
def test_padiff_own_test_files_run_unchanged_through_the_alias(capsys):
    sys.path.insert(0, str(ROOT / "tests" / "padiff_suite"))
    try:
        import run_padiff_tests
    finally:
        sys.path.pop(0)
    rc = run_padiff_tests.main([PADIFF, "test_offline_compare.py"])  # one file: each runs in a process of its own
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "total: 2 passed, 0 failed, 0 errors, 0 skipped of 2 tests in 1 files" in out


def test_training_options_reach_padiff_lite_or_are_refused_by_name():
    """compat passes loss_fns/optimizers/single_step on only when padiff_lite's auto_diff has them (issue 27's
    training comparison); without them it refuses by name instead of comparing something else."""
    import inspect

    from padiff_lite.verify import auto_diff as lite
    from padiff_lite.errors import DiffInputError

    x = _x()
    p, t = compat.create_model(PNet()), compat.create_model(TNet())
    inputs = [{"x": paddle.to_tensor(x)}, {"x": torch.tensor(x)}]
    opts = [paddle.optimizer.SGD(learning_rate=0.1, parameters=p.model.parameters()),
            torch.optim.SGD(t.model.parameters(), lr=0.1)]
    if "optimizers" in inspect.signature(lite).parameters:
        assert compat.auto_diff(p, t, inputs, optimizers=opts, atol=1e-4) is True
        w = t.model.fc1.weight.detach().numpy()
        np.testing.assert_allclose(p.model.fc1.weight.numpy().T, w, atol=1e-6)  # both stepped alike
    else:
        with pytest.raises(DiffInputError, match="optimizers"):
            compat.auto_diff(p, t, inputs, optimizers=opts, atol=1e-4)
    # diff_phase="forward" drops the optimizers, as PaDiff does: nothing is stepped
    before = p.model.fc1.weight.numpy().copy()  # the base: a transfer never writes it, an optimizer step would
    assert compat.auto_diff(p, t, inputs, optimizers=opts, diff_phase="forward", atol=1e-4) is True
    np.testing.assert_array_equal(p.model.fc1.weight.numpy(), before)
    np.testing.assert_array_equal(t.model.fc1.weight.detach().numpy(), before.T)
