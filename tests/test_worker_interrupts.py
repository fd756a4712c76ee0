"""A KeyboardInterrupt sent to a copy thread (issue 28, item 7): the transfer ends, never waits for ever, and the
raw model is exactly as before or holds the complete transfer, as ``TransferInterrupted.completed`` says.

With ``concurrent.futures``' pool an interrupt landing in a copy thread between two tasks killed the thread with
the task it was taking, and ``assign_weight`` waited for it for ever (2 of 12 runs; SIGTERM then held too). The
transfers run in a process of their own (tests/worker_interrupt_runner.py) so that a hang fails this test by its
time-out instead of hanging the session; the runner sends the interrupt at five kinds of places in turn.
"""
from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from padiff_lite import workers

HERE = Path(__file__).resolve().parent
RUNS = 10  # per direction: every place twice


def test_interrupts_sent_to_the_copy_threads_end_the_transfer_and_never_leave_a_mix():
    env = dict(os.environ, PADIFF_LITE_FASTCOPY="1", PYTHONPATH=str(HERE.parent))
    try:
        done = subprocess.run([sys.executable, str(HERE / "worker_interrupt_runner.py"), str(RUNS)], env=env,
                              capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        pytest.fail(f"a transfer hung after these runs:\n{out}")
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(runs) == 2 * RUNS
    interrupted = 0
    for run in runs:
        raised, state = run["raised"], run["state"]
        assert state in ("before", "after"), run  # every tensor bit for bit the snapshot before, or the transfer
        assert run["threads"] == 0, run  # no copy thread outlives its transfer
        if raised is None:
            assert state == "after", run  # the interrupt met a thread that was ending: nothing was lost
            continue
        interrupted += 1
        if raised["type"] == "TransferInterrupted":
            assert raised["completed"] == (state == "after"), run  # the exception tells the truth
            assert ("holds the complete transfer" if raised["completed"] else "exactly as it was") in raised["message"]
        else:  # a copy thread that died without a word: raised after the copies were run to the end
            assert raised["type"] == "WorkerLost" and state == "after", run
            assert any("holds the complete transfer" in note for note in raised["notes"]), run
    # the places were hit: an interrupt sent to a thread running a piece, or to every thread, always ends up raised
    assert all(run["raised"] is not None for run in runs if run["place"] in ("own-start", "after-last")), runs
    assert interrupted >= 8, runs


def test_interrupts_sent_to_the_copy_threads_of_a_conversion_end_it_with_no_output_or_a_right_one(tmp_path):
    """Checkpoint conversion uses the same pool for its big transposes: the interrupt ends it with nothing written
    (or, landing in a thread with nothing left to do, lets it finish: then the output is the right conversion)."""
    env = dict(os.environ, PADIFF_LITE_FASTCOPY="1", PYTHONPATH=str(HERE.parent))
    try:
        done = subprocess.run([sys.executable, str(HERE / "worker_interrupt_runner.py"), "8", str(tmp_path)], env=env,
                              capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        pytest.fail(f"a conversion hung after these runs:\n{out}")
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(runs) == 8
    for run in runs:
        assert run["threads"] == 0, run
        if run["raised"] is None:
            assert run["files"] == ["model.safetensors"] and run["right"] is True, run
        else:
            assert run["raised"]["type"] in ("KeyboardInterrupt", "WorkerLost") and run["files"] == [], run
    assert sum(run["raised"] is not None for run in runs) >= 4, runs


def test_a_task_cut_short_reads_as_an_error_and_a_lost_thread_ends_the_wait():
    """The pool's own guarantees, without torch's copies: an exception inside a task reaches its waiter; an
    interrupt sent to an idle thread lands when it takes the next task, and waiting for that task raises it
    instead of waiting for ever; a task no thread is left to run raises WorkerLost."""
    pool = workers.Pool(1, "test")
    try:
        def boom():
            raise KeyboardInterrupt("in a task")

        with pytest.raises(KeyboardInterrupt, match="in a task"):
            pool.submit(boom).result()
        assert pool.submit(sum, [1, 2]).result() == 3
        (thread,) = pool.threads
        assert ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident),
                                                          ctypes.py_object(KeyboardInterrupt)) == 1
        with pytest.raises(KeyboardInterrupt):
            pool.submit(sum, [1, 2]).result()
    finally:
        pool.close()
    assert not thread.is_alive()
    ended = workers.Pool(1, "test")
    ended.close()
    with pytest.raises(workers.WorkerLost, match="a copy thread ended"):
        workers.Task(ended, sum, ([1],)).result()  # submitted to nobody: its pool's thread has ended
