"""The package runs on the Python it declares (setup.py's python_requires), checked by a tool that reads the
code rather than by running it: only Python 3.11 runs here, and Baidu AI Studio and many clusters run 3.10."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERMIN = str(Path(sys.executable).with_name("vermin"))  # its console script (the package has no __main__)


def test_the_code_needs_no_newer_python_than_declared():
    declared = re.search(r'python_requires=">=(\d+\.\d+)"', (ROOT / "setup.py").read_text()).group(1)
    r = subprocess.run([VERMIN, "--no-tips", "--violations", "--eval-annotations",
                        f"-t={declared}-", str(ROOT / "padiff_lite")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"code that needs a Python newer than {declared}:\n{r.stdout}{r.stderr}"
    r = subprocess.run([VERMIN, "--no-tips", str(ROOT / "padiff_lite")],
                       capture_output=True, text=True, timeout=300)
    assert f"Minimum required versions: {declared}" in r.stdout, r.stdout  # not even lower: the declaration is true
