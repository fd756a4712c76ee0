"""padiff_lite: move neural-network weights between PyTorch and PaddlePaddle, in both directions."""
from __future__ import annotations

import logging

from .checkpoint import CheckpointReport, convert_checkpoint
from .compare import DiffResult, auto_diff
from .errors import (AmbiguousPairingError, CheckpointError, DiffError, DiffInputError, InitError, LayerMapError,
                     MappingError, OutputStructureError, PadiffError, PairingError, PluginImportError, RegistryError,
                     TransferError, TransferInterrupted)
from .mapping import Mapping
from .init import InitReport, init_weights
from .proxy import ProxyModel, create_model
from .report import TransferReport
from .special_init import add_special_init, init_pool
from .transfer import assign_weight, pair_layers, plan_transfer

logging.getLogger("padiff_lite").addHandler(logging.NullHandler())

__version__ = "0.1.0"

__all__ = [
    "create_model", "ProxyModel", "assign_weight", "plan_transfer", "add_special_init", "init_pool",
    "TransferReport", "PadiffError", "TransferError", "TransferInterrupted", "RegistryError", "PluginImportError",
    "LayerMapError", "CheckpointError", "InitError", "init_weights", "InitReport",
    "auto_diff", "DiffResult", "DiffError", "DiffInputError", "OutputStructureError",
    "convert_checkpoint", "CheckpointReport",
    "pair_layers", "Mapping", "MappingError", "PairingError", "AmbiguousPairingError",
]
