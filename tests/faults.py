"""Fault injection for the write phase: raise (or signal) at the k-th Python line padiff_lite runs.

A KeyboardInterrupt from Ctrl-C, a signal handler, a time limit or another thread arrives between two
bytecodes; tracing the lines of padiff_lite's own code inside ``execute._run_copies`` and raising at
line k reproduces every such point deterministically (C calls such as a copy kernel run whole, as they
would for a real interrupt). Only the thread running the transfer is traced; pool threads run as usual, and the
pool's own code (workers.py) is not counted: its waits run a number of lines that depends on timing.
"""
from __future__ import annotations

import os
import sys

import padiff_lite
from padiff_lite import execute

PACKAGE = os.path.dirname(padiff_lite.__file__)
# the copy pool's waits run in slices of time, so how many of their lines run depends on timing: not counted
# (interrupts inside them: tests/test_worker_interrupts.py and the timer threads of tests/test_faults.py)
TIMED = os.path.join(PACKAGE, "workers.py")


class Injector:
    """Wraps ``module.name`` (by default ``execute._run_copies``, the copy phase) so that its first call is traced.

    ``at=None`` only counts the lines (``self.lines``); ``at=k`` calls ``action()`` at line k (an
    action that raises interrupts the write phase right there, one that sends a signal lets the
    signal arrive there). Later calls (a re-run after the fault) are not traced.
    """

    def __init__(self, monkeypatch, at=None, action=None, module=execute, name="_run_copies"):
        self.at, self.action = at, action
        self.lines = 0
        self.fired = False
        self.calls = 0
        real = getattr(module, name)

        def traced(*args, **kwargs):
            self.calls += 1
            if self.calls > 1:
                return real(*args, **kwargs)
            sys.settrace(self._global)
            try:
                return real(*args, **kwargs)
            finally:
                sys.settrace(None)

        monkeypatch.setattr(module, name, traced)

    def _global(self, frame, event, arg):
        if frame.f_code.co_filename.startswith(PACKAGE) and frame.f_code.co_filename != TIMED:
            return self._local
        return None

    def _local(self, frame, event, arg):
        if event == "line":
            self.lines += 1
            if self.at is not None and self.lines == self.at and not self.fired:
                self.fired = True
                sys.settrace(None)
                self.action()
        return self._local


def _same(a, b) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def classify(now: dict, before: dict, after: dict) -> str:
    """"before", "after" or "mixed: ..." for a model state (tensors compared bit for bit)."""
    same_b = [k for k in now if _same(now[k], before[k])]
    same_a = [k for k in now if _same(now[k], after[k])]
    if len(same_b) == len(now):
        return "before"
    if len(same_a) == len(now):
        return "after"
    return f"mixed: {len(now) - len(same_b)} of {len(now)} tensors changed, {len(same_a)} hold the base's values"
