"""No function of padiff_lite/formats/ or padiff_lite/verify/ is over 80 lines (issue 24): each does one job a reader can hold in view.

Declarative tables (the opcode dispatch, the dtype tables) are module-level data, not functions, so they do not
count. Read with ``ast``: nothing is imported.
"""
import ast
from pathlib import Path

FORMATS = Path(__file__).resolve().parents[2] / "padiff_lite" / "formats"
VERIFY = Path(__file__).resolve().parents[2] / "padiff_lite" / "verify"
LIMIT = 80


def function_lengths(folder: Path) -> dict[str, int]:
    """``file:qualified name`` -> lines (decorators and docstring included) of every function in ``folder``."""
    out = {}
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text())

        def visit(node, prefix):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    first = min([child.lineno] + [d.lineno for d in child.decorator_list])
                    out[f"{path.name}:{prefix}{child.name}"] = child.end_lineno - first + 1
                    visit(child, f"{prefix}{child.name}.")
                elif isinstance(child, ast.ClassDef):
                    visit(child, f"{prefix}{child.name}.")

        visit(tree, "")
    return out


def test_no_function_in_formats_is_over_80_lines():
    lengths = function_lengths(FORMATS)
    assert len(lengths) > 100  # every module was read
    long = {name: n for name, n in lengths.items() if n > LIMIT}
    assert not long, f"functions over {LIMIT} lines in padiff_lite/formats/ (split them by job): {long}"


def test_no_function_in_verify_is_over_80_lines():
    lengths = function_lengths(VERIFY)
    assert len(lengths) > 100  # every module was read
    long = {name: n for name, n in lengths.items() if n > LIMIT}
    assert not long, f"functions over {LIMIT} lines in padiff_lite/verify/ (split them by job): {long}"


def test_the_measure_counts_decorators_docstrings_and_nested_functions(tmp_path):
    (tmp_path / "m.py").write_text(
        "import functools\n"
        "@functools.cache\n"
        "def f():\n"
        "    '''doc'''\n"
        "    def g():\n"
        "        return 1\n"
        "    return g\n"
        "class C:\n"
        "    def h(self):\n"
        "        pass\n")
    assert function_lengths(tmp_path) == {"m.py:f": 6, "m.py:f.g": 2, "m.py:C.h": 2}
