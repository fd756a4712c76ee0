"""Signals while something must not be cut half-way: one way of holding them, for the in-memory executor (a model
being written) and for the file writers (a commit of output files).

:func:`held_signals`: a signal in ``signums`` that arrives during the block is noted instead of acted on; when the
block ends, the handlers that were there before are put back and each noted signal is sent again, so it then does
exactly what it would have done (KeyboardInterrupt, the user's own handler, or the default action of ending the
process), only later. The executor holds SIGINT and SIGTERM (its copies take well under a second for a GB) and lets
the same signal arriving a second time through at once (press Ctrl-C twice, or kill twice, to stop a block that
hangs; the executor then treats it as any other exception). A commit (:func:`uninterrupted`) holds SIGINT, SIGTERM
and SIGHUP however often they arrive: it is short, and a commit cut half-way is what it exists to prevent; SIGKILL
cannot be held (the commit record finishes that case, :mod:`.formats.output`).

Only the main thread of the main interpreter can change signal handlers; elsewhere (a transfer run in a worker
thread, where these signals are never delivered anyway) the block runs as it is. A signal whose handler was
installed by C code (``signal.getsignal`` gives None) is not held: its handler could not be put back
(:func:`terminate_like_interrupt` replaces such a handler for a conversion, so a conversion holds them all). An
exception that does not come through these signals (another signal's handler raising, ``PyThreadState_SetAsyncExc``
from another thread) is not held: the executor finishes the copies when one arrives (see
``execute._run_copies_to_the_end``).

A conversion (:func:`terminate_like_interrupt`) turns SIGTERM and SIGHUP into :class:`Interrupted`, a
KeyboardInterrupt, so a killed conversion cleans up as Ctrl-C does.
"""
from __future__ import annotations

import contextlib
import signal
import threading

HELD = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name))
CONVERSION = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP during a conversion, raised like Ctrl-C's KeyboardInterrupt so the same clean-up runs."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def held_signals(signums=HELD, *, twice_now: bool = True):
    """Hold ``signums`` during the block; afterwards restore their handlers and send again what arrived.

    ``twice_now``: the same signal arriving a second time is delivered at once (else it is held as the first was).
    Yields the list of signal numbers held so far (in order of arrival).
    """
    held: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    previous: dict = {}

    def note(signum, frame):
        if signum not in held:
            held.append(signum)
            return
        if twice_now:  # the second time: deliver it now, through the handler that was there before
            signal.signal(signum, previous.pop(signum))
            held.remove(signum)
            signal.raise_signal(signum)

    try:
        for signum in signums:
            handler = signal.getsignal(signum)
            if handler is None:
                continue  # installed outside Python: it could not be put back
            try:
                signal.signal(signum, note)
            except (ValueError, OSError):  # not the main interpreter, or a signal this platform refuses
                continue
            previous[signum] = handler
        yield held
    finally:
        for signum, handler in list(previous.items()):
            signal.signal(signum, handler)
        for signum in dict.fromkeys(held):  # each signal once, as the OS merges pending ones
            signal.raise_signal(signum)


# A signal that arrived during a conversion (see terminate_like_interrupt): noted first, then raised. The note is
# what makes it impossible to lose: a raise can be swallowed (a handler runs between any two bytecodes, inside a
# __del__ or a weakref callback too, where exceptions are printed and dropped), the note cannot, and the commit
# and the end of the conversion check it.
_arrived: list[int] = []


def _raise_arrived():
    if _arrived:
        raise Interrupted(_arrived[0])


@contextlib.contextmanager
def uninterrupted():
    """A commit: SIGINT/SIGTERM/SIGHUP wait until the block is done, however often they arrive (:func:`held_signals`),
    then act (a conversion's :class:`Interrupted`). A signal noted during the conversion before the block is raised
    before it starts; one noted during it is raised after it, even when its raise was swallowed on the way."""
    _raise_arrived()
    with held_signals(CONVERSION, twice_now=False):
        yield
    _raise_arrived()  # the commit is complete: the output is whole, and the interruption is not lost


@contextlib.contextmanager
def terminate_like_interrupt():
    """SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` (a KeyboardInterrupt) while the block runs, so a
    killed conversion cleans up as Ctrl-C does. Each arrival is noted before it is raised, and the block raises
    any noted one at its end: a raise swallowed on the way cannot turn an interrupted conversion into exit 0.
    Only in the main thread, and not over a handler set from Python."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {}

    def handler(signum, frame):
        if signum not in _arrived:
            _arrived.append(signum)
        raise Interrupted(signum)

    del _arrived[:]
    for sig in CONVERSION:
        current = signal.getsignal(sig)
        # None: a handler set outside Python (paddle's crash reporter, which dies without cleaning up)
        if current in (signal.SIG_DFL, None) or (sig == signal.SIGINT and current is signal.default_int_handler):
            saved[sig] = signal.signal(sig, handler)
    try:
        yield
        _raise_arrived()
    finally:
        for sig, old in saved.items():
            signal.signal(sig, signal.SIG_DFL if old is None else old)
        del _arrived[:]
