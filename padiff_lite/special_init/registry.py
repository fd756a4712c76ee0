"""The special-init registry: which function transfers a given pair of layer classes.

Two kinds of entries share one key space, (base framework, base class, raw framework, raw class):

* imperative inits, ``fn(module, layer)``, PaDiff's form: the function copies ``module`` (base)
  into ``layer`` (raw) itself. They run last, with every tensor they could touch saved first
  and restored if they raise or change a shape.
* mapping rules, ``fn(base_module, raw_module) -> list[Map]``: plain data saying which tensor goes
  where with which transform. The planner validates them before anything is written and the
  same rule is registered for the reverse direction by inverting the maps.
"""
from __future__ import annotations

import enum
import functools
import inspect
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple

from ..errors import RegistryError
from ..layout import Part
from ..ops import TRANSFORMS

FRAMEWORKS = ("torch", "paddle")


class InitKey(NamedTuple):
    base_framework: str
    base_class: str
    raw_framework: str
    raw_class: str

    def __str__(self):
        return f"{self.base_framework}.{self.base_class} -> {self.raw_framework}.{self.raw_class}"

    def reversed(self) -> "InitKey":
        return InitKey(self.raw_framework, self.raw_class, self.base_framework, self.base_class)


@dataclass(frozen=True)
class Map:
    """One step of a mapping rule, in names local to the two layers of a pair.

    - ``Map("weight", "weight", "transpose")``: copy with a transpose.
    - ``Map("in_proj_weight", "q_proj.weight", "transpose", src_rows=(0, 8))``: a row block.
    - ``Map("q_proj.weight", "qkv_proj.weight", "transpose", dst_part=features((0, 16), (32, 48)))``: the
      transposed q weight goes to output features 0..16 and 32..48 of a fused weight (see
      :mod:`padiff_lite.layout`: parts in features are right for torch's ``[out, in]`` and paddle's
      ``[in, out]`` alike).
    - ``Map("experts.3.up_gate_proj.weight", "experts.gate_up_proj", src_part=None, dst_part=Part(index=3))``:
      one expert module into entry 3 of a packed ``[E, ...]`` tensor.
    - ``Map(None, "scale", value=1.0)``: fill the target with a constant.
    - ``Map("scale", None, value=1.0)``: the source has no counterpart; it must equal the constant.
    - ``Map("num_batches_tracked", None)``: the source has no counterpart and is ignored.
    - ``Map(None, "num_batches_tracked")``: the target has no counterpart and is left as it is.
    """

    src: str | None
    dst: str | None
    transform: str = "copy"
    src_rows: tuple[int, int] | None = None  # shorthand for src_part=Part(((start, stop),)): rows of dim 0
    dst_rows: tuple[int, int] | None = None
    value: float | None = None
    src_part: Part | None = None  # the piece of the source read (padiff_lite.layout.Part)
    dst_part: Part | None = None  # the piece of the target written

    def __post_init__(self):
        if self.transform not in TRANSFORMS:
            raise RegistryError(f"Map transform {self.transform!r} is not one of {tuple(TRANSFORMS)}")
        object.__setattr__(self, "transform", TRANSFORMS[self.transform])  # the plan's ops hold the Transform
        if self.src is None and self.dst is None:
            raise RegistryError("a Map needs a source, a target, or both")
        for rows_name, part_name in (("src_rows", "src_part"), ("dst_rows", "dst_part")):
            rows, part = getattr(self, rows_name), getattr(self, part_name)
            if part is not None and not isinstance(part, Part):
                raise RegistryError(f"Map {part_name} takes a padiff_lite.layout.Part, got {type(part).__name__}")
            if rows is not None:
                if part is not None:
                    raise RegistryError(f"a Map takes {rows_name} or {part_name}, not both")
                object.__setattr__(self, part_name, Part((tuple(rows),)))
                object.__setattr__(self, rows_name, None)

    def inverse(self) -> "Map":
        return replace(self, src=self.dst, dst=self.src, src_part=self.dst_part, dst_part=self.src_part)

    @functools.cached_property
    def _inverted(self) -> "Map":
        """``inverse()``, made once per Map: a rule gives the same few Maps for every layer of a model, and
        a rule used in reverse inverts them for each (kept in the instance: no hashing of the fields)."""
        return self.inverse()


class RuleKind(str, enum.Enum):
    """What a registered entry is: a mapping rule (a list of Maps, planned like any pair) or an imperative special
    init (a function that copies the layer itself). Equal to its value ("mapping" / "imperative")."""

    MAPPING = "mapping"
    IMPERATIVE = "imperative"

    def __str__(self):
        return self.value

    @property
    def label(self) -> str:
        """How reports and mappings name an entry of this kind ("mapping <key>", "special init <key>")."""
        return "mapping" if self is RuleKind.MAPPING else "special init"


def rule_label(entry) -> str:
    """The rule column of reports and mappings: "default" (no entry), "mapping <key>" or "special init <key>"."""
    return "default" if entry is None else f"{RuleKind(entry.kind).label} {entry.key}"


@dataclass
class SpecialInit:
    key: InitKey
    func: Callable
    kind: RuleKind
    origin: str  # "module:line" where it was registered
    note: str = ""  # what the rule transforms, for the rules table
    caveat: str = ""  # semantics that weights cannot fix, copied into reports
    inverted: bool = False  # a mapping rule used in its reverse direction
    caveat_when: Callable | None = None  # fn(module, layer) in registration order: does the caveat apply here?

    def caveat_for(self, base_module, raw_module) -> str:
        """The caveat, if it applies to this pair of modules ("" otherwise)."""
        if not self.caveat or self.caveat_when is None:
            return self.caveat
        args = (raw_module, base_module) if self.inverted else (base_module, raw_module)
        return self.caveat if self.caveat_when(*args) else ""

    def maps(self, base_module, raw_module) -> list[Map]:
        if self.inverted:
            return [m._inverted if isinstance(m, Map) else m.inverse() for m in self.func(raw_module, base_module)]
        return list(self.func(base_module, raw_module))


def _origin(func) -> str:
    try:
        return f"{func.__module__}:{inspect.getsourcelines(func)[1]}"
    except (OSError, TypeError):
        return getattr(func, "__module__", "?") or "?"


def _check_signature(func, what: str, key: InitKey):
    if not callable(func):
        raise RegistryError(f"special init for {key} must be callable, got {type(func).__name__}")
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(object(), object())
    except TypeError:
        raise RegistryError(
            f"special init {getattr(func, '__qualname__', func)!r} for {key} has signature {sig}; "
            f"{what} functions take exactly two positional arguments (base_module, raw_module)"
        ) from None


class InitPool:
    """The global registry. Use ``init_pool.register(...)`` as a decorator."""

    def __init__(self):
        self._entries: dict[InitKey, SpecialInit] = {}

    # -- registering ---------------------------------------------------------
    def _key(self, bf, bc, rf, rc) -> InitKey:
        for fw in (bf, rf):
            if fw not in FRAMEWORKS:
                raise RegistryError(f"framework {fw!r} is not one of {FRAMEWORKS}")
        for cls in (bc, rc):
            if not isinstance(cls, str) or not cls:
                raise RegistryError(f"class names are strings like 'Linear', got {cls!r}")
        return InitKey(bf, bc, rf, rc)

    def _add(self, entry: SpecialInit, override: bool):
        old = self._entries.get(entry.key)
        if old is not None and not override:
            raise RegistryError(
                f"a special init for {entry.key} is already registered (at {old.origin}); "
                "pass override=True to replace it"
            )
        self._entries[entry.key] = entry

    def add(self, bf, bc, rf, rc, func, override=False, note="", caveat=""):
        """Register an imperative ``func(module, layer)`` that copies base ``module`` into raw ``layer``."""
        key = self._key(bf, bc, rf, rc)
        _check_signature(func, "special init", key)
        self._add(SpecialInit(key, func, RuleKind.IMPERATIVE, _origin(func), note, caveat), override)
        return func

    def register(self, bf, bc, rf, rc, override=False, note="", caveat=""):
        """Decorator form of :meth:`add`."""

        def deco(func):
            return self.add(bf, bc, rf, rc, func, override=override, note=note, caveat=caveat)

        return deco

    def register_maps(self, bf, bc, rf, rc, both_directions=True, override=False, note="", caveat="",
                      caveat_when=None):
        """Decorator for a mapping rule ``fn(base_module, raw_module) -> list[Map]``.

        With ``both_directions`` the reverse key is registered too, using the inverted maps.
        """
        key = self._key(bf, bc, rf, rc)

        def deco(func):
            _check_signature(func, "mapping rule", key)
            origin = _origin(func)
            self._add(SpecialInit(key, func, RuleKind.MAPPING, origin, note, caveat, caveat_when=caveat_when), override)
            if both_directions and key.reversed() != key:
                self._add(SpecialInit(key.reversed(), func, RuleKind.MAPPING, origin, note, caveat, inverted=True,
                                      caveat_when=caveat_when), override)
            return func

        return deco

    def remove(self, bf, bc, rf, rc):
        self._entries.pop(InitKey(bf, bc, rf, rc), None)

    def saved(self) -> dict:
        """Every registration as it is now, for :meth:`restore` (a test puts the registry back this way)."""
        return dict(self._entries)

    def restore(self, saved: dict):
        """Make the registrations exactly ``saved`` (from :meth:`saved`): later additions, replacements and
        removals are undone."""
        self._entries = dict(saved)

    # -- looking up ----------------------------------------------------------
    def __contains__(self, key) -> bool:
        return InitKey(*key) in self._entries

    def __getitem__(self, key) -> SpecialInit:
        return self._entries[InitKey(*key)]

    def __len__(self):
        return len(self._entries)

    def entries(self) -> list[SpecialInit]:
        return sorted(self._entries.values(), key=lambda e: tuple(e.key))

    def lookup(self, base_adapter, base_module, raw_adapter, raw_module) -> SpecialInit | None:
        """The entry for this pair of modules; subclasses inherit their bases' entries (nearest class first, on the
        base side, then on the raw side). Asked once per class pair of a pairing (``Pairing._rule`` keeps the answer)."""
        raw_names = raw_adapter.class_names(raw_module)
        for bc in base_adapter.class_names(base_module):
            for rc in raw_names:
                found = self._entries.get(InitKey(base_adapter.name, bc, raw_adapter.name, rc))
                if found:
                    return found
        return None

    def classes_on(self, side: str, framework: str) -> set[str]:
        """Class names of ``framework`` that take part in a registered pair on ``side`` ("base"/"raw")."""
        idx = 0 if side == "base" else 1
        out = set()
        for k in self._entries:
            fw, cls = (k.base_framework, k.base_class) if idx == 0 else (k.raw_framework, k.raw_class)
            if fw == framework:
                out.add(cls)
        return out
