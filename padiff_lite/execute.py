"""The executor: the only code that writes into a model.

It runs a validated plan. Imperative special inits run first, each with a snapshot of every
raw tensor it could touch; if one raises or changes a tensor's shape, everything written so
far is restored and a TransferError carries the original message. Then the planned copies run:
each writes straight into the destination's memory (a torch view of it, DLPack for paddle),
transposing with torch's blocked copy.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from .errors import TransferError
from .plan import Plan, _where


@dataclass
class Stats:
    tensors: int = 0
    elements: int = 0
    bytes: int = 0
    nonfinite: dict = field(default_factory=dict)  # raw path -> count of NaN/Inf copied


def _no_grad(proxy):
    if proxy.framework == "paddle":
        import paddle

        return paddle.no_grad()
    return torch.no_grad()


def execute(plan: Plan) -> Stats:
    stats = Stats()
    _run_imperative(plan, stats)
    ba, ra = plan.base.adapter, plan.raw.adapter
    with torch.no_grad():
        for op in plan.ops:
            dst = op.dst.tensor
            direct = ra.torch_view(dst)
            region = direct if op.dst_rows is None else direct[op.dst_rows[0]:op.dst_rows[1]]
            if op.kind == "fill":
                region.fill_(op.value)
            else:
                src = ba.torch_view(op.src.tensor)
                if op.src_rows is not None:
                    src = src[op.src_rows[0]:op.src_rows[1]]
                if op.transform == "transpose":
                    src = src.t()
                elif op.transform == "reshape":
                    src = src.reshape(region.shape)
                region.copy_(src)
                _count_nonfinite(src, op.dst.path, stats)
                stats.bytes += src.numel() * src.element_size()
            if not ra.is_direct(dst):
                ra.write(dst, direct)  # the view was a copy (non-contiguous or off-CPU): write it back
            stats.tensors += 1
            stats.elements += region.numel()
    return stats


def _count_nonfinite(src, path, stats):
    if not src.is_floating_point() or src.numel() == 0:
        return
    if torch.isfinite(src.sum()):  # one cheap pass; a finite sum means no NaN/Inf
        return
    bad = int((~torch.isfinite(src)).sum())
    if bad:
        stats.nonfinite[path] = stats.nonfinite.get(path, 0) + bad


def _run_imperative(plan: Plan, stats: Stats):
    ra = plan.raw.adapter
    saved: list[tuple] = []  # (ref, tensor object, shape, clone) of every raw tensor an init could touch
    try:
        for pair in plan.imperative:
            refs = list(pair.raw.subtree_tensors().values())
            before = []
            for ref in refs:
                shape = ra.shape(ref.tensor)
                item = (ref, ref.tensor, shape, ra.torch_view(ref.tensor).clone())
                saved.append(item)
                before.append(item)
            try:
                with _no_grad(plan.raw), _no_grad(plan.base):
                    pair.entry.func(pair.base.module, pair.raw.module)
            except Exception as exc:
                raise TransferError(
                    f"{_where(pair)}: special init {pair.entry.key} ({pair.entry.origin}) raised "
                    f"{type(exc).__name__}: {exc}; the raw model was restored. Fix the special init, or "
                    "register another with add_special_init(..., override=True)"
                ) from exc
            now = [(ref, shape, ra.shape(_current(ra, pair, ref))) for ref, _, shape, _ in before]
            changed = [f"{ref.path} {list(old)} -> {list(new)}" for ref, old, new in now if old != new]
            if changed:
                raise TransferError(
                    f"{_where(pair)}: special init {pair.entry.key} ({pair.entry.origin}) changed tensor shapes; "
                    "the raw model was restored. A special init must write values into the existing tensors "
                    "(copy_/set_value), not replace them",
                    changed,
                )
            for ref, *_ in before:
                stats.tensors += 1
                stats.elements += _numel(ra.shape(ref.tensor))
                _count_nonfinite(ra.torch_view(ref.tensor), ref.path, stats)  # what the init wrote, never hidden
    except BaseException:
        _restore(plan, saved)
        raise


def _current(adapter, pair, ref):
    """The tensor now at ref's place (a special init may have replaced the object)."""
    t = adapter.get_tensor(pair.raw.module, pair.raw.local(ref))
    return ref.tensor if t is None else t


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _restore(plan: Plan, saved):
    ra = plan.raw.adapter
    for ref, tensor, shape, clone in reversed(saved):
        owner_path, _, name = ref.path.rpartition(".")
        current = ra.get_tensor(plan.raw.model, ref.path)
        if current is not None and current is not tensor:
            # the init replaced the tensor object: put the original back on its module
            owner = plan.raw.model
            for part in owner_path.split(".") if owner_path else []:
                owner = getattr(owner, part)
            with contextlib.suppress(Exception):
                setattr(owner, name, tensor)
        ra.write(tensor, clone)
