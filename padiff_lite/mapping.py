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
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .errors import MappingError

FORMAT = "padiff-lite mapping 1"


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
        """Write the mapping as JSON (written to a temporary name, then renamed: never half a file)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        tmp.replace(path)
        return path

    def __str__(self):
        w = max([len(e.base) for e in self.layers] + [4])
        lines = [f"mapping {self.base_framework}:{self.base_model} -> {self.raw_framework}:{self.raw_model}: "
                 f"{len(self.layers)} layers, {len(self.tensors)} tensors"]
        lines += [f"  {e.base:<{w}}  -> {e.raw}  [{e.how}]" for e in self.layers]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# -- reading -------------------------------------------------------------------
def load(obj) -> Mapping:
    """A :class:`Mapping` from a Mapping, a dict (the file's form, or ``{"layers": {base: raw}}``, or
    ``{base: raw}``) or a path to a JSON file. MappingError says what is wrong."""
    if isinstance(obj, Mapping):
        return obj
    where = "mapping"
    if isinstance(obj, (str, Path)):
        where = str(obj)
        try:
            obj = json.loads(Path(obj).read_text())
        except FileNotFoundError:
            raise MappingError(f"mapping file {where} does not exist; write one with `padiff-lite pair` or "
                               "report.mapping.save(path)") from None
        except (OSError, ValueError) as exc:
            raise MappingError(f"mapping file {where} is not readable JSON ({type(exc).__name__}: {exc}); write it "
                               "again with `padiff-lite pair` or report.mapping.save(path)") from None
    if not isinstance(obj, dict):
        raise MappingError(f"{where}: a mapping is a dict or a JSON file holding one, got {type(obj).__name__}")
    if "layers" not in obj:  # {base path: raw path}
        obj = {"layers": obj}
    fmt = obj.get("format", FORMAT)
    if fmt != FORMAT:
        raise MappingError(f"{where}: format {fmt!r} is not {FORMAT!r}; write the mapping again with this version")
    base, raw = obj.get("base") or {}, obj.get("raw") or {}
    m = Mapping(base.get("framework", ""), base.get("model", ""), raw.get("framework", ""), raw.get("model", ""),
                notes=list(obj.get("notes", [])))
    layers = obj["layers"]
    if isinstance(layers, dict):
        layers = [{"base": b, "raw": r} for b, r in layers.items()]
    m.layers = [_entry(LayerEntry, e, where, "layers", i) for i, e in enumerate(layers)]
    m.tensors = [_entry(TensorEntry, e, where, "tensors", i) for i, e in enumerate(obj.get("tensors", []))]
    bad = [e for e in m.layers if not isinstance(e.base, str) or not isinstance(e.raw, str)]
    if bad:
        raise MappingError(f"{where}: layer entries need a base and a raw dotted path (strings), got "
                           + "; ".join(f"{e.base!r} -> {e.raw!r}" for e in bad))
    return m


def _entry(cls, e, where, key, i):
    if not isinstance(e, dict):
        raise MappingError(f"{where}: {key}[{i}] is a {type(e).__name__}, expected an object with base and raw paths")
    names = set(cls.__dataclass_fields__)
    unknown = sorted(set(e) - names)
    if unknown or "base" not in e or "raw" not in e:
        raise MappingError(f"{where}: {key}[{i}] = {e!r}: expected the keys base, raw"
                           f" (and optionally {', '.join(sorted(names - {'base', 'raw'}))})"
                           + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    return cls(**e)


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
    bad = []
    for e in m.layers:
        for side, path in (("base", e.base), ("raw", e.raw)):
            if path not in mods[side]:
                bad.append(f"{side} layer {path or '<root>'}")
    for e in m.tensors:
        for side, path in (("base", e.base), ("raw", e.raw)):
            if path and path not in tens[side]:
                bad.append(f"{side} tensor {path}")
    if bad:
        names = {"base": f"{base.framework}:{base.name}", "raw": f"{raw.framework}:{raw.name}"}
        shown = "; ".join(f"{b} (not in {names[b.split()[0]]})" for b in dict.fromkeys(bad))
        raise MappingError(f"the mapping names {len(bad)} path{'s' * (len(bad) != 1)} the models lack: {shown}; "
                           "the mapping was made for another architecture or size: make it again for these models "
                           "(`padiff-lite pair`, or assign_weight(..., example_inputs=...)) or fix the paths")


# -- from a plan, and back ---------------------------------------------------------
def from_plan(plan, notes=()) -> Mapping:
    """What a plan pairs and copies, as a Mapping (``report.mapping``)."""
    base, raw = plan.base, plan.raw
    m = Mapping(base.framework, base.name, raw.framework, raw.name, notes=list(notes))
    for pair in plan.pairs:
        e = pair.entry
        rule = "default" if e is None else f"{'mapping' if e.kind == 'mapping' else 'special init'} {e.key}"
        m.layers.append(LayerEntry(pair.base.path, pair.raw.path, type(pair.base.module).__name__,
                                   type(pair.raw.module).__name__, pair.how, rule))
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


def check_tensors(m: Mapping, plan) -> list[str]:
    """Problems where a loaded mapping's tensor entries differ from what ``plan`` does (none when it lists none)."""
    if not m.tensors:
        return []
    want = {_key(e) for e in m.tensors}
    got = {_key(e) for e in plan_tensors(plan)}
    if want == got:
        return []
    lines = [f"the mapping says {TensorEntry(*k)} but the plan does not" for k in sorted(want - got, key=str)[:10]]
    lines += [f"the plan does {TensorEntry(*k)}, which the mapping does not list" for k in sorted(got - want, key=str)[:10]]
    return [f"the mapping's tensors differ from what pairing and the rules give ({len(want ^ got)} entries): "
            + "; ".join(lines) + "; the models or the rules changed since the mapping was made: make it again, "
            "or drop its \"tensors\" list to pair by its layers only"]


def _key(e: TensorEntry) -> tuple:
    return (e.base, e.raw, e.transform, e.base_part, e.raw_part, None if e.value is None else float(e.value))


def prepare(obj, base, raw) -> Mapping:
    """A user's mapping (file, dict or Mapping) read, turned to run ``base`` -> ``raw`` and checked against
    both models (ProxyModels): every path it names must exist."""
    m = oriented(load(obj), base, raw)
    check_paths(m, base, raw)
    return m
