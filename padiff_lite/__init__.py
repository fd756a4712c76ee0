"""padiff_lite: move neural-network weights between PyTorch and PaddlePaddle, in both directions.

The public names below are loaded when first used (PEP 562): ``import padiff_lite`` imports neither torch nor
paddle, so a process that uses one framework (an offline dump, the command line's error paths) never pays for,
or depends on, the other; and a Ctrl-C while a framework loads is handled by the command line as one line.
"""
from __future__ import annotations

import importlib
import logging

logging.getLogger("padiff_lite").addHandler(logging.NullHandler())

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "CheckpointReport": "checkpoint", "convert_checkpoint": "checkpoint",
    "DiffResult": "verify", "auto_diff": "verify",
    "AmbiguousPairingError": "errors", "CheckpointError": "errors", "DiffError": "errors", "DiffInputError": "errors",
    "InitError": "errors", "LayerMapError": "errors", "MappingError": "errors", "OutputStructureError": "errors",
    "PadiffError": "errors", "PairingError": "errors", "PluginImportError": "errors", "RegistryError": "errors",
    "TransferError": "errors", "TransferInterrupted": "errors",
    "Mapping": "mapping",
    "InitReport": "init", "init_weights": "init",
    "ProxyModel": "proxy", "create_model": "proxy",
    "TransferReport": "report",
    "add_special_init": "special_init", "init_pool": "special_init",
    "assign_weight": "transfer", "pair_layers": "transfer", "plan_transfer": "transfer",
}

__all__ = [
    "create_model", "ProxyModel", "assign_weight", "plan_transfer", "add_special_init", "init_pool",
    "TransferReport", "PadiffError", "TransferError", "TransferInterrupted", "RegistryError", "PluginImportError",
    "LayerMapError", "CheckpointError", "InitError", "init_weights", "InitReport",
    "auto_diff", "DiffResult", "DiffError", "DiffInputError", "OutputStructureError",
    "convert_checkpoint", "CheckpointReport",
    "pair_layers", "Mapping", "MappingError", "PairingError", "AmbiguousPairingError",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'padiff_lite' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
