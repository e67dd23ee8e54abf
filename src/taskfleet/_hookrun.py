"""Event hooks run off the event loop: a slow or blocking hook holds only its own task.

:class:`HookRunner` is how the runner and the supervisor call :mod:`taskfleet.hooks`:

* **Task events** (``before_execute`` … ``after_report``) run on a small thread pool with the
  task's context set (:func:`taskfleet.get_task_context` works in a hook). The task's slot awaits
  its own event before going on, so a task's events come in order and a hook that blocks delays
  that one task; the event loop keeps polling, heart-beating and running the other slots.
  At most one event per slot waits at a time, so task events need no other bound.
* **Poll events** run in order on a thread of their own and are not awaited: polling never waits
  for a hook. Their queue holds at most :data:`POLL_EVENTS_MAX` events: while it is full, a
  poll's ``before_poll`` and its ``after_poll`` are dropped together (pairs stay whole) and
  counted in ``taskfleet_poll_hook_events_dropped_total``; the first time a process drops, and
  when its poll hooks have caught up again, it logs a warning.
* **Outcomes a source or the supervisor reports** (a crashed task, a hand-back, a dead letter)
  are task events that nothing awaits (:meth:`HookRunner.outcome`).

:meth:`HookRunner.close` waits for every event given so far, then calls each hooks object's
optional ``close()`` (a reporter flushes what it still holds), once per process.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from . import _metrics as metrics
from ._context import TaskContext, task_context
from ._task import Task, TaskResult
from .hooks import call_hooks

__all__ = ["POLL_EVENTS_MAX", "HookRunner"]

log = logging.getLogger("taskfleet.hooks")

#: Poll events that may wait for the poll hooks' thread. Healthy poll hooks keep the queue near
#: empty; this absorbs a hook's stall of 50 s of polls every 100 ms (an idle queue at the default
#: poll interval on a server that answers at once: 20 events a second) without dropping, while a
#: hook that stays slower than polling holds at most this many events (each ``after_poll`` keeps
#: the tasks of its poll alive).
POLL_EVENTS_MAX = 1000

#: Tells the poll hooks' thread to end (queued by :meth:`HookRunner.close`).
_END = None


class HookRunner:
    """Calls ``hooks`` off the caller's event loop (see the module docstring).

    Args:
        hooks: the hooks objects, in the order given by the user.
        threads: threads for task events (the number of slots that may await one at once).
        name: prefix of the threads' names.
        worker_id: the ``worker_id`` of the task contexts hooks see.
    """

    def __init__(self, hooks: Sequence[Any], threads: int, name: str, worker_id: str = "") -> None:
        self.hooks = list(hooks)
        self.worker_id = worker_id
        self._tasks = ThreadPoolExecutor(max(1, threads), thread_name_prefix=f"{name}-hooks")
        self._name = name
        #: poll events waiting for the poll hooks' thread (started with the first event)
        self._polls: queue.Queue[tuple[str, tuple[Any, ...]] | None] = queue.Queue(POLL_EVENTS_MAX)
        self._poll_thread: threading.Thread | None = None
        #: the last ``before_poll`` was dropped: its ``after_poll`` is dropped too
        self._skip_after = False
        self._drop_lock = threading.Lock()
        #: poll events dropped since the queue was last empty (0: not dropping)
        self._dropping = 0
        #: the task type of the dropped events (for the log lines)
        self._drop_type = ""
        #: the first drop, and the first recovery, of this process were logged as warnings
        self._warned = False
        self._warned_recovery = False
        self._closed = False

    def __bool__(self) -> bool:
        return bool(self.hooks)

    async def task_event(self, name: str, task: Task, *args: Any) -> None:
        """Run hook ``name`` for ``task`` on a hook thread; returns when every hook returned."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._tasks, self._call, name, task, args)

    def poll_event(self, name: str, *args: Any) -> None:
        """Run poll hook ``name`` on the poll hooks' thread, in order, without waiting; dropped
        (and counted) while :data:`POLL_EVENTS_MAX` events wait (see the module docstring).

        ``args[0]`` is the task type (both poll hooks take it first). Called by one poll loop.
        """
        if self._closed:
            return
        if self._poll_thread is None:
            self._poll_thread = threading.Thread(
                target=self._run_polls, name=f"{self._name}-poll-hooks", daemon=True
            )
            self._poll_thread.start()
        if name == "before_poll":
            # Room for this event and its after_poll, or neither goes: pairs stay whole.
            self._skip_after = self._polls.qsize() > POLL_EVENTS_MAX - 2
            if self._skip_after:
                self._dropped(name, args)
                return
        elif name == "after_poll" and self._skip_after:
            self._skip_after = False
            self._dropped(name, args)
            return
        try:
            self._polls.put_nowait((name, args))
        except queue.Full:
            self._dropped(name, args)

    def _dropped(self, name: str, args: tuple[Any, ...]) -> None:
        task_type = str(args[0]) if args else ""
        metrics.get().taskfleet_poll_hook_events_dropped.labels(task_type).inc()
        with self._drop_lock:
            self._dropping += 1
            if self._dropping > 1:
                return
            self._drop_type = task_type
            first = not self._warned
            self._warned = True
        log.log(
            logging.WARNING if first else logging.INFO,
            "%s: poll hooks are %d events behind; poll events are dropped until they catch up"
            " (taskfleet_poll_hook_events_dropped_total)%s",
            task_type,
            self._polls.qsize(),
            "; a before_poll or after_poll hook is slower than polling" if first else "",
        )

    def _run_polls(self) -> None:
        while True:
            event = self._polls.get()
            if event is _END:
                return
            name, args = event
            try:
                call_hooks(self.hooks, name, *args)
            except BaseException:
                # A hook raising KeyboardInterrupt or SystemExit must not end this thread: the
                # queue would fill for good and close() would wait for room forever.
                log.exception("poll hook %s failed; continuing", name)
            if self._dropping and self._polls.empty():
                with self._drop_lock:
                    dropped, self._dropping = self._dropping, 0
                    # Only the first episode's recovery is a warning, as its start was.
                    first = not self._warned_recovery
                    self._warned_recovery = True
                log.log(
                    logging.WARNING if first else logging.INFO,
                    "%s: poll hooks caught up; %d poll events were dropped",
                    self._drop_type,
                    dropped,
                )

    def outcome(
        self, task: Task, result: TaskResult, error: BaseException | None = None
    ) -> Future[None] | None:
        """A final outcome reported without a handler's return (a crash, a time limit, a drain's
        hand-back, a dead letter): ``after_execute``, ``before_report`` and ``after_report``,
        in that order, on a hook thread; nothing waits for them."""
        if self._closed:
            return None
        return self._tasks.submit(self._outcome, task, result, error)

    def _outcome(self, task: Task, result: TaskResult, error: BaseException | None) -> None:
        self._call("after_execute", task, (result,))
        self._call("before_report", task, (result,))
        self._call("after_report", task, (result, error))

    def _call(self, name: str, task: Task, args: tuple[Any, ...]) -> None:
        with task_context(TaskContext(task, self.worker_id)):
            call_hooks(self.hooks, name, task, *args)

    def close(self) -> None:
        """Wait for every event given so far, then call the hooks objects' ``close()``.

        Blocking: call it from a thread that may wait (the runner uses an executor).
        """
        if self._closed:
            return
        self._closed = True
        if self._poll_thread is not None:
            self._polls.put(_END)  # after every event queued so far (waits for room)
            self._poll_thread.join()
        self._tasks.shutdown(wait=True)
        for hook in self.hooks:
            close = getattr(hook, "close", None)
            if close is None:
                continue
            try:
                close()
            except Exception:
                log.exception("hook %s.close failed", type(hook).__name__)
