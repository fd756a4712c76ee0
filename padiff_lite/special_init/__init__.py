"""The special-init registry and its plugins.

``init_pool`` is the global registry. Every file ``init_*.py`` in this folder is a plugin,
imported in sorted order when padiff_lite is imported; a plugin that fails to import raises
:class:`~padiff_lite.errors.PluginImportError` naming the file.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from ..errors import PluginImportError
from ..layout import Part, features
from .registry import InitKey, InitPool, Map, SpecialInit

init_pool = InitPool()


def registry(pool=None) -> InitPool:
    """``pool``, or the global ``init_pool`` when None: the one place the default registry is chosen."""
    return init_pool if pool is None else pool


def add_special_init(base_framework, base_class, raw_framework, raw_class, func, override=False):
    """Register ``func(module, layer)`` at run time; it copies base ``module`` into raw ``layer``."""
    return init_pool.add(base_framework, base_class, raw_framework, raw_class, func, override=override)


def plugin_files(folder=None) -> list[Path]:
    return sorted(Path(folder or Path(__file__).parent).glob("init_*.py"))


def load_plugins(folder=None):
    """Import every ``init_*.py`` of ``folder`` (default: this package) in sorted order."""
    for path in plugin_files(folder):
        try:
            if folder is None:
                importlib.import_module(f"{__name__}.{path.stem}")
            else:
                name = f"padiff_lite_plugin_{path.stem}"
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
        except Exception as exc:  # any failure in a plugin is reported with its file
            raise PluginImportError(
                f"special-init plugin {path} failed to import: {type(exc).__name__}: {exc}. "
                "Fix or remove that file."
            ) from exc


load_plugins()

__all__ = ["init_pool", "registry", "add_special_init", "Map", "Part", "features", "InitKey", "InitPool", "SpecialInit", "load_plugins"]
