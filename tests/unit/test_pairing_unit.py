"""pairing.py alone, over the fake adapter: by name, by order among alike leftovers, rules as units, layer
maps, auto_layer_map marking (paired by name), and what is left unpaired."""
import pytest
from fake import PADDLELIKE, TORCHLIKE, module, tensor

from padiff_lite.errors import LayerMapError
from padiff_lite.pairing import pair_models
from padiff_lite.proxy import create_model
from padiff_lite.special_init import Map


def lin(i, o):
    return module("Linear", weight=tensor(o, i), bias=tensor(o))


def pair(base, raw, pool, **kw):
    return pair_models(create_model(base, adapter=TORCHLIKE), create_model(raw, adapter=PADDLELIKE), pool, **kw)


def how(pairing):
    return [(p.base.path, p.raw.path, p.how) for p in pairing.pairs]


def test_children_pair_by_name_whatever_their_order(pool):
    base = module("Net", a=lin(2, 3), b=lin(3, 4))
    raw = module("Net", b=lin(3, 4), a=lin(2, 3))
    assert how(pair(base, raw, pool)) == [("a", "a", "name"), ("b", "b", "name")]


def test_leftovers_pair_by_order_when_alike(pool):
    base = module("Net", fc1=lin(2, 3), fc2=lin(3, 4))
    raw = module("Net", dense1=lin(2, 3), dense2=lin(3, 4))
    pairing = pair(base, raw, pool)
    assert how(pairing) == [("fc1", "dense1", "order"), ("fc2", "dense2", "order")]
    assert not pairing.unpaired


def test_leftovers_of_different_classes_are_reported_not_zipped(pool):
    base = module("Net", same=lin(2, 2), fc=lin(2, 3))
    raw = module("Net", same=lin(2, 2), conv=module("Conv", weight=tensor(3, 2, 1)))
    pairing = pair(base, raw, pool)
    assert how(pairing) == [("same", "same", "name")]
    assert [str(u) for u in pairing.unpaired] == ["base fc (Linear, 2 tensors)", "raw conv (Conv, 1 tensor)"]
    assert pairing.unpaired[0].tensor_paths() == ["fc.weight", "fc.bias"]


def test_different_numbers_of_leftovers_are_reported(pool):
    base = module("Net", fc1=lin(2, 3), fc2=lin(3, 4))
    raw = module("Net", dense=lin(2, 3))
    pairing = pair(base, raw, pool)
    assert not pairing.pairs
    assert [(u.side, u.path) for u in pairing.unpaired] == [("base", "fc1"), ("base", "fc2"), ("raw", "dense")]


def test_a_tied_only_leftover_carries_nothing_new_and_is_not_missing(pool):
    emb = tensor(5, 2)
    base = module("Net", embed=module("Embedding", weight=emb), head=module("Head", weight=emb))
    raw = module("Net", embed=module("Embedding", weight=tensor(5, 2)))
    pairing = pair(base, raw, pool)
    assert how(pairing) == [("embed", "embed", "name")]
    assert not pairing.unpaired


def test_a_registered_pair_is_one_unit_and_makes_classes_alike(pool):
    pool.register_maps("torch", "Attn", "paddle", "MHA")(lambda m, l: [Map("w", "w")])
    base = module("Net", attn=module("Attn", w=tensor(2, 2), inner=lin(2, 2)))
    raw = module("Net", mha=module("MHA", w=tensor(2, 2), proj=lin(2, 2)))
    pairing = pair(base, raw, pool)
    assert how(pairing) == [("attn", "mha", "order")]  # alike through the rule; its children are the rule's
    assert pairing.pairs[0].entry.key == ("torch", "Attn", "paddle", "MHA")


def test_set_layer_map_pairs_in_the_order_given(pool):
    base = module("Net", first=lin(2, 3), second=lin(3, 2))
    raw = module("Net", second=lin(3, 2), first=lin(2, 3))
    b, r = create_model(base, adapter=TORCHLIKE), create_model(raw, adapter=PADDLELIKE)
    b.set_layer_map([base.first, base.second])
    r.set_layer_map([raw.second, raw.first])  # zipped as given: first <-> second
    pairing = pair_models(b, r, pool)
    assert how(pairing) == [("first", "second", "layer_map"), ("second", "first", "layer_map")]
    r.set_layer_map([raw.second])
    with pytest.raises(LayerMapError, match="layer maps differ in length"):
        pair_models(b, r, pool)


def test_auto_layer_map_marks_outermost_ruled_modules_and_pairs_them_by_name(pool):
    pool.register_maps("torch", "Block", "paddle", "Block")(lambda m, l: [Map("w", "w")])
    base = module("Net", first=module("Block", w=tensor(2, 3)), second=module("Block", w=tensor(3, 2)),
                  wrap=module("Wrap", inner=module("Block", w=tensor(1, 1))))
    raw = module("Net", second=module("Block", w=tensor(3, 2)), first=module("Block", w=tensor(2, 3)),
                 wrap=module("Wrap", inner=module("Block", w=tensor(1, 1))))
    b, r = create_model(base, adapter=TORCHLIKE), create_model(raw, adapter=PADDLELIKE)
    b.auto_layer_map("base", pool=pool)
    r.auto_layer_map("raw", pool=pool)
    assert b.layer_map == [base.first, base.second, base.wrap.inner] and b.layer_map_auto
    assert r.layer_map == [raw.second, raw.first, raw.wrap.inner]
    assert how(pair_models(b, r, pool)) == [("first", "first", "name"), ("second", "second", "name"),
                                            ("wrap.inner", "wrap.inner", "name")]


def test_auto_layer_map_on_one_side_and_set_layer_map_on_the_other_is_refused(pool):
    pool.register_maps("torch", "Block", "paddle", "Block")(lambda m, l: [Map("w", "w")])
    base, raw = module("Net", x=module("Block", w=tensor(2))), module("Net", x=module("Block", w=tensor(2)))
    b, r = create_model(base, adapter=TORCHLIKE), create_model(raw, adapter=PADDLELIKE)
    b.auto_layer_map("base", pool=pool)
    r.set_layer_map([raw.x])
    with pytest.raises(LayerMapError, match="use set_layer_map on both models"):
        pair_models(b, r, pool)


def test_keep_empty_pairs_modules_without_tensors_for_comparison_only(pool):
    base = module("Net", fc=lin(2, 2), act=module("ReLU"))
    raw = module("Net", fc=lin(2, 2), tanh=module("ReLU"))
    pairing = pair(base, raw, pool, keep_empty=True)
    assert how(pairing) == [("fc", "fc", "name")]  # what a transfer plans
    assert [(p.base.path, p.raw.path, p.how) for p in pairing.matched] == [
        ("", "", "root"), ("fc", "fc", "name"), ("act", "tanh", "order")]


def test_a_fused_group_among_leftovers_is_one_pair_with_its_candidate_layouts(pool):
    """q/k/v against one qkv_proj and gate/up against up_gate_proj, recognised by names and shapes (layout_infer):
    one pair per group (the parents restricted to it), its candidates listed; the rest pairs by name."""
    attn = module("Attn", q_proj=lin(16, 32), k_proj=lin(16, 16), v_proj=lin(16, 16), o_proj=lin(32, 16))
    fused = module("Attn", qkv_proj=module("Linear", weight=tensor(16, 64), bias=tensor(64)), o_proj=lin(32, 16))
    mlp = module("Mlp", gate_proj=lin(8, 6), up_proj=lin(8, 6))
    fmlp = module("Mlp", up_gate_proj=module("Linear", weight=tensor(8, 12), bias=tensor(12)))
    pairing = pair(module("Net", attn=attn, mlp=mlp), module("Net", attn=fused, mlp=fmlp), pool)
    assert not pairing.unpaired
    assert how(pairing) == [("attn.o_proj", "attn.o_proj", "name"), ("attn", "attn", "inferred"),
                            ("mlp", "mlp", "inferred")]
    qkv, gate_up = pairing.pairs[1].entry, pairing.pairs[2].entry
    assert qkv.what == "q_proj/k_proj/v_proj <-> qkv_proj"
    # no head counts on the modules: every head size the shapes allow (8: 4 heads, 2 KV heads; 16 is concatenation)
    assert [c.name for c in qkv.candidates] == [
        "concatenated [q | k | v]", "grouped per KV head [q heads | k | v] (4 heads, 2 KV heads, head_dim 8)"]
    assert [c.name for c in gate_up.candidates] == ["[gate | up]", "[up | gate]",
                                                    "interleaved [gate0, up0, gate1, up1, ...]"]
    assert sorted(pairing.pairs[1].base.subtree_tensors()) == ["k_proj.bias", "k_proj.weight", "q_proj.bias",
                                                               "q_proj.weight", "v_proj.bias", "v_proj.weight"]
