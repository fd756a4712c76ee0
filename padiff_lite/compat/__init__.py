"""PaDiff's public surface, run by padiff_lite: change ``import padiff`` / ``from padiff import ...`` to
``padiff_lite.compat`` and a PaDiff script runs as it is.

Names, signatures, defaults and return values are PaDiff's: ``auto_diff`` returns True/False (padiff_lite's
:class:`DiffResult` is logged and kept in ``last_result()``), ``create_model(model, name=None, dump_freq=1)``
returns PaDiff's ProxyModel (calling it runs forward and records, ``backward``, ``try_dump``, ``dump_*``),
``check_report/check_params/check_weights/check_grads`` compare dump folders and return True/False. The module
paths PaDiff's users import exist too: ``padiff_lite.compat.checker``, ``.dump_tools``,
``.interfaces.diff_utils``. Dumps are padiff_lite's format (JSON + safetensors), not PaDiff's ``.npy`` files.
padiff_lite's own API is unchanged (results that hold everything, errors that raise).
"""
from __future__ import annotations

import os

from .checker import check_grads, check_params, check_report, check_weights
from .dump_tools import get_dump_root_path, set_dump_root_path
from .interfaces import assign_weight, auto_diff, check_dataloader, create_model, add_special_init
from .interfaces.interfaces import last_result
from .proxy import ProxyModel

__version__ = "0.3.0"

__all__ = ["create_model", "check_report", "check_params", "check_weights", "check_grads", "assign_weight",
           "auto_diff", "check_dataloader", "set_dump_root_path", "get_dump_root_path", "add_special_init"]

if os.environ.get("PADIFF_API_CHECK") == "ON":  # PaDiff's per-API records of functional calls
    from . import api_check

    api_check.install()
