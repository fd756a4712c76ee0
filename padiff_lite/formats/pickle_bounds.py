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

import io
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
        handler = _HANDLERS.get(name)
        if handler is None:
            raise PickleBoundsError(f"unknown pickle opcode {name}")
        handler(self, arg)

    def _op_atom(self, arg):
        self.values += 1
        if self.values > MAX_VALUES:
            raise PickleBoundsError(f"it makes more than {MAX_VALUES:,} values")
        self.stack.append(_ATOM)

    def _op_nothing(self, arg):
        pass

    def _op_empty(self, arg):
        self.stack.append(self._new())

    def _op_mark(self, arg):
        self.marks.append(self.stack)
        self.stack = []

    def _op_put(self, arg):
        self.memo[arg] = self._top()

    def _op_memoize(self, arg):
        self.memo[len(self.memo)] = self._top()

    def _op_get(self, arg):
        self.stack.append(self.memo.get(arg, _ATOM))

    def _op_pop(self, arg):
        if self.stack:
            self.stack.pop()
        else:
            self._pop_mark()

    def _op_pop_mark(self, arg):
        self._pop_mark()

    def _op_dup(self, arg):
        self.stack.append(self._top())

    def _op_tuple1(self, arg):
        self.stack.append(self._made_of(self._pop(1)))

    def _op_tuple2(self, arg):
        self.stack.append(self._made_of(self._pop(2)))

    def _op_tuple3(self, arg):
        self.stack.append(self._made_of(self._pop(3)))

    def _op_from_mark(self, arg):  # TUPLE LIST OBJ INST
        items = self._pop_mark()
        self.stack.append(self._made_of(items))

    def _op_dict(self, arg):
        items = self._pop_mark()
        self.stack.append(self._made_of(items, keys=True))

    def _op_frozenset(self, arg):
        items = self._pop_mark()
        rec = self._new()
        for item in items:
            self._put(rec, item, key=True)
        self.stack.append(rec)

    def _op_append(self, arg):
        (value,) = self._pop()
        self._put(self._top(), value)

    def _op_appends(self, arg):
        items = self._pop_mark()
        target = self._top()
        for item in items:
            self._put(target, item)

    def _op_setitem(self, arg):
        key, value = self._pop(2)
        target = self._top()
        self._put(target, key, key=True)
        self._put(target, value)

    def _op_setitems(self, arg):
        items = self._pop_mark()
        target = self._top()
        for i, item in enumerate(items):
            self._put(target, item, key=i % 2 == 0)

    def _op_additems(self, arg):
        items = self._pop_mark()
        target = self._top()
        for item in items:
            self._put(target, item, key=True)

    def _op_build(self, arg):
        (state,) = self._pop()
        self._put(self._top(), state)

    def _op_reduce(self, arg):  # REDUCE NEWOBJ: a callable (or class) and its arguments
        self.stack.append(self._made_of(self._pop(2)))

    def _op_newobj_ex(self, arg):
        self.stack.append(self._made_of(self._pop(3)))

    def _op_stack_global(self, arg):
        self._pop(2)
        self._op_atom(arg)

    def _op_binpersid(self, arg):
        self.stack.append(self._made_of(self._pop(1)))


_HANDLERS = {name: Bounds._op_atom for name in _ATOMS}
_HANDLERS.update({name: Bounds._op_nothing for name in _NOTHING})
_HANDLERS.update({name: Bounds._op_empty for name in _EMPTY})
_HANDLERS.update({"MARK": Bounds._op_mark, "PUT": Bounds._op_put, "BINPUT": Bounds._op_put,
                  "LONG_BINPUT": Bounds._op_put, "MEMOIZE": Bounds._op_memoize, "GET": Bounds._op_get,
                  "BINGET": Bounds._op_get, "LONG_BINGET": Bounds._op_get, "POP": Bounds._op_pop,
                  "POP_MARK": Bounds._op_pop_mark, "DUP": Bounds._op_dup, "TUPLE1": Bounds._op_tuple1,
                  "TUPLE2": Bounds._op_tuple2, "TUPLE3": Bounds._op_tuple3, "TUPLE": Bounds._op_from_mark,
                  "LIST": Bounds._op_from_mark, "OBJ": Bounds._op_from_mark, "INST": Bounds._op_from_mark,
                  "DICT": Bounds._op_dict, "FROZENSET": Bounds._op_frozenset, "APPEND": Bounds._op_append,
                  "APPENDS": Bounds._op_appends, "SETITEM": Bounds._op_setitem, "SETITEMS": Bounds._op_setitems,
                  "ADDITEMS": Bounds._op_additems, "BUILD": Bounds._op_build, "REDUCE": Bounds._op_reduce,
                  "NEWOBJ": Bounds._op_reduce, "NEWOBJ_EX": Bounds._op_newobj_ex,
                  "STACK_GLOBAL": Bounds._op_stack_global, "BINPERSID": Bounds._op_binpersid})


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
    stream = fh if isinstance(fh, io.BytesIO) else _Capped(fh, limit)  # BytesIO: no length can over-allocate
    handlers = {op: _HANDLERS.get(op.name) for op in pickletools.opcodes}
    n = 0
    try:
        for op, arg, _pos in pickletools.genops(stream):  # Bounds.step, inlined (this loop is the whole cost)
            n += 1
            handler = handlers[op]
            if handler is None or n > MAX_OPCODES:
                bounds.step(op.name, arg)  # raises, naming the bound
            handler(bounds, arg)
    except PickleBoundsError:
        raise
    except Exception:  # not decodable (truncated, garbage): torch.load's own reader says so
        return False
    return True
