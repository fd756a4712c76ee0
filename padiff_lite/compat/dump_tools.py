"""PaDiff's ``padiff.dump_tools``: the dump root and the dump functions, writing padiff_lite's dump format
(JSON + safetensors, :mod:`padiff_lite.verify.dump`)."""
from __future__ import annotations

from . import _state


def set_dump_root_path(path):
    _state.dump_root = str(path)


def get_dump_root_path():
    return _state.dump_root


def dump_report(model, dump_path):
    """Write the calls ``model`` (a compat ProxyModel) recorded since its last report into ``dump_path``."""
    model.recorder.write(dump_path, proxy=model, step=model.step, name=model.name)


def dump_params(model, path):
    """Weights and gradients of ``model`` into ``path``."""
    dump_weights(model, path)
    dump_grads(model, path)


def dump_weights(model, path):
    from ..verify.dump import dump_weights as write

    write(model, path, step=getattr(model, "step", None), name=getattr(model, "name", None))


def dump_grads(model, path):
    from ..verify.dump import dump_grads as write

    write(model, path, step=getattr(model, "step", None), name=getattr(model, "name", None))
