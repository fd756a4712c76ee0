"""padiff_lite: move neural-network weights between PyTorch and PaddlePaddle, in both directions.

The public names are imported on first use (PEP 562), so ``import padiff_lite`` imports no framework: a
process that only dumps a paddle model (``padiff_lite.verify.dump``) or only reads dumps never loads torch.
"""
from __future__ import annotations

import importlib
import logging

logging.getLogger("padiff_lite").addHandler(logging.NullHandler())

__version__ = "0.1.0"

# public name -> the module that defines it
_WHERE = {
    "CheckpointReport": "checkpoint", "convert_checkpoint": "checkpoint",
    "DiffResult": "compare", "auto_diff": "compare",
    "AmbiguousPairingError": "errors", "CheckpointError": "errors", "DiffError": "errors",
    "DiffInputError": "errors", "InitError": "errors", "LayerMapError": "errors", "MappingError": "errors",
    "OutputStructureError": "errors", "PadiffError": "errors", "PairingError": "errors",
    "PluginImportError": "errors", "RegistryError": "errors", "TransferError": "errors",
    "TransferInterrupted": "errors",
    "Mapping": "mapping",
    "InitReport": "init", "init_weights": "init",
    "ProxyModel": "proxy", "create_model": "proxy",
    "TransferReport": "report",
    "add_special_init": "special_init", "init_pool": "special_init",
    "assign_weight": "transfer", "pair_layers": "transfer", "plan_transfer": "transfer",
}


def __getattr__(name):
    where = _WHERE.get(name)
    if where is None:
        try:  # a submodule reached as an attribute (padiff_lite.compare after import padiff_lite)
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{where}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))


__all__ = [
    "create_model", "ProxyModel", "assign_weight", "plan_transfer", "add_special_init", "init_pool",
    "TransferReport", "PadiffError", "TransferError", "TransferInterrupted", "RegistryError", "PluginImportError",
    "LayerMapError", "CheckpointError", "InitError", "init_weights", "InitReport",
    "auto_diff", "DiffResult", "DiffError", "DiffInputError", "OutputStructureError",
    "convert_checkpoint", "CheckpointReport",
    "pair_layers", "Mapping", "MappingError", "PairingError", "AmbiguousPairingError",
]
