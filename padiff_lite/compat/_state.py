"""Settings PaDiff keeps per process: the dump root and the default comparison."""
from __future__ import annotations

import os
import sys

DEFAULTS = {"atol": 0, "rtol": 1e-7, "compare_mode": "mean"}  # PaDiff's global_compare_configs

dump_root = os.path.join(sys.path[0] if sys.path and sys.path[0] else os.getcwd(), "padiff_dump")


def cfg_of(cfg: dict | None) -> dict:
    """PaDiff's defaults updated with ``cfg`` (atol, rtol, compare_mode)."""
    out = dict(DEFAULTS)
    if cfg:
        unknown = set(cfg) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"cfg takes {sorted(DEFAULTS)}, got {sorted(unknown)}")
        out.update(cfg)
    return out
