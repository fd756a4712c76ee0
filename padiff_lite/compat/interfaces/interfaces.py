"""PaDiff's entry points with PaDiff's names, defaults and return values (True/False), run by padiff_lite."""
from __future__ import annotations

import inspect
import logging
import os
import sys
from itertools import zip_longest

import numpy as np

from ...errors import DiffInputError, PadiffError
from .. import _state
from ..proxy import ProxyModel, reset_dir

log = logging.getLogger("padiff_lite.compat")
_last = [None]

# PaDiff's auto_diff options; the rest of padiff_lite's are passed only where this padiff_lite has them
_OPTIONS = {"atol", "rtol", "compare_mode", "auto_init", "auto_weights", "diff_phase", "single_step", "steps"}


def last_result():
    """padiff_lite's :class:`DiffResult` of the last compat ``auto_diff`` call (None before one)."""
    return _last[0]


def create_model(model, name=None, dump_freq=1):
    """Wrap a torch module or paddle layer in PaDiff's ProxyModel; its dump folder ``<dump root>/<name>`` is
    emptied (as PaDiff does)."""
    if isinstance(model, ProxyModel):
        return model
    proxy = ProxyModel(model, name, dump_freq)
    reset_dir(proxy.dump_path)
    return proxy


def assign_weight(base_model, raw_model):
    """Copy base's weights into raw (padiff_lite's transfer); True when done, False (logged) when refused."""
    from ...transfer import assign_weight as transfer

    try:
        transfer(create_model(base_model), create_model(raw_model))
    except PadiffError as exc:
        log.warning("assign_weight failed: %s: %s", type(exc).__name__, exc)
        return False
    return True


def _lite_keywords() -> set:
    from ...verify import auto_diff as lite

    return set(inspect.signature(lite).parameters)


def auto_diff(base_model, raw_model, inputs, loss_fns=None, optimizers=None, **kwargs):
    """Run both models on ``inputs`` (``[base kwargs, raw kwargs]``), compare them layer by layer (outputs, and
    gradients unless diff_phase="forward"); True when they agree. PaDiff's options: atol (0), rtol (1e-7),
    compare_mode ("mean"), auto_init / auto_weights (True), diff_phase ("both"), single_step (False), steps (1).

    padiff_lite's :class:`DiffResult` is logged and kept in :func:`last_result`. The reports of both models are
    also dumped under ``<dump_path>/auto_diff``, as PaDiff does."""
    from ...verify import auto_diff as lite

    unknown = set(kwargs) - _OPTIONS
    if unknown:
        log.warning("auto_diff: %s ignored (not an option of PaDiff's auto_diff: %s)", ", ".join(sorted(unknown)),
                    ", ".join(sorted(_OPTIONS)))
    if not isinstance(inputs, (list, tuple)) or len(inputs) != 2 or not all(isinstance(i, dict) for i in inputs):
        raise DiffInputError("auto_diff() takes inputs as [base kwargs, raw kwargs] (two dicts), got "
                             f"{type(inputs).__name__}")
    opts = _state.cfg_of({k: kwargs[k] for k in ("atol", "rtol", "compare_mode") if k in kwargs})
    auto_init = kwargs.get("auto_init", kwargs.get("auto_weights", True))
    single_step = bool(kwargs.get("single_step", False))
    diff_phase = kwargs.get("diff_phase", "both")
    if diff_phase not in ("forward", "backward", "both"):
        raise DiffInputError(f"diff_phase must be 'forward', 'backward' or 'both', got {diff_phase!r}")
    if diff_phase == "backward" and not single_step:
        diff_phase = "both"  # PaDiff: backward alone only in single-step mode
    base, raw = create_model(base_model), create_model(raw_model)
    call = {"atol": float(opts["atol"]), "rtol": float(opts["rtol"]), "auto_init": bool(auto_init),
            "diff_phase": diff_phase}
    wanted = {"compare_mode": opts["compare_mode"]}
    if loss_fns is not None:
        if len(loss_fns) != 2 or not all(callable(f) for f in loss_fns):
            raise DiffInputError("loss_fns takes two callables (base, raw)")
        wanted["loss_fns"] = tuple(loss_fns)
    if optimizers is not None and diff_phase == "forward":
        log.info("auto_diff: diff_phase is 'forward', the optimizers are not used (as in PaDiff)")
        optimizers = None
    if optimizers is not None:
        if len(optimizers) != 2:
            raise DiffInputError("optimizers takes two optimizers or callables (base, raw)")
        wanted["optimizers"] = tuple(optimizers)
    if single_step:
        wanted["single_step"] = True
    if "steps" in kwargs and optimizers is not None:
        wanted["steps"] = int(kwargs["steps"])
    have = _lite_keywords()
    for key, value in wanted.items():
        if key in have:
            call[key] = value
        elif key == "compare_mode" and "compare_mode" not in kwargs:
            log.info("this padiff_lite compares every value (strict), not PaDiff's default mean")
        else:
            raise DiffInputError(f"auto_diff(..., {key}=...) needs a padiff_lite whose auto_diff has {key}; this one "
                                 f"has {', '.join(sorted(have))}; update padiff_lite")
    result = lite(base, raw, list(inputs), **call)
    _last[0] = result
    (log.info if result.ok else log.warning)("%s", result)
    _dump_reports(base, raw, inputs)
    return bool(result.ok)


def _dump_reports(base, raw, inputs):
    """One more forward of each model (eval mode as padiff_lite's comparison runs, modes restored; with gradients
    on, since a model may register gradient hooks in its forward), recorded into ``<dump_path>/auto_diff`` for
    PaDiff's ``check_report(<dump_path>/auto_diff, ...)``. A model that fails here is logged, the verdict stays."""
    from ...verify.dump import Recorder

    for proxy, kw in ((base, inputs[0]), (raw, inputs[1])):
        mods = proxy.named_modules()
        modes = [(m, m.training) for _, m in mods]
        rec = Recorder(proxy.model, proxy.framework, grads=False)
        try:
            proxy.model.eval()
            with rec:
                proxy.model(**kw)
        except Exception as exc:  # noqa: BLE001 - the comparison ran; only its dump is missing
            log.warning("auto_diff: the report of %s was not dumped: %s: %s", proxy.name, type(exc).__name__, exc)
            continue
        finally:
            for m, training in modes:
                m.train() if training else m.eval()
        folder = os.path.join(proxy.dump_path, "auto_diff")
        reset_dir(folder)
        rec.write(folder, proxy=proxy, name=proxy.name)


def _numpy(data):
    for fw in ("torch", "paddle"):
        m = sys.modules.get(fw)
        if m is not None and isinstance(data, m.Tensor):
            from ...verify.dump import to_numpy

            return to_numpy(data)
    if isinstance(data, (list, tuple)):
        return [_numpy(d) for d in data]
    if isinstance(data, dict):
        return {k: _numpy(v) for k, v in data.items()}
    return data


def _equal(a, b, cfg) -> str | None:
    """None when ``a`` and ``b`` (numpy data, possibly nested) agree under ``cfg``, else why not."""
    from ...verify.dump_check import compare_values

    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        if not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))) or len(a) != len(b):
            return "the two batches have different structures"
        return next((why for x, y in zip(a, b) if (why := _equal(x, y, cfg))), None)
    if isinstance(a, dict) or isinstance(b, dict):
        if not (isinstance(a, dict) and isinstance(b, dict)) or a.keys() != b.keys():
            return "the two batches have different keys"
        return next((why for k in a if (why := _equal(a[k], b[k], cfg))), None)
    a, b = np.asarray(a), np.asarray(b)
    if cfg["compare_mode"] == "strict" and a.shape != b.shape:
        return f"shapes {list(a.shape)} and {list(b.shape)} differ"
    ok, ma, mr, bad = compare_values(a, b, float(cfg["atol"]), float(cfg["rtol"]), cfg["compare_mode"])
    return None if ok else f"max |diff| {ma:.3g}, max rel {mr:.3g}"


def check_dataloader(first_loader, second_loader, **kwargs):
    """True when the two loaders give the same batches (PaDiff's comparison: mean, atol 0, rtol 1e-7 unless
    given); RuntimeError when they give different numbers of batches."""
    cfg = _state.cfg_of({k: kwargs[k] for k in ("atol", "rtol", "compare_mode") if k in kwargs})
    for i, (a, b) in enumerate(zip_longest(first_loader, second_loader, fillvalue=None)):
        if a is None or b is None:
            raise RuntimeError("Given dataloader return difference number of datas.")
        why = _equal(_numpy(a), _numpy(b), cfg)
        if why:
            log.warning("check_dataloader: batch %d differs: %s", i, why)
            return False
    return True
