"""plan.py alone (build_plan), over the fake adapter: default copies by name, a mapping rule with a transpose and
row Parts, feature Parts resolved per layout, missing/unexpected, tied targets. Nothing here reads or writes a
tensor's values; validation has its own tests (test_validate_unit.py)."""
from fake import PADDLELIKE, TORCHLIKE, module, tensor

from padiff_lite.layout import Part, features
from padiff_lite.plan import build_plan, pair_label
from padiff_lite.proxy import create_model
from padiff_lite.special_init import Map


def plan_of(base, raw, pool):
    return build_plan(create_model(base, adapter=TORCHLIKE), create_model(raw, adapter=PADDLELIKE), pool)


def ops(plan):
    return [op.describe() for op in plan.ops]


def test_default_rule_copies_same_names_and_drops_source_only_counters(pool):
    base = module("Net", norm=module("Norm", weight=tensor(4), buffers={"num_batches_tracked": tensor(dtype="int64")}))
    raw = module("Net", norm=module("Norm", weight=tensor(4)))
    plan = plan_of(base, raw, pool)
    assert ops(plan) == ["norm.weight -> norm.weight"]
    assert not plan.problems and not plan.missing and not plan.unexpected


def test_missing_and_unexpected_tensors_are_listed_with_a_rename_hint(pool):
    base = module("Net", fc=module("Dense", w=tensor(2, 2), extra=tensor(2)), pooler=module("Pool", w=tensor(2)))
    raw = module("Net", fc=module("Dense", w=tensor(2, 2), b=tensor(2)))
    plan = plan_of(base, raw, pool)
    assert ops(plan) == ["fc.w -> fc.w"]
    assert plan.missing == ["fc.b"]
    assert plan.unexpected == ["fc.extra", "pooler.w"]  # state_dict order
    assert [str(u) for u in plan.unpaired] == ["base pooler (Pool, 1 tensor)"]
    assert plan.hints == ["fc (Dense) -> fc (Dense): base tensor 'extra' has no namesake on the raw side (raw has b); "
                          "register a rule for this class pair with init_pool.register_maps or add_special_init"]
    assert not plan.problems  # strict or not is the caller's choice


def packed_rule(rows):
    def rule(module, layer):
        return [Map("w", name, "transpose", src_rows=r) for name, r in zip(("q", "k", "v"), rows)]
    return rule


def test_a_mapping_rule_with_a_transpose_and_row_parts(pool):
    pool.register_maps("torch", "Packed", "paddle", "Split")(packed_rule([(0, 2), (2, 4), (4, 6)]))
    base = module("Net", attn=module("Packed", w=tensor(6, 4)))  # [3 * out, in]
    raw = module("Net", attn=module("Split", q=tensor(4, 2), k=tensor(4, 2), v=tensor(4, 2)))  # [in, out] each
    plan = plan_of(base, raw, pool)
    assert not plan.problems, plan.problems
    assert ops(plan) == ["attn.w[0:2] -> attn.q (transpose)", "attn.w[2:4] -> attn.k (transpose)",
                         "attn.w[4:6] -> attn.v (transpose)"]
    assert plan.ops[1].src_part == Part(((2, 4),)) and plan.ops[1].pair.entry.kind == "mapping"
    assert not plan.missing and not plan.unexpected


def test_the_same_rule_in_reverse_writes_the_row_parts(pool):
    pool.register_maps("torch", "Packed", "paddle", "Split")(packed_rule([(0, 2), (2, 4), (4, 6)]))
    base = module("Net", attn=module("Split", q=tensor(4, 2), k=tensor(4, 2), v=tensor(4, 2)))
    raw = module("Net", attn=module("Packed", w=tensor(6, 4)))
    plan = build_plan(create_model(base, adapter=PADDLELIKE), create_model(raw, adapter=TORCHLIKE), pool)
    assert not plan.problems, plan.problems
    assert ops(plan) == ["attn.q -> attn.w[0:2] (transpose)", "attn.k -> attn.w[2:4] (transpose)",
                         "attn.v -> attn.w[4:6] (transpose)"]


def test_parts_that_leave_a_gap_make_the_target_missing(pool):
    pool.register_maps("torch", "Split", "paddle", "Packed")(
        lambda m, l: [Map("q", "w", dst_rows=(0, 2)), Map("k", "w", dst_rows=(2, 4))])
    base = module("Net", attn=module("Split", q=tensor(2, 4), k=tensor(2, 4)))
    raw = module("Net", attn=module("Packed", w=tensor(6, 4)))
    plan = plan_of(base, raw, pool)
    assert plan.missing == ["attn.w"]
    assert "raw attn.w [6, 4] is written in parts that cover 16 of its 24 values" in plan.hints[0]


def test_feature_parts_resolve_to_each_sides_layout(pool):
    pool.register_maps("torch", "Qkv", "paddle", "Qkv")(lambda m, l: [
        Map("q.weight", "fused.weight", "transpose", dst_part=features((0, 2))),
        Map("k.weight", "fused.weight", "transpose", dst_part=features((2, 4)))])
    base = module("Net", attn=module("Qkv", q=module("Linear", weight=tensor(2, 3)),
                                     k=module("Linear", weight=tensor(2, 3))))
    raw = module("Net", attn=module("Qkv", fused=module("Linear", weight=tensor(3, 4))))  # paddle's [in, out]
    plan = plan_of(base, raw, pool)
    assert not plan.problems and not plan.missing, (plan.problems, plan.missing)
    assert [op.dst_part for op in plan.ops] == [Part(((0, 2),), 1), Part(((2, 4),), 1)]  # "out" is dim 1 there


def test_a_tied_target_is_written_once_and_the_second_writer_noted(pool):
    shared = tensor(5, 2)
    base = module("Net", embed=module("Embedding", weight=tensor(5, 2)), head=module("Head", weight=tensor(5, 2)))
    raw = module("Net", embed=module("Embedding", weight=shared), head=module("Head", weight=shared))
    plan = plan_of(base, raw, pool)
    assert ops(plan) == ["embed.weight -> embed.weight"]
    assert plan.tied == ["head.weight is tied to embed.weight: it gets embed.weight, not head.weight"]


def test_a_tied_source_gives_both_untied_targets_its_values(pool):
    shared = tensor(5, 2)
    base = module("Net", embed=module("Embedding", weight=shared), head=module("Head", weight=shared))
    raw = module("Net", embed=module("Embedding", weight=tensor(5, 2)), head=module("Head", weight=tensor(5, 2)))
    plan = plan_of(base, raw, pool)
    assert ops(plan) == ["embed.weight -> embed.weight", "head.weight -> head.weight"]
    assert plan.ops[1].src.alias_of == "embed.weight" and plan.ops[1].src.tensor is shared
    assert not plan.missing and not plan.unexpected and not plan.problems


def test_pair_label_names_both_sides(pool):
    plan = plan_of(module("Net", w=tensor(1)), module("Top", w=tensor(1)), pool)
    assert pair_label(plan.pairs[0]) == "<root> (Net) -> <root> (Top)"
