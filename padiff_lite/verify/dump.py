"""Offline dumps: what one model did in one process, written so that another process can compare it.

A dump folder (one step of one rank, usually ``<root>/step_N/rank_M``) holds up to three pairs of files, each
a JSON file (what the tensors are) and a safetensors file (their values; never pickle):

- ``report.json`` + ``report.safetensors``: every module call in the order the calls began (dotted path, class
  names with bases, how often that module was called before, each output tensor with its place in the output,
  and the gradient that reached it when a backward ran while recording);
- ``weights.json`` + ``weights.safetensors``: every parameter and persistent buffer by dotted path;
- ``grads.json`` + ``grads.safetensors``: every parameter's gradient (those without one are listed).

Each JSON file also holds the model's structure (modules, children in order, own tensors with shape, dtype,
kind, and whether the tensor is stored transposed to torch's layout, as paddle's Linear weight is), and the
black/white lists by dotted path, so that a reader pairs the two models with the same pairing as in memory
without importing either framework (:mod:`padiff_lite.verify.dump_check`).

This module imports no framework: it looks a model's framework up in ``sys.modules`` (the caller imported it),
so a paddle-only training script that dumps never loads torch, and the reverse. Tensors are written one at a
time (the safetensors header is made from the tensors' shapes before any value is read); a file appears only
when complete (written under a temporary name, then renamed), and the JSON file is written last.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DumpError

FORMAT = "padiff_lite-dump"
VERSION = 1
KINDS = ("report", "weights", "grads")

# numpy dtype name -> safetensors dtype name
_ST = {"float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32", "int16": "I16",
       "int8": "I8", "uint8": "U8", "bool": "BOOL", "uint16": "U16", "uint32": "U32", "uint64": "U64"}
_NP = {v: k for k, v in _ST.items()}


# -- frameworks, looked up, never imported ------------------------------------------------------------------
def framework_of(obj) -> str:
    """"torch" or "paddle" for a module/layer or tensor of a framework the caller has imported."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, (torch.nn.Module, torch.Tensor)):
        return "torch"
    paddle = sys.modules.get("paddle")
    if paddle is not None and isinstance(obj, (paddle.nn.Layer, paddle.Tensor)):
        return "paddle"
    raise DumpError(f"cannot dump a {type(obj).__module__}.{type(obj).__qualname__}: pass a torch.nn.Module or a "
                    "paddle.nn.Layer (or a padiff_lite ProxyModel of one)")


def rank_of(framework: str | None = None) -> int:
    """This process's rank: the framework's distributed environment when it is initialised, else the RANK or
    PADDLE_TRAINER_ID environment variable, else 0."""
    if framework == "paddle" and "paddle" in sys.modules:
        dist = sys.modules["paddle"].distributed
        if getattr(dist, "is_initialized", lambda: False)():
            return int(dist.get_rank())
    if framework == "torch" and "torch" in sys.modules:
        dist = sys.modules["torch"].distributed
        if dist.is_available() and dist.is_initialized():
            return int(dist.get_rank())
    for var in ("RANK", "PADDLE_TRAINER_ID"):
        value = os.environ.get(var, "").strip()
        if value.isdigit():
            return int(value)
    return 0


def step_folder(root, step: int, rank: int) -> Path:
    """``<root>/step_<step>/rank_<rank>``."""
    return Path(root) / f"step_{int(step)}" / f"rank_{int(rank)}"


def _dtype_name(t) -> str:
    return str(t.dtype).rsplit(".", 1)[-1].replace("paddle.", "")


def _numpy_dtype(name: str) -> str:
    """The numpy dtype a tensor of dtype ``name`` is written as (bfloat16 widened to float32)."""
    if name == "bfloat16":
        return "float32"
    if name not in _ST:
        raise DumpError(f"tensors of dtype {name} cannot be dumped (numpy has no such type); cast them first")
    return name


def to_numpy(t) -> np.ndarray:
    """A numpy copy of a torch or paddle tensor (bfloat16 widened to float32)."""
    if framework_of(t) == "torch":
        t = t.detach()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return np.ascontiguousarray(t.cpu().numpy())
    t = t.detach()
    if "bfloat16" in str(t.dtype):
        t = t.astype("float32")
    return np.ascontiguousarray(t.numpy())


# -- structure -------------------------------------------------------------------------------------------------
def _parts(module, framework):
    """(params, buffers, non-persistent buffer names, children) of one module, as the adapters read them."""
    if framework == "torch":
        return module._parameters, module._buffers, module._non_persistent_buffers_set, module._modules
    return (module._parameters, module._buffers, getattr(module, "_non_persistable_buffer_names_set", ()),
            module._sub_layers)


def class_names(module) -> list[str]:
    return [c.__name__ for c in type(module).__mro__ if c is not object]


def stored_transposed(framework: str, classes, name: str) -> bool:
    """Whether a tensor is stored transposed to torch's layout: paddle's Linear weight ([in, out])."""
    return framework == "paddle" and name == "weight" and "Linear" in classes


def named_modules(model, framework: str) -> list[tuple[str, object]]:
    """(dotted path, module) parents first, children in definition order, each module once."""
    out, seen, stack = [], set(), [("", model)]
    while stack:
        path, mod = stack.pop()
        if id(mod) in seen:
            continue
        seen.add(id(mod))
        out.append((path, mod))
        kids = [(f"{path}.{n}" if path else n, c) for n, c in _parts(mod, framework)[3].items() if c is not None]
        stack.extend(reversed(kids))
    return out


_SIMPLE = (bool, int, float, str, type(None))


def _settings(module) -> dict:
    """The module's attributes of plain values (numbers, strings, None, and lists/tuples of them): the settings a
    pairing rule may read (``num_heads``, ``bias``, ``eps``, ...)."""
    out = {}
    for k, v in vars(module).items():
        if isinstance(v, _SIMPLE):
            if isinstance(v, float) and not math.isfinite(v):
                v = str(v)
            out[k] = v
        elif isinstance(v, (tuple, list)) and len(v) <= 16 and all(isinstance(x, _SIMPLE) for x in v):
            out[k] = list(v)
    return out


def describe(model, framework: str, lists: dict | None = None) -> dict:
    """The model's structure as plain data (see the module docstring)."""
    modules, seen = [], {}
    for path, mod in named_modules(model, framework):
        params, buffers, transient, children = _parts(mod, framework)
        classes = class_names(mod)
        tensors = []
        for kind, table in (("param", params), ("buffer", buffers)):
            for name, t in table.items():
                if t is None or (kind == "buffer" and name in transient):
                    continue
                full = f"{path}.{name}" if path else name
                entry = {"name": name, "kind": kind, "shape": [int(s) for s in t.shape], "dtype": _dtype_name(t),
                         "transposed": stored_transposed(framework, classes, name)}
                first = seen.setdefault(id(t), full)
                if first != full:  # a tied tensor (shared embeddings, paddle's RNN cells): the same one again
                    entry["same_as"] = first
                tensors.append(entry)
        empty = [n for n, t in params.items() if t is None]  # declared and None (a Linear without bias)
        modules.append({"path": path, "classes": classes, "tensors": tensors, "attrs": _settings(mod), "empty": empty,
                        "children": [n for n, c in children.items() if c is not None]})
    return {"framework": framework, "model": type(model).__name__, "modules": modules,
            "lists": lists or {"white": {}, "black": {}}}


def lists_of(proxy) -> dict:
    """A ProxyModel's black and white lists as {dotted path: mode}, and its layer map as dotted paths."""
    if proxy is None:
        return {"white": {}, "black": {}}
    index = {id(m): p for p, m in named_modules(proxy.model, proxy.framework)}
    return {"white": {index[i]: m for i, m in proxy.white_list.items() if i in index},
            "black": {index[i]: m for i, m in proxy.black_list.items() if i in index},
            "layer_map": [index[id(m)] for m in proxy.layer_map if id(m) in index],
            "layer_map_auto": bool(proxy.layer_map_auto)}


def unwrap(model):
    """(framework module, ProxyModel or None) of a model or a padiff_lite ProxyModel."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(model, "black_list") and hasattr(model, "white_list"):
        return inner, model
    return model, None


# -- safetensors, written a tensor at a time ----------------------------------------------------------------------
def write_safetensors(path: Path, entries: list[tuple[str, str, tuple, object]], metadata: dict | None = None):
    """Write ``entries`` [(key, numpy dtype name, shape, get)] where ``get()`` returns that tensor's numpy array:
    the header first (from shapes and dtypes), then each tensor's bytes as it is read. The file appears at
    ``path`` only when complete."""
    header, offset = {}, 0
    for key, dtype, shape, _ in entries:
        if key in header:
            raise DumpError(f"{path}: two tensors named {key!r}")
        n = math.prod(shape) * np.dtype(dtype).itemsize
        header[key] = {"dtype": _ST[dtype], "shape": [int(s) for s in shape], "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(len(head).to_bytes(8, "little"))
            f.write(head)
            for key, dtype, shape, get in entries:
                arr = np.ascontiguousarray(get())
                if str(arr.dtype) != dtype or tuple(arr.shape) != tuple(shape):
                    raise DumpError(f"{path}: tensor {key} changed while it was written: announced {dtype} "
                                    f"{list(shape)}, read {arr.dtype} {list(arr.shape)}; do not dump while training")
                f.write(memoryview(arr.reshape(-1)).cast("B") if arr.size else b"")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_json(path: Path, data: dict):
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _header(kind: str, structure: dict, step, rank, name) -> dict:
    return {"format": FORMAT, "version": VERSION, "kind": kind, "framework": structure["framework"],
            "name": name or structure["model"], "step": step, "rank": rank, "structure": structure}


# -- weights and gradients ----------------------------------------------------------------------------------------
def dump_weights(model, folder, *, step=None, rank=None, name=None) -> Path:
    """Write ``weights.json`` + ``weights.safetensors`` of ``model`` (module, layer or ProxyModel) into ``folder``."""
    return _dump_tensors("weights", model, folder, step, rank, name)


def dump_grads(model, folder, *, step=None, rank=None, name=None) -> Path:
    """Write ``grads.json`` + ``grads.safetensors``: each parameter's gradient (``main_grad`` when a mixed
    precision wrapper keeps one); parameters without a gradient are listed under ``"no_grad"``."""
    return _dump_tensors("grads", model, folder, step, rank, name)


def _grad_of(t):
    g = getattr(t, "main_grad", None)
    if g is not None and not callable(g):
        return g
    return getattr(t, "grad", None)


def _dump_tensors(kind, model, folder, step, rank, name) -> Path:
    module, proxy = unwrap(model)
    framework = framework_of(module)
    structure = describe(module, framework, lists_of(proxy))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries, no_grad, seen = [], [], set()
    for path, mod in named_modules(module, framework):
        params, buffers, transient, _ = _parts(mod, framework)
        prefix = f"{path}." if path else ""
        tables = [("param", params)] if kind == "grads" else [("param", params), ("buffer", buffers)]
        for tkind, table in tables:
            for tname, t in table.items():
                if t is None or (tkind == "buffer" and tname in transient):
                    continue
                key = prefix + tname
                if id(t) in seen:  # a tied tensor is written once, under its first name
                    continue
                seen.add(id(t))
                value = _grad_of(t) if kind == "grads" else t
                if value is None:
                    no_grad.append(key)
                    continue
                entries.append((key, _numpy_dtype(_dtype_name(value)), tuple(int(s) for s in value.shape),
                                (lambda v=value: to_numpy(v))))
    rank = rank_of(framework) if rank is None else rank
    write_safetensors(folder / f"{kind}.safetensors", entries, {"format": FORMAT, "kind": kind})
    data = _header(kind, structure, step, rank, name or (proxy.name if proxy is not None else None))
    data["tensors"] = [e[0] for e in entries]
    if kind == "grads":
        data["no_grad"] = no_grad
    _write_json(folder / f"{kind}.json", data)
    return folder


# -- the forward report ---------------------------------------------------------------------------------------------
@dataclass
class Call:
    order: int  # when the call began, counted over the whole recording
    path: str
    classes: list
    call: int  # how many calls of this module came before
    end: int = -1  # when the call finished (children finish before their parents)
    api: bool = False  # a call of a framework function (PADIFF_API_CHECK), not of a module
    outputs: list = field(default_factory=list)  # [(where, numpy array, dtype name)]
    grads: dict = field(default_factory=dict)  # output index -> numpy gradient


def _flatten(obj, where="", out=None, is_tensor=None):
    """[(where, tensor)] of every tensor in a nested output (tuples/lists by position, mappings and dataclass
    fields by name)."""
    if out is None:
        out = []
    if is_tensor(obj):
        out.append((where or "out", obj))
    elif isinstance(obj, (tuple, list)):
        for i, v in enumerate(obj):
            _flatten(v, f"{where}[{i}]", out, is_tensor)
    elif isinstance(obj, dict) or hasattr(obj, "items") and hasattr(obj, "keys"):
        for k, v in obj.items():
            _flatten(v, f"{where}.{k}", out, is_tensor)
    elif hasattr(obj, "__dataclass_fields__"):
        for k in obj.__dataclass_fields__:
            _flatten(getattr(obj, k, None), f"{where}.{k}", out, is_tensor)
    return out


ACTIVE: list = []  # recorders attached now (a function wrapper records into them: padiff_lite.compat.api_check)


class Recorder:
    """Records every module call of ``model`` while active (``with recorder:``), and the gradients that reach each
    call's outputs when a backward runs; :meth:`write` writes them as ``report.json`` + ``report.safetensors``.

    Nothing of the model changes: hooks return nothing and are removed on exit."""

    def __init__(self, model, framework: str | None = None, grads: bool = True):
        self.model = model
        self.framework = framework or framework_of(model)
        self.grads = grads
        self.calls: list[Call] = []
        self._counts: dict[int, int] = {}
        self._open: dict[int, list[Call]] = {}
        self._ended = 0
        self._stack: list = []  # [(call, module)] of the calls running now, innermost last
        self._handles: list = []
        self._paths = None

    def __enter__(self):
        self.attach()
        return self

    def __exit__(self, *exc):
        self.detach()

    def attach(self):
        if self._handles:
            return
        ACTIVE.append(self)
        self._paths = named_modules(self.model, self.framework)
        for path, mod in self._paths:
            pre, post = self._pre(path, mod), self._post(mod)
            if self.framework == "torch":
                self._handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
            else:
                self._handles += [mod.register_forward_pre_hook(pre), mod.register_forward_post_hook(post)]

    def detach(self):
        for h in self._handles:
            h.remove()
        self._handles = []
        if self in ACTIVE:
            ACTIVE.remove(self)

    def clear(self):
        self.calls, self._counts, self._open, self._ended, self._stack = [], {}, {}, 0, []

    def _pre(self, path, mod):
        classes = class_names(mod)

        def hook(_m, _inputs):
            k = self._counts.get(id(mod), 0)
            self._counts[id(mod)] = k + 1
            call = Call(len(self.calls), path, classes, k)
            self.calls.append(call)
            self._open.setdefault(id(mod), []).append(call)
            self._stack.append((call, mod))

        return hook

    def _post(self, mod):
        def hook(_m, _inputs, output):
            stack = self._open.get(id(mod))
            if not stack:
                return None
            call = stack.pop()
            for j in range(len(self._stack) - 1, -1, -1):
                if self._stack[j][0] is call:
                    del self._stack[j]
                    break
            self._finish(call, output)
            return None

        return hook

    def _finish(self, call: Call, output):
        call.end = self._ended
        self._ended += 1
        for i, (where, t) in enumerate(_flatten(output, is_tensor=self._is_tensor)):
            call.outputs.append((where, to_numpy(t), _dtype_name(t)))
            if self.grads:
                self._hook_grad(t, call, i)

    def inside_own_module(self) -> str | None:
        """The dotted path of the innermost running module when it is one of the model's own classes (not a
        layer of the framework itself, whose inner function calls are not recorded), else None."""
        if not self._stack:
            return None
        call, mod = self._stack[-1]
        return None if type(mod).__module__.split(".")[0] in ("torch", "paddle") else call.path

    def record_api(self, name: str, output):
        """Record a call of the framework function ``name`` that returned ``output``."""
        parent = self.inside_own_module()
        if parent is None:
            return
        key = ("api", parent, name)
        k = self._counts.get(key, 0)
        self._counts[key] = k + 1
        call = Call(len(self.calls), f"{parent}:{name}" if parent else f":{name}", [name.rsplit(".", 1)[-1]], k,
                    api=True)
        self.calls.append(call)
        self._finish(call, output)

    def _is_tensor(self, obj) -> bool:
        fw = sys.modules[self.framework]
        return isinstance(obj, fw.Tensor)

    def _hook_grad(self, t, call: Call, i: int):
        if self.framework == "torch":
            if not t.requires_grad:
                return
        elif t.stop_gradient:
            return

        def store(g):
            call.grads[i] = to_numpy(g)  # the last gradient that reached this output (one backward per record)

        try:
            t.register_hook(store)
        except (RuntimeError, ValueError):  # a tensor that cannot take a hook has no gradient to report
            pass

    def write(self, folder, *, proxy=None, step=None, rank=None, name=None) -> Path:
        """Write ``report.json`` + ``report.safetensors`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        structure = describe(self.model, self.framework, lists_of(proxy))
        entries, calls = [], []
        for c in self.calls:
            outs = []
            for i, (where, arr, dtype) in enumerate(c.outputs):
                key = f"call{c.order}.out{i}"
                entries.append((key, str(arr.dtype), arr.shape, (lambda a=arr: a)))
                g = c.grads.get(i)
                gkey = None
                if g is not None:
                    gkey = f"call{c.order}.grad{i}"
                    entries.append((gkey, str(g.dtype), g.shape, (lambda a=g: a)))
                outs.append({"where": where, "key": key, "shape": list(arr.shape), "dtype": dtype, "grad": gkey})
            calls.append({"order": c.order, "end": c.end, "path": c.path, "class": c.classes[0], "call": c.call,
                          "api": c.api, "outputs": outs})
        for key, dtype, _, _ in entries:
            if dtype not in _ST:
                raise DumpError(f"output {key} has dtype {dtype}, which safetensors cannot hold")
        rank = rank_of(self.framework) if rank is None else rank
        write_safetensors(folder / "report.safetensors", entries, {"format": FORMAT, "kind": "report"})
        data = _header("report", structure, step, rank, name or (proxy.name if proxy is not None else None))
        data["calls"] = calls
        _write_json(folder / "report.json", data)
        return folder


class Dumper:
    """The offline workflow for one model in one process::

        dumper = Dumper(model, "dumps/torch")
        for batch in loader:
            with dumper.record():              # module calls, and gradients reaching their outputs
                loss = loss_fn(model(batch)); loss.backward()
            dumper.dump()                      # dumps/torch/step_N/rank_M: report, weights, gradients
            optimizer.step(); optimizer.zero_grad()

    ``every``: dump every n-th step only (the others are not recorded). ``rank``: default :func:`rank_of`."""

    def __init__(self, model, root, *, name=None, every: int = 1, rank: int | None = None):
        self.module, self.proxy = unwrap(model)
        self.framework = framework_of(self.module)
        self.root, self.name, self.every, self.rank = Path(root), name, int(every), rank
        if self.every < 1:
            raise ValueError(f"every must be 1 or more, got {every!r}")
        self.step = 0
        self.recorder = Recorder(self.module, self.framework)

    def record(self):
        """A context manager recording this step's calls (nothing on a step that is not dumped)."""
        import contextlib

        return self.recorder if self.step % self.every == 0 else contextlib.nullcontext()

    def dump(self) -> Path | None:
        """Write this step's report, weights and gradients (on a dumped step) and count the step."""
        folder = None
        if self.step % self.every == 0:
            rank = rank_of(self.framework) if self.rank is None else self.rank
            folder = step_folder(self.root, self.step, rank)
            model = self.proxy if self.proxy is not None else self.module
            kw = dict(step=self.step, rank=rank, name=self.name)
            self.recorder.write(folder, proxy=self.proxy, **kw)
            dump_weights(model, folder, **kw)
            dump_grads(model, folder, **kw)
        self.recorder.clear()
        self.step += 1
        return folder


# -- reading ------------------------------------------------------------------------------------------------------
_STEP = re.compile(r"step_(\d+)$")
_RANK = re.compile(r"rank_(\d+)$")


class DumpFile:
    """One kind of a dump folder: its JSON (``meta``) and its tensors, read on demand with numpy."""

    def __init__(self, folder: Path, kind: str):
        self.folder, self.kind = folder, kind
        meta_path, data_path = folder / f"{kind}.json", folder / f"{kind}.safetensors"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise DumpError(f"{meta_path}: cannot be read as a dump ({exc}); write it with padiff_lite.verify.dump")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("kind") != kind:
            raise DumpError(f"{meta_path}: not a padiff_lite dump of {kind} (format {meta.get('format')!r} "
                            f"kind {meta.get('kind')!r}); PaDiff's own .npy dumps are not read")
        if meta.get("version") != VERSION:
            raise DumpError(f"{meta_path}: dump format version {meta.get('version')}, this padiff_lite reads "
                            f"{VERSION}; write the dumps again with this version")
        self.meta = meta
        self._data_path = data_path
        self._keys = None

    def keys(self) -> set:
        if self._keys is None:
            from safetensors import safe_open

            try:
                with safe_open(str(self._data_path), framework="np") as f:
                    self._keys = set(f.keys())
            except Exception as exc:  # noqa: BLE001 - a missing or damaged file, said with its name
                raise DumpError(f"{self._data_path}: cannot be read ({type(exc).__name__}: {exc}); the dump is "
                                "incomplete: write it again") from exc
        return self._keys

    def get(self, key: str) -> np.ndarray:
        if key not in self.keys():
            raise DumpError(f"{self._data_path}: tensor {key} listed in {self.kind}.json is missing; write the dump "
                            "again")
        from safetensors import safe_open

        with safe_open(str(self._data_path), framework="np") as f:
            return f.get_tensor(key)


def leaf_folders(path) -> dict[tuple, Path]:
    """{(step, rank): folder} of a dump root: ``step_N/rank_M`` folders, ``rank_M`` folders or the folder itself
    (step or rank None where the level is absent)."""
    path = Path(path)
    if not path.is_dir():
        raise DumpError(f"{path}: no such dump folder")
    own_step = _STEP.match(path.name)  # the path is itself a step folder (or a rank folder of one)
    own_rank = _RANK.match(path.name)
    if own_rank and not own_step:
        own_step = _STEP.match(path.parent.name)
    steps = sorted((int(m.group(1)), p) for p in path.iterdir() if p.is_dir() and (m := _STEP.match(p.name)))
    out = {}
    for step, folder in steps or [(int(own_step.group(1)) if own_step else None, path)]:
        ranks = sorted((int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _RANK.match(p.name)))
        for rank, leaf in ranks or [(int(own_rank.group(1)) if own_rank else None, folder)]:
            out[(step, rank)] = leaf
    return out


def has_kind(folder: Path, kind: str) -> bool:
    return (folder / f"{kind}.json").is_file()
