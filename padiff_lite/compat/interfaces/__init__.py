"""PaDiff's ``padiff.interfaces``."""
from .interfaces import assign_weight, auto_diff, check_dataloader, create_model  # noqa: F401
from ..checker import check_grads, check_params, check_report, check_weights  # noqa: F401
from ..dump_tools import get_dump_root_path, set_dump_root_path  # noqa: F401
from .._special import add_special_init  # noqa: F401

__all__ = ["create_model", "check_report", "check_params", "check_weights", "check_grads", "assign_weight",
           "auto_diff", "check_dataloader", "set_dump_root_path", "get_dump_root_path", "add_special_init"]
