"""docs/errors.md lists every exception class of padiff_lite/errors.py, and every test it links to exists."""
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


def test_every_exception_raised_in_the_package_is_documented():
    raised = set()
    for path in (ROOT / "padiff_lite").rglob("*.py"):
        raised |= set(re.findall(r"raise (\w+)\(", path.read_text()))
    assert {"TransferError", "RegistryError", "TypeError", "ValueError"} <= raised
    assert not [name for name in raised if name not in DOC]


def test_every_linked_test_exists():
    links = LINK.findall(DOC)
    assert len(links) >= 30
    bad = []
    for file, name in set(links):
        path = ROOT / "tests" / file
        if not path.exists() or not re.search(rf"^def {name}\(", path.read_text(), re.M):
            bad.append(f"{file}::{name}")
    assert not bad, f"docs/errors.md links to tests that do not exist: {bad}"
