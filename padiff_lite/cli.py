"""The ``padiff-lite`` / ``python -m padiff_lite`` command line.

Each subcommand is a function ``cmd_<name>(args) -> exit code`` added in ``build_parser``.
Errors of the package print one line with the fix and exit 2 (no traceback unless --debug).
"""
from __future__ import annotations

import argparse
import logging
import sys

from .errors import PadiffError


def cmd_demo(args) -> int:
    from .demo import run_demo

    ok = True
    for src, dst in ((args.src, args.dst),) if not args.both else (("torch", "paddle"), ("paddle", "torch")):
        result = run_demo(args.model, src, dst)
        print(result)
        ok = ok and result.ok
    return 0 if ok else 1


def cmd_rules(args) -> int:
    from .special_init import init_pool

    rows = [("base", "raw", "kind", "what is transformed", "defined at")]
    for e in init_pool.entries():
        k = e.key
        rows.append((f"{k.base_framework}.{k.base_class}", f"{k.raw_framework}.{k.raw_class}",
                     e.kind + (" (inverted)" if e.inverted else ""), e.note or "-", e.origin))
    rows.append(("any other class", "same class", "default", "tensors copied by name, shapes must match", "padiff_lite.plan"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    return 0


def cmd_convert(args) -> int:
    from .checkpoint import convert_checkpoint

    report = convert_checkpoint(args.src, args.dst, args.base, args.raw, strict=args.strict,
                                progress=False if args.quiet else None)
    print(report)
    return 0


def _add_convert(sub):
    c = sub.add_parser("convert", help="convert a checkpoint file torch <-> paddle (streaming, bounded memory)",
                       description="Convert SRC (a checkpoint of --base) into DST (a checkpoint of --raw). "
                                   "Formats by suffix: .pt/.pth/.bin, .safetensors, .pdparams; an HF index "
                                   "'*.safetensors.index.json' / '*.bin.index.json' (or its folder) reads shards "
                                   "and writes shards plus an index.")
    c.add_argument("src", help="checkpoint to read (file, index file or folder holding one)")
    c.add_argument("dst", help="checkpoint to write; its suffix picks the format")
    c.add_argument("--base", required=True, metavar="MODULE:CALLABLE",
                   help="zero-argument factory (or class) of the model SRC was saved from")
    c.add_argument("--raw", required=True, metavar="MODULE:CALLABLE",
                   help="zero-argument factory (or class) of the model DST is for")
    c.add_argument("--strict", action=argparse.BooleanOptionalAction, default=True,
                   help="refuse tensors without a partner (default); --no-strict lists them and goes on")
    c.set_defaults(func=cmd_convert)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="padiff-lite", description="Move weights between PyTorch and PaddlePaddle.")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="transfer a built-in model pair and verify it by outputs")
    from .models import PAIRS

    d.add_argument("--model", default="tiny", choices=sorted(PAIRS))
    d.add_argument("--src", default="torch", choices=["torch", "paddle"])
    d.add_argument("--dst", default="paddle", choices=["torch", "paddle"])
    d.add_argument("--both", action="store_true", help="run torch -> paddle and paddle -> torch")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("rules", help="list the registered special inits and default rules")
    r.set_defaults(func=cmd_rules)
    _add_convert(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except PadiffError as exc:
        if args.debug:
            raise
        print(f"padiff-lite: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
