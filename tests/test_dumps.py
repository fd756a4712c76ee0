"""Offline dumps: each framework in its own process, compared in a third that imports neither.

The models are the same two-block MLP in torch and paddle, given the same weights from numpy (paddle's Linear
weights transposed); two SGD steps are dumped per process into ``<root>/step_N/rank_M`` (rank from RANK).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from padiff_lite.errors import DumpError
from padiff_lite.verify import dump
from padiff_lite.verify.dump_check import check_dumps, check_report, check_weights

ROOT = Path(__file__).resolve().parent.parent

TRAIN = r'''
import json, sys
import numpy as np
from padiff_lite.verify.dump import Dumper
fw = sys.argv[1]
rng = np.random.default_rng(0)
W = {k: rng.standard_normal(s).astype("float32") * 0.3 for k, s in
     [("fc1.w", (16, 8)), ("fc1.b", (16,)), ("block.fc2.w", (16, 16)), ("block.fc2.b", (16,)), ("head.w", (4, 16))]}
x = rng.standard_normal((5, 8)).astype("float32")
if fw == "torch":
    import torch
    nn = torch.nn
    class Block(nn.Module):
        def __init__(s):
            super().__init__(); s.fc2 = nn.Linear(16, 16); s.act = nn.Tanh()
        def forward(s, h): return s.act(s.fc2(h)) + h
    class Net(nn.Module):
        def __init__(s):
            super().__init__(); s.fc1 = nn.Linear(8, 16); s.relu = nn.ReLU(); s.block = Block(); s.head = nn.Linear(16, 4, bias=False)
        def forward(s, x): return s.head(s.block(s.relu(s.fc1(x))))
    def build():
        m = Net()
        with torch.no_grad():
            for mod, k in ((m.fc1, "fc1"), (m.block.fc2, "block.fc2"), (m.head, "head")):
                mod.weight.copy_(torch.tensor(W[k + ".w"]))
                if mod.bias is not None:
                    mod.bias.copy_(torch.tensor(W[k + ".b"]))
        return m, torch.optim.SGD(m.parameters(), lr=0.1), torch.tensor(x)
else:
    import paddle
    nn = paddle.nn
    class Block(nn.Layer):
        def __init__(s):
            super().__init__(); s.fc2 = nn.Linear(16, 16); s.act = nn.Tanh()
        def forward(s, h): return s.act(s.fc2(h)) + h
    class Net(nn.Layer):
        def __init__(s):
            super().__init__(); s.fc1 = nn.Linear(8, 16); s.relu = nn.ReLU(); s.block = Block(); s.head = nn.Linear(16, 4, bias_attr=False)
        def forward(s, x): return s.head(s.block(s.relu(s.fc1(x))))
    def build():
        m = Net()
        for mod, k in ((m.fc1, "fc1"), (m.block.fc2, "block.fc2"), (m.head, "head")):
            mod.weight.set_value(W[k + ".w"].T.copy())
            if mod.bias is not None:
                mod.bias.set_value(W[k + ".b"])
        return m, paddle.optimizer.SGD(learning_rate=0.1, parameters=m.parameters()), paddle.to_tensor(x)
for root, spoil in zip(sys.argv[2::2], sys.argv[3::2]):
    m, opt, inp = build()
    d = Dumper(m, root)
    for step in range(2):
        if spoil == "spoil" and step == 1:  # a wrong weight appears before the second step
            m.block.fc2.weight.set_value(m.block.fc2.weight.numpy() * 1.05)
        with d.record():
            loss = m(inp).mean()
            loss.backward()
        d.dump()
        opt.step()
        opt.clear_grad() if fw == "paddle" else opt.zero_grad()
print(json.dumps(sorted(k for k in ("torch", "paddle") if k in sys.modules)))
'''

COMPARE = r'''
import json, sys
from padiff_lite.cli import main
rc = main(sys.argv[1:])
print(json.dumps([rc, sorted(k for k in ("torch", "paddle") if k in sys.modules)]))
'''


def _run(code, *args, env=None):
    e = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=e,
                       cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    root = tmp_path_factory.mktemp("dumps")
    env = {"RANK": "1"}
    imported = {  # the paddle process dumps a correct port and one whose weight is spoiled at step 1
        "torch": _run(TRAIN, "torch", root / "torch", "-", env=env),
        "paddle": _run(TRAIN, "paddle", root / "paddle", "-", root / "spoiled", "spoil", env=env),
    }
    return root, imported


def test_each_framework_dumps_in_its_own_process_without_importing_the_other(dumps):
    root, imported = dumps
    assert imported == {"torch": ["torch"], "paddle": ["paddle"]}
    for side in ("torch", "paddle"):
        for step in (0, 1):
            folder = root / side / f"step_{step}" / "rank_1"
            assert sorted(p.name for p in folder.iterdir()) == [
                "grads.json", "grads.safetensors", "report.json", "report.safetensors", "weights.json",
                "weights.safetensors"]
    meta = json.loads((root / "paddle/step_0/rank_1/weights.json").read_text())
    fc1 = next(m for m in meta["structure"]["modules"] if m["path"] == "fc1")
    weight = next(t for t in fc1["tensors"] if t["name"] == "weight")
    assert weight["shape"] == [8, 16] and weight["transposed"] is True  # paddle's [in, out], said in the dump
    assert (meta["framework"], meta["step"], meta["rank"]) == ("paddle", 0, 1)
    report = json.loads((root / "torch/step_0/rank_1/report.json").read_text())
    assert [c["path"] for c in report["calls"]] == ["", "fc1", "relu", "block", "block.fc2", "block.act", "head"]


def test_dumps_of_a_correct_port_agree_in_a_process_without_frameworks(dumps):
    root, _ = dumps
    rc, imported = _run(COMPARE, "compare-dumps", root / "torch", root / "paddle")
    assert (rc, imported) == (0, [])
    result = check_dumps(root / "torch", root / "paddle")
    # per step: 7 calls' outputs and output gradients (head/root/block: 1 each), 6 weights, 6 gradients
    assert result.ok and result.compared == 2 * (7 + 7 + 5 + 5), str(result)
    reverse = check_dumps(root / "paddle", root / "torch")  # paddle as the base: the transpose is inverted
    assert reverse.ok and reverse.compared == result.compared


def test_a_spoiled_weight_is_located_with_its_path_step_and_rank(dumps, tmp_path):
    root, _ = dumps
    weights = check_weights(root / "torch", root / "spoiled")
    assert not weights.ok
    assert [(d.stage, d.step, d.rank, d.base_path, d.raw_path) for d in weights.diffs] == [
        ("weights", 1, 1, "block.fc2.weight", "block.fc2.weight")]
    d = weights.first
    assert 0.04 < d.max_rel < 0.06 and d.bad == d.total == 256
    report = check_report(root / "torch", root / "spoiled", diff_phase="forward")
    first = report.first
    assert (first.step, first.rank, first.base_path, first.stage) == (1, 1, "block.fc2", "forward")
    assert all(d.step == 1 for d in report.diffs)  # step 0 agrees
    html = tmp_path / "r.html"
    rc, imported = _run(COMPARE, "compare-dumps", root / "torch", root / "spoiled", "--html", html)
    assert (rc, imported) == (1, [])
    assert "block.fc2.weight" in html.read_text() and "DIFFERENT" in html.read_text()


def test_compare_dumps_errors_exit_2(dumps, tmp_path):
    root, _ = dumps
    (tmp_path / "report.json").write_text(json.dumps({"format": "something else", "kind": "report"}))
    rc, _ = _run(COMPARE, "compare-dumps", root / "torch", tmp_path / "missing")
    assert rc == 2
    bad = tmp_path / "bad"
    (bad / "step_0" / "rank_1").mkdir(parents=True)
    (bad / "step_0" / "rank_1" / "weights.json").write_text("{not json")
    rc, _ = _run(COMPARE, "compare-dumps", root / "torch", bad, "--what", "weights")
    assert rc == 2
    rc, _ = _run(COMPARE, "compare-dumps", root / "torch", root / "paddle", "--html", tmp_path / "no" / "r.html")
    assert rc == 2 and not (tmp_path / "no").exists()  # refused before comparing, nothing written


def test_a_step_dumped_on_one_side_only_is_a_problem(dumps, tmp_path):
    root, _ = dumps
    import shutil

    shutil.copytree(root / "paddle", tmp_path / "p")
    shutil.rmtree(tmp_path / "p" / "step_1")
    result = check_dumps(root / "torch", tmp_path / "p")
    assert not result.ok and not result.diffs
    assert any("step 1, rank 1 is dumped on the base side only" in p for p in result.problems)


def test_damaged_dumps_are_refused_by_name(dumps, tmp_path):
    root, _ = dumps
    import shutil

    leaf = tmp_path / "step_0" / "rank_1"
    shutil.copytree(root / "paddle" / "step_0" / "rank_1", leaf)
    (leaf / "weights.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(DumpError, match="fc1.weight listed in weights.json is missing"):
        check_dumps(root / "torch" / "step_0" / "rank_1", leaf, ("weights",))
    meta = json.loads((leaf / "grads.json").read_text())
    meta["version"] = 99
    (leaf / "grads.json").write_text(json.dumps(meta))
    with pytest.raises(DumpError, match="version 99"):
        check_dumps(root / "torch" / "step_0" / "rank_1", leaf, ("grads",))


def test_import_padiff_lite_and_the_dump_modules_import_no_framework():
    code = ("import json, sys, padiff_lite, padiff_lite.verify.dump, padiff_lite.verify.dump_check, padiff_lite.cli\n"
            "print(json.dumps(sorted(k for k in ('torch', 'paddle') if k in sys.modules)))")
    assert _run(code) == []


def test_the_dump_structure_agrees_with_the_adapters():
    """dump.py reads structure without the adapters (which import torch); it must see what they see."""
    import paddle
    import torch

    from padiff_lite.adapters import adapter_for

    class T(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 4)
            self.bn = torch.nn.BatchNorm1d(4)
            self.register_buffer("cache", torch.zeros(2), persistent=False)

    class P(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.fc = paddle.nn.Linear(3, 4)
            self.bn = paddle.nn.BatchNorm1D(4)

    for model in (T(), P()):
        adapter = adapter_for(model)
        s = dump.describe(model, adapter.name)
        for m in s["modules"]:
            mod = model if not m["path"] else dict(dump.named_modules(model, adapter.name))[m["path"]]
            want = [(n, k, list(adapter.shape(t)), adapter.stored_transposed(mod, n))
                    for n, t, k, persistent in adapter.own_tensors(mod) if persistent]
            assert [(t["name"], t["kind"], t["shape"], t["transposed"]) for t in m["tensors"]] == want
            assert m["classes"] == [c for c in adapter.class_names(mod) if c != "object"]


def test_layers_names_leave_open_are_paired_by_the_order_they_ran(tmp_path):
    """torch fc1/relu/fc2 against paddle stem.0/stem.1/head: no name and no position pairs them; the two reports'
    call orders do, as auto_diff's pairing by execution does in memory."""
    import numpy as np
    import paddle
    import torch

    rng = np.random.default_rng(1)
    w1, b1 = rng.standard_normal((8, 6)).astype("float32"), rng.standard_normal(8).astype("float32")
    w2, b2 = rng.standard_normal((3, 8)).astype("float32"), rng.standard_normal(3).astype("float32")
    x = rng.standard_normal((4, 6)).astype("float32")

    class T(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.relu, self.fc2 = torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)

        def forward(self, v):
            return self.fc2(self.relu(self.fc1(v)))

    class P(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.stem = paddle.nn.Sequential(paddle.nn.Linear(6, 8), paddle.nn.ReLU())
            self.head = paddle.nn.Linear(8, 3)

        def forward(self, v):
            return self.head(self.stem(v))

    t, p = T(), P()
    with torch.no_grad():
        for lin, w, b in ((t.fc1, w1, b1), (t.fc2, w2, b2)):
            lin.weight.copy_(torch.tensor(w))
            lin.bias.copy_(torch.tensor(b))
    for lin, w, b in ((p.stem[0], w1, b1), (p.head, w2, b2)):
        lin.weight.set_value(w.T.copy())
        lin.bias.set_value(b)
    for model, inp, root in ((t, torch.tensor(x), tmp_path / "t"), (p, paddle.to_tensor(x), tmp_path / "p")):
        d = dump.Dumper(model, root, rank=0)
        with d.record():
            model(inp).sum().backward()
        d.dump()
    result = check_dumps(tmp_path / "t", tmp_path / "p")
    assert result.ok and result.compared == 4 + 4 + 4 + 4, str(result)  # outputs, output grads, weights, grads
    p.head.weight.set_value(w2.T.copy() * 1.5)
    dump.dump_weights(p, tmp_path / "p" / "step_0" / "rank_0")
    bad = check_weights(tmp_path / "t", tmp_path / "p")
    assert [(d.base_path, d.raw_path) for d in bad.diffs] == [("fc2.weight", "head.weight")]


def test_lstm_dumps_with_tied_cells_and_unused_outputs_agree(tmp_path):
    """paddle's LSTM holds its weights twice (the layer and its cells: one tensor each, tied in the dump as in the
    model); its unused outputs (h, c) get zero gradients where torch's get none: no gradient is a zero gradient."""
    import numpy as np
    import paddle
    import torch

    from padiff_lite import assign_weight

    class T(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.lstm = torch.nn.Embedding(5, 6), torch.nn.LSTM(6, 4, 2)

        def forward(self, ids):
            return self.lstm(self.emb(ids))[0]

    class P(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.emb, self.lstm = paddle.nn.Embedding(5, 6), paddle.nn.LSTM(6, 4, 2, time_major=True)

        def forward(self, ids):
            return self.lstm(self.emb(ids))[0]

    t, p = T(), P()
    assign_weight(t, p)
    ids = np.array([[1, 2, 3], [0, 4, 2]])
    for model, inp, name in ((t, torch.tensor(ids), "t"), (p, paddle.to_tensor(ids), "p")):
        d = dump.Dumper(model, tmp_path / name, rank=0)
        with d.record():
            model(inp).mean().backward()
        d.dump()
    result = check_dumps(tmp_path / "t", tmp_path / "p")
    assert result.ok, str(result)
    weights = check_weights(tmp_path / "t", tmp_path / "p")
    assert weights.ok and weights.compared == 1 + 2 * 4  # the table, 4 tensors per layer; the cells' are the same


def test_the_dump_adapter_has_what_tree_pairing_planning_and_validation_read():
    """DumpAdapter cannot derive from the adapters' base (its package imports torch): it must keep up with the
    structure and metadata part of the contract, which the fake adapter of tests/unit also implements."""
    import importlib.util

    from padiff_lite.adapters.base import StructureAdapter
    from padiff_lite.verify.dump_check import DumpAdapter

    spec = importlib.util.spec_from_file_location("dump_test_fake", ROOT / "tests" / "unit" / "fake.py")
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    FakeAdapter = fake.FakeAdapter

    wanted = {n for n in vars(FakeAdapter) if not n.startswith("_")}
    wanted |= {n for n in vars(StructureAdapter) if not n.startswith("_") and callable(getattr(StructureAdapter, n))}
    assert wanted <= set(dir(DumpAdapter)), sorted(wanted - set(dir(DumpAdapter)))
