"""tests/unit: one stage at a time (tree, pairing, plan, validate) over ``fake.py``'s adapter of plain objects.

Nothing here, in ``fake.py`` or in the stages under test imports torch or paddle: these tests run where neither is
installed (``tests/test_unit_without_frameworks.py`` proves it with both imports made to fail). The parent
``tests/conftest.py`` imports no framework when only tests/unit is run.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # fake.py

FRAMEWORKS = ("torch", "paddle")


@pytest.fixture(autouse=True)
def _no_framework_imported(request):
    """A unit test that makes the package import a framework fails here, naming it (in a run of tests/unit alone;
    in a run of the whole suite both are imported before any test)."""
    before = {name for name in FRAMEWORKS if name in sys.modules}
    yield
    new = sorted(name for name in FRAMEWORKS if name in sys.modules and name not in before)
    assert not new, (f"{request.node.nodeid} imported {new}: tests/unit must run without frameworks; import them "
                     "inside the function that needs tensors, not at the top of a module the stages import")
