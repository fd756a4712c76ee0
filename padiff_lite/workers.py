"""The threads that run the pieces of big copies, made so that no interruption can leave anyone waiting.

``concurrent.futures.ThreadPoolExecutor`` loses a task when an exception sent to one of its threads (a
KeyboardInterrupt sent with ``PyThreadState_SetAsyncExc``, as debuggers, notebook kernels and time-limit
helpers do) lands outside the task itself, say while the thread waits for the next task: the thread dies with
the task it was taking, that task's future never completes, and the thread waiting for it (the executor,
holding SIGINT and SIGTERM, see :mod:`.interrupts`) waits for ever.

Here every way out is accounted for:

- a task records its value or its exception and then releases a lock, in C, as its last step; until its
  value is recorded its error is :class:`WorkerLost`, so a task cut short never reads as a success;
- a thread that meets an exception outside a task records it on the pool (*broken*) and ends;
- :meth:`Task.result` waits in short slices; between them it checks that the pool is not broken and that
  every thread is alive, and otherwise raises what broke it (a :class:`WorkerLost` when a thread died
  without a word). The caller treats that as any other fault;
- :meth:`Pool.close` joins every thread, so that no copy still writes once it returns.
"""
from __future__ import annotations

import _thread
import queue
import threading

# how long a wait blocks before it looks at the threads again (seconds; a finished task ends a wait at once)
SLICE = 0.05


class WorkerLost(RuntimeError):
    """A thread of the copy pool ended without finishing a task (an exception sent to it landed where it could
    not be recorded)."""


class Task:
    """One call run by a :class:`Pool`; ``result()`` waits for it and returns its value or raises its exception."""

    __slots__ = ("pool", "fn", "args", "value", "error", "done")

    def __init__(self, pool: "Pool", fn, args):
        self.pool, self.fn, self.args = pool, fn, args
        self.value = None
        self.error: BaseException | None = WorkerLost(f"{pool.name}: a copy thread ended before finishing its task")
        self.done = _thread.allocate_lock()
        self.done.acquire()

    def run(self):
        try:
            value = self.fn(*self.args)
            self.value = value
            self.error = None
        except BaseException as exc:  # noqa: B036 - handed to the waiting thread, which raises it
            self.error = exc
        finally:
            self.done.release()

    def result(self):
        while not self.done.acquire(timeout=SLICE):
            self.pool.check()
        self.done.release()  # stays done for a second look
        if self.error is not None:
            raise self.error
        return self.value


class Pool:
    """``n`` daemon threads running submitted calls in order of submission."""

    def __init__(self, n: int, name: str = "padiff_lite"):
        self.name = name
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.broken: BaseException | None = None  # what a thread met outside a task
        self.threads = [threading.Thread(target=self._serve, name=f"{name}_{i}", daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def submit(self, fn, *args) -> Task:
        task = Task(self, fn, args)
        self.queue.put(task)
        return task

    def _serve(self):
        try:
            while True:
                task = self.queue.get()
                if task is None:
                    return
                task.run()
        except BaseException as exc:  # noqa: B036 - an exception sent to this thread between tasks
            self.broken = exc

    def check(self):
        """Raise what broke the pool: the exception a thread met outside a task, or WorkerLost for a thread that
        ended without a word; nothing while every thread is alive."""
        if self.broken is not None:
            raise self.broken
        if not all(t.is_alive() for t in self.threads):
            raise WorkerLost(f"{self.name}: a copy thread ended while tasks were waiting for it")

    def close(self):
        """Let every thread finish what it runs and end; returns when none is left (raises nothing: see check)."""
        for _ in self.threads:
            self.queue.put(None)
        for t in self.threads:
            while t.is_alive():
                t.join(SLICE)
