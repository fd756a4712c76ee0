"""docs/supported_layers.md is generated from the registry, and every row has its tests in both directions."""
import importlib
import sys
from pathlib import Path

from helpers import DIRECTIONS
from padiff_lite.rules_table import BY_PAIRING, REGENERATE, registered_pairs, render

ROOT = Path(__file__).resolve().parent.parent
LAYER_TESTS = ROOT / "tests" / "layers"


def test_supported_layers_doc_is_up_to_date():
    path = ROOT / "docs" / "supported_layers.md"
    assert path.exists(), f"docs/supported_layers.md is missing; create it with: {REGENERATE}"
    assert path.read_text() == render(), f"docs/supported_layers.md is stale; regenerate it with: {REGENERATE}"


def _layer_test_modules():
    sys.path.insert(0, str(LAYER_TESTS))
    try:
        return [importlib.import_module(p.stem) for p in sorted(LAYER_TESTS.glob("test_*.py"))]
    finally:
        sys.path.remove(str(LAYER_TESTS))


def _tested_both_ways(module):
    """Cases of ``module`` that a test function runs over both directions (through cases_param)."""
    covered = []
    for func in vars(module).values():
        marks = getattr(func, "pytestmark", [])
        params = {m.args[0]: list(m.args[1]) for m in marks if m.name == "parametrize"}
        if "case" in params and params.get("src,dst") == DIRECTIONS:
            covered += params["case"]
    return covered


def test_every_registered_pair_has_equivalence_tests_in_both_directions():
    tested = {}  # (torch class, paddle class) -> test files
    for module in _layer_test_modules():
        for case in _tested_both_ways(module):
            rel = Path(module.__file__).resolve().relative_to(ROOT).as_posix()
            tested.setdefault(tuple(case.pair), set()).add(rel)
    for pair in _pairs_used_by_hf_families():
        tested.setdefault(pair, set()).add("tests/test_hf_ports.py")
    rows = registered_pairs()
    assert len(rows) >= 28
    problems = []
    for t, p, dirs, entry in rows:
        if dirs != "torch → paddle, paddle → torch":
            problems.append(f"{t} <-> {p}: registered only for {dirs}")
        if entry.origin.split(":")[0].rsplit(".", 1)[-1].startswith("init_hf_"):
            if (t, p) not in tested:
                problems.append(f"{t} <-> {p}: no family of tests/hf_families.py uses it")
            continue
        files = tested.get((t, p), set())
        if not files:
            problems.append(f"{t} <-> {p}: no case in tests/layers runs it over both directions")
        elif f"tests/layers/test_{entry.origin.split(':')[0].rsplit('.init_', 1)[1]}.py" not in files:
            problems.append(f"{t} <-> {p}: tested in {sorted(files)}, not in the test file the table names")
    untested_extra = {pair for pair in tested} - {(t, p) for t, p, *_ in rows}
    assert not problems, "\n".join(problems)
    assert not untested_extra, f"cases for pairs without a registered rule: {untested_extra}"


def _pairs_used_by_hf_families() -> set:
    """(torch class, paddle class) of every rule the real-model families use; tests/test_hf_ports.py runs each
    family over both directions (outputs compared, or exact round trips for the MoE family)."""
    import hf_families as hf
    import test_hf_ports

    from padiff_lite import layout_infer, plan_transfer

    assert test_hf_ports.DIRS == ["torch->paddle", "paddle->torch"]
    used = set()
    for family in hf.FAMILIES:
        for pair in plan_transfer(family.torch_model(0), family.paddle_model(0)).pairs:
            if pair.entry is not None and pair.entry.origin != layout_infer.ORIGIN:  # inferred: no registered rule
                used.add((pair.entry.key.base_class, pair.entry.key.raw_class))
    return used


def test_pairs_without_a_rule_name_existing_tests():
    for t, p, how, test in BY_PAIRING:
        assert (ROOT / test).exists(), f"{t} <-> {p}: {test} does not exist"
