"""How far float32 itself moves base's gradients: the noise floor each gradient is judged against.

A correct float32 port differs from its base by rounding: a few units in the last place per operation, grown by the
model's own conditioning. Where the conditioning is good, gradients agree to ~1e-6 of their scale and a backward bug
of 0.5% stands out; where it is bad, rounding alone moves gradients by far more (a ResNet-50 trained with batch
statistics over two images: 30% of a tensor's scale, float64 agrees to 3e-10; a ReLU or a top-k choice flipped by
1e-6 of noise: a few % of a weight gradient). No fixed tolerance fits both, so base is run once more with every
trainable weight moved by ``PERTURB`` (a few float32 ulps, random signs) and the gradients that run gives are kept:
their distance from base's own gradients is what rounding-sized changes do to this model on these inputs, tensor by
tensor. ``numerics.compare_gradient`` allows a multiple of it on top of its scale-aware tolerance.

The extra run leaves base as it was: every own tensor of every module (weights, BatchNorm statistics and counters) is
copied before and written back after, and base's gradients are cleared.
"""
from __future__ import annotations

import numpy as np

from .session import backward, run_model

# relative change of each weight: 2**-18 ~ 3.8e-6 ~ 32 float32 ulps, the size of the per-layer rounding differences
# measured between torch and paddle in deep layers (forward, 1e-6 .. 1e-5 of the tensor's scale)
PERTURB = 2.0 ** -18


def own_tensors(proxy) -> list:
    """Every own tensor of every module of ``proxy`` (parameters and buffers), each once."""
    seen, out = set(), []
    for _, module in proxy.named_modules():
        for _, t, _, _ in proxy.adapter.own_tensors(module):
            if id(t) not in seen:
                seen.add(id(t))
                out.append(t)
    return out


def reference_grads(proxy, ops, args, kwargs, *, eval_mode: bool, loss_fn=None, seed: int = 0) -> list:
    """Base's gradients (numpy, one per op of ``ops``, None where there is none) after a forward and backward with
    its trainable weights perturbed by ``PERTURB``; the model is put back as it was."""
    import torch

    adapter = proxy.adapter
    tensors = own_tensors(proxy)
    saved = [adapter.snapshot(t) for t in tensors]
    rng = np.random.default_rng(seed)
    trainable = {id(op.src.tensor) for op in ops}
    try:
        for t, value in zip(tensors, saved):
            if id(t) in trainable and value.dtype.kind == "f":
                signs = rng.integers(0, 2, value.shape).astype(value.dtype) * 2 - 1
                adapter.write(t, torch.from_numpy(value * (1 + signs * value.dtype.type(PERTURB))))
        out = run_model(proxy, [], args, kwargs, grad=True, eval_mode=eval_mode, on_call=lambda *a: None)
        backward(proxy, loss_fn(out) if loss_fn is not None else out)
        del out
        return [adapter.grad(op.src.tensor) for op in ops]
    finally:
        adapter.clear_grads(proxy.model)
        for t, value in zip(tensors, saved):
            adapter.write(t, torch.from_numpy(value))
