"""padiff_lite: move neural-network weights between PyTorch and PaddlePaddle, in both directions."""
from __future__ import annotations

import logging

from .errors import (CheckpointError, LayerMapError, PadiffError, PluginImportError, RegistryError,
                     TransferError)
from .checkpoint import CheckpointReport, convert_checkpoint
from .proxy import ProxyModel, create_model
from .report import TransferReport
from .special_init import add_special_init, init_pool
from .transfer import assign_weight, plan_transfer

logging.getLogger("padiff_lite").addHandler(logging.NullHandler())

__version__ = "0.1.0"

__all__ = [
    "create_model", "ProxyModel", "assign_weight", "plan_transfer", "add_special_init", "init_pool",
    "TransferReport", "PadiffError", "TransferError", "RegistryError", "PluginImportError",
    "LayerMapError", "CheckpointError", "convert_checkpoint", "CheckpointReport",
]
