"""README's python blocks run as written (issue 16). A block that cannot run on its own (it names the reader's own
files or classes) is marked by an HTML comment on the line before it: ``<!-- fragment: why -->``; it is skipped and
the reason is shown. The other blocks run in order in one namespace, as a reader would paste them, in one fresh
interpreter inside a temporary folder."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(?:^(<!--.*?-->)\n)?^```python\n(.*?)^```", re.M | re.S)

RUNNER = r'''
import sys, traceback, warnings
warnings.filterwarnings("ignore", message="No ccache found")
blocks = eval(sys.stdin.read())
ns = {"__name__": "__readme__"}
for line, code in blocks:
    try:
        exec(compile(code, f"README.md:{line}", "exec"), ns)
    except BaseException:
        print(f"README block at line {line} failed:", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
'''


def readme_blocks():
    text = (ROOT / "README.md").read_text()
    run, skipped = [], []
    for m in BLOCK.finditer(text):
        line = text.count("\n", 0, m.start(2))
        if m.group(1) and m.group(1).startswith("<!-- fragment:"):
            skipped.append((line, m.group(1)))
        else:
            run.append((line, m.group(2)))
    return run, skipped


def test_every_fragment_says_why():
    run, skipped = readme_blocks()
    assert len(run) >= 4
    for line, mark in skipped:
        assert len(mark) > len("<!-- fragment:  -->") + 10, f"README.md:{line}: say why the block is a fragment"


def test_readme_python_blocks_run(tmp_path):
    run, skipped = readme_blocks()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", RUNNER], input=repr(run), cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
