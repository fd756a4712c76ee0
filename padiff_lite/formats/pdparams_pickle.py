"""The pickle of ``.pdparams`` files: read without running it, and written as a stream.

A ``.pdparams`` file is a pickle (``paddle.save`` pickles a dict of numpy arrays), and ``paddle.load`` is
plain ``pickle.load``: a file can run any code when it is loaded. This module never calls pickle to read. Its
:class:`Unpickler` interprets the pickle opcodes itself, one method per opcode found through a dispatch table (as
CPython's own ``pickle._Unpickler`` does), and allows only what ``paddle.save`` writes for a state dict:

- plain values: dicts (``collections.OrderedDict`` too), lists, tuples, sets, str, bytes, int, float, bool, None;
- numpy arrays (``numpy.core.multiarray._reconstruct`` + ``numpy.ndarray``, or ``_frombuffer`` of protocol 5)
  of bool, integer and float dtypes, and numpy scalars of those dtypes;
- what paddle's own reducers use: ``tuple((name, array))`` for a Tensor, ``eval('data', {'data': array})``
  for a DenseTensor (recognised by its exact shape; nothing is evaluated), ``_codecs.encode(str, 'latin1')``
  (how protocol 2 stores bytes).

Any other import is refused before anything is built, naming the module and the object the file asks
for. Array bytes are not read while parsing: an array becomes an :class:`ArrayRef` (dtype, shape, where
its bytes lie in the file), and :func:`read_array` reads them later straight into the caller's buffer,
so a file is never held in memory as a whole and its bytes are copied once.

Only regular files are opened (:mod:`.regular`), and the opcodes are followed by :class:`.pickle_bounds.Bounds`
as they are interpreted: nesting depth, the number of values and the size of a structure with its shared
parts expanded are bounded, so a crafted file is refused before it can crash the process (a key nested a
million levels deep) or stall it (a "billion laughs" memo). Sizes (shapes, payload lengths) are checked against
the file's size with exact integers before anything is allocated.
"""
from __future__ import annotations

import io
import math
import os
import pickletools
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from .pickle_bounds import Bounds, PickleBoundsError
from ..regular import open_regular

__all__ = ["ArrayRef", "parse", "read_array", "unwrap_big_params"]

_KEEP_IN_MEMORY = 1 << 16  # bytes payloads up to this size are read while parsing (they may be dict keys etc.)


@dataclass(eq=False)
class Blob:
    """A bytes payload of the file: where it lies, and its bytes when small (or when not stored as-is)."""
    offset: int
    length: int
    data: bytes | None = None


@dataclass(eq=False)
class ArrayRef:
    """A numpy array of the file, not yet read: its bytes are ``parts`` one after the other."""
    dtype: np.dtype
    shape: tuple
    fortran: bool = False
    parts: list = field(default_factory=list)  # Blobs

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize  # exact (no int64 wrap-around)


class _Refused(Exception):
    """The file asks for something a state dict never holds (the message says what)."""


# markers for the few callables a state dict may name; nothing here is ever called with file data
class _Global:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


_RECONSTRUCT, _NDARRAY, _DTYPE, _FROMBUFFER, _ENCODE, _SCALAR, _EVAL = (
    _Global(n) for n in ("numpy _reconstruct", "numpy.ndarray", "numpy.dtype", "numpy _frombuffer",
                         "_codecs.encode", "numpy scalar", "builtins.eval"))
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT, ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _DTYPE,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER, ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy.core.multiarray", "scalar"): _SCALAR, ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("_codecs", "encode"): _ENCODE,
    ("collections", "OrderedDict"): dict, ("builtins", "dict"): dict, ("builtins", "list"): list,
    ("builtins", "tuple"): tuple, ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
    ("builtins", "bytes"): bytes, ("builtins", "bytearray"): bytes, ("builtins", "eval"): _EVAL,
}
_ALLOWED.update({("__builtin__", n): v for (m, n), v in list(_ALLOWED.items()) if m == "builtins"})  # protocol 2
NUMERIC_KINDS = "biuf"
_NAMES = {op.code.encode("latin-1"): op.name for op in pickletools.opcodes}
_MEMO_OPS = {"BINPUT", "LONG_BINPUT", "MEMOIZE", "BINGET", "LONG_BINGET"}
_INT64_MAX = (1 << 63) - 1
_CODE_OPCODES = {b"i", b"o", b"P", b"Q", b"\x82", b"\x83", b"\x84", b"\x97"}  # INST OBJ PERSID BINPERSID EXT* NEXT_BUFFER  # bool, signed, unsigned, float


class _DTypeStub:
    def __init__(self, name):
        self.name, self.order, self.structured = name, "=", False


class _ArrayStub:
    """An ndarray between ``_reconstruct`` and its BUILD."""
    ref: ArrayRef | None = None


class Record(dict):
    """A plain-data object of an allowed class (``parse(records=...)``): its fields as a dict, its class's name."""

    def __init__(self, cls: str):
        super().__init__()
        self.cls = cls


class _RecordClass:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


def parse(path: Path, records=()):
    """The object pickled in ``path``, with every numpy array as an :class:`ArrayRef`; CheckpointError when the
    file is not a pickle of plain data and arrays (nothing in it is executed or imported). ``records``: ``(module,
    class)`` pairs whose objects the file may hold as plain data (created without arguments, state set from a dict),
    read as :class:`Record` (a trainer's state, say); nothing of those classes is imported."""
    try:
        with open_regular(path, CheckpointError, "checkpoint file") as fh:
            machine = Unpickler(fh, os.fstat(fh.fileno()).st_size)
            machine.records = {tuple(r) for r in records}
            return machine.run()
    except PickleBoundsError as exc:
        raise CheckpointError(f"{path}: refused to load: {exc}, which no paddle.save file does; nothing from the "
                              "file was run. Get the checkpoint from a trusted source or re-save it with "
                              "paddle.save(model.state_dict(), path)") from None
    except _Refused as exc:
        raise CheckpointError(f"{path}: refused to load: {exc}. Nothing from the file was run. A .pdparams file is a "
                              "pickle, and paddle.load/pickle.load would have run it: do not load this file with them; "
                              "get the checkpoint from a trusted source or re-save it with "
                              "paddle.save(model.state_dict(), path)") from None
    except CheckpointError:
        raise
    except (EOFError, ValueError, TypeError, KeyError, IndexError, struct.error, UnicodeDecodeError,
            OverflowError, MemoryError) as exc:
        raise CheckpointError(f"{path}: cannot read this file as paddle (not a pickle that paddle.save writes: "
                              f"{type(exc).__name__}: {str(exc)[:200]}); the file is truncated, corrupt or not what its "
                              "suffix says: re-create or re-download it") from None


class _Stop(Exception):
    """STOP reached: the pickled object is complete."""

    def __init__(self, value):
        super().__init__()
        self.value = value


class Unpickler:
    """The pickle opcodes protocols 2-5 use for plain data, interpreted without importing or calling anything.

    As CPython's own ``pickle._Unpickler``: ``dispatch`` maps each opcode byte to the method that interprets it; an
    opcode with no entry is refused (those that build objects or call code by name, the others as not a pickle
    ``paddle.save`` writes)."""

    dispatch: dict = {}
    records: set = frozenset()  # (module, class) pairs read as Record

    def __init__(self, fh, size: int):
        self.fh, self.size = fh, size
        self.stack: list = []
        self.marks: list[list] = []
        self.memo: dict = {}
        self.bounds = Bounds()

    # -- reading the stream ----------------------------------------------------
    def _read(self, n: int) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise EOFError(f"the file ends inside a pickle opcode at byte {self.fh.tell()}")
        return data

    def _length(self, n: int, fmt: str) -> int:
        length = struct.unpack(fmt, self._read(n))[0]
        if length < 0 or length > self.size - self.fh.tell():
            raise ValueError(f"a payload of {length} bytes at byte {self.fh.tell()} does not fit in the file")
        return length

    def _blob(self, length: int) -> Blob:
        offset = self.fh.tell()
        if length <= _KEEP_IN_MEMORY:
            return Blob(offset, length, self._read(length))
        self.fh.seek(length, io.SEEK_CUR)
        return Blob(offset, length)

    def _text(self, length: int) -> str:
        return self._read(length).decode("utf-8")

    def _pop_mark(self) -> list:
        items = self.stack
        self.stack = self.marks.pop()
        return items

    # -- the machine -----------------------------------------------------------
    def run(self):
        head = self.fh.read(4)
        if head[:2] == b"PK":
            raise ValueError("this is a zip archive (torch.save writes those): name a torch file .pt/.pth/.bin")
        if head[:1] != b"\x80":
            raise ValueError("the file does not start like a pickle of protocol 2 or later")
        self.fh.seek(0)
        read, step, dispatch = self._read, self.bounds.step, self.dispatch
        try:
            while True:
                op = read(1)
                name = _NAMES.get(op)
                if name is None:
                    raise ValueError(f"byte {op!r} at {self.fh.tell() - 1} is not a pickle opcode")
                if name not in _MEMO_OPS:  # the bounds first: nothing is built that passes them
                    step(name)
                handler = dispatch.get(op[0])
                if handler is None:
                    self._unknown(op)
                handler(self)
        except _Stop as stop:
            return _finish(stop.value)

    def _unknown(self, op: bytes):
        if op in _CODE_OPCODES:
            raise _Refused(f"it uses pickle opcode {op!r} at byte {self.fh.tell() - 1}, which paddle.save never "
                           "writes for a state dict (it builds objects or calls code)")
        raise ValueError(f"byte {op!r} at {self.fh.tell() - 1} is not a pickle opcode paddle.save writes")

    # -- framing and the stack -------------------------------------------------
    def load_proto(self):
        proto = self._read(1)[0]
        if not 2 <= proto <= 5:
            raise ValueError(f"pickle protocol {proto} (paddle.save writes 2-4)")

    def load_frame(self):  # a hint for buffering, the opcodes follow inline
        self._read(8)

    def load_stop(self):
        if len(self.stack) != 1 or self.marks:
            raise ValueError("the pickle stops with an unbalanced stack")
        raise _Stop(self.stack[0])

    def load_mark(self):
        self.marks.append(self.stack)
        self.stack = []

    def load_pop(self):
        self.stack.pop()

    def load_pop_mark(self):
        self._pop_mark()

    def load_dup(self):
        self.stack.append(self.stack[-1])

    # -- plain values ----------------------------------------------------------
    def load_none(self):
        self.stack.append(None)

    def load_true(self):
        self.stack.append(True)

    def load_false(self):
        self.stack.append(False)

    def load_binint(self):
        self.stack.append(struct.unpack("<i", self._read(4))[0])

    def load_binint1(self):
        self.stack.append(self._read(1)[0])

    def load_binint2(self):
        self.stack.append(struct.unpack("<H", self._read(2))[0])

    def load_long1(self):
        self.stack.append(int.from_bytes(self._read(self._read(1)[0]), "little", signed=True))

    def load_long4(self):
        self.stack.append(int.from_bytes(self._read(self._length(4, "<i")), "little", signed=True))

    def load_binfloat(self):
        self.stack.append(struct.unpack(">d", self._read(8))[0])

    def load_binunicode(self):
        self.stack.append(self._text(self._length(4, "<I")))

    def load_short_binunicode(self):
        self.stack.append(self._text(self._read(1)[0]))

    def load_binunicode8(self):
        self.stack.append(self._text(self._length(8, "<Q")))

    def load_binbytes(self):
        self.stack.append(self._blob(self._length(4, "<I")))

    def load_short_binbytes(self):
        self.stack.append(self._blob(self._read(1)[0]))

    def load_binbytes8(self):  # BINBYTES8 and BYTEARRAY8
        self.stack.append(self._blob(self._length(8, "<Q")))

    # -- containers ------------------------------------------------------------
    def load_empty_dict(self):
        self.stack.append({})

    def load_empty_list(self):
        self.stack.append([])

    def load_empty_tuple(self):
        self.stack.append(())

    def load_empty_set(self):
        self.stack.append(set())

    def load_tuple(self):
        items = self._pop_mark()
        self.stack.append(tuple(items))

    def _tuple_of(self, n: int):
        stack = self.stack
        items = tuple(stack[-n:])
        del stack[-n:]
        stack.append(items)

    def load_tuple1(self):
        self._tuple_of(1)

    def load_tuple2(self):
        self._tuple_of(2)

    def load_tuple3(self):
        self._tuple_of(3)

    def load_list(self):
        items = self._pop_mark()
        self.stack.append(items)

    def load_dict(self):
        items = self._pop_mark()
        self.stack.append(dict(zip(items[::2], items[1::2])))

    def load_frozenset(self):
        self.stack.append(frozenset(self._pop_mark()))

    def load_append(self):
        value = self.stack.pop()
        _container(self.stack[-1], list).append(value)

    def load_appends(self):
        items = self._pop_mark()
        _container(self.stack[-1], list).extend(items)

    def load_setitem(self):
        stack = self.stack
        value, key = stack.pop(), stack.pop()
        _container(stack[-1], dict)[_key(key)] = value

    def load_setitems(self):
        items = self._pop_mark()
        target = _container(self.stack[-1], dict)
        for k, v in zip(items[::2], items[1::2]):
            target[_key(k)] = v

    def load_additems(self):
        items = self._pop_mark()
        _container(self.stack[-1], set).update(_key(k) for k in items)

    # -- the memo (bounded: a memo read is where a "billion laughs" multiplies) ---------------------------------
    def _put(self, name: str, i: int):
        self.bounds.step(name, i)
        self.memo[i] = self.stack[-1]

    def _get(self, name: str, i: int):
        self.bounds.step(name, i)
        self.stack.append(self.memo[i])

    def load_binput(self):
        self._put("BINPUT", self._read(1)[0])

    def load_long_binput(self):
        self._put("LONG_BINPUT", struct.unpack("<I", self._read(4))[0])

    def load_memoize(self):
        self.bounds.step("MEMOIZE")
        self.memo[len(self.memo)] = self.stack[-1]

    def load_binget(self):
        self._get("BINGET", self._read(1)[0])

    def load_long_binget(self):
        self._get("LONG_BINGET", struct.unpack("<I", self._read(4))[0])

    # -- names and calls: only those of _ALLOWED, interpreted (never imported or called) ---------------------
    def _global(self, module: str, name: str):
        if (module, name) in self.records:
            return _RecordClass(f"{module}.{name}")
        return _global(module, name)

    def load_global(self):  # "module\nname\n"
        module = self.fh.readline(256).decode("utf-8").rstrip("\n")
        name = self.fh.readline(256).decode("utf-8").rstrip("\n")
        self.stack.append(self._global(module, name))

    def load_stack_global(self):
        stack = self.stack
        name, module = stack.pop(), stack.pop()
        if not isinstance(name, str) or not isinstance(module, str):
            raise ValueError("STACK_GLOBAL with names that are not strings")
        stack.append(self._global(module, name))

    def load_reduce(self):
        stack = self.stack
        args = stack.pop()
        stack.append(_reduce(stack.pop(), args))

    def load_build(self):
        state = self.stack.pop()
        _build(self.stack[-1], state)

    def load_newobj(self):
        stack = self.stack
        args = stack.pop()
        cls = stack.pop()
        if isinstance(cls, _RecordClass) and args == ():
            stack.append(Record(cls.name))
            return
        if cls not in (dict, list, tuple, set, frozenset):
            raise _Refused(f"it asks to create an object of {cls!r} (pickle NEWOBJ), which a paddle state "
                           "dict never holds")
        stack.append(cls(*args))

    def load_newobj_ex(self):
        self.stack.pop()  # keyword arguments: the classes allowed take none that matter
        self.load_newobj()


# opcode name (pickletools) -> method; the byte of each comes from pickletools, as the names do
_DISPATCH = {
    "PROTO": Unpickler.load_proto, "FRAME": Unpickler.load_frame, "STOP": Unpickler.load_stop,
    "MARK": Unpickler.load_mark, "POP": Unpickler.load_pop, "POP_MARK": Unpickler.load_pop_mark,
    "DUP": Unpickler.load_dup, "NONE": Unpickler.load_none, "NEWTRUE": Unpickler.load_true,
    "NEWFALSE": Unpickler.load_false, "BININT": Unpickler.load_binint, "BININT1": Unpickler.load_binint1,
    "BININT2": Unpickler.load_binint2, "LONG1": Unpickler.load_long1, "LONG4": Unpickler.load_long4,
    "BINFLOAT": Unpickler.load_binfloat, "BINUNICODE": Unpickler.load_binunicode,
    "SHORT_BINUNICODE": Unpickler.load_short_binunicode, "BINUNICODE8": Unpickler.load_binunicode8,
    "BINBYTES": Unpickler.load_binbytes, "SHORT_BINBYTES": Unpickler.load_short_binbytes,
    "BINBYTES8": Unpickler.load_binbytes8, "BYTEARRAY8": Unpickler.load_binbytes8,
    "EMPTY_DICT": Unpickler.load_empty_dict, "EMPTY_LIST": Unpickler.load_empty_list,
    "EMPTY_TUPLE": Unpickler.load_empty_tuple, "EMPTY_SET": Unpickler.load_empty_set,
    "TUPLE": Unpickler.load_tuple, "TUPLE1": Unpickler.load_tuple1, "TUPLE2": Unpickler.load_tuple2,
    "TUPLE3": Unpickler.load_tuple3, "LIST": Unpickler.load_list, "DICT": Unpickler.load_dict,
    "FROZENSET": Unpickler.load_frozenset, "APPEND": Unpickler.load_append, "APPENDS": Unpickler.load_appends,
    "SETITEM": Unpickler.load_setitem, "SETITEMS": Unpickler.load_setitems, "ADDITEMS": Unpickler.load_additems,
    "BINPUT": Unpickler.load_binput, "LONG_BINPUT": Unpickler.load_long_binput, "MEMOIZE": Unpickler.load_memoize,
    "BINGET": Unpickler.load_binget, "LONG_BINGET": Unpickler.load_long_binget, "GLOBAL": Unpickler.load_global,
    "STACK_GLOBAL": Unpickler.load_stack_global, "REDUCE": Unpickler.load_reduce, "BUILD": Unpickler.load_build,
    "NEWOBJ": Unpickler.load_newobj, "NEWOBJ_EX": Unpickler.load_newobj_ex,
}
Unpickler.dispatch = {op.code.encode("latin-1")[0]: _DISPATCH[op.name] for op in pickletools.opcodes
                      if op.name in _DISPATCH}


def _global(module: str, name: str):
    found = _ALLOWED.get((module, name))
    if found is None:
        raise _Refused(f"it asks to import {module}.{name}, which a paddle state dict never holds (only numpy "
                       "arrays and plain values are allowed)")
    return found


def _key(k):
    if isinstance(k, (str, int, float, bool, type(None), tuple)):
        return k
    if isinstance(k, Blob) and k.data is not None:
        return k.data
    raise ValueError(f"a dict key of type {type(k).__name__}")


def _container(obj, kind):
    if not isinstance(obj, kind):
        raise ValueError(f"adding items to a {type(obj).__name__}")
    return obj


def _bytes(b) -> Blob:
    if isinstance(b, Blob):
        return b
    if isinstance(b, (bytes, bytearray)):
        return Blob(-1, len(b), bytes(b))
    raise ValueError(f"expected bytes, got {type(b).__name__}")


def _reduce(func, args):
    if not isinstance(args, tuple):
        raise ValueError("REDUCE arguments are not a tuple")
    if func is _RECONSTRUCT:
        if not args or args[0] is not _NDARRAY:
            raise _Refused("it asks numpy to reconstruct something other than an ndarray")
        return _ArrayStub()
    if func is _DTYPE:
        if not args or not isinstance(args[0], str):
            raise ValueError("numpy.dtype without a type name")
        return _DTypeStub(args[0])
    if func is _FROMBUFFER:  # protocol 5: (buffer, dtype, shape, order)
        buf, dtype, shape, order = args
        stub = _ArrayStub()
        stub.ref = _array_ref(_dtype(dtype), shape, order == "F", _bytes(buf))
        return stub
    if func is _ENCODE:  # protocol 2 stores bytes as _codecs.encode(latin-1 text, 'latin1')
        if len(args) != 2 or args[1] != "latin1" or not isinstance(args[0], str):
            raise _Refused("it calls _codecs.encode with something other than (text, 'latin1')")
        data = args[0].encode("latin1")
        return Blob(-1, len(data), data)
    if func is _SCALAR:  # a numpy scalar: (dtype, its bytes)
        dtype = _dtype(args[0])
        data = _bytes(args[1]).data
        if data is None or len(data) != dtype.itemsize:
            raise ValueError("a numpy scalar of the wrong size")
        return np.frombuffer(data, dtype=dtype)[0].item()
    if func is _EVAL:  # paddle's DenseTensor reducer: eval('data', {'data': array}); never evaluated
        if len(args) == 2 and args[0] == "data" and isinstance(args[1], dict) and list(args[1]) == ["data"]:
            return args[1]["data"]
        raise _Refused("it asks to call builtins.eval, which a paddle state dict only uses as eval('data', "
                       "{'data': array})")
    if func is bytes:  # protocol 2's empty bytes: bytes()
        if args:
            raise _Refused("it calls bytes() with arguments")
        return Blob(-1, 0, b"")
    if func in (dict, list, tuple, set, frozenset):
        return func(*args)
    raise _Refused(f"it asks to call {func!r}")


def _dtype(d) -> np.dtype:
    if isinstance(d, _DTypeStub):
        if d.structured:
            raise ValueError(f"a structured numpy dtype ({d.name})")
        try:
            dtype = np.dtype(d.name)
        except TypeError as exc:
            raise ValueError(f"unknown numpy dtype {d.name!r}") from exc
        return dtype.newbyteorder(">") if d.order == ">" else dtype.newbyteorder("<") if d.order == "<" else dtype
    raise ValueError(f"expected a numpy dtype, got {type(d).__name__}")


def _shape(shape) -> tuple:
    """An array's shape from the file: non-negative sizes whose product (in bytes too) fits in int64."""
    if not isinstance(shape, (tuple, list)) or len(shape) > 64 or \
            not all(isinstance(s, int) and 0 <= s <= _INT64_MAX for s in shape):
        raise ValueError(f"an array shape that is not a tuple of sizes from 0 to 2**63-1: {_short(shape)}")
    if math.prod(shape) * 16 > _INT64_MAX:
        raise ValueError(f"an array of shape {list(shape)} is larger than any file can hold")
    return tuple(int(s) for s in shape)


def _short(v) -> str:
    text = repr(v) if isinstance(v, (tuple, list, int, str)) and len(str(v)) < 200 else type(v).__name__
    return text[:200]


def _array_ref(dtype: np.dtype, shape, fortran: bool, data) -> ArrayRef:
    shape = _shape(shape)
    if dtype.kind not in NUMERIC_KINDS:
        return ArrayRef(dtype, shape, bool(fortran), [("unsupported", _kind_name(dtype))])
    ref = ArrayRef(dtype, shape, bool(fortran), [_bytes(data)])
    if ref.parts[0].length != ref.nbytes:
        raise ValueError(f"an array of shape {list(shape)} {dtype} holds {ref.parts[0].length} bytes, not {ref.nbytes}")
    return ref


def _build(obj, state):
    if isinstance(obj, _DTypeStub):
        if not isinstance(state, tuple) or len(state) < 2:
            raise ValueError("a numpy dtype state that is not a tuple")
        obj.order = state[1]
        obj.structured = len(state) > 3 and (state[3] is not None or state[4] is not None)
        return
    if isinstance(obj, _ArrayStub):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise ValueError("a numpy array state that is not a tuple")
        shape, dtype, fortran, data = state[-4:]
        dtype = _dtype(dtype)
        if dtype.kind not in NUMERIC_KINDS or isinstance(data, list):  # object arrays pickle a list of objects
            obj.ref = ArrayRef(dtype, _shape(shape), bool(fortran), [("unsupported", _kind_name(dtype))])
        else:
            obj.ref = _array_ref(dtype, tuple(shape), fortran, data)
        return
    if isinstance(obj, dict) and isinstance(state, dict):
        obj.update(state)
        return
    raise _Refused(f"it sets the state of a {type(obj).__name__} (pickle BUILD), which a paddle state dict never does")


def _kind_name(dtype: np.dtype) -> str:
    return {"O": "Python objects", "U": "strings", "S": "bytes strings", "V": "raw records",
            "c": "complex numbers", "M": "dates", "m": "time deltas"}.get(dtype.kind, str(dtype))


def _finish(obj):
    """Replace the array stubs by their ArrayRefs, iteratively (no recursion on nested data)."""
    def resolve(v):
        if isinstance(v, _ArrayStub):
            if v.ref is None:
                raise ValueError("a numpy array without its data")
            return v.ref
        if isinstance(v, Blob):
            return v.data if v.data is not None else v
        return v

    root = [obj]
    todo = [root]
    seen = set()
    while todo:
        c = todo.pop()
        if id(c) in seen:
            continue
        seen.add(id(c))
        if isinstance(c, list):
            for i, v in enumerate(c):
                c[i] = resolve(v)
                if isinstance(c[i], (list, dict)):
                    todo.append(c[i])
                elif isinstance(c[i], tuple):
                    c[i] = tuple(resolve(x) for x in c[i])
        elif isinstance(c, dict):
            for k, v in list(c.items()):
                c[k] = resolve(v)
                if isinstance(c[k], (list, dict)):
                    todo.append(c[k])
                elif isinstance(c[k], tuple):
                    c[k] = tuple(resolve(x) for x in c[k])
    return root[0]


def unwrap_big_params(obj: dict) -> dict:
    """paddle.save with protocol 2/3 cuts arrays over 1 GB into slices (``UnpackBigParamInfor@@``): join them back
    (as one ArrayRef whose parts are the slices)."""
    info = obj.get("UnpackBigParamInfor@@")
    if info is None:
        return obj
    if not isinstance(info, dict):
        raise ValueError(f"UnpackBigParamInfor@@ is a {type(info).__name__}, not a table of big arrays")
    out = dict(obj)
    for key, v in info.items():
        if not isinstance(v, dict) or not isinstance(v.get("slices"), (list, tuple)) or \
                not all(isinstance(s, str) for s in v["slices"]) or "OriginShape" not in v:
            raise ValueError(f"UnpackBigParamInfor@@[{_short(key)}] is not {{'OriginShape': sizes, 'slices': "
                             "[names]}")
        slices = [out.pop(s, None) for s in v["slices"]]
        if not slices or not all(isinstance(s, ArrayRef) for s in slices):
            raise ValueError(f"{key}: the slices of a big array are missing")
        shape = _shape(v["OriginShape"])
        out[key] = ArrayRef(slices[0].dtype, shape, False, [p for s in slices for p in s.parts])
        if out[key].nbytes != sum(s.nbytes for s in slices):
            raise ValueError(f"{key}: slices do not add up to shape {list(shape)}")
    out.pop("UnpackBigParamInfor@@")
    return out


def unsupported(ref: ArrayRef) -> str | None:
    """What the array holds when it is not numbers (Python objects, strings ...), else None."""
    if ref.parts and isinstance(ref.parts[0], tuple):
        return ref.parts[0][1]
    return None


def read_array(path: Path, ref: ArrayRef, into: memoryview, fh=None) -> None:
    """Read the array's bytes into ``into`` (exactly ``ref.nbytes`` long), part by part, with ``readinto``."""
    own = fh is None
    if own:
        fh = open_regular(path, CheckpointError, "checkpoint file", buffering=0)
    try:
        pos = 0
        for part in ref.parts:
            dst = into[pos:pos + part.length]
            if part.offset < 0:
                dst[:] = part.data
            else:
                fh.seek(part.offset)
                done = 0
                while done < part.length:
                    n = fh.readinto(dst[done:])
                    if not n:
                        raise CheckpointError(f"{path}: the file ends {part.length - done} bytes before the array at "
                                              f"byte {part.offset} does; the file is truncated: re-create or "
                                              "re-download it")
                    done += n
            pos += part.length
    finally:
        if own:
            fh.close()


# -- writing ---------------------------------------------------------------------------------------------------
# A .pdparams file is written as a stream, tensor by tensor, with each array's bytes going straight from the
# tensor's memory to the file: the same pickle ``paddle.save`` would write for a dict of numpy arrays (numpy's
# own reduce of each array: ``_reconstruct`` + a state tuple whose last item is the raw bytes), so ``paddle.load``
# and this module's reader both read it. Only the raw bytes are written by hand; the opcodes around them come
# from pickling a stand-in with the same dtype and shape (protocol 3: no frames to keep consistent).
_MARK = b"\x00padiff-lite-array-bytes\x00"


class _Stand:
    """Pickles like a numpy array of ``shape`` and ``dtype`` whose bytes are ``_MARK``."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, dtype

    def __reduce__(self):
        return (np.core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                (1, tuple(self.shape), self.dtype, False, _MARK))


def _opcodes(obj) -> bytes:
    """``obj`` as pickle opcodes (protocol 3, no memo), without the PROTO header and the STOP."""
    import pickle

    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=3)
    pickler.fast = True
    pickler.dump(obj)
    return buf.getvalue()[2:-1]


def array_opcodes(shape, dtype: np.dtype) -> tuple[bytes, bytes]:
    """The opcodes before and after an array's raw bytes (which go in a BINBYTES/BINBYTES8 of their own)."""
    ops = _opcodes(_Stand(shape, np.dtype(dtype)))
    mark = b"C" + bytes([len(_MARK)]) + _MARK  # SHORT_BINBYTES
    cut = ops.index(mark)
    return ops[:cut], ops[cut + len(mark):]


class StreamWriter:
    """Writes ``{key: array}`` as a pickle stream: ``start()``, ``add(key, array_bytes, shape, dtype)`` per tensor
    (``array_bytes``: a buffer of the tensor's bytes, C order), ``alias(key, of)`` for a tied name (the same array
    object, stored once), ``finish()``. ``out`` is a file-like object with ``write``."""

    def __init__(self, out):
        self.out = out
        self.memo: dict[str, int] = {}  # key -> memo slot of its array (only for tensors that have aliases)

    def start(self):
        self.out.write(b"\x80\x04}")  # PROTO 4, EMPTY_DICT

    def add(self, key: str, data, shape, dtype, memoize: bool = False):
        before, after = array_opcodes(shape, dtype)
        n = memoryview(data).nbytes
        head = b"B" + struct.pack("<I", n) if n < 1 << 32 else b"\x8e" + struct.pack("<Q", n)
        self.out.write(_opcodes(key) + before + head)
        if n:
            self.out.write(data)
        self.out.write(after)
        if memoize:
            self.out.write(b"\x94")  # MEMOIZE: the array, for aliases written later
            self.memo[key] = len(self.memo)
        self.out.write(b"s")  # SETITEM

    def add_value(self, key: str, value):
        """A plain value (a dict of ints and floats, such as an LR scheduler's state) under ``key``."""
        self.out.write(_opcodes(key) + _opcodes(value) + b"s")

    def alias(self, key: str, of: str):
        slot = self.memo[of]
        get = b"h" + bytes([slot]) if slot < 256 else b"j" + struct.pack("<I", slot)
        self.out.write(_opcodes(key) + get + b"s")

    def finish(self):
        self.out.write(b".")
