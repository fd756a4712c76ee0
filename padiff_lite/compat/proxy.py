"""PaDiff's ProxyModel: a model whose calls and backward passes are recorded every ``dump_freq`` steps, with
``try_dump`` / ``dump_*`` writing padiff_lite's dump format under ``<dump root>/<name>``.

It is a :class:`padiff_lite.proxy.ProxyModel` too, so padiff_lite's own functions take it as it is (its lists and
layer map included). PaDiff's precedence of the lists holds: once a white list is given, the black list is void.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from ..proxy import ProxyModel as _LiteProxy
from ..verify import dump as _dump
from . import _state

log = logging.getLogger("padiff_lite.compat")

_OURS = re.compile(r"^(step_\d+|rank_\d+|auto_diff|(report|weights|grads)\.(json|safetensors))$")


def reset_dir(path):
    """Empty a dump folder as PaDiff does before a run, removing only what a dump holds (step_N, rank_M,
    auto_diff folders and dump files); anything else in it is left and named in the log."""
    path = Path(path)
    if path.is_dir():
        for p in path.iterdir():
            if _OURS.match(p.name):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            else:
                log.warning("%s: left in the dump folder (not written by a dump)", p)
    path.mkdir(parents=True, exist_ok=True)


class Report:
    """The calls recorded since the last dump; ``items`` holds a forward and a backward item per call, as
    PaDiff's report does."""

    def __init__(self, recorder):
        self.recorder = recorder

    @property
    def items(self):
        out = []
        for c in self.recorder.calls:
            out += [("forward", c), ("backward", c)]
        return out


class ProxyParam:
    """PaDiff's view of a parameter: values and gradient as numpy arrays."""

    def __init__(self, param, framework: str):
        self.param, self.param_type = param, framework

    def numpy(self):
        return _dump.to_numpy(self.param)

    def shape(self):
        return list(self.param.shape)

    def grad(self):
        g = self.param.grad
        return None if g is None else _dump.to_numpy(g)

    def main_grad(self):
        g = getattr(self.param, "main_grad", None)
        return None if g is None or callable(g) else _dump.to_numpy(g)

    def set_data(self, np_value):
        if self.param_type == "torch":
            import torch

            with torch.no_grad():
                self.param.copy_(torch.as_tensor(np_value, dtype=self.param.dtype))
        else:
            self.param.set_value(np_value.astype(self.numpy().dtype, copy=False))


class ProxyModel(_LiteProxy):
    def __init__(self, model, name=None, dump_freq=1):
        self._black: dict = {}
        super().__init__(model, name or type(model).__name__)
        self.dump_freq = int(dump_freq)
        if self.dump_freq < 1:
            raise ValueError(f"dump_freq must be 1 or more, got {dump_freq!r}")
        self.step = 0
        self.dump_path = os.path.join(_state.dump_root, self.name)
        self.recorder = _dump.Recorder(model, self.framework)
        self.report = Report(self.recorder)

    # PaDiff: a white list makes the black list void
    @property
    def black_list(self):
        return {} if self.white_list else self._black

    @black_list.setter
    def black_list(self, value):
        self._black = value

    @property
    def class_name(self):
        return type(self.model).__name__

    @property
    def fullname(self):
        return f"{self.framework}::{self.class_name}"

    def __str__(self):
        return f"Model({self.fullname})"

    # -- training --------------------------------------------------------------------------------------------
    def _recording(self) -> bool:
        return self.step % self.dump_freq == 0

    def __call__(self, *args, **kwargs):
        if not self._recording():
            return self.model(*args, **kwargs)
        with self.recorder:
            return self.model(*args, **kwargs)

    def backward(self, loss):
        """``loss.backward()``; on a recorded step the gradients reaching each recorded output are kept."""
        return loss.backward()

    # -- lists by class --------------------------------------------------------------------------------------
    def _of_class(self, layer_class):
        return [m for _, m in self.named_modules() if isinstance(m, layer_class)]

    def update_black_list(self, layers, mode="all"):
        return super().update_black_list(layers, mode)

    def update_white_list(self, layers, mode="self"):
        return super().update_white_list(layers, mode)

    def update_black_list_with_class(self, layer_class, mode="self"):
        found = self._of_class(layer_class)
        return self.update_black_list(found, mode) if found else self

    def update_white_list_with_class(self, layer_class, mode="self"):
        found = self._of_class(layer_class)
        return self.update_white_list(found, mode) if found else self

    # -- dumps -----------------------------------------------------------------------------------------------
    def _default_path(self):
        return os.path.join(self.dump_path, f"rank_{_dump.rank_of(self.framework)}")

    def clear_report(self):
        self.recorder.clear()

    def try_dump(self, dump_path=None):
        """On a recorded step, write weights, gradients and the report into
        ``<dump_path>/step_<step>/rank_<rank>``; then clear the report and count the step."""
        if self._recording():
            if dump_path is None:
                dump_path = os.path.join(self.dump_path, f"step_{self.step}", f"rank_{_dump.rank_of(self.framework)}")
            reset_dir(dump_path)
            self.dump_params(dump_path)
            self.dump_report(dump_path)
        self.clear_report()
        self.step += 1

    def dump_report(self, dump_path=None):
        from .dump_tools import dump_report

        dump_report(self, dump_path or self._default_path())

    def dump_params(self, dump_path=None):
        from .dump_tools import dump_params

        dump_params(self, dump_path or self._default_path())

    def dump_weights(self, dump_path=None):
        from .dump_tools import dump_weights

        dump_weights(self, dump_path or self._default_path())

    def dump_grads(self, dump_path=None):
        from .dump_tools import dump_grads

        dump_grads(self, dump_path or self._default_path())

    # -- what PaDiff's ProxyModel passes through --------------------------------------------------------------
    def named_parameters(self, recursively=True):
        """(name, :class:`ProxyParam`) of the model's parameters (PaDiff's ProxyModel gives wrapped parameters)."""
        if self.framework == "torch":
            items = self.model.named_parameters(recurse=recursively)
        else:
            items = self.model.named_parameters(include_sublayers=recursively)
        return [(n, ProxyParam(p, self.framework)) for n, p in items]

    def parameters(self, recursively=True):
        return [p for _, p in self.named_parameters(recursively)]

    def to(self, device):
        self.model.to(device)

    def __getattr__(self, name):  # anything else PaDiff users reach through the proxy: the model's
        if name.startswith("_") or name in ("model", "recorder", "report"):
            raise AttributeError(name)
        return getattr(self.__dict__["model"], name)
