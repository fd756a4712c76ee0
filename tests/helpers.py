"""Helpers shared by the test files (plain functions and classes; fixtures live in conftest.py).

The one equivalence helper every transfer test uses, ``assert_transfer_equivalent``:
build pair -> (optionally warm up BatchNorm) -> check outputs differ -> transfer -> compare outputs.
Then tensor readers and snapshots, and the small models several files build.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle
import pytest
import torch

from padiff_lite import assign_weight
from padiff_lite.models import run, warm_up

DIRECTIONS = [("torch", "paddle"), ("paddle", "torch")]
DIRECTION_IDS = ["torch->paddle", "paddle->torch"]
NN = {"torch": torch.nn, "paddle": paddle.nn}


def Base(fw):
    """The model base class of framework ``fw``: torch.nn.Module or paddle.nn.Layer."""
    return torch.nn.Module if fw == "torch" else paddle.nn.Layer


def max_abs_diff(a_list, b_list) -> float:
    assert len(a_list) == len(b_list), f"output structures differ: {len(a_list)} vs {len(b_list)} arrays"
    worst = 0.0
    for a, b in zip(a_list, b_list):
        assert a.shape == b.shape, f"output shapes differ: {a.shape} vs {b.shape}"
        worst = max(worst, float(np.abs(a.astype("float64") - b.astype("float64")).max()) if a.size else 0.0)
    return worst


def inputs_for(shapes, seed=0, dtype="float32"):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def assert_transfer_equivalent(build, src, dst, input_shapes, atol=1e-5, warm=False, inputs=None,
                               must_differ=True, **transfer_kw):
    """Build ``build(src)`` and ``build(dst)``, transfer src -> dst, assert outputs agree within atol.

    ``build`` takes a framework name and returns a model. Returns (report, src_model, dst_model).
    """
    a, b = build(src), build(dst)
    if warm:
        warm_up(a, src, input_shapes[0])
    a.eval()
    b.eval()
    xs = inputs if inputs is not None else inputs_for(input_shapes)
    if must_differ:
        before = max_abs_diff(run(a, src, xs), run(b, dst, xs))
        assert before > atol, f"outputs already agree before the transfer ({before}); the test proves nothing"
    report = assign_weight(a, b, **transfer_kw)
    after = max_abs_diff(run(a, src, xs), run(b, dst, xs))
    assert after <= atol, f"{src} -> {dst}: max abs diff {after:.3g} > {atol:g}\n{report}"
    return report, a, b


def snapshot(model) -> dict:
    """Every tensor of a torch or paddle model as numpy, by name (for 'nothing was written' checks)."""
    return {k: np.array(v.detach().cpu().numpy() if hasattr(v, "cpu") else v.numpy(), copy=True)
            for k, v in model.state_dict().items()}


def assert_unchanged(model, snap):
    now = snapshot(model)
    assert now.keys() == snap.keys()
    for k in snap:
        assert np.array_equal(now[k], snap[k], equal_nan=True), f"{k} was changed"


def _files_of(path) -> dict | None:
    """A file's or a folder's bytes (folder: relative path -> bytes, every file under it); None when absent."""
    path = Path(path)
    if path.is_dir():
        return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}
    return {"": path.read_bytes()} if path.exists() else None


def assert_refused(fn, exc_type, *models_or_files, match=None):
    """``fn()`` raises ``exc_type`` (its message matching ``match``, a regular expression, when given) and leaves
    every model (torch or paddle: each tensor, bit for bit) and every file or folder given (str or Path: each
    file's bytes; an absent one stays absent) as it was. Returns the exception for more checks."""
    snaps = [_files_of(x) if isinstance(x, (str, Path)) else snapshot(x) for x in models_or_files]
    with pytest.raises(exc_type, match=match) as caught:
        fn()
    for x, snap in zip(models_or_files, snaps):
        if isinstance(x, (str, Path)):
            assert _files_of(x) == snap, f"{x} was changed by a refused call"
        else:
            assert_unchanged(x, snap)
    return caught.value


# -- reading and writing single tensors ---------------------------------------------------------------------
def np_of(t):
    """A torch or paddle tensor as numpy (torch: a view of its memory, not a copy)."""
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t.numpy()


def write(t, v):
    """Write numpy ``v`` into tensor ``t`` as user code does (torch copy_, paddle set_value)."""
    if isinstance(t, torch.Tensor):
        with torch.no_grad():
            t.copy_(torch.from_numpy(v))
    else:
        t.set_value(v)


def tensors(model):
    """dotted name -> numpy, in torch's layout (paddle Linear weights transposed back)."""
    out = {}
    mods = model.named_modules() if isinstance(model, torch.nn.Module) else model.named_sublayers(include_self=True)
    for mpath, mod in mods:
        for name, p in (mod.named_parameters(recurse=False) if isinstance(mod, torch.nn.Module)
                        else mod.named_parameters(include_sublayers=False)):
            v = np_of(p)
            if isinstance(mod, paddle.nn.Linear) and name == "weight":
                v = v.T
            out[f"{mpath}.{name}" if mpath else name] = v
    return out


def as_torch(t):
    """A torch tensor with ``t``'s memory and dtype (DLPack for paddle: no trip through numpy)."""
    if isinstance(t, torch.Tensor):
        return t.detach()
    return torch.from_dlpack(t.detach().contiguous())


def bits(t):
    """A torch or paddle tensor's bits as torch integers of the same width (so NaNs compare equal to themselves)."""
    t = as_torch(t).contiguous()
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def tensors_to_write(model) -> int:
    """How many tensors a complete transfer writes into ``model``: every parameter, plus torch's BatchNorm running
    mean and variance (paddle holds those as parameters; torch's num_batches_tracked has no paddle partner)."""
    n = len(list(model.parameters()))
    if isinstance(model, torch.nn.Module):
        n += sum(1 for name, _ in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    return n


def special_init_key(src, torch_class, paddle_class):
    """The registry key of a special init from ``src``'s class to the other framework's."""
    if src == "torch":
        return ("torch", torch_class, "paddle", paddle_class)
    return ("paddle", paddle_class, "torch", torch_class)


# -- small models shared by several test files --------------------------------------------------------------
class LMHead(paddle.nn.Layer):
    """The one LM-head toy: a PaddleFormers-style paddle head, weight [vocab, hidden] in torch's layout applied with
    ``transpose_y`` (not a Linear, no registered rule: a special init or a layout must move it); ``bias`` adds one."""

    def __init__(self, hidden, vocab, bias=False):
        super().__init__()
        self.weight = self.create_parameter([vocab, hidden])
        self.bias = self.create_parameter([vocab], is_bias=True) if bias else None

    def forward(self, x):
        out = paddle.matmul(x, self.weight, transpose_y=True)
        return out if self.bias is None else out + self.bias


def headed(fw, tie=False):
    """embed [11, 6] -> mid Linear(6, 6) -> two heads to 11 (torch Linear, paddle ``LMHead``); ``tie`` ties the
    torch head to the embedding."""

    class Headed(Base(fw)):
        def __init__(self):
            super().__init__()
            nn = NN[fw]
            self.embed = nn.Embedding(11, 6)
            self.mid = nn.Linear(6, 6)
            self.head = nn.Linear(6, 11, bias=False) if fw == "torch" else LMHead(6, 11)
            self.head2 = nn.Linear(6, 11, bias=False) if fw == "torch" else LMHead(6, 11)
            if tie:
                self.head.weight = self.embed.weight

        def forward(self, ids):
            h = self.mid(self.embed(ids))
            return self.head(h) + self.head2(h)

    return Headed()


def tied_lm(fw, tie):
    """embed [11, 6] -> decoder Linear(6, 11) without bias; ``tie`` shares the torch decoder's weight with the
    embedding (paddle's decoder is [6, 11] and cannot be tied to the embedding: asking for it is an error)."""
    nn = NN[fw]

    class TiedLM(Base(fw)):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(11, 6)
            self.decoder = nn.Linear(6, 11, bias=False) if fw == "torch" else nn.Linear(6, 11, bias_attr=False)
            if tie:
                if fw == "torch":
                    self.decoder.weight = self.embed.weight
                else:
                    raise ValueError("paddle layouts differ; tie only on torch in this test")

        def forward(self, ids):
            return self.decoder(self.embed(ids))

    return TiedLM()


SEQ_NAME = {"torch": "layers", "paddle": "stages"}  # deep(): the block stack has a different name on each side


def deep(framework, act_at=None, functional_at=None, blocks=8):
    """A residual MLP of ``blocks`` blocks; block ``act_at`` uses GELU instead of ReLU as a module,
    block ``functional_at`` applies an extra functional tanh between fc1 and fc2 (no module to hook)."""
    nn = NN[framework]
    fw = torch if framework == "torch" else paddle

    class Block(Base(framework)):
        def __init__(self, i):
            super().__init__()
            self.fc1 = nn.Linear(16, 16)
            self.act = nn.GELU() if i == act_at else nn.ReLU()
            self.fc2 = nn.Linear(16, 16)
            self.extra = i == functional_at

        def forward(self, x):
            h = self.act(self.fc1(x))
            if self.extra:
                h = fw.tanh(h)
            return x + self.fc2(h)

    class Deep(Base(framework)):
        def __init__(self):
            super().__init__()
            setattr(self, SEQ_NAME[framework], nn.Sequential(*[Block(i) for i in range(blocks)]))
            self.head = nn.Linear(16, 4)

        def forward(self, x):
            return self.head(getattr(self, SEQ_NAME[framework])(x))

    return Deep().eval()
