"""``import padiff`` (and ``padiff.checker``, ``padiff.dump_tools``, ``padiff.interfaces.diff_utils``, ...) gives
``padiff_lite.compat`` (and its submodules): an import hook, installed by :func:`install`.

The modules are imported when PaDiff's code imports them, not before, so settings a test makes first (such as
``PADIFF_API_CHECK``) are seen."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

TARGET = "padiff_lite.compat"


class _Loader(importlib.abc.Loader):
    def __init__(self, target):
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self.spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self.spec  # the import system wrote the alias's spec on the shared module


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != "padiff" and not fullname.startswith("padiff."):
            return None
        real = TARGET + fullname[len("padiff"):]
        if importlib.util.find_spec(real) is None:
            return None
        return importlib.util.spec_from_loader(fullname, _Loader(real), is_package=True)


def install():
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
