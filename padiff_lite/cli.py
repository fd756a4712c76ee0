"""The ``padiff-lite`` / ``python -m padiff_lite`` command line.

Each subcommand is a function ``cmd_<name>(args) -> exit code`` added in ``build_parser``.
Every error prints one line ``padiff-lite: error: ...`` with the cause and the fix and exits 2 (no
traceback unless --debug); ``check`` exits 1 only when the models differ. An interruption (Ctrl-C,
SIGTERM, SIGHUP) prints one line and exits 128 + the signal number, leaving no partial output.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import warnings
from pathlib import Path

from .errors import CheckpointError, PadiffError, TransferError


def cmd_demo(args) -> int:
    from .demo import run_demo

    ok = True
    for src, dst in ((args.src, args.dst),) if not args.both else (("torch", "paddle"), ("paddle", "torch")):
        result = run_demo(args.model, src, dst)
        print(result)
        ok = ok and result.ok
    return 0 if ok else 1


def cmd_rules(args) -> int:
    from .special_init import registry

    if args.markdown:
        from .rules_table import render

        print(render(), end="")
        return 0

    rows = [("base", "raw", "kind", "what is transformed", "defined at")]
    for e in registry().entries():
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


def _load_callable(spec: str, flag: str):
    """The object ``MODULE:CALLABLE`` (or ``path/to/file.py:CALLABLE``) names; DiffInputError (one line, exit 2)."""
    from .errors import DiffInputError, FactoryError
    from .factories import load_callable

    try:
        return load_callable(spec, flag)
    except FactoryError as exc:
        raise DiffInputError(str(exc)) from exc


def _build(spec: str, flag: str):
    """The model ``spec`` builds (factories.build); DiffInputError (one line, exit 2) when it cannot."""
    from .errors import DiffInputError, FactoryError
    from .factories import build

    factory = _load_callable(spec, flag)
    try:
        return build(factory, f"{flag} {spec}")
    except FactoryError as exc:
        raise DiffInputError(str(exc)) from exc.__cause__


def _cpu_ready(model, flag: str):
    """PaddleFormers models on a CPU: their GPU-only fused-kernel flags switched off (logged)."""
    from .paddleformers_cpu import prepare

    prepare(model, f"{flag} model")
    return model


_INT64_MAX = (1 << 63) - 1
_DTYPES = "float16, float32, float64, int8, int16, int32, int64, uint8, bool"


def _parse_range(text: str, dtype) -> tuple:
    """``--int-range LOW,HIGH``: integers with LOW < HIGH whose values LOW..HIGH-1 fit ``dtype`` (int64 for a float
    input, where the range is not used); DiffInputError (exit 2) otherwise."""
    import numpy as np

    from .errors import DiffInputError

    try:
        low, high = (int(s) for s in text.split(","))
    except ValueError:
        low = high = 0
    if high <= low:
        raise DiffInputError(f"--int-range {text!r}: expected LOW,HIGH with LOW < HIGH (HIGH excluded), e.g. 1,32000")
    kind = dtype if dtype.kind in "iu" else np.dtype("int64")
    lo, hi = (0, 1) if dtype.kind == "b" else (int(np.iinfo(kind).min), int(np.iinfo(kind).max))
    if low < lo or high - 1 > hi:
        what = f"--dtype {dtype.name}" if dtype.kind in "iub" else "int64"
        raise DiffInputError(f"--int-range {text!r}: the values {low}..{high - 1} do not fit {what} "
                             f"({lo}..{hi}); give a range within it, or a wider --dtype")
    return low, high


def _dtype_and_shapes(args, example: str):
    """``--dtype`` and the ``--input-shape`` list of ``check`` / ``pair``; DiffInputError (exit 2) when unusable."""
    import numpy as np

    from .errors import DiffInputError

    try:
        dtype = np.dtype(args.dtype)
    except (TypeError, ValueError):
        raise DiffInputError(f"--dtype {args.dtype!r} is not a numpy dtype name ({_DTYPES})") from None
    if dtype.kind not in "fiub" or dtype.itemsize > 8:
        raise DiffInputError(f"--dtype {args.dtype!r} is not a number type a model takes as input; use one of "
                             f"{_DTYPES}")
    shapes = [_parse_shape(s) for s in (args.input_shape or [])]
    if not shapes:
        raise DiffInputError(f"give at least one --input-shape, {example}")
    seed = getattr(args, "seed", 0)
    if not 0 <= seed <= _INT64_MAX:
        raise DiffInputError(f"--seed {seed}: expected an integer from 0 to 2**63-1")
    return dtype, shapes


def _parse_shape(text: str) -> tuple:
    import math

    from .errors import DiffInputError

    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise DiffInputError(f"--input-shape {text!r}: expected positive integers separated by commas, e.g. 2,3,224,224")
    if math.prod(shape) * 8 > _INT64_MAX:
        raise DiffInputError(f"--input-shape {text!r}: {math.prod(shape):.3g} values, more than any input can hold; "
                             "give the shape of one small batch, e.g. 2,3,224,224")
    return shape


def _output_path(text: str | None, flag: str):
    """``-o`` / ``--html``: a file that can be written (not a folder, in a folder that exists); DiffInputError."""
    if text is None:
        return None
    from pathlib import Path

    from .errors import DiffInputError
    from .mapping import output_problem

    problem = output_problem(Path(text))
    if problem:
        raise DiffInputError(f"{flag} {text}: {problem}")
    return text


def _weights_path(text: str | None):
    """``--weights``: a checkpoint file (a regular file: not a FIFO, a device) or a folder holding one."""
    if text is None:
        return None
    from pathlib import Path

    from .errors import CheckpointError
    from .regular import check_regular

    if Path(text).exists() and not Path(text).is_dir():  # a missing file: load_weights says which it wants
        check_regular(text, CheckpointError, "--weights file")
    return text


def _seed_frameworks(seed: int):
    """Seed torch's and paddle's global generators (whichever is installed) before the models are built."""
    import importlib

    for name, fn in (("torch", "manual_seed"), ("paddle", "seed")):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        getattr(mod, fn)(seed)


def cmd_check(args) -> int:
    """Build both models, transfer base -> raw, compare them layer by layer on a random input.

    Exit 0 when they agree, 1 when they differ, 2 on any error (``main`` prints each as one line).
    """
    import numpy as np

    from .verify import auto_diff
    from .errors import DiffInputError
    from .proxy import create_model

    import math

    dtype, shapes = _dtype_and_shapes(args, "e.g. --input-shape 2,3,224,224")
    # every argument checked before the models are built: a mistake costs no model build
    names = args.input_name or []
    if names and len(names) != len(shapes):
        raise DiffInputError(f"{len(names)} --input-name for {len(shapes)} --input-shape; give one name per shape "
                             "(or none, to feed the inputs by position)")
    low, high = _parse_range(args.int_range, dtype)
    for flag, tol in ((f, t) for f, t in (("--atol", args.atol), ("--rtol", args.rtol)) if t is not None):
        if not (math.isfinite(tol) and tol >= 0):
            raise DiffInputError(f"{flag} {tol}: expected a finite number >= 0, e.g. 1e-5")
    html = _output_path(args.html, "--html")
    weights = _weights_path(args.weights)
    _seed_frameworks(args.seed)  # the models' random initialisation too: a run is reproducible
    base = create_model(_cpu_ready(_build(args.base, "--base"), "--base"))
    raw = create_model(_cpu_ready(_build(args.raw, "--raw"), "--raw"))
    if weights:
        base.adapter.load_weights(base.model, weights)
    rng = np.random.default_rng(args.seed)
    if dtype.kind == "f":
        arrays = tuple(rng.standard_normal(s).astype(dtype) for s in shapes)
    else:  # integer inputs (token ids, class indices): LOW .. HIGH-1
        arrays = tuple(rng.integers(low, high, size=s).astype(dtype) for s in shapes)
    inputs = dict(zip(names, arrays)) if names else arrays
    result = auto_diff(base, raw, inputs, atol=args.atol, rtol=args.rtol, diff_phase=args.phase,
                       compare_mode=args.compare_mode)
    print(result)
    if html:
        try:
            written = result.to_html(html)
        except OSError as exc:
            raise DiffInputError(f"--html {html}: cannot write the report ({exc.strerror or exc}); write it into a "
                                 "folder you can write to") from None
        print(f"HTML report: {written}")
    return 0 if result.ok else 1


def cmd_convert(args) -> int:
    from .checkpoint import convert_checkpoint
    from .mapping import load as load_mapping

    progress = False if args.quiet else None
    if args.to is not None:
        if args.base or args.raw or args.map or args.layout or args.out_layout or args.scheduler or \
                args.scheduler_out:
            raise CheckpointError("--to converts a model folder with the models its config.json names; leave out "
                                  "--base, --raw, --map, --layout, --out-layout, --scheduler and --scheduler-out")
        report = convert_checkpoint(args.src, args.dst, to=args.to, verify=args.verify, progress=progress,
                                    optimizer=args.optimizer)
        if not args.quiet:
            print(report)
        return 0 if report.ok else 1
    if not (args.base and args.raw):
        raise CheckpointError("give --base and --raw (the models SRC and DST are for), or --to paddleformers|"
                              "transformers to convert a model folder holding a config.json")
    if args.verify:
        raise CheckpointError("--verify needs --to (a model folder the target library can load by itself)")
    mapping = load_mapping(args.map) if args.map is not None else None  # checked before any model is built
    extra = {k: v for k, v in (("optimizer", args.optimizer), ("scheduler", args.scheduler),
                               ("scheduler_out", args.scheduler_out)) if v is not None}
    try:
        report = convert_checkpoint(args.src, args.dst, args.base, args.raw, strict=args.strict,
                                    progress=progress, mapping=mapping, layout=args.layout,
                                    out_layout=args.out_layout, **extra)
    except TransferError as exc:
        exc.args = (exc.render(cli=True),)  # the problems' fixes in this command's flags, not the Python API's
        raise
    if not args.quiet:
        print(report)
    return 0


def _add_convert(sub):
    c = sub.add_parser("convert", help="convert a checkpoint file torch <-> paddle (streaming, bounded memory)",
                       description="Convert SRC (a checkpoint of --base) into DST (a checkpoint of --raw). "
                                   "Formats by suffix: .pt/.pth/.bin, .safetensors, .pdparams; an HF index "
                                   "'*.safetensors.index.json' / '*.bin.index.json' (or its folder) reads shards "
                                   "and writes shards plus an index. A .pdopt on one side converts optimizer state "
                                   "(torch optimizer.state_dict() file <-> paddle .pdopt, with --optimizer, "
                                   "--scheduler, --scheduler-out). With --to, a trainer checkpoint folder "
                                   "(trainer_state.json / trainer_state.bin) moves with its optimizer and schedule.")
    c.add_argument("src", help="checkpoint to read (file, index file or folder holding one)")
    c.add_argument("dst", help="checkpoint to write; its suffix picks the format")
    c.add_argument("--base", metavar="MODULE:CALLABLE",
                   help="zero-argument factory (or class) of the model SRC was saved from")
    c.add_argument("--raw", metavar="MODULE:CALLABLE",
                   help="zero-argument factory (or class) of the model DST is for")
    c.add_argument("--to", choices=["paddleformers", "transformers"],
                   help="SRC and DST are model folders (config.json, weights, tokenizer): write a folder this "
                        "library's from_pretrained loads; the models come from the config, no --base/--raw")
    c.add_argument("--verify", action="store_true",
                   help="with --to: load the written folder with the target library, compare outputs with the "
                        "source's on random token ids; a failure exits 1 and leaves DST.unverified, not DST")
    c.add_argument("--layout", choices=["torch", "paddle", "hf"],
                   help="the layout SRC is in, when neither its safetensors metadata nor its folder says and "
                        "square tensors make it ambiguous (hf: as save_pretrained writes it)")
    c.add_argument("--out-layout", choices=["hf"], dest="out_layout",
                   help="hf: write a transformers model's .safetensors in transformers' on-disk (Hub) layout, as its "
                        "save_pretrained does (default: the raw model's in-memory layout, for load_state_dict)")
    c.add_argument("--strict", action=argparse.BooleanOptionalAction, default=True,
                   help="refuse tensors without a partner (default); --no-strict lists them and goes on")
    c.add_argument("--map", metavar="FILE", help="a mapping (JSON, from `padiff-lite pair`) pairing the layers "
                   "whose names differ; made once on small random-weight models of the same architecture")
    c.add_argument("--optimizer", metavar="MODULE:CALLABLE",
                   help="optimizer state (a .pdopt on one side, or a PaddleFormers trainer checkpoint --to "
                        "transformers): factory called with the raw model, returning the optimizer DST is for (or "
                        "(optimizer, scheduler)); needed to write a torch optimizer file")
    c.add_argument("--scheduler", metavar="FILE",
                   help="optimizer state, torch -> paddle: the torch scheduler.state_dict() file whose position goes "
                        "into the .pdopt's LR_Scheduler (paddle -> torch: a paddle scheduler file, when the .pdopt has "
                        "none)")
    c.add_argument("--scheduler-out", metavar="FILE",
                   help="optimizer state, paddle -> torch: write the schedule's position as a torch "
                        "scheduler.state_dict() file (the --optimizer factory returns the scheduler)")
    c.set_defaults(func=cmd_convert)


def _common(parser, top: bool):
    """--debug and --quiet, accepted before and after the subcommand."""
    default = False if top else argparse.SUPPRESS  # a subcommand's copy only overrides when given
    parser.add_argument("--debug", action="store_true", default=default, help="show tracebacks and debug logging")
    parser.add_argument("--quiet", action="store_true", default=default,
                        help="no progress, no report: warnings and errors only")


def cmd_pair(args) -> int:
    """Build both models, pair their layers (names first, then the order they run on a random input), write the mapping."""
    import numpy as np

    from .transfer import pair_layers

    dtype, shapes = _dtype_and_shapes(args, "e.g. --input-shape 2,16 (the models run on it once)")
    output = _output_path(args.output, "-o")
    _seed_frameworks(args.seed)
    base, raw = _cpu_ready(_build(args.base, "--base"), "--base"), _cpu_ready(_build(args.raw, "--raw"), "--raw")
    rng = np.random.default_rng(args.seed)
    if dtype.kind == "f":
        arrays = tuple(rng.standard_normal(s).astype(dtype) for s in shapes)
    else:  # integer inputs (token ids, class indices): values 0 .. 7
        arrays = tuple(rng.integers(0, 8, size=s).astype(dtype) for s in shapes)
    mapping = pair_layers(base, raw, example_inputs=arrays, strict=args.strict)
    if output:
        mapping.save(output)
        logging.getLogger("padiff_lite").info("wrote %s: %d layer pairs, %d tensors", output,
                                              len(mapping.layers), len(mapping.tensors))
        print(mapping)
    else:
        import json

        print(json.dumps(mapping.to_dict(), indent=1))
    return 0


def _add_pair(sub):
    c = sub.add_parser("pair", help="pair two models' layers (names, then the order they run) and write the mapping",
                       description="Build both models (MODULE:CALLABLE, called with no arguments), pair their layers by "
                                   "name and, for what names leave open, by the order they run on a random input; write "
                                   "the mapping as JSON (for assign_weight(mapping=...) and `convert --map`).")
    c.add_argument("--base", required=True, metavar="MODULE:CALLABLE", help="builds the source model")
    c.add_argument("--raw", required=True, metavar="MODULE:CALLABLE", help="builds the target model")
    c.add_argument("--input-shape", action="append", metavar="D1,D2,...",
                   help="shape of a random input; repeat for models taking several positional inputs")
    c.add_argument("--dtype", default="float32", help="input dtype (floats: standard normal; integers: 0..7)")
    c.add_argument("--seed", type=int, default=0, help="seed of the input and of torch/paddle before the models are built")
    c.add_argument("-o", "--output", metavar="FILE", help="write the mapping here (JSON); default: print it")
    c.add_argument("--strict", action=argparse.BooleanOptionalAction, default=True,
                   help="refuse layers left unpaired (default); --no-strict writes the pairs found")
    c.set_defaults(func=cmd_pair)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="padiff-lite", description="Move weights between PyTorch and PaddlePaddle.")
    _common(p, top=True)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="transfer a built-in model pair and verify it by outputs")
    from .models import PAIRS

    d.add_argument("--model", default="tiny", choices=sorted(PAIRS))
    d.add_argument("--src", default="torch", choices=["torch", "paddle"])
    d.add_argument("--dst", default="paddle", choices=["torch", "paddle"])
    d.add_argument("--both", action="store_true", help="run torch -> paddle and paddle -> torch")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("rules", help="list the registered special inits and default rules")
    r.add_argument("--markdown", action="store_true", help="print the supported-layers table (docs/supported_layers.md)")
    r.set_defaults(func=cmd_rules)

    c = sub.add_parser("check", help="transfer base -> raw and compare the two models layer by layer",
                       description="Build both models (MODULE:CALLABLE, called with no arguments), transfer the "
                       "weights base -> raw, run both on the same random input and compare every paired layer. "
                       "Exit 0 when they agree, 1 when they differ, 2 on errors.")
    c.add_argument("--base", required=True, metavar="MODULE:CALLABLE",
                   help="builds the source model (any importable module, or path/to/file.py:CALLABLE)")
    c.add_argument("--raw", required=True, metavar="MODULE:CALLABLE", help="builds the target model")
    c.add_argument("--input-shape", action="append", metavar="D1,D2,...",
                   help="shape of a random input; repeat for models taking several positional inputs")
    c.add_argument("--input-name", action="append", metavar="NAME",
                   help="feed the input of the matching --input-shape by keyword (e.g. input_ids); repeat per input")
    c.add_argument("--dtype", default="float32",
                   help="input dtype (floats: standard normal; integers such as int64 token ids: see --int-range)")
    c.add_argument("--int-range", default="0,8", metavar="LOW,HIGH",
                   help="integer inputs are drawn from LOW..HIGH-1 (default 0,8); e.g. 1,32000 for token ids "
                        "that avoid a pad id 0")
    c.add_argument("--html", metavar="PATH", help="also write a self-contained HTML report (model tree, "
                   "per-layer chart, the first divergence marked)")
    c.add_argument("--weights", metavar="FILE", help="load this state dict into the base model first "
                   "(.pt/.pth/.bin for a torch base, read with weights_only=True; .pdparams for a paddle base)")
    c.add_argument("--atol", type=float, default=None,
                   help="absolute tolerance (default: auto_diff's, scaled to each tensor's largest value)")
    c.add_argument("--rtol", type=float, default=None, help="relative tolerance (default: auto_diff's)")
    c.add_argument("--compare-mode", choices=["strict", "mean"], default="strict",
                   help="strict: every value (default); mean: the means of the two tensors, as PaDiff's mean mode")
    c.add_argument("--phase", choices=["forward", "backward", "both"], default="forward",
                   help="'backward' compares parameter gradients of a backward pass (seeded with the mean of the outputs), 'both' forward and backward")
    c.add_argument("--seed", type=int, default=0, help="seed of the random input and of torch/paddle before the models are built "
                   "(a run is reproducible)")
    c.set_defaults(func=cmd_check)

    _add_convert(sub)
    _add_pair(sub)
    _add_compare_dumps(sub)
    for parser in sub.choices.values():
        _common(parser, top=False)
    return p


def cmd_compare_dumps(args) -> int:
    """Compare two dump folders (padiff_lite.verify.dump) without importing torch or paddle."""
    from .verify.dump_check import check_dumps

    html = _output_path(args.html, "--html")  # a path that cannot be written is said before comparing
    result = check_dumps(args.base, args.raw, tuple(args.what.split(",")), atol=args.atol, rtol=args.rtol,
                         compare_mode=args.mode, diff_phase=args.phase)
    print(result)
    if html:
        result.to_html(html)
    return 0 if result.ok else 1


def _add_compare_dumps(sub):
    c = sub.add_parser("compare-dumps", help="compare two dump folders (one per framework, written in separate "
                       "processes) without importing either framework",
                       description="Compare the dumps under BASE and RAW (step_N/rank_M folders, rank_M folders or "
                       "one dump folder) step by step and rank by rank: module outputs and the gradients that reached "
                       "them, weights, parameter gradients. Exit 0 when they agree, 1 when they differ, 2 on errors.")
    c.add_argument("base", help="the base model's dump root")
    c.add_argument("raw", help="the raw model's dump root")
    c.add_argument("--what", default="report,weights,grads", help="comma-separated kinds to compare (default all)")
    c.add_argument("--atol", type=float, default=1e-5)
    c.add_argument("--rtol", type=float, default=1e-5)
    c.add_argument("--mode", choices=["strict", "mean", "abs_mean"], default="strict",
                   help="strict: every value; mean: the tensors' means (PaDiff's default)")
    c.add_argument("--phase", choices=["forward", "backward", "both"], default="both",
                   help="for the module report: outputs, the gradients that reached them, or both")
    c.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page of the comparison")
    c.set_defaults(func=cmd_compare_dumps)


def _setup_logging(args):
    """Our log lines in our format on stderr, whatever handlers paddle puts on the root logger at import."""
    warnings.filterwarnings("ignore", message="No ccache found")  # paddle's, on every import; not about this run
    logger = logging.getLogger("padiff_lite")
    for h in [h for h in logger.handlers if getattr(h, "_padiff_cli", False)]:
        logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._padiff_cli = True
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO)
    logger.propagate = False


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv  # known before parsing: Ctrl-C can land while the frameworks are being imported
    try:
        args = build_parser().parse_args(argv)
        _setup_logging(args)
        try:
            return args.func(args)
        except SystemExit as exc:  # padiff_lite never exits from inside a command: this is user code
            if debug:
                raise
            print(f"padiff-lite: error: {_exit_from_user_code(exc)}", file=sys.stderr)
            return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP during a conversion (interrupts.Interrupted)
        if debug:
            raise
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"padiff-lite: error: interrupted by {signal.Signals(signum).name}; an output is complete or absent, "
              "never partial (an earlier output stays as it was until the new one is complete)", file=sys.stderr)
        return 128 + signum
    except PadiffError as exc:
        if debug:
            raise
        print(f"padiff-lite: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        if debug:
            raise
        print("padiff-lite: error: out of memory; close other programs or convert on a machine with more memory",
              file=sys.stderr)
        return 2
    except SystemExit:  # argparse: --help (0) or a usage error (2), already printed
        raise
    except Exception as exc:  # not foreseen: still one line, and how to see more
        if debug:
            raise
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        print(f"padiff-lite: error: {type(exc).__name__}: {first}; this was not foreseen by padiff-lite: run again "
              "with --debug for the traceback and report it", file=sys.stderr)
        return 2


def _exit_from_user_code(exc: SystemExit) -> str:
    """The one line for a ``sys.exit()`` / ``exit()`` that escaped a command (a factory, a model, a special init)."""
    where = "user code"
    tb = exc.__traceback__
    while tb is not None:  # the innermost frame outside padiff_lite is the caller of sys.exit
        fname = tb.tb_frame.f_code.co_filename
        if "padiff_lite" not in Path(fname).parts:
            where = f"{fname}:{tb.tb_lineno}"
        tb = tb.tb_next
    return (f"FactoryError: {where} called sys.exit({exc.code!r}) while padiff-lite was running it; nothing was "
            "written. A model factory must return the model (raise an exception to report a problem), not exit")
