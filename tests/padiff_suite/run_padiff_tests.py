"""Run PaDiff's own test files, unchanged, against padiff_lite.compat.

    python tests/padiff_suite/run_padiff_tests.py /path/to/PaDiff [test_x.py ...] [--keep]

The files ``<checkout>/tests/test_*.py`` are copied into a temporary folder (PaDiff's tests write their dumps next
to themselves) with a conftest.py that maps ``padiff`` and its submodules to ``padiff_lite.compat``
(padiff_alias.py); each file then runs under pytest in a process of its own, as PaDiff's own runner does. Prints
one line per file and the totals; exit 0 when every test passed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

CONFTEST = f"""import sys
sys.path.insert(0, {str(HERE)!r})
sys.path.insert(0, {str(ROOT)!r})
import padiff_alias
padiff_alias.install()
"""

# torchvision (test_resnet18 imports it): the registry's CUDA wheel installed with --no-deps into its own folder
# (tests/vision_twins.py). Its C++ operators do not load against the CPU torch, so its operator registrations are
# replaced by an empty module; only the Python model code is used. Put on the path of PaDiff's test processes only
# (none of them imports transformers, which that wheel would break).
TORCHVISION = Path(os.environ.get("PADIFF_LITE_TORCHVISION", Path(sys.prefix) / "torchvision-py"))
CONFTEST_TORCHVISION = """import types
sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
sys.path.append({folder!r})
"""


def run_file(work: Path, name: str, timeout: float) -> dict:
    """{'passed', 'failed', 'errors', 'skipped', 'cases': [(test, outcome, message)]} of one test file."""
    xml = work / f"{name}.xml"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", name,
           f"--junitxml={xml}", "-o", "junit_family=xunit2"]
    try:
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"passed": 0, "failed": 0, "errors": 1, "skipped": 0, "cases": [(name, "error", "timed out")]}
    out = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "cases": [], "log": proc.stdout + proc.stderr}
    if not xml.exists():
        out["errors"] = 1
        out["cases"].append((name, "error", (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["no result"]))
        return out
    for case in ET.parse(xml).getroot().iter("testcase"):
        test = f"{case.get('classname', '')}::{case.get('name')}"
        bad = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        if bad is None:
            out["passed"] += 1
            out["cases"].append((test, "passed", ""))
        else:
            kind = {"failure": "failed", "error": "errors", "skipped": "skipped"}[bad.tag]
            out[kind] += 1
            msg = (bad.get("message") or bad.text or "").strip().splitlines()
            out["cases"].append((test, kind, msg[0][:300] if msg else ""))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkout", help="a PaDiff checkout (the folder holding tests/)")
    p.add_argument("files", nargs="*", help="only these test files (names)")
    p.add_argument("--keep", action="store_true", help="keep the work folder and print its path")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--verbose", action="store_true", help="print each failing file's pytest output")
    args = p.parse_args(argv)
    tests = Path(args.checkout) / "tests"
    files = sorted(f.name for f in tests.glob("test_*.py"))
    if not files:
        print(f"no tests/test_*.py under {args.checkout}", file=sys.stderr)
        return 2
    if args.files:
        files = [f for f in files if f in set(args.files)]
    work = Path(tempfile.mkdtemp(prefix="padiff_suite_"))
    totals = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    try:
        for f in files:
            shutil.copy(tests / f, work / f)
        conftest = CONFTEST
        if (TORCHVISION / "torchvision").is_dir():
            conftest += CONFTEST_TORCHVISION.format(folder=str(TORCHVISION))
        else:
            print(f"torchvision not found in {TORCHVISION} (set PADIFF_LITE_TORCHVISION): test_resnet18 will fail "
                  "to import it", flush=True)
        (work / "conftest.py").write_text(conftest)
        for f in files:
            res = run_file(work, f, args.timeout)
            for k in totals:
                totals[k] += res[k]
            print(f"{f}: {res['passed']} passed, {res['failed']} failed, {res['errors']} errors, "
                  f"{res['skipped']} skipped", flush=True)
            for test, outcome, msg in res["cases"]:
                if outcome not in ("passed",):
                    print(f"    {outcome}: {test}: {msg}", flush=True)
            if args.verbose and (res["failed"] or res["errors"]):
                print(res.get("log", ""))
        print(f"total: {totals['passed']} passed, {totals['failed']} failed, {totals['errors']} errors, "
              f"{totals['skipped']} skipped of {sum(totals.values())} tests in {len(files)} files")
    finally:
        if args.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if totals["failed"] == totals["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
