"""The mapping: which base layer went to which raw layer, and which tensor to which, as plain data.

A mapping is what pairing found, written down so it can be read, reviewed and reused: found once by
running two small random-weight models (``padiff-lite pair``), then handed to ``assign_weight(...,
mapping=)``, ``convert_checkpoint(..., mapping=)`` or ``padiff-lite convert --map`` where nothing can run.

File format (JSON, ``"format": "padiff-lite mapping 1"``)::

    {"format": "padiff-lite mapping 1",
     "base": {"framework": "torch", "model": "BertModel"},
     "raw": {"framework": "paddle", "model": "PaddleBert"},
     "layers": [{"base": "encoder.layer.0.attention.self.query", "raw": "encoder.layers.0.self_attn.q_proj",
                 "base_class": "Linear", "raw_class": "Linear", "how": "execution", "rule": "mapping ..."}, ...],
     "tensors": [{"base": "...query.weight", "raw": "...q_proj.weight", "transform": "transpose"}, ...],
     "notes": ["..."]}

``layers`` drive pairing (after pairing by name, which always goes first); ``tensors`` are what the
plan did, and a loaded mapping's tensors are checked against the new plan (any difference is refused).
A hand-written mapping may be just ``{"layers": {"base.path": "raw.path", ...}}`` or ``{"base.path":
"raw.path", ...}``. A mapping made base -> raw is turned around when used raw -> base (frameworks swapped).

A mapping file comes from a user: it is read only from a regular file (:mod:`.regular`; a FIFO or a device is
refused), at most :data:`.regular.MAX_JSON_BYTES`, and every field is checked for its type before use
(:func:`schema_problems`); anything else is one MappingError naming the file, the field and the fix.
"""
from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .errors import MappingError
from .problems import Problem
from .regular import read_json_bytes
from .special_init.registry import rule_label

FORMAT = "padiff-lite mapping 1"
_FIX = "write it again with `padiff-lite pair` or report.mapping.save(path)"


@dataclass(frozen=True)
class LayerEntry:
    base: str
    raw: str
    base_class: str = ""
    raw_class: str = ""
    how: str = "mapping"  # how the pair was found: root | name | order | layer_map | execution | mapping
    rule: str = ""

    def inverse(self) -> "LayerEntry":
        return replace(self, base=self.raw, raw=self.base, base_class=self.raw_class, raw_class=self.base_class)


@dataclass(frozen=True)
class TensorEntry:
    base: str | None  # None: the raw tensor is set to ``value``
    raw: str | None  # None: the base tensor must equal ``value`` (the raw layer has no place for it)
    transform: str = "copy"
    base_part: str = ""  # the piece read / written, as layout.Part prints it ("" = whole)
    raw_part: str = ""
    value: float | None = None

    def inverse(self) -> "TensorEntry":
        return replace(self, base=self.raw, raw=self.base, base_part=self.raw_part, raw_part=self.base_part)

    def __str__(self):
        b = f"{self.base}{self.base_part}" if self.base else f"{self.value}"
        r = f"{self.raw}{self.raw_part}" if self.raw else f"== {self.value}"
        return f"{b} -> {r}" + ("" if self.transform == "copy" else f" ({self.transform})")


@dataclass
class Mapping:
    base_framework: str = ""
    base_model: str = ""
    raw_framework: str = ""
    raw_model: str = ""
    layers: list[LayerEntry] = field(default_factory=list)
    tensors: list[TensorEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    how: str = "mapping"  # what pairing records for the layers it applies from this mapping

    @property
    def layer_paths(self) -> dict[str, str]:
        """base layer path -> raw layer path."""
        return {e.base: e.raw for e in self.layers}

    @property
    def tensor_paths(self) -> dict[str, str]:
        """base tensor path -> raw tensor path (whole-tensor copies; parts are in ``tensors``)."""
        return {e.base: e.raw for e in self.tensors if e.base and e.raw and not e.base_part and not e.raw_part}

    def inverse(self) -> "Mapping":
        return Mapping(self.raw_framework, self.raw_model, self.base_framework, self.base_model,
                       [e.inverse() for e in self.layers], [e.inverse() for e in self.tensors], list(self.notes),
                       self.how)

    def to_dict(self) -> dict:
        return {"format": FORMAT,
                "base": {"framework": self.base_framework, "model": self.base_model},
                "raw": {"framework": self.raw_framework, "model": self.raw_model},
                "layers": [asdict(e) for e in self.layers],
                "tensors": [{k: v for k, v in asdict(e).items() if v not in ("", None) or k in ("base", "raw")}
                            for e in self.tensors],
                "notes": list(self.notes)}

    def save(self, path) -> Path:
        """Write the mapping as JSON (written to a temporary name, then renamed: never half a file).
        MappingError when ``path`` cannot be written (a folder, a missing folder, a path under a file)."""
        path = Path(path)
        problem = output_problem(path)
        if problem:
            raise MappingError(f"{path}: {problem}")
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
            tmp.replace(path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise MappingError(f"{path}: cannot write the mapping ({exc.strerror or exc}); write it into a folder "
                               "you can write to") from None
        return path

    def __str__(self):
        w = max([len(e.base) for e in self.layers] + [4])
        lines = [f"mapping {self.base_framework}:{self.base_model} -> {self.raw_framework}:{self.raw_model}: "
                 f"{len(self.layers)} layers, {len(self.tensors)} tensors"]
        lines += [f"  {e.base:<{w}}  -> {e.raw}  [{e.how}]" for e in self.layers]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


class Paired(str, enum.Enum):
    """What paired the layers names leave open."""

    NAMES = "names"  # names alone; example inputs or a mapping could pair more (the strict error says how)
    NAMES_ONLY = "names only"  # names alone where nothing can run (checkpoint conversion): no such hint
    EXECUTION = "execution"  # running both models on example inputs
    MAPPING = "mapping"  # a mapping given by the user: its tensors are checked against the plan

    def __str__(self):
        return self.value


@dataclass(frozen=True)
class Context:
    """How the layers names leave open were paired: one value that validation's checks and hints read (instead of
    flags threaded through every signature). ``mapping``: the Mapping that paired them (given, or found by
    execution), None when nothing did."""

    paired: Paired = Paired.NAMES_ONLY
    mapping: Mapping | None = None

    @property
    def notes(self) -> list[str]:
        """What pairing by execution noted (layers that never ran, or ran more than once)."""
        return list(self.mapping.notes) if self.mapping is not None else []


# -- reading -------------------------------------------------------------------
def load(obj) -> Mapping:
    """A :class:`Mapping` from a Mapping, a dict (the file's form, or ``{"layers": {base: raw}}``, or
    ``{base: raw}``) or a path to a JSON file. MappingError says what is wrong."""
    if isinstance(obj, Mapping):
        return obj
    where = "mapping"
    if isinstance(obj, (str, Path)):
        where = str(obj)
        if not Path(obj).exists() and not Path(obj).is_symlink() and Path(obj).parent.is_dir():
            raise MappingError(f"mapping file {where} does not exist; write one with `padiff-lite pair` or "
                               "report.mapping.save(path)")
        try:
            obj = json.loads(read_json_bytes(obj, MappingError, "mapping file").decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise MappingError(f"mapping file {where} is not readable JSON ({type(exc).__name__}: "
                               f"{str(exc)[:200]}); {_FIX}") from None
    problems = schema_problems(obj)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise MappingError(f"{where}: not a mapping: {'; '.join(problems[:3])}{more}; {_FIX}, or fix the field")
    if "layers" not in obj:  # {base path: raw path}
        obj = {"layers": obj}
    fmt = obj.get("format", FORMAT)
    if fmt != FORMAT:
        raise MappingError(f"{where}: format {fmt!r} is not {FORMAT!r}; write the mapping again with this version")
    base, raw = obj.get("base") or {}, obj.get("raw") or {}
    m = Mapping(base.get("framework", ""), base.get("model", ""), raw.get("framework", ""), raw.get("model", ""),
                notes=list(obj.get("notes") or []))
    layers = obj["layers"]
    if isinstance(layers, dict):
        layers = [{"base": b, "raw": r} for b, r in layers.items()]
    m.layers = [LayerEntry(**e) for e in layers]
    m.tensors = [TensorEntry(**e) for e in obj.get("tensors") or []]
    return m


# -- the schema of a mapping -----------------------------------------------------
_LAYER_TYPES = {name: (str,) for name in LayerEntry.__dataclass_fields__}
_TENSOR_TYPES = {"base": (str, type(None)), "raw": (str, type(None)), "transform": (str,), "base_part": (str,),
                 "raw_part": (str,), "value": (int, float, type(None))}


def _type(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(v), f"a {type(v).__name__}")


def _entry_problems(e, key: str, i, types: dict) -> list[str]:
    if not isinstance(e, dict):
        return [f"{key}[{i}] is {_type(e)}, expected an object with base and raw paths"]
    out = []
    unknown = sorted(str(k) for k in e if k not in types)
    if unknown or "base" not in e or "raw" not in e:
        out.append(f"{key}[{i}] = {_short(e)}: expected the keys base, raw (and optionally "
                   f"{', '.join(sorted(set(types) - {'base', 'raw'}))})"
                   + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    for name, v in e.items():
        if name in types and (not isinstance(v, types[name]) or isinstance(v, bool)):
            want = " or ".join(dict.fromkeys(_type(t()) if t is not type(None) else "null" for t in types[name]))
            out.append(f"{key}[{i}].{name} is {_type(v)}, expected {want}")
    return out


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 120 else text[:117] + "..."


def schema_problems(obj) -> list[str]:
    """What is wrong with a mapping's plain data (the file's JSON, or a dict given in Python), field by field; []
    when every field has the type the mapping needs. Containers are looked at one level at a time (no recursion),
    so any input, however nested, gives a list of problems."""
    if not isinstance(obj, dict):
        return [f"a mapping is an object (a dict), got {_type(obj)}"]
    if "layers" not in obj:  # the hand-written form {base path: raw path}
        bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, str)]
        return [f"entry {_short(k)}: {_type(obj[k])} where a raw layer path (a string) belongs" for k in bad[:5]]
    out = []
    fmt = obj.get("format", FORMAT)
    if not isinstance(fmt, str):
        out.append(f"format is {_type(fmt)}, expected the string {FORMAT!r}")
    for side in ("base", "raw"):
        v = obj.get(side)
        if v is None:
            continue
        if not isinstance(v, dict):
            out.append(f"{side} is {_type(v)}, expected an object {{framework, model}}")
            continue
        out += [f"{side}.{k} is {_type(v[k])}, expected a string" for k in ("framework", "model")
                if k in v and not isinstance(v[k], str)]
    notes = obj.get("notes")
    if notes is not None and (not isinstance(notes, list) or not all(isinstance(n, str) for n in notes)):
        out.append("notes is not a list of strings")
    layers = obj["layers"]
    if isinstance(layers, dict):
        out += [f"layers[{_short(k)}] is {_type(v)}, expected a raw layer path (a string)"
                for k, v in layers.items() if not isinstance(k, str) or not isinstance(v, str)]
    elif isinstance(layers, list):
        for i, e in enumerate(layers):
            out += _entry_problems(e, "layers", i, _LAYER_TYPES)
    else:
        out.append(f"layers is {_type(layers)}, expected a list of {{base, raw}} objects or an object "
                   "{base path: raw path}")
    tensors = obj.get("tensors")
    if tensors is not None:
        if not isinstance(tensors, list):
            out.append(f"tensors is {_type(tensors)}, expected a list of {{base, raw, transform}} objects")
        else:
            for i, e in enumerate(tensors):
                out += _entry_problems(e, "tensors", i, _TENSOR_TYPES)
    return out


def output_problem(path: Path) -> str | None:
    """Why a file cannot be written at ``path`` (a folder, a missing folder, a path under a file), or None."""
    if path.is_dir():
        return "is a folder; name the file to write, e.g. " + str(path / "model.map.json")
    parent = path.parent
    if not parent.exists():
        under = next((p for p in parent.parents if p.exists() and not p.is_dir()), None)
        if under is not None:
            return f"{under} is a file, not a folder; choose a path whose folders are folders"
        return f"the folder {parent} does not exist; create it first (mkdir -p {parent}) or write elsewhere"
    if not parent.is_dir():
        return f"{parent} is a file, not a folder; choose a path whose folders are folders"
    return None


# -- fitting a mapping to two models ---------------------------------------------
def oriented(m: Mapping, base, raw) -> Mapping:
    """``m`` as it applies to ``base`` -> ``raw`` (ProxyModels): turned around when it was made the other way."""
    fw = (base.framework, raw.framework)
    made = (m.base_framework, m.raw_framework)
    if not any(made):
        return m  # a hand-written mapping: as given
    if fw[0] == fw[1] == made[0] == made[1]:  # one framework on both sides: the model names tell the direction
        names = (m.base_model, m.raw_model)
        return m.inverse() if names == (raw.name, base.name) and names != (base.name, raw.name) else m
    if made == fw:
        return m
    if made == fw[::-1]:
        return m.inverse()
    raise MappingError(
        f"the mapping was made for {m.base_framework}:{m.base_model} -> {m.raw_framework}:{m.raw_model}, not for "
        f"{base.framework}:{base.name} -> {raw.framework}:{raw.name}; make one for these models with `padiff-lite pair`")


def _tensor_names(proxy) -> set[str]:
    out = set()
    for path, module in proxy.named_modules():
        for name, *_ in proxy.adapter.own_tensors(module):
            out.add(f"{path}.{name}" if path else name)
    return out


def check_paths(m: Mapping, base, raw):
    """MappingError naming every layer or tensor path of ``m`` that ``base`` / ``raw`` (ProxyModels) lacks."""
    mods = {"base": {p for p, _ in base.named_modules()}, "raw": {p for p, _ in raw.named_modules()}}
    tens = {"base": _tensor_names(base), "raw": _tensor_names(raw)} if m.tensors else {}
    bad = []  # (side, "layer" | "tensor", path)
    for e in m.layers:
        for side, path in (("base", e.base), ("raw", e.raw)):
            if path not in mods[side]:
                bad.append((side, "layer", path or "<root>"))
    for e in m.tensors:
        for side, path in (("base", e.base), ("raw", e.raw)):
            if path and path not in tens[side]:
                bad.append((side, "tensor", path))
    if bad:
        names = {"base": f"{base.framework}:{base.name}", "raw": f"{raw.framework}:{raw.name}"}
        shown = "; ".join(f"{side} {what} {path} (not in {names[side]})" for side, what, path in dict.fromkeys(bad))
        raise MappingError(f"the mapping names {len(bad)} path{'s' * (len(bad) != 1)} the models lack: {shown}; "
                           "the mapping was made for another architecture or size: make it again for these models "
                           "(`padiff-lite pair`, or assign_weight(..., example_inputs=...)) or fix the paths")


# -- from a plan, and back ---------------------------------------------------------
def from_plan(plan, notes=()) -> Mapping:
    """What a plan pairs and copies, as a Mapping (``report.mapping``)."""
    base, raw = plan.base, plan.raw
    m = Mapping(base.framework, base.name, raw.framework, raw.name, notes=list(notes))
    for pair in plan.pairs:
        m.layers.append(LayerEntry(pair.base.path, pair.raw.path, type(pair.base.module).__name__,
                                   type(pair.raw.module).__name__, pair.how, rule_label(pair.entry)))
    m.tensors = plan_tensors(plan)
    for pair in plan.imperative:
        m.notes.append(f"{pair.base.path or '<root>'} -> {pair.raw.path or '<root>'}: its tensors are written by an "
                       "imperative special init, not listed per tensor")
    return m


def plan_tensors(plan) -> list[TensorEntry]:
    out = []
    for op in list(plan.ops) + list(plan.checks):
        out.append(TensorEntry(op.src.path if op.src else None, op.dst.path if op.dst else None, op.transform,
                               str(op.src_part or ""), str(op.dst_part or ""), op.value))
    return out


def check_tensors(m: Mapping, plan) -> list[Problem]:
    """Problems where a loaded mapping's tensor entries differ from what ``plan`` does (none when it lists none)."""
    if not m.tensors:
        return []
    want = {_key(e) for e in m.tensors}
    got = {_key(e) for e in plan_tensors(plan)}
    if want == got:
        return []
    lines = [f"the mapping says {TensorEntry(*k)} but the plan does not" for k in sorted(want - got, key=str)[:10]]
    lines += [f"the plan does {TensorEntry(*k)}, which the mapping does not list" for k in sorted(got - want, key=str)[:10]]
    return [Problem("", f"the mapping's tensors differ from what pairing and the rules give ({len(want ^ got)} "
                    "entries): " + "; ".join(lines), "the models or the rules changed since the mapping was made: make "
                    "it again, or drop its \"tensors\" list to pair by its layers only")]


def _key(e: TensorEntry) -> tuple:
    return (e.base, e.raw, e.transform, e.base_part, e.raw_part, None if e.value is None else float(e.value))


def prepare(obj, base, raw) -> Mapping:
    """A user's mapping (file, dict or Mapping) read, turned to run ``base`` -> ``raw`` and checked against
    both models (ProxyModels): every path it names must exist."""
    m = oriented(load(obj), base, raw)
    check_paths(m, base, raw)
    return m
