"""plan.py alone (build_plan and validate), over the fake adapter: default copies by name, a mapping rule with
a transpose and row Parts, feature Parts resolved per layout, shape and dtype problems, missing/unexpected,
tied targets, tensors without data. Nothing here reads or writes a tensor's values."""
import pytest
from fake import PADDLELIKE, TORCHLIKE, module, tensor

from padiff_lite.layout import Part, features
from padiff_lite.plan import build_plan, dtype_family, pair_label
from padiff_lite.proxy import create_model
from padiff_lite.special_init import Map


def plan_of(base, raw, pool, need_data=True):
    return build_plan(create_model(base, adapter=TORCHLIKE), create_model(raw, adapter=PADDLELIKE), pool,
                      need_data=need_data)


def ops(plan):
    return [op.describe() for op in plan.ops]


def test_default_rule_copies_same_names_and_drops_source_only_counters(pool):
    base = module("Net", norm=module("Norm", weight=tensor(4), buffers={"num_batches_tracked": tensor(dtype="int64")}))
    raw = module("Net", norm=module("Norm", weight=tensor(4)))
    plan = plan_of(base, raw, pool)
    assert ops(plan) == ["norm.weight -> norm.weight"]
    assert not plan.problems and not plan.missing and not plan.unexpected
    assert plan.ops[0].info == ((4,), (4,), "float32", "float32")  # what the executor groups copies by


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


def test_shape_problems_name_both_tensors_and_spot_a_transposed_layout(pool):
    base = module("Net", a=module("Dense", w=tensor(2, 3)), b=module("Dense", w=tensor(4)))
    raw = module("Net", a=module("Dense", w=tensor(3, 2)), b=module("Dense", w=tensor(5)))
    plan = plan_of(base, raw, pool)
    assert plan.problems[0].startswith("a (Dense) -> a (Dense): shape mismatch: base a.w [2, 3] vs raw a.w [3, 2]; "
                                       "the layouts look transposed: register a rule")
    assert plan.problems[1] == ("b (Dense) -> b (Dense): shape mismatch: base b.w [4] vs raw b.w [5]; build both "
                                "models with the same sizes, or pair these layers differently with set_layer_map")


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


@pytest.mark.parametrize("rows, problem", [
    ([(0, 3), (3, 4), (4, 6)], "shape mismatch: base attn.w [6, 4] (transpose) vs raw attn.q [4, 2]"),
    ([(0, 2), (2, 4), (4, 8)], "part [4:8] does not fit base attn.w of shape [6, 4]; fix the rule's Part"),
])
def test_row_parts_that_do_not_fit_are_problems(pool, rows, problem):
    pool.register_maps("torch", "Packed", "paddle", "Split")(packed_rule(rows))
    base = module("Net", attn=module("Packed", w=tensor(6, 4)))
    raw = module("Net", attn=module("Split", q=tensor(4, 2), k=tensor(4, 2), v=tensor(4, 2)))
    assert any(problem in p for p in plan_of(base, raw, pool).problems)


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


def test_dtypes_of_another_kind_are_a_problem_and_widening_is_no_cast(pool):
    base = module("Net", a=module("Dense", w=tensor(2, dtype="int64"), v=tensor(2, dtype="float32")))
    raw = module("Net", a=module("Dense", w=tensor(2, dtype="float32"), v=tensor(2, dtype="float64")))
    plan = plan_of(base, raw, pool)
    assert plan.problems == ["a (Dense) -> a (Dense): base a.w is int64 but raw a.w is float32; a transfer does not "
                             "change the kind of a tensor: build the raw model with a matching dtype"]
    assert not plan.casts
    assert [dtype_family(d) for d in ("bfloat16", "float8_e4m3fn", "int8", "bool", "complex64")] == \
        ["float", "float", "int", "bool", "complex"]


def test_a_tied_target_is_written_once_and_the_second_writer_noted(pool):
    shared = tensor(5, 2)
    base = module("Net", embed=module("Embedding", weight=tensor(5, 2)), head=module("Head", weight=tensor(5, 2)))
    raw = module("Net", embed=module("Embedding", weight=shared), head=module("Head", weight=shared))
    plan = plan_of(base, raw, pool, need_data=False)  # with data, validation compares the two sources' values
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


def test_tensors_without_data_are_problems_only_when_data_is_needed(pool):
    base = module("Net", fc=module("Dense", w=tensor(2, data=False)))
    raw = module("Net", fc=module("Dense", w=tensor(2)))
    problems = plan_of(base, raw, pool).problems
    assert len(problems) == 1 and problems[0].startswith("fc (Dense) -> fc (Dense): base fc.w holds no data (device meta)")
    assert not plan_of(base, raw, pool, need_data=False).problems


def test_pair_label_names_both_sides(pool):
    plan = plan_of(module("Net", w=tensor(1)), module("Top", w=tensor(1)), pool)
    assert pair_label(plan.pairs[0]) == "<root> (Net) -> <root> (Top)"
