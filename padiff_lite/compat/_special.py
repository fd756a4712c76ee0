"""PaDiff's ``add_special_init(base_framework, base_model_name, raw_framework, raw_model_name, func)``."""
from __future__ import annotations


def add_special_init(base_framework, base_model_name, raw_framework, raw_model_name, func):
    from ..special_init import add_special_init as add

    return add(base_framework, base_model_name, raw_framework, raw_model_name, func, override=True)
