"""The supported-layers table (docs/supported_layers.md), generated from the special-init registry.

``render()`` returns the markdown; regenerate the file with
``python -m padiff_lite rules --markdown > docs/supported_layers.md`` (a test fails when it is stale).
Rows for registered pairs come from the registry; the few pairs that need no rule and the layers
without a counterpart are listed in ``BY_PAIRING`` and ``OTHER`` below.
"""
from __future__ import annotations

from .special_init import registry

REGENERATE = "python -m padiff_lite rules --markdown > docs/supported_layers.md"
BUILTIN = "padiff_lite.special_init."

# (torch class, paddle class, how they transfer, test file): containers whose children pair by name
BY_PAIRING = [
    ("Transformer", "Transformer", "children encoder/decoder pair by name; their layers.N and norm go through the "
     "TransformerEncoderLayer/TransformerDecoderLayer and LayerNorm rules", "tests/layers/test_transformer.py"),
    ("TransformerEncoder", "TransformerEncoder", "layers.N and norm pair by name", "tests/layers/test_transformer.py"),
    ("TransformerDecoder", "TransformerDecoder", "layers.N and norm pair by name", "tests/layers/test_transformer.py"),
    ("Sequential / ModuleList / ModuleDict", "Sequential / LayerList / LayerDict",
     "children pair by name, leftovers by position", "tests/test_pairing.py"),
]

# (torch side, paddle side, status)
OTHER = [
    ("LazyLinear, LazyConv*d, LazyConvTranspose*d, LazyBatchNorm*d, LazyInstanceNorm*d", "-",
     "supported once materialised: after one forward the module becomes Linear/Conv*/... and that rule applies "
     "(tests/layers/test_linear.py covers LazyLinear)"),
    ("EmbeddingBag", "-", "not supported: paddle.nn has no EmbeddingBag"),
    ("RMSNorm", "-", "not supported: paddle.nn 3.3.1 has no RMSNorm layer"),
    ("AdaptiveLogSoftmaxWithLoss", "AdaptiveLogSoftmaxWithLoss",
     "not supported: paddle's layer registers only head_weight as a parameter, torch has head and tail Linears"),
    ("BatchNorm1d/2d/3d", "BatchNorm (legacy, num_channels)", "not registered: build paddle with BatchNorm1D/2D/3D"),
    ("-", "SpectralNorm", "no counterpart layer (torch has torch.nn.utils.spectral_norm, a parametrisation)"),
    ("-", "BiRNN, RNN(cell) wrappers", "no counterpart: torch's LSTM/GRU/RNN correspond to paddle's LSTM/GRU/SimpleRNN"),
    ("LocalResponseNorm, activations other than PReLU, pooling, dropout", "same",
     "no parameters: nothing to transfer; paired by name/position without a rule"),
]


def _family(entry) -> str:
    module = entry.origin.split(":")[0]
    return module[len(BUILTIN):] if module.startswith(BUILTIN) else ""


def _test_file(entry) -> str:
    fam = _family(entry)
    if fam.startswith("init_hf_"):  # transformers <-> PaddleFormers families: tested on the real models
        return "tests/test_hf_ports.py"
    return f"tests/layers/test_{fam[len('init_'):]}.py" if fam.startswith("init_") else "-"


def _esc(text: str) -> str:
    return (text or "-").replace("|", "\\|").replace("\n", " ")


def registered_pairs(pool=None, builtin_only=True) -> list[tuple]:
    """(torch class, paddle class, directions, entry) per registered torch<->paddle pair of ``pool`` (default: the
    global registry), one row per pair."""
    rows = {}
    for e in registry(pool).entries():
        k = e.key
        if {k.base_framework, k.raw_framework} != {"torch", "paddle"}:
            continue
        if builtin_only and not e.origin.startswith(BUILTIN):
            continue
        t, p = (k.base_class, k.raw_class) if k.base_framework == "torch" else (k.raw_class, k.base_class)
        row = rows.setdefault((t, p), {"dirs": set(), "entry": e})
        row["dirs"].add(f"{k.base_framework} → {k.raw_framework}")
        if not e.inverted:
            row["entry"] = e
    out = []
    for (t, p), row in rows.items():
        dirs = ", ".join(sorted(row["dirs"], key=lambda d: not d.startswith("torch")))
        out.append((t, p, dirs, row["entry"]))
    return sorted(out, key=lambda r: (_family(r[3]), r[0]))


def render(pool=None) -> str:
    lines = [
        "# Supported layers",
        "",
        f"Generated from the special-init registry by `{REGENERATE}`; do not edit by hand",
        "(tests/test_rules_table.py fails when this file is stale).",
        "",
        "Every registered pair transfers in both directions and has an equivalence test per direction that",
        "compares forward outputs of a small model holding the layer (eval mode). Caveats are semantics that",
        "weights cannot fix; they are copied into the transfer report's notes.",
        "",
        "## Registered rules",
        "",
        "| torch.nn | paddle.nn | directions | what is transformed | caveats | rule | test |",
        "|---|---|---|---|---|---|---|",
    ]
    for t, p, dirs, e in registered_pairs(pool):
        lines.append(f"| {t} | {p} | {dirs} | {_esc(e.note)} | {_esc(e.caveat)} | {_family(e)}.py | {_test_file(e)} |")
    lines += ["", "## Pairs that need no rule", "", "| torch.nn | paddle.nn | how | test |", "|---|---|---|---|"]
    lines += [f"| {t} | {p} | {_esc(how)} | {test} |" for t, p, how, test in BY_PAIRING]
    lines += ["", "## Other layers with parameters", "", "| torch.nn | paddle.nn | status |", "|---|---|---|"]
    lines += [f"| {t} | {p} | {_esc(status)} |" for t, p, status in OTHER]
    lines += ["", "## Any other class", "",
              "Pairs without a rule copy tensors by name; shapes must match exactly, nothing is ever transposed "
              "by guessing, and every tensor left without a partner is an error (or, with strict=False, listed "
              "in the report).", ""]
    return "\n".join(lines)
