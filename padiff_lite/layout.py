"""Parts of tensors: which piece of a tensor a rule reads or writes, and the one function that applies it.

A :class:`Part` names a piece of one tensor: optionally one entry of dim 0 first (one expert of a packed
``[E, ...]`` tensor), then blocks along one axis, taken in order and joined. The axis is a dimension, or
``"out"``/``"in"``: the output or input features of a Linear-like weight, resolved per side at planning
time (dim 0/1 for torch's ``[out, in]``; 1/0 for paddle's ``[in, out]`` Linear; 1-D tensors have only
``"out"``). So a rule states fused or grouped layouts once, in features, and is right for both layouts
and both directions.

Everything that moves a planned value (the executor, checkpoint conversion, gradient mapping in
``auto_diff``, validation's shapes) goes through :func:`region_shape` and :func:`pieces`: "take the
source part, apply the transform, write the destination part" is written here and nowhere else.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import RegistryError

AXES = ("out", "in")


@dataclass(frozen=True)
class Part:
    """A piece of a tensor. ``Part(((0, 8),))``: rows 0..8. ``Part(((0, 8), (16, 24)), axis="out")``: output
    features 0..8 and 16..24, joined in that order. ``Part(index=3)``: entry 3 of dim 0 (an expert)."""

    blocks: tuple = ()
    axis: int | str = 0
    index: int | None = None

    def __post_init__(self):
        blocks = tuple(tuple(int(v) for v in b) for b in self.blocks)
        object.__setattr__(self, "blocks", blocks)
        if any(len(b) != 2 or not 0 <= b[0] < b[1] for b in blocks):
            raise RegistryError(f"Part blocks are (start, stop) pairs with 0 <= start < stop, got {self.blocks!r}")
        if not (isinstance(self.axis, int) or self.axis in AXES):
            raise RegistryError(f"Part axis is a dimension or one of {AXES}, got {self.axis!r}")
        if self.index is not None and (not isinstance(self.index, int) or self.index < 0):
            raise RegistryError(f"Part index is a non-negative int (an entry of dim 0), got {self.index!r}")
        if not blocks and self.index is None:
            raise RegistryError("a Part needs blocks, an index, or both")

    def __str__(self):
        s = f"[{self.index}]" if self.index is not None else ""
        if self.blocks:
            ax = "" if self.axis == 0 else f" {self.axis}" if isinstance(self.axis, str) else f" dim {self.axis}"
            s += "[" + ",".join(f"{a}:{b}" for a, b in self.blocks) + ax + "]"
        return s

    @property
    def size(self) -> int:
        return sum(b - a for a, b in self.blocks)


def rows(start: int, stop: int) -> Part:
    return Part(((start, stop),))


def features(*blocks, axis: str = "out", index: int | None = None) -> Part:
    """Blocks of output (default) or input features: ``features((0, 64), (128, 192))``."""
    return Part(tuple(blocks), axis, index)


def resolve(part: Part | None, ndim: int, transposed: bool) -> Part | None:
    """``part`` with its axis as a non-negative dimension of a tensor of ``ndim`` dims (after the index).

    ``transposed``: the tensor is stored ``[in, out]`` (paddle's Linear weight). Returns None for None;
    raises ValueError (with the reason) when the axis does not exist.
    """
    if part is None or not part.blocks:
        return part
    nd = ndim - (part.index is not None)
    axis = part.axis
    if isinstance(axis, str):
        if nd == 1 and axis == "out":
            axis = 0
        elif nd == 2:
            axis = (1 if axis == "out" else 0) if transposed else (0 if axis == "out" else 1)
        else:
            raise ValueError(f"a tensor of {nd} dims has no '{axis}' features axis; give the axis as a dimension")
    if not -nd <= axis < nd:
        raise ValueError(f"axis {axis} does not exist in a tensor of {nd} dims")
    axis %= nd
    return part if axis == part.axis else Part(part.blocks, axis, part.index)


def region_shape(shape, part: Part | None) -> tuple | None:
    """The shape of ``part`` (resolved) of a tensor of ``shape``; None when the part does not fit."""
    shape = tuple(shape)
    if part is None:
        return shape
    if part.index is not None:
        if not shape or part.index >= shape[0]:
            return None
        shape = shape[1:]
    if not part.blocks:
        return shape
    ax = part.axis
    if ax >= len(shape) or any(b[1] > shape[ax] for b in part.blocks):
        return None
    return shape[:ax] + (part.size,) + shape[ax + 1:]


def overlaps(a: Part | None, b: Part | None) -> bool:
    """Whether two resolved parts of one tensor share any element (None is the whole tensor)."""
    if a is None or b is None:
        return True
    if a.index is not None and b.index is not None and a.index != b.index:
        return False
    if not a.blocks or not b.blocks:
        return True
    if a.axis != b.axis:
        return True  # blocks on different axes always cross
    return any(x0 < y1 and y0 < x1 for x0, x1 in a.blocks for y0, y1 in b.blocks)


def covered(shape, parts: list) -> int:
    """How many elements of a tensor of ``shape`` the resolved ``parts`` (non-overlapping) write."""
    total = 0
    for p in parts:
        s = region_shape(shape, p)
        total += math.prod(s) if s is not None else 0
    return total


def cut(view, part: Part | None) -> list:
    """The views ``part`` selects of ``view``, in order (one unless there are several blocks)."""
    if part is None:
        return [view]
    if part.index is not None:
        view = view[part.index]
    if not part.blocks:
        return [view]
    return [view.narrow(part.axis, a, b - a) for a, b in part.blocks]


def take(view, part: Part | None):
    """The value of ``part`` of a torch tensor: a view for one block, the blocks joined (a copy) for several."""
    views = cut(view, part)
    if len(views) == 1:
        return views[0]
    import torch

    return torch.cat(views, part.axis)


def transformed(value, transform: str, shape):
    """``value`` (a torch tensor) under a Map's transform, shaped like a destination region of ``shape``."""
    if transform == "transpose":
        return value.t()
    if transform == "reshape" and tuple(value.shape) != tuple(shape):
        return value.reshape(shape)
    return value


def pieces(src, src_part, transform: str, dst, dst_part) -> list[tuple]:
    """``[(destination view, value), ...]``: what to copy where for one planned op (torch tensors).

    The source part is taken (a view, or the blocks joined), the transform applied, and the result split
    over the destination's blocks. Each destination view is a view of ``dst``: copying into it writes
    ``dst``.
    """
    regions = cut(dst, dst_part)
    if len(regions) == 1:
        region = regions[0]
        return [(region, transformed(take(src, src_part), transform, region.shape))]
    whole = region_shape(tuple(dst.shape), dst_part)
    value = transformed(take(src, src_part), transform, whole)
    sizes = [b - a for a, b in dst_part.blocks]
    return list(zip(regions, value.split(sizes, dst_part.axis)))
