"""No module of padiff_lite imports another module's private name: what modules share has a public name.

Importing a private submodule (``from . import _fastcopy``, the C extension behind fastcopy.py) is allowed:
the leading underscore then marks a module as internal to the package, not a name as internal to a module.
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "padiff_lite"


def _is_module(folder: Path, name: str) -> bool:
    return (folder / f"{name}.py").exists() or (folder / name).is_dir() or any(folder.glob(f"{name}.*.so"))


def private_imports(source: str, path: Path) -> list[str]:
    """``module:line name`` for each private name imported from the package (at any depth of the file)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            folder = path.parent
            for _ in range(node.level - 1):
                folder = folder.parent
        elif (node.module or "").split(".")[0] == "padiff_lite":
            folder = PACKAGE.parent
        else:
            continue  # another library's names are its own business
        for part in (node.module or "").split(".") if node.module else ():
            folder = folder / part
        for alias in node.names:
            name = alias.name
            if name.startswith("_") and not name.startswith("__") and not _is_module(folder, name):
                out.append(f"{path.name}:{node.lineno} {name}")
    return out


def test_no_module_imports_a_private_name_of_another():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += private_imports(path.read_text(), path)
    assert not found, ("private names imported from another module (give them a public name where they are "
                       f"defined): {found}")


def test_the_check_finds_private_names_in_every_form():
    here = PACKAGE / "checkpoint.py"
    src = (
        "from .plan import build_plan, _where\n"
        "from padiff_lite.execute import _no_grad as ng\n"
        "from .special_init.registry import (\n    InitPool,\n    _origin,\n)\n"
        "def f():\n    from ..x import _y\n    from . import _fastcopy, fastcopy\n"
        "import numpy\nfrom numpy import _globals\nfrom .plan import __doc__\n"
    )
    assert private_imports(src, here) == ["checkpoint.py:1 _where", "checkpoint.py:2 _no_grad",
                                          "checkpoint.py:3 _origin", "checkpoint.py:8 _y"]
