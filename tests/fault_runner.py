"""Run ``padiff-lite`` with a real signal sent to this very process at a chosen point of the conversion.

python fault_runner.py POINT N SIGNAL -- CLI ARGS...
POINT: write (before the Nth tensor is computed), record (before the commit record is synced), fsync (before the Nth folder fsync of the commit), place (before
the Nth shard gets its final name); SIGNAL: KILL, TERM, HUP. The signal is real (os.kill); only where it lands is
chosen, so the tests can hit every step of the commit.
"""
import os
import signal
import sys

from padiff_lite import checkpoint
from padiff_lite.formats import output as atomic
from padiff_lite.cli import main

point, n, sig = sys.argv[1], int(sys.argv[2]), getattr(signal, "SIG" + sys.argv[3])
args = sys.argv[sys.argv.index("--") + 1:]


def at_nth_call(real):
    count = [0]

    def wrapper(*a, **k):
        count[0] += 1
        if count[0] == n:
            os.kill(os.getpid(), sig)
        return real(*a, **k)

    return wrapper


if point == "write":
    checkpoint.Runner.compute = at_nth_call(checkpoint.Runner.compute)
elif point == "fsync":
    atomic._fsync_dir = at_nth_call(atomic._fsync_dir)
elif point == "record":
    atomic._fsync_record = at_nth_call(atomic._fsync_record)
elif point == "place":
    atomic._place = at_nth_call(atomic._place)
else:
    raise SystemExit(f"unknown point {point}")
sys.exit(main(args))
