"""Blocking calls for one event loop, on a fixed set of threads, with few wake-ups.

``loop.run_in_executor`` costs one ``concurrent.futures.Future``, a chained asyncio future and
one self-pipe write per call. Under load that is most of what a sync no-op task costs a worker
(``scripts/bench``; docs/benchmarks.md). :class:`LoopThreads` is the same idea, cut to what the runner and
the Conductor source need:

- jobs go to the threads through one ``queue.SimpleQueue``; an idle thread takes the next one;
- a finished call lands in a deque, and the loop is woken **once** for however many calls
  finished before it got to run (the first finisher schedules the drain, the rest ride on it);
- a job whose future was cancelled before a thread picked it up is skipped; a result that
  arrives after cancellation is dropped;
- threads are daemons and :meth:`shutdown` never waits, so a handler stuck in a blocking call
  cannot hold up the process's exit (the supervisor's time limits deal with it).

Calls come from one running loop at a time (a later ``asyncio.run`` may take over once the
previous loop has stopped); only that loop's thread may call :meth:`run`.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["LoopThreads"]

T = TypeVar("T")

_Job = tuple["asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class LoopThreads:
    """Up to ``size`` threads running blocking calls for the running event loop.

    Threads start on demand (a job finds no idle thread) and live until :meth:`shutdown`.

    Args:
        size: the most calls that run at once.
        name: thread name prefix (``<name>_<n>``), shown in thread dumps.
    """

    def __init__(self, size: int, name: str) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._done: collections.deque[tuple[asyncio.Future[Any], Any, BaseException | None]] = (
            collections.deque()
        )
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._wake_pending = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn(*args)`` on one of the threads; await the returned future for its result.

        Raises:
            RuntimeError: after :meth:`shutdown`, outside a running loop, or from a second loop
                while the first is still running.
        """
        if self._closed:
            raise RuntimeError(f"{self.name}: threads are shut down")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            previous = self._loop
            if previous is not None and previous.is_running() and not previous.is_closed():
                raise RuntimeError(f"{self.name}: used from a second running event loop")
            self._loop = loop  # the previous loop (if any) has stopped: its calls are moot
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((future, fn, args))
        with self._lock:
            spawn = self._idle == 0 and len(self._threads) < self.size
            if spawn:
                thread = threading.Thread(
                    target=self._work, name=f"{self.name}_{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
            elif self._idle > 0:
                self._idle -= 1  # that thread is as good as taken; the next job may spawn
        if spawn:
            thread.start()
        return future

    def shutdown(self) -> None:
        """Stop taking jobs; idle threads exit, busy ones when their call returns. Never waits.

        Futures of jobs no thread has started are cancelled.
        """
        self._closed = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                _cancel(job[0])
        for _ in self._threads:
            self._jobs.put(None)

    # -- the threads ------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn, args = job
            if not future.cancelled():
                try:
                    outcome: tuple[Any, BaseException | None] = (fn(*args), None)
                except BaseException as exc:  # handed to the awaiting coroutine
                    outcome = (None, exc)
                self._done.append((future, *outcome))
                del future, fn, args, job, outcome  # keep nothing alive while idle
                if not self._wake_pending:
                    self._wake_pending = True
                    try:
                        assert self._loop is not None
                        self._loop.call_soon_threadsafe(self._deliver)
                    except RuntimeError:  # the loop is closed: nobody is waiting any more
                        self._done.clear()
            with self._lock:
                self._idle += 1

    def _deliver(self) -> None:
        """On the loop: resolve every finished call (one wake-up for all of them)."""
        # Cleared first: a thread that finishes after this line schedules the next drain.
        self._wake_pending = False
        done = self._done
        loop = self._loop
        while done:
            future, value, error = done.popleft()
            if future.cancelled() or future.get_loop() is not loop:
                continue  # cancelled, or left over from a loop that has stopped
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)


def _cancel(future: asyncio.Future[Any]) -> None:
    loop = future.get_loop()
    if loop.is_closed():
        return
    try:
        loop.call_soon_threadsafe(future.cancel)
    except RuntimeError:
        pass
