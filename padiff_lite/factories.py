"""``MODULE:CALLABLE`` and ``path/to/file.py:CALLABLE``: the one way the command line and ``convert_checkpoint``
find the user's model factories, and the one way they build a model from one (:func:`build`, :func:`build_model`).

A module is imported normally; the working folder is importable but comes last on ``sys.path`` (a file
planted there, ``six.py`` say, must not shadow an installed module). A file is imported by path, its folder
last on ``sys.path`` (its own sibling modules import; nothing beside it shadows an installed library). Every failure is the caller's exception class with the
spec, the cause and the fix.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import sys

from .errors import CheckpointError, FactoryError

log = logging.getLogger("padiff_lite.factories")


def load_callable(spec: str, what: str):
    """The callable ``spec`` names; FactoryError (naming ``what``, e.g. "--base") when it cannot be found. The
    callers re-raise it as their own error (CheckpointError for conversions, DiffInputError for ``check``)."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise FactoryError(f"{what} '{spec}' is not MODULE:CALLABLE; write it like mypackage.models:build_model (expected "
                    "MODULE:CALLABLE or path/to/file.py:CALLABLE)")
    is_file = module_name.endswith(".py") or os.sep in module_name
    if is_file and not os.path.isfile(module_name):
        raise FactoryError(f"{what} '{spec}': no file {os.path.abspath(module_name)}; give an existing "
                    "path/to/file.py:CALLABLE or an importable MODULE:CALLABLE")
    try:
        module = _import_file(module_name) if is_file else _import_module(module_name)
    except SystemExit as exc:
        raise FactoryError(f"importing module '{module_name}' named in {what} '{spec}' called sys.exit({exc.code!r}); "
                           "a module that defines a factory must not exit when imported (guard its script part "
                           "with `if __name__ == \"__main__\":`)") from None
    except Exception as exc:  # ImportError, or the module itself raised while being imported
        raise FactoryError(f"cannot import module '{module_name}' named in {what} '{spec}' ({type(exc).__name__}: {exc}); "
                    "run from the folder that holds it, add that folder to PYTHONPATH, or give "
                    "path/to/file.py:CALLABLE") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise FactoryError(f"{what} '{spec}': module '{module_name}' ({getattr(module, '__file__', '?')}) has no "
                        f"'{attr}' (AttributeError); check the name after the colon")
        obj = getattr(obj, part)
    if not callable(obj):
        raise FactoryError(f"{what} '{spec}' is a {type(obj).__name__}, not a class or function; name a zero-argument "
                    "callable that returns the model")
    return obj


def _import_module(name: str):
    _working_folder_last()
    return importlib.import_module(name)


def _working_folder_last():
    """The working folder (``''`` or its path, which ``python -m`` puts first) moved to the end of ``sys.path``:
    a ``six.py`` or ``cv2.py`` lying there must not shadow what torch and paddle import."""
    cwd = os.getcwd()
    here = [p for p in sys.path if p in ("", ".", cwd)]
    if here:
        sys.path[:] = [p for p in sys.path if p not in here]
    sys.path.append(cwd)


def _import_file(path: str):
    """A factory file, imported by path under a name of its own; its folder is searched last (its sibling
    modules import, installed libraries are not shadowed by files beside it)."""
    path = os.path.abspath(path)
    folder, name = os.path.split(path)
    _working_folder_last()
    if folder not in sys.path:
        sys.path.append(folder)
    mod_name = os.path.splitext(name)[0]
    if mod_name in sys.modules and getattr(sys.modules[mod_name], "__file__", None) != path:
        mod_name = f"padiff_lite_factory_{mod_name}"  # a file named like an installed module (torch.py) must not replace it
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(mod_name, None)
        raise
    return module


# -- building a model ------------------------------------------------------------------------------------------------
def _with_storage():
    """Ways to build a model when its tensors are needed: as the factory builds it."""
    yield "with storage", contextlib.nullcontext


def _frugal():
    """Ways to build a model whose tensors are only looked at, most frugal first: no storage at all; torch without
    storage but paddle with it (some paddle layers, LSTM's flatten_parameters, cannot be built lazily); with
    storage."""
    from .adapters import ADAPTERS

    yield "without storage", lambda: _all(*(a.no_storage() for a in ADAPTERS.values()))
    yield "torch on meta, paddle with storage", lambda: _all(ADAPTERS["torch"].no_storage())
    yield from _with_storage()


@contextlib.contextmanager
def _all(*contexts):
    with contextlib.ExitStack() as stack:
        for c in contexts:
            stack.enter_context(c)
        yield


def build(factory, who: str, *, without_storage: bool = False, after: str = ""):
    """``factory()``: a ``torch.nn.Module`` or ``paddle.nn.Layer``, built without storage where it can be
    (``without_storage``; the last failure is reported). ``who`` names it in messages ("--base pkg:build",
    "raw model factory build"), ``after`` ends the sys.exit message. FactoryError (with the fix) when it exits,
    raises or returns something else."""
    from .adapters import adapter_for

    last = None
    for how, ctx in (_frugal() if without_storage else _with_storage()):
        try:
            with ctx():
                model = factory()
            break
        except SystemExit as exc:  # sys.exit()/exit() in the factory: an error of the factory, never a success
            raise FactoryError(f"{who}() called sys.exit({exc.code!r}); it must return the model (raise an exception "
                               f"to report a problem), not exit{after}") from None
        except Exception as exc:  # try the next, less frugal way; the last failure is reported
            log.debug("building %s %s failed: %s: %s", who, how, type(exc).__name__, exc)
            last = exc
    else:
        raise FactoryError(f"{who}() raised {type(last).__name__}: {last}; it must build the model with no "
                           "arguments") from last
    adapter = adapter_for(model)
    if adapter is None or not adapter.is_module(model):
        raise FactoryError(f"{who}() returned {type(model).__module__}.{type(model).__name__}, not a "
                           "torch.nn.Module or paddle.nn.Layer; it must return the model itself")
    if without_storage and how != "without storage":
        log.info("%s was built %s (%s cannot be built without it)", who, how, adapter.name)
    return model


def _name_of(spec) -> str:
    inner = getattr(spec, "func", spec)  # functools.partial
    return getattr(inner, "__qualname__", type(inner).__name__)


def load_factory(spec: str, what: str = "model"):
    """The callable named by ``"package.module:callable"`` or ``"path/to/file.py:callable"``; CheckpointError
    otherwise (for the conversions, whose errors are CheckpointErrors)."""
    try:
        return load_callable(spec, what)
    except FactoryError as exc:
        raise CheckpointError(str(exc)) from exc


def build_model(spec, role: str):
    """(ProxyModel, built here?) from a model, a ProxyModel, a class, a factory or "module:callable", for checkpoint
    conversion (built without storage where it can be); CheckpointError otherwise."""
    from .adapters import adapter_for
    from .proxy import ProxyModel, create_model

    name = spec if isinstance(spec, str) else _name_of(spec)
    try:
        if isinstance(spec, str):
            spec = load_callable(spec, "model")
        if isinstance(spec, ProxyModel):
            return spec, False
        adapter = adapter_for(spec)
        if adapter is not None and adapter.is_module(spec):
            return create_model(spec), False
        if not callable(spec):
            raise CheckpointError(f"{role}_model must be a model, a class or a zero-argument factory, got "
                                  f"{type(spec).__name__}")
        model = build(spec, f"{role} model factory {name}", without_storage=True, after=". Nothing was written")
    except FactoryError as exc:
        raise CheckpointError(str(exc)) from exc
    return create_model(model), True
