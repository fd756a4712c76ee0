"""PaDiff's ``padiff.checker``: compare two dump folders; True when they agree, False otherwise.

Each takes two dump roots (``step_N/rank_M`` folders, ``rank_M`` folders or one dump folder) and ``cfg``
(``atol``, ``rtol``, ``compare_mode``; PaDiff's defaults 0, 1e-7, "mean"). The comparison is
:func:`padiff_lite.verify.dump_check.check_dumps`; the last one is kept in :func:`last_check` and logged.
"""
from __future__ import annotations

import logging

from .. import _state

log = logging.getLogger("padiff_lite.compat")

global_compare_configs = _state.DEFAULTS
_last = [None]


def update_configs(cfg):
    """PaDiff's global defaults for later comparisons."""
    _state.DEFAULTS.update(_state.cfg_of(cfg))
    return _state.DEFAULTS


def last_check():
    """The :class:`padiff_lite.verify.dump_check.DumpCheck` of the last check_* call."""
    return _last[0]


def _check(kinds, path_0, path_1, cfg, diff_phase="both") -> bool:
    from ...verify.dump_check import check_dumps

    c = _state.cfg_of(cfg)
    result = check_dumps(path_0, path_1, kinds, atol=float(c["atol"]), rtol=float(c["rtol"]),
                         compare_mode=c["compare_mode"], diff_phase=diff_phase)
    _last[0] = result
    (log.info if result.ok else log.warning)("%s", result)
    return result.ok


def check_report(report_path_0, report_path_1, cfg=None, diff_phase="both"):
    return _check(("report",), report_path_0, report_path_1, cfg, diff_phase)


def check_params(report_path_0, report_path_1, cfg=None):
    return _check(("weights", "grads"), report_path_0, report_path_1, cfg)


def check_weights(report_path_0, report_path_1, cfg=None):
    return _check(("weights",), report_path_0, report_path_1, cfg)


def check_grads(report_path_0, report_path_1, cfg=None):
    return _check(("grads",), report_path_0, report_path_1, cfg)
