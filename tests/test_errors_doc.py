"""docs/errors.md lists every exception class of padiff_lite/errors.py, and every test it links to exists."""
import builtins
import importlib
import inspect
import re
from pathlib import Path

from padiff_lite import errors

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "errors.md").read_text()
LINK = re.compile(r"tests/(test_\w+\.py)::(test_\w+)")


def test_every_exception_class_is_documented():
    classes = [name for name, obj in vars(errors).items()
               if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == errors.__name__]
    assert len(classes) >= 6
    missing = [name for name in classes if name not in DOC]
    assert not missing, f"docs/errors.md does not mention {missing}"


def _raised_classes() -> set[str]:
    """Exception classes the package raises by name (``raise X(...)``); a helper that builds the exception
    (``raise corrupt(...)`` in padiff_lite/formats/) is not one: only names that are exception classes count."""
    raised = set()
    for path in (ROOT / "padiff_lite").rglob("*.py"):
        if path.name == "__main__.py":
            continue
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"))
        for name in set(re.findall(r"raise (\w+)\(", path.read_text())):
            # the module's own names, then errors.py's (some are imported inside functions), then builtins
            obj = next((getattr(m, name) for m in (module, errors, builtins) if hasattr(m, name)), None)
            assert obj is not None, f"{path.name} raises {name}, which is not defined anywhere"
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                raised.add(name)
    return raised


def test_every_exception_raised_in_the_package_is_documented():
    raised = _raised_classes()
    assert {"TransferError", "RegistryError", "TypeError", "ValueError"} <= raised
    assert "corrupt" not in raised
    assert not [name for name in raised if not re.search(rf"\b{name}\b", DOC)]


def _defines(file: str, name: str) -> bool:
    path = ROOT / "tests" / file
    return path.exists() and re.search(rf"^def {name}\(", path.read_text(), re.M) is not None


def test_every_linked_test_exists():
    links = LINK.findall(DOC)
    assert len(links) >= 30
    bad = []
    for file, name in set(links):
        if not _defines(file, name):
            bad.append(f"{file}::{name}")
    assert not bad, f"docs/errors.md links to tests that do not exist: {bad}"
