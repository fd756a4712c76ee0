"""Rules with Parts: fused, grouped and packed layouts, declared once, right in both directions, in memory and on disk.

A torch block with split q/k/v and gate/up projections against a paddle block with one grouped qkv projection
(per KV head: its query heads, its key head, its value head) and one ``[gate | up]`` projection; a packed
``[E, ...]`` expert tensor against one module per expert. Outputs are compared after every transfer.
"""
import numpy as np
import paddle
import pytest
import torch

from ckpt_helpers import load, save, state_as_torch
from helpers import assert_unchanged, snapshot
from padiff_lite import TransferError, assign_weight, convert_checkpoint
from padiff_lite.layout import Part
from padiff_lite.special_init import Map, init_pool
from padiff_lite.special_init.maps import grouped_qkv, stacked

H, NH, NKV, D, I, E = 16, 4, 2, 4, 12, 3


def _attn_mlp(q, k, v, mlp):
    """The computation both blocks share, on arrays of either framework: [B, S, NH*D] q and [B, S, NKV*D] k/v."""
    r = NH // NKV
    b, s = q.shape[0], q.shape[1]
    q = q.reshape([b, s, NKV, r, D])
    k = k.reshape([b, s, NKV, 1, D])
    v = v.reshape([b, s, NKV, 1, D])
    y = (q * k + v).reshape([b, s, NH * D])
    return mlp(y)


class SplitBlock(torch.nn.Module):
    def __init__(self, bias=True):
        super().__init__()
        self.q_proj = torch.nn.Linear(H, NH * D, bias=bias)
        self.k_proj = torch.nn.Linear(H, NKV * D, bias=bias)
        self.v_proj = torch.nn.Linear(H, NKV * D, bias=bias)
        self.gate_proj = torch.nn.Linear(NH * D, I, bias=False)
        self.up_proj = torch.nn.Linear(NH * D, I, bias=False)
        self.down_proj = torch.nn.Linear(I, H, bias=False)

    def forward(self, x):
        mlp = lambda y: self.down_proj(torch.nn.functional.silu(self.gate_proj(y)) * self.up_proj(y))  # noqa: E731
        return _attn_mlp(self.q_proj(x), self.k_proj(x), self.v_proj(x), mlp)


class FusedBlock(paddle.nn.Layer):
    def __init__(self, bias=True):
        super().__init__()
        self.qkv_proj = paddle.nn.Linear(H, (NH + 2 * NKV) * D, bias_attr=None if bias else False)
        self.up_gate_proj = paddle.nn.Linear(NH * D, 2 * I, bias_attr=False)
        self.down_proj = paddle.nn.Linear(I, H, bias_attr=False)

    def forward(self, x):
        b, s = x.shape[0], x.shape[1]
        r = NH // NKV
        qkv = self.qkv_proj(x).reshape([b, s, NKV, (r + 2) * D])
        q = qkv[..., :r * D].reshape([b, s, NH * D])
        k = qkv[..., r * D:(r + 1) * D].reshape([b, s, NKV * D])
        v = qkv[..., (r + 1) * D:].reshape([b, s, NKV * D])

        def mlp(y):
            gate, up = paddle.split(self.up_gate_proj(y), 2, axis=-1)
            return self.down_proj(paddle.nn.functional.silu(gate) * up)

        return _attn_mlp(q, k, v, mlp)


def fused_rule(module, layer):
    q, k, v = grouped_qkv(NH, NKV, D)
    gate, up = stacked(I, I)
    maps = [Map("q_proj.weight", "qkv_proj.weight", "transpose", dst_part=q),
            Map("k_proj.weight", "qkv_proj.weight", "transpose", dst_part=k),
            Map("v_proj.weight", "qkv_proj.weight", "transpose", dst_part=v),
            Map("gate_proj.weight", "up_gate_proj.weight", "transpose", dst_part=gate),
            Map("up_proj.weight", "up_gate_proj.weight", "transpose", dst_part=up),
            Map("down_proj.weight", "down_proj.weight", "transpose")]
    if module.q_proj.bias is not None:
        maps += [Map(f"{n}_proj.bias", "qkv_proj.bias", dst_part=p) for n, p in zip("qkv", (q, k, v))]
    return maps


@pytest.fixture
def fused_pool(scoped_pool):
    scoped_pool.register_maps("torch", "SplitBlock", "paddle", "FusedBlock")(fused_rule)
    yield scoped_pool


def _out(model, x):
    if isinstance(model, torch.nn.Module):
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()
    return model(paddle.to_tensor(x)).numpy()


X = np.random.default_rng(0).standard_normal((2, 5, H)).astype("float32")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("direction", ["torch->paddle", "paddle->torch"])
def test_fused_and_grouped_layouts_port_both_ways(fused_pool, direction, bias):
    t, p = SplitBlock(bias), FusedBlock(bias)
    src, dst = (t, p) if direction == "torch->paddle" else (p, t)
    assert np.abs(_out(src, X) - _out(dst, X)).max() > 1e-3  # differ before
    report = assign_weight(src, dst)
    np.testing.assert_allclose(_out(dst, X), _out(src, X), atol=1e-5)
    # raw tensors written, each counted once however many parts it got
    expected = {("torch->paddle", True): 4, ("torch->paddle", False): 3, ("paddle->torch", True): 9,
                ("paddle->torch", False): 6}[direction, bias]
    assert report.tensors == expected


def test_the_grouped_layout_is_the_one_stated():
    """Where q/k/v rows land in the fused weight, checked value by value (not only through outputs)."""
    q, k, v = grouped_qkv(4, 2, 3)
    assert (q.blocks, k.blocks, v.blocks) == (((0, 6), (12, 18)), ((6, 9), (18, 21)), ((9, 12), (21, 24)))


def test_a_fused_target_round_trips_through_files_bit_exact(fused_pool, tmp_path):
    t = SplitBlock()
    save(state_as_torch(t, "torch"), tmp_path / "split.safetensors")
    convert_checkpoint(tmp_path / "split.safetensors", tmp_path / "fused.pdparams", SplitBlock, FusedBlock)
    p = FusedBlock()
    p.set_state_dict({k: paddle.to_tensor(v.numpy()) for k, v in load(tmp_path / "fused.pdparams").items()})
    np.testing.assert_allclose(_out(p, X), _out(t, X), atol=1e-5)
    convert_checkpoint(tmp_path / "fused.pdparams", tmp_path / "back.safetensors", FusedBlock, SplitBlock)
    back = load(tmp_path / "back.safetensors")
    for k, v in t.state_dict().items():
        assert torch.equal(back[k], v), k


def test_parts_that_overlap_or_leave_a_gap_are_refused_before_writing(fused_pool):
    def overlapping(module, layer):
        maps = fused_rule(module, layer)
        maps[1] = Map("k_proj.weight", "qkv_proj.weight", "transpose", dst_part=grouped_qkv(NH, NKV, D)[0])
        return maps

    init_pool.register_maps("torch", "SplitBlock", "paddle", "FusedBlock", override=True)(overlapping)
    t, p = SplitBlock(), FusedBlock()
    snap = snapshot(p)
    with pytest.raises(TransferError) as e:
        assign_weight(t, p)
    assert "raw qkv_proj.weight[0:8,16:24 dim 1] and qkv_proj.weight[0:8,16:24 dim 1] overlap" in str(e.value)
    assert_unchanged(p, snap)

    init_pool.register_maps("torch", "SplitBlock", "paddle", "FusedBlock", override=True)(
        lambda m, l: [x for x in fused_rule(m, l) if not x.src.startswith("v_proj")])
    with pytest.raises(TransferError) as e:
        assign_weight(t, p)
    assert "raw qkv_proj.weight [16, 32] is written in parts that cover 384 of its 512 values" in str(e.value)
    assert_unchanged(p, snap)
    report = assign_weight(t, p, strict=False)  # non-strict: the gap is listed as missing
    assert "qkv_proj.weight" in report.missing and "qkv_proj.bias" in report.missing


def test_a_part_on_an_axis_the_tensor_lacks_is_named(scoped_pool):
    scoped_pool.register_maps("torch", "SplitBlock", "paddle", "FusedBlock")(
        lambda m, l: [Map("q_proj.bias", "qkv_proj.bias", dst_part=Part(((0, 4),), "in"))])
    with pytest.raises(TransferError) as e:
        assign_weight(SplitBlock(), FusedBlock())
    assert "qkv_proj.bias [32]: a tensor of 1 dims has no 'in' features axis" in str(e.value)


# -- packed experts: one [E, in, out] tensor vs one module per expert ------------------------------------
class PackedExperts(torch.nn.Module):
    """transformers-style: every expert's weight in one 3-D parameter, stored [E, I, H] (torch Linear layout per expert)."""

    def __init__(self):
        super().__init__()
        self.down = torch.nn.Parameter(torch.randn(E, I, H) * 0.1)
        self.router = torch.nn.Linear(H, E, bias=False)

    def forward(self, x):
        w = torch.softmax(self.router(x), -1)  # [B, S, E]
        outs = torch.einsum("bsh,eih->bsei", x, self.down)
        return (outs * w[..., None]).sum(2)


class Expert(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.down = paddle.nn.Linear(H, I, bias_attr=False)


class ExpertList(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.experts = paddle.nn.LayerList([Expert() for _ in range(E)])
        self.gate = paddle.nn.Linear(H, E, bias_attr=False)

    def forward(self, x):
        w = paddle.nn.functional.softmax(self.gate(x), -1)
        outs = paddle.stack([e.down(x) for e in self.experts], 2)
        return (outs * w.unsqueeze(-1)).sum(2)


def packed_rule(module, layer):
    maps = [Map("down", f"experts.{e}.down.weight", "transpose", src_part=Part(index=e)) for e in range(E)]
    return maps + [Map("router.weight", "gate.weight", "transpose")]


@pytest.mark.parametrize("direction", ["torch->paddle", "paddle->torch"])
def test_packed_experts_port_both_ways(direction, tmp_path, scoped_pool):
    scoped_pool.register_maps("torch", "PackedExperts", "paddle", "ExpertList")(packed_rule)
    t, p = PackedExperts(), ExpertList()
    src, dst = (t, p) if direction == "torch->paddle" else (p, t)
    assert np.abs(_out(src, X) - _out(dst, X)).max() > 1e-3
    assign_weight(src, dst)
    np.testing.assert_allclose(_out(dst, X), _out(src, X), atol=1e-5)
    # and through a file, back to the first framework, bit-exact
    a, b = (PackedExperts, ExpertList) if direction == "torch->paddle" else (ExpertList, PackedExperts)
    first = tmp_path / ("a.safetensors" if direction == "torch->paddle" else "a.pdparams")
    save(state_as_torch(src, direction.split("->")[0]), first)
    mid = tmp_path / ("b.pdparams" if direction == "torch->paddle" else "b.safetensors")
    convert_checkpoint(first, mid, a, b)
    convert_checkpoint(mid, tmp_path / ("c" + first.suffix), b, a)
    again, orig = load(tmp_path / ("c" + first.suffix)), load(first)
    assert again.keys() == orig.keys()
    for k in orig:
        assert torch.equal(again[k], orig[k]), k


def test_a_partly_covered_target_is_left_out_of_a_non_strict_conversion(fused_pool, tmp_path):
    init_pool.register_maps("torch", "SplitBlock", "paddle", "FusedBlock", override=True)(
        lambda m, l: [x for x in fused_rule(m, l) if not x.src.startswith("v_proj")])
    save(state_as_torch(SplitBlock(), "torch"), tmp_path / "split.safetensors")
    with pytest.raises(TransferError, match="cover 384 of its 512 values"):
        convert_checkpoint(tmp_path / "split.safetensors", tmp_path / "fused.pdparams", SplitBlock, FusedBlock)
    report = convert_checkpoint(tmp_path / "split.safetensors", tmp_path / "fused.pdparams", SplitBlock, FusedBlock,
                                strict=False)
    written = load(tmp_path / "fused.pdparams")
    assert "qkv_proj.weight" not in written and "qkv_proj.weight" in report.missing
    assert set(written) == {"up_gate_proj.weight", "down_proj.weight"}


@pytest.mark.parametrize("direction", ["torch->paddle", "paddle->torch"])
def test_auto_diff_maps_gradients_through_parts(fused_pool, direction):
    """auto_diff's gradient comparison goes through the same parts: a fused weight's gradient blocks meet the
    split weights' gradients."""
    from padiff_lite import auto_diff

    t, p = SplitBlock(), FusedBlock()
    base, raw = (t, p) if direction == "torch->paddle" else (p, t)
    result = auto_diff(base, raw, X, diff_phase="both", atol=1e-4, rtol=1e-4)
    assert result.ok, str(result)
    assert len(result.grads) == 9 and all(g.ok for g in result.grads)  # one per map: q, k, v (+bias), gate, up, down
    assert any("part" in g.note for g in result.grads)
