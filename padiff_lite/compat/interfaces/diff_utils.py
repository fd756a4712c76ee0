"""PaDiff's ``padiff.interfaces.diff_utils``: the default loss."""
from __future__ import annotations

import sys


def _tensors(obj, out):
    for fw in ("torch", "paddle"):
        m = sys.modules.get(fw)
        if m is not None and isinstance(obj, m.Tensor):
            out.append(obj)
            return out
    if isinstance(obj, (list, tuple)):
        for v in obj:
            _tensors(v, out)
    elif isinstance(obj, dict):
        for v in obj.values():
            _tensors(v, out)
    return out


def default_loss(inp, mode):
    """The mean of a tensor; for a structure of tensors, the mean of their float32 means (PaDiff's loss when
    none is given). ``mode``: "torch" or "paddle"."""
    if mode not in ("torch", "paddle"):
        raise RuntimeError(f"unrecognized mode `{mode}`, expected: `torch` or `paddle`")
    fw = sys.modules.get(mode)
    if fw is not None and isinstance(inp, fw.Tensor):
        return inp.mean()
    tensors = _tensors(inp, [])
    if not tensors:
        raise RuntimeError(f"default_loss: the output ({type(inp).__name__}) holds no {mode} tensor; pass loss_fns")
    if mode == "torch":
        return fw.stack([t.to(fw.float32).mean() for t in tensors]).mean()
    return fw.stack([t.astype("float32").mean() for t in tensors]).mean()
