"""Handing each base layer's outputs over to the raw model's matching call, and dropping them there.

``auto_diff`` compares the k-th call of a base module with the k-th call of its raw partner. The
base side ``put``s a copy of each hooked call's outputs under ``(pair, call)``; the raw side
``take``s it when its own matching call finishes, compares, and lets it go. What is held at any
moment is the stash: the base outputs the raw side has not reached yet.

Two ways to run (``auto_diff(interleave=...)``, docs/design.md "Memory of a comparison"):

- sequential (``budget=None``): base runs to the end first, so the stash peaks at the sum of every
  hooked output of the base model;
- interleaved (``budget=0``, the default): base runs in a second thread and waits after each
  ``put`` until the raw side has taken what is stashed, so the two forwards advance layer by layer
  and the stash holds about one layer's outputs. Base never waits while raw waits for a call base has
  not made yet (a module called in another order, or only on one side): then base runs on until it
  makes that call or ends, and the stash grows only by what it passes on the way.
"""
from __future__ import annotations

import threading


class BaseFailed(Exception):
    """Raised inside the raw forward to stop it when the base forward has failed (not user-visible)."""


class Stash:
    def __init__(self, budget: int | None):
        self.budget = budget  # bytes base may hold ahead of raw; None: no limit (sequential runs)
        self._cond = threading.Condition()
        self._items: dict = {}
        self._wanted = None  # the key raw waits for
        self._base_done = False
        self._raw_done = False
        self._late: list = []  # keys base made after raw had ended (kept as keys only)
        self.base_error: BaseException | None = None
        self.bytes = 0
        self.peak = 0  # the most bytes held at once

    # -- base side -----------------------------------------------------------------
    def put(self, key, value, nbytes: int):
        with self._cond:
            if self._raw_done:  # nothing will ask for it any more
                self._late.append(key)
                return
            self._items[key] = (value, nbytes)
            self.bytes += nbytes
            self.peak = max(self.peak, self.bytes)
            self._cond.notify_all()
            if self.budget is None:
                return
            while (self.bytes > self.budget and not self._raw_done
                   and (self._wanted is None or self._wanted in self._items)):
                self._cond.wait()

    def base_finished(self, error: BaseException | None = None):
        with self._cond:
            self._base_done = True
            self.base_error = error
            self._cond.notify_all()

    # -- raw side ------------------------------------------------------------------
    def take(self, key):
        """The base value stored under ``key``, or None when the base run ended without making it."""
        with self._cond:
            while key not in self._items and not self._base_done:
                self._wanted = key
                self._cond.notify_all()
                self._cond.wait()
            self._wanted = None
            if self.base_error is not None:
                raise BaseFailed
            item = self._items.pop(key, None)
            if item is None:
                return None
            self.bytes -= item[1]
            self._cond.notify_all()
            return item[0]

    def raw_finished(self):
        """Let the base side run to its end without waiting (what it makes from now on is not kept)."""
        with self._cond:
            self._raw_done = True
            self._cond.notify_all()

    def leftovers(self) -> list:
        """The keys base made that raw never took (after both runs ended); their values are dropped."""
        with self._cond:
            keys = list(self._items) + self._late
            self._items.clear()
            self._late.clear()
            self.bytes = 0
            return keys
