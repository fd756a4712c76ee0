"""Writing and reading checkpoint files with each framework's own tools, for the checkpoint tests.

Sources are written the way users get them (torch.save, safetensors, paddle.save); outputs are read
back the same way and loaded into a fresh model, whose outputs are compared with the original's.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import paddle
import torch
from helpers import inputs_for, max_abs_diff
from safetensors.torch import save_file as torch_save_file

from fixtures.models import CONV_LSTM_INPUT, conv_lstm
from padiff_lite.formats.common import numpy_to_torch, torch_to_numpy
from padiff_lite.models import run, warm_up

SUFFIX = {"pt": ".pt", "pth": ".pth", "bin": ".bin", "safetensors": ".safetensors", "pdparams": ".pdparams"}


def state_as_torch(model, framework) -> dict:
    """The model's state dict as torch tensors (paddle's bf16 kept as bf16)."""
    if framework == "torch":
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {k: torch.from_dlpack(v.detach()).clone() for k, v in model.state_dict().items()}


def save(state: dict, path: Path):
    """Write a {name: torch tensor} dict in the format the suffix says, with that format's own library."""
    suffix = path.suffix
    if suffix in (".pt", ".pth", ".bin"):
        torch.save(state, path)
    elif suffix == ".safetensors":
        torch_save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif suffix == ".pdparams":
        paddle.save({k: torch_to_numpy(v) for k, v in state.items()}, str(path))
    else:
        raise ValueError(suffix)


def save_sharded(state: dict, folder: Path, stem: str, suffix: str, shards: int) -> Path:
    """An HF-style sharded checkpoint: ``{stem}-0000i-of-0000n{suffix}`` and ``{stem}{suffix}.index.json``."""
    keys = list(state)
    per = -(-len(keys) // shards)
    weight_map = {}
    for i in range(shards):
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}{suffix}"
        part = {k: state[k] for k in keys[i * per:(i + 1) * per]}
        save(part, folder / name)
        weight_map.update({k: name for k in part})
    index = folder / f"{stem}{suffix}.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


def load(path: Path) -> dict:
    """Every tensor of a checkpoint (file or index) as torch tensors, read with the format's own library."""
    path = Path(path)
    if path.name.endswith(".index.json"):
        out = {}
        for name in sorted(set(json.loads(path.read_text())["weight_map"].values())):
            out.update(load(path.parent / name))
        return out
    if path.suffix in (".pt", ".pth", ".bin"):
        return torch.load(path, weights_only=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix == ".pdparams":
        return {k: numpy_to_torch(v) for k, v in paddle.load(str(path), return_numpy=True).items()
                if isinstance(v, np.ndarray)}
    raise ValueError(path)


def load_into(model, framework, state: dict):
    """Load {name: torch tensor} into a model; every tensor of the model must be set (aliases aside)."""
    if framework == "torch":
        model.load_state_dict(state, strict=True)
    else:
        own = model.state_dict()
        unknown = set(state) - set(own)
        assert not unknown, f"keys the paddle model does not have: {sorted(unknown)}"
        for k, v in own.items():
            if k in state:
                v.set_value(paddle.from_dlpack(state[k].contiguous()).astype(v.dtype))
            else:  # only paddle's RNN cell aliases may be left out (safetensors stores no aliases)
                assert ".cell_" in k, f"{k} missing from the converted checkpoint"
    model.eval()
    return model


def trained_conv_lstm(framework):
    """The round-trip model with real BatchNorm running statistics."""
    return warm_up(conv_lstm(framework), framework, CONV_LSTM_INPUT)


def assert_same_outputs(a, fa, b, fb, atol=1e-5, shape=CONV_LSTM_INPUT):
    xs = inputs_for([shape], seed=3)
    diff = max_abs_diff(run(a, fa, xs), run(b, fb, xs))
    assert diff <= atol, f"{fa} -> {fb}: outputs differ by {diff:.3g} > {atol}"
    return diff


def digest(folder: Path) -> dict:
    """name -> sha256 of every file in a folder (to show the source is untouched / nothing was left)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir()) if p.is_file()}
