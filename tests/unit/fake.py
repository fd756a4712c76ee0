"""A fake framework of plain objects, for testing tree, pairing and planning without torch or paddle.

    lin = module("Linear", weight=tensor(4, 3), bias=tensor(4))
    net = module("Net", fc=lin, head=module("Linear", weight=tensor(2, 4)))
    proxy = create_model(net, adapter=FakeAdapter("torch"))

A module's class is a real Python class made once per name (pairing and the registry key their caches by
``type(module)``), so two modules built with the same name share a class. Keyword arguments that are
:class:`FakeTensor` become the module's own parameters, :class:`FakeModule` its children, in order.
"""
from __future__ import annotations

import math

from padiff_lite.adapters.base import Adapter

_CLASSES: dict = {}


class FakeTensor:
    def __init__(self, *shape, dtype="float32", data=True):
        self.shape = tuple(shape)
        self.dtype = dtype
        self.data = data  # False: built without storage (torch's meta device, paddle's LazyGuard)

    def __repr__(self):
        return f"FakeTensor({list(self.shape)}, {self.dtype})"

    @property
    def size(self):
        return math.prod(self.shape)


class FakeModule:
    def __init__(self, params=None, buffers=None, transient=(), children=None):
        self.params = dict(params or {})
        self.buffers = dict(buffers or {})
        self.transient = set(transient)  # names of non-persistent buffers
        self.children = dict(children or {})

    def __getattr__(self, name):  # children and tensors by name, as real modules have them
        for table in ("children", "params", "buffers"):
            found = self.__dict__.get(table, {}).get(name)
            if found is not None:
                return found
        raise AttributeError(name)

    def __repr__(self):
        return f"{type(self).__name__}()"


def module_class(name: str, base: type = FakeModule) -> type:
    """The fake class called ``name`` (made once); ``base`` lets a class inherit another's rules."""
    if name not in _CLASSES:
        _CLASSES[name] = type(name, (base,), {})
    return _CLASSES[name]


def module(cls: str, *, buffers=None, transient=(), **parts) -> FakeModule:
    params = {k: v for k, v in parts.items() if isinstance(v, FakeTensor)}
    children = {k: v for k, v in parts.items() if isinstance(v, FakeModule)}
    return module_class(cls)(params, buffers, transient, children)


def tensor(*shape, dtype="float32", data=True) -> FakeTensor:
    return FakeTensor(*shape, dtype=dtype, data=data)


class FakeAdapter(Adapter):
    """The structure and memory metadata parts of padiff_lite's adapter contract, over FakeModule/FakeTensor
    (class names and dotted tensor lookup come from the adapters' shared base, as for torch and paddle).

    ``transposed``: {class name: tensor names} stored [in, out] (as paddle stores a Linear weight).
    """

    def __init__(self, name: str, transposed=None):
        super().__init__()
        self.name = name
        self.transposed = transposed or {}

    # structure
    def owns(self, obj) -> bool:
        return isinstance(obj, (FakeModule, FakeTensor))

    def is_module(self, obj) -> bool:
        return isinstance(obj, FakeModule)

    def is_tensor(self, obj) -> bool:
        return isinstance(obj, FakeTensor)

    def named_children(self, module):
        return module.children.items()

    def own_tensors(self, module):
        return ([(n, t, "param", True) for n, t in module.params.items()]
                + [(n, t, "buffer", n not in module.transient) for n, t in module.buffers.items()])

    def tree_parts(self, module):
        return module.params, module.buffers, module.transient, module.children

    def stored_transposed(self, module, name: str) -> bool:
        return any(name in self.transposed.get(c, ()) for c in self.class_names(module))

    # memory (metadata only: nothing here is ever read or written)
    def shape(self, t) -> tuple:
        return t.shape

    def dtype_name(self, t) -> str:
        return t.dtype

    def readable(self, t) -> bool:
        return t.data

    def device(self, t) -> str:
        return "fake" if t.data else "meta"

    def overlapping_strides(self, t):
        return getattr(t, "overlap", None)  # a test sets it: strides of a tensor whose elements share memory


TORCHLIKE = FakeAdapter("torch")
PADDLELIKE = FakeAdapter("paddle", transposed={"Linear": {"weight"}})
