"""Progress from running handlers, coalesced: at most one update per task per interval.

``ctx.progress(output=..., log=...)`` (``_context.py``) hands the values to this process's
:class:`ProgressSender`, from whatever thread the handler runs on, and returns at once: it takes
a lock, never the network. The latest output wins; log lines accumulate until they are sent. The
sender, on the runner's event loop, sends a task's first update at once and then at most one
per ``interval`` (:meth:`TaskSource.progress <taskfleet._sources.base.TaskSource.progress>`:
Conductor an ``IN_PROGRESS`` update, NATS an in-progress ack and a progress event). When the task
ends, what was not sent yet is dropped: the result supersedes it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from ._errors import SourceError
from ._sources.base import TaskSource
from ._task import Task, TaskLog

__all__ = ["DEFAULT_INTERVAL", "ProgressSender"]

log = logging.getLogger("taskfleet.progress")

#: Seconds between two progress updates of one task, at most one per interval: the default of
#: ``TASKFLEET_PROGRESS_INTERVAL``, which a worker process gives its runner (``_child.py``).
DEFAULT_INTERVAL = 1.0


class _Pending:
    __slots__ = ("logs", "output", "task")

    def __init__(self, task: Task) -> None:
        self.task = task
        self.output: Mapping[str, Any] | None = None
        self.logs: list[TaskLog] = []


class ProgressSender:
    """Coalesces and sends the progress of this process's running tasks (see the module)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        source: TaskSource,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self._loop = loop
        self._source = source
        self.interval = interval
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        #: task id -> monotonic time its last update went out (present while the task runs)
        self._last: dict[str, float] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._sending: set[asyncio.Task[None]] = set()

    def offer(self, task: Task, output: Mapping[str, Any] | None, line: str | None) -> None:
        """Record progress of ``task``; from any thread, never blocks on I/O."""
        with self._lock:
            pending = self._pending.get(task.task_id)
            first = pending is None
            if pending is None:
                pending = self._pending[task.task_id] = _Pending(task)
            if output is not None:
                pending.output = dict(output)
            if line is not None:
                pending.logs.append(TaskLog(str(line), task.task_id))
        if first:
            self._loop.call_soon_threadsafe(self._schedule, task.task_id)

    def finished(self, task_id: str) -> None:
        """The task ended (from any thread): what was not sent is dropped.

        Called for every task: a task that never reported progress (most) costs three
        membership tests, no lock. Its handler has returned, so nothing adds it meanwhile."""
        if task_id in self._pending:
            with self._lock:
                self._pending.pop(task_id, None)
        if task_id in self._last or task_id in self._timers:
            self._loop.call_soon_threadsafe(self._forget, task_id)

    def _forget(self, task_id: str) -> None:
        self._last.pop(task_id, None)
        timer = self._timers.pop(task_id, None)
        if timer is not None:
            timer.cancel()

    def _schedule(self, task_id: str) -> None:
        if task_id in self._timers:
            return
        due = self._last.get(task_id, 0.0) + self.interval - time.monotonic()
        self._timers[task_id] = self._loop.call_later(max(0.0, due), self._send, task_id)

    def _send(self, task_id: str) -> None:
        self._timers.pop(task_id, None)
        with self._lock:
            pending = self._pending.pop(task_id, None)
        if pending is None:
            return
        self._last[task_id] = time.monotonic()
        job = self._loop.create_task(self._deliver(pending))
        self._sending.add(job)
        job.add_done_callback(self._sending.discard)

    async def _deliver(self, pending: _Pending) -> None:
        try:
            await self._source.progress(pending.task, pending.output, pending.logs)
        except SourceError as exc:
            # Progress is best effort: the next update (or the result) carries on.
            log.warning("progress of task %s not sent: %s", pending.task.task_id, exc)
        except Exception:
            log.exception("progress of task %s not sent", pending.task.task_id)
