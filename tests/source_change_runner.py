"""Run ``padiff-lite`` stopping after the first output shard until the test has changed the source.

python source_change_runner.py SYNC_FOLDER -- CLI ARGS...
After the first output shard is complete (``Checkpoint.release``) this process creates SYNC_FOLDER/paused and waits
until SYNC_FOLDER/go exists (at most 120 s), then goes on; its exit status is the command's.
"""
import sys
import time
from pathlib import Path

from padiff_lite.cli import main
from padiff_lite.formats.files import Checkpoint

sync = Path(sys.argv[1])
args = sys.argv[sys.argv.index("--") + 1:]
real = Checkpoint.release
calls = []


def release(ck):
    real(ck)
    calls.append(ck)
    if len(calls) == 1:
        (sync / "paused").touch()
        deadline = time.monotonic() + 120
        while not (sync / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.01)


Checkpoint.release = release
sys.exit(main(args))
