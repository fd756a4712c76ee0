"""Bounds on what a pickle from a user may build: nesting depth, number of values, and how much a structure holds
when its shared parts are counted each time they appear (a "billion laughs" memo).

A pickle is a program for a stack machine. Even without running code, a crafted one can kill or stall the reader:
a dict key nested a million tuples deep makes ``hash()`` recurse in C until the process dies (signal 11); ten
references to ten references to ... one tuple is a few hundred bytes that stand for a billion values, and
hashing or walking it never ends. :class:`Bounds` follows the opcodes of a pickle on a stack of small records
(depth, size) instead of objects, and raises :class:`PickleBoundsError` as soon as one bound is passed, before the
reader (ours for ``.pdparams``, torch's for ``.pt``) builds what would break it:

- nesting depth at most :data:`MAX_DEPTH` (a state dict is 2-5 levels deep);
- at most :data:`MAX_VALUES` values made, and :data:`MAX_OPCODES` opcodes;
- no structure holding more than :data:`MAX_EXPANDED` values when shared parts are counted every time;
- no dict key or set item of more than :data:`MAX_KEY_SIZE` values (a key is hashed, and hashing walks it);
- no container changed after it was placed inside another: ``pickle``, ``paddle.save`` and ``torch.save`` fill
  every container before they use it, and changing one afterwards is how depth and size could grow unseen.

:func:`check_stream` runs it over a pickle with :func:`pickletools.genops` (nothing is built; used before
``torch.load``); the ``.pdparams`` reader calls :meth:`Bounds.step` for each opcode it interprets.
"""
from __future__ import annotations

import pickletools

__all__ = ["Bounds", "PickleBoundsError", "check_stream", "MAX_DEPTH", "MAX_VALUES", "MAX_EXPANDED",
           "MAX_KEY_SIZE", "MAX_OPCODES"]

MAX_DEPTH = 100
MAX_VALUES = 10_000_000
MAX_OPCODES = 40_000_000
MAX_EXPANDED = 50_000_000
MAX_KEY_SIZE = 10_000


class PickleBoundsError(ValueError):
    """The pickle passes one of the bounds (the message says which, and where)."""


class _Rec:
    """What the bounds know of one value: its nesting depth, its size with shared parts expanded, and whether it
    was placed inside another container (after which it must not change)."""
    __slots__ = ("depth", "size", "placed")

    def __init__(self):
        self.depth, self.size, self.placed = 0, 1, False


_ATOM = _Rec()  # every value that holds no other (numbers, strings, globals): shared, never changed
_ATOM.placed = True

_ATOMS = {"NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT",
          "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
          "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8", "GLOBAL", "EXT1", "EXT2", "EXT4",
          "NEXT_BUFFER", "EMPTY_TUPLE", "PERSID"}
_EMPTY = {"EMPTY_DICT", "EMPTY_LIST", "EMPTY_SET"}
_NOTHING = {"PROTO", "FRAME", "STOP", "READONLY_BUFFER"}


class Bounds:
    """Follows one pickle's opcodes (``step(name, arg)``, ``name`` as in :mod:`pickletools`) and raises
    :class:`PickleBoundsError` when a bound is passed."""

    def __init__(self):
        self.stack: list = []
        self.marks: list = []
        self.memo: dict = {}
        self.values = 0
        self.opcodes = 0

    # -- records ----------------------------------------------------------------------------------------------
    def _new(self) -> _Rec:
        self.values += 1
        if self.values > MAX_VALUES:
            raise PickleBoundsError(f"it makes more than {MAX_VALUES:,} values")
        return _Rec()

    def _atom(self) -> _Rec:
        self.values += 1
        if self.values > MAX_VALUES:
            raise PickleBoundsError(f"it makes more than {MAX_VALUES:,} values")
        return _ATOM

    def _put(self, into: _Rec, item: _Rec, key: bool = False):
        if into is _ATOM:  # adding to a number or a string: the reader itself refuses that
            return
        if into.placed:
            raise PickleBoundsError("it changes a container after placing it inside another (pickle, paddle.save and "
                                    "torch.save never do; it is how unbounded nesting is hidden)")
        if key and item.size > MAX_KEY_SIZE:
            raise PickleBoundsError(f"a dict key or set item holds {item.size:,} values (at most {MAX_KEY_SIZE:,}; "
                                    "a state dict's keys are names or numbers)")
        if item is not _ATOM:
            item.placed = True
        if item.depth >= into.depth:
            into.depth = item.depth + 1
            if into.depth > MAX_DEPTH:
                raise PickleBoundsError(f"it nests values more than {MAX_DEPTH} levels deep")
        into.size += item.size
        if into.size > MAX_EXPANDED:
            raise PickleBoundsError(f"a structure holds more than {MAX_EXPANDED:,} values when its shared parts are "
                                    "counted where they appear (a memo that multiplies itself, 'billion laughs')")

    def _made_of(self, items, keys: bool = False) -> _Rec:
        rec = self._new()
        for i, item in enumerate(items):
            self._put(rec, item, key=keys and (i % 2 == 0))
        return rec

    def _pop_mark(self) -> list:
        items = self.stack
        self.stack = self.marks.pop() if self.marks else []
        return items

    def _pop(self, n: int = 1) -> list:
        if len(self.stack) < n:
            return [_ATOM] * n  # a malformed pickle: the reader itself refuses it
        items = self.stack[-n:]
        del self.stack[-n:]
        return items

    def _top(self) -> _Rec:
        return self.stack[-1] if self.stack else _ATOM

    # -- the opcodes --------------------------------------------------------------------------------------------
    def step(self, name: str, arg=None):
        self.opcodes += 1
        if self.opcodes > MAX_OPCODES:
            raise PickleBoundsError(f"it has more than {MAX_OPCODES:,} opcodes")
        stack = self.stack
        if name in _ATOMS:
            stack.append(self._atom())
        elif name in _NOTHING:
            pass
        elif name in _EMPTY:
            stack.append(self._new())
        elif name == "MARK":
            self.marks.append(stack)
            self.stack = []
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            self.memo[arg] = self._top()
        elif name == "MEMOIZE":
            self.memo[len(self.memo)] = self._top()
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(self.memo.get(arg, _ATOM))
        elif name == "POP":
            if stack:
                stack.pop()
            else:
                self._pop_mark()
        elif name == "POP_MARK":
            self._pop_mark()
        elif name == "DUP":
            stack.append(self._top())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            stack.append(self._made_of(self._pop(int(name[-1]))))
        elif name in ("TUPLE", "LIST", "OBJ", "INST"):
            items = self._pop_mark()
            self.stack.append(self._made_of(items))
        elif name == "DICT":
            items = self._pop_mark()
            self.stack.append(self._made_of(items, keys=True))
        elif name == "FROZENSET":
            items = self._pop_mark()
            rec = self._new()
            for item in items:
                self._put(rec, item, key=True)
            self.stack.append(rec)
        elif name == "APPEND":
            (value,) = self._pop()
            self._put(self._top(), value)
        elif name == "APPENDS":
            items = self._pop_mark()
            target = self._top()
            for item in items:
                self._put(target, item)
        elif name == "SETITEM":
            key, value = self._pop(2)
            target = self._top()
            self._put(target, key, key=True)
            self._put(target, value)
        elif name == "SETITEMS":
            items = self._pop_mark()
            target = self._top()
            for i, item in enumerate(items):
                self._put(target, item, key=i % 2 == 0)
        elif name == "ADDITEMS":
            items = self._pop_mark()
            target = self._top()
            for item in items:
                self._put(target, item, key=True)
        elif name == "BUILD":
            (state,) = self._pop()
            self._put(self._top(), state)
        elif name in ("REDUCE", "NEWOBJ"):
            stack.append(self._made_of(self._pop(2)))
        elif name == "NEWOBJ_EX":
            stack.append(self._made_of(self._pop(3)))
        elif name == "STACK_GLOBAL":
            self._pop(2)
            stack.append(self._atom())
        elif name == "BINPERSID":
            stack.append(self._made_of(self._pop(1)))
        else:
            raise PickleBoundsError(f"unknown pickle opcode {name}")


class _Capped:
    """A stream that never reads past ``limit`` bytes from where it started: a length in the pickle cannot make
    :mod:`pickletools` allocate more than the file holds."""

    def __init__(self, fh, limit: int):
        self.fh, self.left = fh, limit

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.fh.read(n)
        self.left -= len(data)
        return data

    def readline(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.fh.readline(min(n, 1 << 16))
        self.left -= len(data)
        return data

    def tell(self):
        return self.fh.tell()


def check_stream(fh, limit: int) -> bool:
    """Follow one pickle from ``fh`` (stopping at its STOP, reading at most ``limit`` bytes) with :class:`Bounds`; PickleBoundsError when a bound is
    passed. Returns False when the stream is not a pickle that :mod:`pickletools` can decode (the reader that
    follows refuses it then), True otherwise. Nothing is built or imported."""
    bounds = Bounds()
    try:
        for op, arg, _pos in pickletools.genops(_Capped(fh, limit)):
            bounds.step(op.name, arg)
    except PickleBoundsError:
        raise
    except Exception:  # not decodable (truncated, garbage): torch.load's own reader says so
        return False
    return True
