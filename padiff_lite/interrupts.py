"""Holding SIGINT and SIGTERM while a model is being written, so that a write is never cut half-way.

A Ctrl-C (SIGINT) or a ``kill`` (SIGTERM) that arrives while :func:`held_signals` is active is noted
instead of acted on; when the block ends, the handlers that were there before are put back and each
noted signal is sent again, so it then does exactly what it would have done (KeyboardInterrupt,
the user's own handler, or the default action of ending the process), only later. The copies of a
transfer take well under a second for a GB, so the delay is short. The same signal arriving a second
time is not held: it is delivered at once (press Ctrl-C twice, or kill twice, to stop a block that
hangs), and the executor then treats it as any other exception.

Only the main thread of the main interpreter can change signal handlers; elsewhere (a transfer run in
a worker thread, where these signals are never delivered anyway) the block runs as it is. A signal
whose handler was installed by C code (``signal.getsignal`` gives None) is not held: its handler could
not be put back. An exception that does not come through these signals (another signal's handler
raising, ``PyThreadState_SetAsyncExc`` from another thread) is not held: the executor finishes the
copies when one arrives (see ``execute._run_copies_to_the_end``).
"""
from __future__ import annotations

import contextlib
import signal
import threading

HELD = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name))


@contextlib.contextmanager
def held_signals(signums=HELD):
    """Hold ``signums`` during the block; afterwards restore their handlers and send again what arrived.

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
        # the second time: deliver it now, through the handler that was there before
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
