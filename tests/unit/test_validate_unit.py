"""validate.py alone, over the fake adapter: the plan against the tensors (shapes after transforms, parts that
do not fit, dtype kinds, data present), the facts the executor gets, one list from every check an entry point
asks for, raised once; and validation never changes the plan. Nothing here reads a tensor's values."""
import copy

import pytest
from fake import PADDLELIKE, TORCHLIKE, module, tensor

from padiff_lite.errors import TransferError
from padiff_lite.ops import CopyFacts, Transform
from padiff_lite.pairing import LayerPair
from padiff_lite.plan import build_plan
from padiff_lite.proxy import create_model
from padiff_lite.special_init import InitPool, Map
from padiff_lite.validate import check, dtype_family, pair_problems, refuse, validate


@pytest.fixture
def pool():
    return InitPool()


def plan_of(base, raw, pool):
    return build_plan(create_model(base, adapter=TORCHLIKE), create_model(raw, adapter=PADDLELIKE), pool)


def packed_rule(rows):
    def rule(module, layer):
        return [Map("w", name, "transpose", src_rows=r) for name, r in zip(("q", "k", "v"), rows)]
    return rule


def test_shape_problems_name_both_tensors_and_spot_a_transposed_layout(pool):
    base = module("Net", a=module("Dense", w=tensor(2, 3)), b=module("Dense", w=tensor(4)))
    raw = module("Net", a=module("Dense", w=tensor(3, 2)), b=module("Dense", w=tensor(5)))
    plan = plan_of(base, raw, pool)
    v = validate(plan)
    assert v.problems[0].startswith("a (Dense) -> a (Dense): shape mismatch: base a.w [2, 3] vs raw a.w [3, 2]; "
                                       "the layouts look transposed: register a rule")
    assert v.problems[1] == ("b (Dense) -> b (Dense): shape mismatch: base b.w [4] vs raw b.w [5]; build both "
                                "models with the same sizes, or pair these layers differently with set_layer_map")

@pytest.mark.parametrize("rows, problem", [
    ([(0, 3), (3, 4), (4, 6)], "shape mismatch: base attn.w [6, 4] (transpose) vs raw attn.q [4, 2]"),
    ([(0, 2), (2, 4), (4, 8)], "part [4:8] does not fit base attn.w of shape [6, 4]; fix the rule's Part"),
])
def test_row_parts_that_do_not_fit_are_problems(pool, rows, problem):
    pool.register_maps("torch", "Packed", "paddle", "Split")(packed_rule(rows))
    base = module("Net", attn=module("Packed", w=tensor(6, 4)))
    raw = module("Net", attn=module("Split", q=tensor(4, 2), k=tensor(4, 2), v=tensor(4, 2)))
    assert any(problem in p for p in validate(plan_of(base, raw, pool)).problems)

def test_dtypes_of_another_kind_are_a_problem_and_widening_is_no_cast(pool):
    base = module("Net", a=module("Dense", w=tensor(2, dtype="int64"), v=tensor(2, dtype="float32")))
    raw = module("Net", a=module("Dense", w=tensor(2, dtype="float32"), v=tensor(2, dtype="float64")))
    plan = plan_of(base, raw, pool)
    v = validate(plan)
    assert v.problems == ["a (Dense) -> a (Dense): base a.w is int64 but raw a.w is float32; a transfer does not "
                             "change the kind of a tensor: build the raw model with a matching dtype"]
    assert not v.casts
    assert [dtype_family(d) for d in ("bfloat16", "float8_e4m3fn", "int8", "bool", "complex64")] == \
        ["float", "float", "int", "bool", "complex"]

def test_tensors_without_data_are_problems_only_when_data_is_needed(pool):
    base = module("Net", fc=module("Dense", w=tensor(2, data=False)))
    raw = module("Net", fc=module("Dense", w=tensor(2)))
    problems = validate(plan_of(base, raw, pool)).problems
    assert len(problems) == 1 and problems[0].startswith("fc (Dense) -> fc (Dense): base fc.w holds no data (device meta)")
    assert not validate(plan_of(base, raw, pool), need_data=False).problems


def test_whole_copies_are_grouped_by_the_facts_the_executor_moves_them_by(pool):
    base = module("Net", a=module("Dense", w=tensor(2, 3), b=tensor(3, dtype="float64", data=False)))
    raw = module("Net", a=module("Dense", w=tensor(2, 3), b=tensor(3, dtype="float32")))
    plan = plan_of(base, raw, pool)
    v = validate(plan, need_data=False)  # (no data: the narrowing cast's range check is left for the values)
    w, b = plan.ops
    assert v.alike == {CopyFacts((2, 3), (2, 3), "float32", "float32", Transform.COPY): [w],
                       CopyFacts((3,), (3,), "float64", "float32", Transform.COPY): [b]}
    assert v.casts == ["a.b float64 -> a.b float32"]  # narrowing: listed (values are checked where there are some)


def test_validation_leaves_the_plan_as_it_was(pool):
    base = module("Net", a=module("Dense", w=tensor(2, 3)), extra=module("Pool", w=tensor(2)))
    raw = module("Net", a=module("Dense", w=tensor(3, 2)))
    plan = plan_of(base, raw, pool)
    before = (copy.copy(plan.problems), copy.copy(plan.missing), copy.copy(plan.unexpected), list(plan.ops))
    first = check(plan, strict=True)
    second = check(plan, strict=True)
    assert (plan.problems, plan.missing, plan.unexpected, plan.ops) == before
    assert first.problems == second.problems and len(first.problems) == 2


def test_check_puts_every_problem_in_one_list_unpaired_first(pool):
    base = module("Net", a=module("Dense", w=tensor(2, 3)), extra=module("Pool", w=tensor(2)))
    raw = module("Net", a=module("Dense", w=tensor(2, 4)))
    plan = plan_of(base, raw, pool)
    strict = check(plan, strict=True).problems
    assert strict[0].startswith("structure differs:\n    unpaired base extra (Pool, 1 tensor): extra.w")
    assert strict[1].startswith("a (Dense) -> a (Dense): shape mismatch: base a.w [2, 3] vs raw a.w [2, 4]")
    assert check(plan, strict=False).problems == strict[1:]  # not strict: the unpaired tensors are not a problem
    with pytest.raises(TransferError) as e:
        refuse("cannot transfer x -> y; nothing was written", strict)
    assert str(e.value).startswith("cannot transfer x -> y; nothing was written (2 problems):")
    assert e.value.problems == strict
    refuse("nothing to say", [])  # no problems: no error


def test_one_pair_is_checked_alone_without_data(pool):
    pool.register_maps("torch", "Packed", "paddle", "Split")(packed_rule([(0, 2), (2, 4), (4, 6)]))
    base = create_model(module("Net", attn=module("Packed", w=tensor(6, 4, data=False))), adapter=TORCHLIKE)
    good = create_model(module("Net", attn=module("Split", q=tensor(4, 2), k=tensor(4, 2), v=tensor(4, 2))),
                        adapter=PADDLELIKE)
    bad = create_model(module("Net", attn=module("Split", q=tensor(4, 2), k=tensor(4, 3), v=tensor(4, 2))),
                       adapter=PADDLELIKE)
    plan = build_plan(base, good, pool)
    pair = next(p for p in plan.pairs if p.base.path == "attn")
    assert pair_problems(base, good, pair) == []
    bad_pair = next(p for p in build_plan(base, bad, pool).pairs if p.base.path == "attn")
    problems = pair_problems(base, bad, LayerPair(pair.base, bad_pair.raw, bad_pair.entry, "test"))
    assert len(problems) == 1 and "shape mismatch: base attn.w [6, 4] (transpose) vs raw attn.k [4, 3]" in problems[0]
