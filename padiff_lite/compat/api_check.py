"""PaDiff's ``PADIFF_API_CHECK=ON``: calls of framework functions (``paddle.nn.functional.relu``, ``torch.matmul``,
``Tensor.__add__``, ...) made directly in a model's own ``forward`` are recorded as calls of their own, next to the
module calls (a framework layer's inner function calls are not, nor calls made inside a recorded function).

:func:`install` replaces the functions listed here by recording wrappers, once per process; a wrapper costs one
list check when nothing records. The recorded calls are paired between two dumps by the order they ran and their
names and output shapes."""
from __future__ import annotations

import functools
import importlib
import threading

from ..verify import dump as _dump

FUNCTIONS = ["relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "softmax", "log_softmax", "leaky_relu", "elu",
             "dropout", "layer_norm", "linear", "conv1d", "conv2d", "embedding", "pad", "interpolate",
             "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "normalize", "cross_entropy", "mse_loss"]
TOP = ["matmul", "add", "subtract", "multiply", "divide", "concat", "cat", "stack", "reshape", "transpose",
       "mean", "sum", "exp", "log", "sqrt", "rsqrt", "pow", "maximum", "minimum", "where", "softmax", "tanh",
       "sigmoid", "bmm", "einsum", "flatten", "squeeze", "unsqueeze", "split", "chunk", "clip", "clamp"]
METHODS = ["__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
           "__matmul__", "__neg__", "__pow__"]

_local = threading.local()
_installed: set = set()


def _wrap(fw: str, name: str, fn):
    if getattr(fn, "_padiff_lite_api", False):
        return fn

    @functools.wraps(fn)
    def api(*args, **kwargs):
        if not _dump.ACTIVE or getattr(_local, "depth", 0):
            return fn(*args, **kwargs)
        _local.depth = 1
        try:
            out = fn(*args, **kwargs)
        finally:
            _local.depth = 0
        for rec in list(_dump.ACTIVE):
            if rec.framework == fw:
                rec.record_api(name, out)
        return out

    api._padiff_lite_api = True
    return api


def install(frameworks=("paddle", "torch")):
    """Wrap the listed functions of each framework that can be imported (PaDiff imports both)."""
    for fw in frameworks:
        if fw in _installed:
            continue
        try:
            mod = importlib.import_module(fw)
        except ImportError:
            continue
        _installed.add(fw)
        functional = mod.nn.functional
        for name in FUNCTIONS:
            fn = functional.__dict__.get(name)
            if callable(fn):
                setattr(functional, name, _wrap(fw, f"{fw}.nn.functional.{name}", fn))
        for name in TOP:
            fn = mod.__dict__.get(name)
            if callable(fn):
                setattr(mod, name, _wrap(fw, f"{fw}.{name}", fn))
        for name in METHODS:
            fn = getattr(mod.Tensor, name, None)
            if callable(fn):
                setattr(mod.Tensor, name, _wrap(fw, f"{fw}.Tensor.{name}", fn))
