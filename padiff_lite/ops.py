"""The vocabulary of the pipeline: every operation the executor runs, as plain data.

The planner (:mod:`.plan`) turns layer pairs into :class:`Op` (copy, fill, expect); :mod:`.init` plans
:class:`InitOp` and :class:`CallOp` for tensors a transfer leaves; :mod:`.validate` reads them and returns
:class:`CopyFacts` per copy; :mod:`.execute` runs them, keeping an :class:`UndoRecord` of every tensor
it may have to put back. Nothing here imports a framework or another stage.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, NamedTuple

if TYPE_CHECKING:  # annotations only: ops.py depends on no other stage
    from .layout import Part
    from .pairing import LayerPair
    from .tree import TensorRef


class _Names(str, enum.Enum):
    """enum.StrEnum (Python 3.11) for 3.10: members are their strings, in ``str()`` and in f-strings too."""

    __str__ = str.__str__
    __format__ = str.__format__


class Kind(_Names):
    """What an operation does."""

    COPY = "copy"  # source (part, transformed) -> target (part)
    FILL = "fill"  # target (part) gets a constant
    EXPECT = "expect"  # the source must equal a constant: the target has no place for it
    INIT = "init"  # target drawn from a distribution or given values (:class:`InitOp`)
    CALL = "call"  # a user function initialises a module (:class:`CallOp`)


class Transform(_Names):
    """How a copy's source becomes its target (a ``Map``'s ``transform``; plain strings compare equal)."""

    COPY = "copy"
    TRANSPOSE = "transpose"  # 2-D, dims swapped
    RESHAPE = "reshape"  # same number of values, the target's shape


# The members as module constants: reading ``Kind.COPY`` goes through an enum descriptor on Python 3.11
# (0.4 us; once or more per planned operation, 12,000 of them for a 6,000-module model), a module constant is a
# plain lookup. Compare with ``is``.
COPY, FILL, EXPECT, INIT, CALL = Kind
AS_IS, TRANSPOSE, RESHAPE = Transform

# a Map's transform (a plain string from a rule) -> Transform, by a dict lookup (30 ns; calling Transform(name)
# costs 1 us, paid once per planned copy)
TRANSFORMS = {t.value: t for t in Transform}


class Fill(_Names):
    """Where an :class:`InitOp`'s values come from."""

    CONSTANT = "constant"
    NORMAL = "normal"
    XAVIER_UNIFORM = "xavier_uniform"
    ORTHOGONAL = "orthogonal"
    VALUES = "values"  # given values (a framework's own initialisation, drawn beforehand)


class CopyFacts(NamedTuple):
    """What validation learnt of a copy of one whole tensor into another, and the executor uses: copies alike in
    all of it are moved together (:attr:`.validate.Validation.alike`)."""

    src_shape: tuple
    dst_shape: tuple
    src_dtype: str
    dst_dtype: str
    transform: Transform


@dataclass(eq=False, slots=True)  # one per tensor
class Op:
    """A planned copy, fill or expectation for one layer pair."""

    kind: Kind
    src: TensorRef | None
    dst: TensorRef | None
    pair: LayerPair
    transform: Transform = Transform.COPY
    src_part: Part | None = None  # the piece read / written (layout.Part, axis resolved); None: whole
    dst_part: Part | None = None
    value: float | None = None  # fill / expect

    @property
    def whole(self) -> bool:
        """A plain copy of one whole tensor into another."""
        return self.kind is COPY and self.src_part is None and self.dst_part is None

    def describe(self) -> str:
        s = self.src.path if self.src else f"{self.value}"
        d = self.dst.path if self.dst else f"== {self.value}"
        t = "" if self.transform is AS_IS else f" ({self.transform})"
        return f"{s}{self.src_part or ''} -> {d}{self.dst_part or ''}{t}"


@dataclass(eq=False)
class InitOp:
    """Write one tensor: a constant, or values drawn in torch's layout (``transpose``: raw stores it transposed)."""

    dst: TensorRef
    rule: str  # for reports, e.g. "normal(0, 0.02)"
    fill: Fill
    value: float = 0.0  # CONSTANT
    std: float = 0.0  # NORMAL
    fans: tuple[int, int] = (1, 1)  # XAVIER_UNIFORM (per block)
    blocks: int = 1  # XAVIER_UNIFORM / ORTHOGONAL: row blocks treated as separate matrices
    transpose: bool = False
    zero_rows: tuple[int, ...] = ()
    values: object = None  # VALUES: a torch tensor in the raw layout
    kind = Kind.INIT


@dataclass(eq=False)
class CallOp:
    """Call ``fn(module)``; only ``targets`` may keep what it writes, every other tensor under module is put back."""

    path: str
    module: object
    fn: Callable
    targets: list[TensorRef]
    name: str  # how reports and errors name ``fn``
    kind = Kind.CALL


@dataclass(eq=False, slots=True)
class UndoRecord:
    """What undoing writes into one tensor takes: where it hangs, the object, its values and version before."""

    owner: object  # the module holding it as attribute ``name`` (None: only its values are put back)
    name: str
    path: str  # dotted, below the module that was snapshotted
    tensor: object
    clone: object  # a torch copy of its values
    version: int
