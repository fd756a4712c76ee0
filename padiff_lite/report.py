"""TransferReport: what a transfer did, for code to inspect and people to read."""
from __future__ import annotations

from dataclasses import dataclass, field

from .ops import FILL
from .special_init.registry import rule_label


@dataclass(slots=True)  # one per layer pair
class PairRecord:
    base_path: str
    raw_path: str
    base_class: str
    raw_class: str
    rule: str  # "default", "mapping <key>" or "special init <key>"
    how: str  # how the pair was found: root | name | order | layer_map
    tensors: int


@dataclass
class TransferReport:
    base: str  # "torch:Model"
    raw: str
    pairs: list[PairRecord] = field(default_factory=list)
    tensors: int = 0
    elements: int = 0
    bytes: int = 0
    seconds: float = 0.0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)  # init_unmatched: raw tensors given fresh values
    filled: list[str] = field(default_factory=list)  # rules: raw tensors set to a constant (no base tensor)
    casts: list[str] = field(default_factory=list)
    nonfinite: dict = field(default_factory=dict)
    tied: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    big_copies: dict = field(default_factory=dict)  # big copies (>= 1 M values) by path: "kernel" (padiff_lite's C
    # copy kernel) / "torch" (torch's copy), as chosen per dtype and copy kind by padiff_lite.fastcopy.faster
    _mapping: object = field(default=None, repr=False)  # a Mapping, or a function making it on first use

    @property
    def mapping(self):
        """A :class:`padiff_lite.mapping.Mapping`: every layer pair (base path -> raw path, how it was found, the
        rule) and every tensor copy of this transfer; ``report.mapping.save("map.json")`` writes it."""
        if callable(self._mapping):
            self._mapping = self._mapping()
        return self._mapping

    @property
    def rules_used(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.pairs:
            out[p.rule] = out.get(p.rule, 0) + 1
        return out

    def __str__(self):
        gbs = self.bytes / self.seconds / 1e9 if self.seconds else 0.0
        lines = [
            f"padiff_lite transfer {self.base} -> {self.raw}: {len(self.pairs)} layer pairs, "
            f"{self.tensors} tensors, {self.elements:,} values, {self.bytes / 1e6:.1f} MB in {self.seconds:.3f} s"
            + (f" ({gbs:.2f} GB/s)" if self.bytes > 1e7 else ""),
        ]
        if self.big_copies:
            lines.append("  big copies by: " + ", ".join(f"{k} {v}" for k, v in sorted(self.big_copies.items())))
        shown = self.pairs if len(self.pairs) <= 40 else self.pairs[:20] + [None] + self.pairs[-10:]
        w = max([len(p.base_path or "<root>") for p in self.pairs if p] + [4])
        for p in shown:
            if p is None:
                lines.append(f"  ... {len(self.pairs) - 30} more pairs ...")
                continue
            lines.append(f"  {(p.base_path or '<root>'):<{w}}  {p.base_class} -> {p.raw_class} "
                         f"{p.raw_path or '<root>'}  [{p.rule}, {p.tensors} tensors, by {p.how}]")
        for title, items in (("missing (raw tensors that got nothing)", self.missing),
                             ("unexpected (base tensors not used)", self.unexpected),
                             ("initialised", self.initialised),
                             ("set to a constant (the base layer has no such tensor)", self.filled),
                             ("narrowing casts", self.casts),
                             ("tied", self.tied),
                             ("non-finite values copied", [f"{k}: {v}" for k, v in self.nonfinite.items()]),
                             ("notes", self.notes)):
            if items:
                lines.append(f"{title}:")
                lines.extend(f"  {i}" for i in items[:50])
                if len(items) > 50:
                    lines.append(f"  ... and {len(items) - 50} more")
        return "\n".join(lines)


def build_report(plan, stats, seconds: float, casts=()) -> TransferReport:
    """The report of an executed plan (``stats``: the executor's Stats; ``casts``: validation's narrowing casts);
    assign_weight and convert_checkpoint use it."""
    base, raw = plan.base, plan.raw
    counts: dict[int, int] = {}
    for op in plan.ops:
        counts[id(op.pair)] = counts.get(id(op.pair), 0) + 1
    for pair in plan.imperative:
        counts[id(pair)] = len(pair.raw.subtree_tensors())
    counts.update(stats.written)  # imperative special inits run in memory: the tensors each really wrote
    rules = {id(None): "default"}  # rule text per entry: formatted once, not once per pair
    records = []
    for pair in plan.pairs:
        e = pair.entry
        rule = rules.get(id(e))
        if rule is None:
            rule = rules[id(e)] = rule_label(e)
        records.append(PairRecord(pair.base.path, pair.raw.path, type(pair.base.module).__name__,
                                  type(pair.raw.module).__name__, rule, pair.how, counts.get(id(pair), 0)))
    return TransferReport(
        base=f"{base.framework}:{base.name}", raw=f"{raw.framework}:{raw.name}", pairs=records,
        tensors=stats.tensors, elements=stats.elements, bytes=stats.bytes, seconds=seconds,
        missing=list(plan.missing), unexpected=list(plan.unexpected), casts=list(casts),
        nonfinite=dict(stats.nonfinite), tied=list(plan.tied), notes=list(plan.notes) + list(stats.notes),
        big_copies=dict(stats.big_copies),
        filled=[op.describe() for op in plan.ops if op.kind is FILL],
    )
