"""The supervisor's own connection to the task source, on an asyncio loop in a thread.

The supervisor reports the in-flight tasks of dead worker processes, hands back unfinished tasks
at the end of a drain, extends leases of long tasks (so a handler that holds the GIL cannot
starve them), and delivers spooled results of task types no process is flushing. All of it goes
through this agent, whose methods are safe to call from any thread. Every outcome it reports
reaches the pool's hooks as well (``after_execute``, ``before_report``, ``after_report`` on a hook
thread), as does a dead letter its source decides by itself, so whoever tracks tasks sees an end
to every task that started.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Coroutine, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from . import _metrics as metrics
from . import _tracing
from ._delivery import Delivery
from ._errors import SourceError
from ._hookrun import HookRunner
from ._loop import BackgroundLoop
from ._sources.base import TaskSource, WorkerBinding
from ._spool import Spool
from ._task import Task, TaskResult

__all__ = ["SourceAgent"]

log = logging.getLogger("taskfleet.agent")
T = TypeVar("T")


class SourceAgent:
    """Runs ``source`` on a private event loop thread; ``hooks`` hear of what it reports."""

    def __init__(self, source: TaskSource, hooks: HookRunner | None = None) -> None:
        self.source = source
        self.hooks = hooks if hooks else None
        if self.hooks is not None:
            source.on_outcome = self.hooks.outcome
        #: the spool this agent delivers to and from (set by :meth:`start`)
        self.spool: Spool | None = None
        self.delivery = Delivery(source, None)
        self._loop = BackgroundLoop("taskfleet-agent")
        self._closed = False
        self._pending: set[Future[Any]] = set()
        self._lock = threading.Lock()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the agent's loop and wait for its result.

        Raises:
            CallTimedOut: ``timeout`` passed first (the coroutine is cancelled).
        """
        return self._loop.call(coro, timeout)

    def submit(self, coro: Coroutine[Any, Any, Any]) -> Future[Any]:
        """Run a coroutine on the agent's loop without waiting (tracked until done)."""
        future = self._loop.submit(coro)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.error("supervisor source call failed: %r", future.exception())

    def start(
        self,
        bindings: Sequence[WorkerBinding],
        spool_path: Path | None = None,
        timeout: float = 60.0,
    ) -> None:
        """Connect and provision, then open the spool at ``spool_path`` (None: no spool) for
        the server the source connected to. Raises SourceError/ConfigurationError when
        impossible."""

        async def go() -> None:
            await self.source.start()
            await self.source.prepare(bindings)

        self.call(go(), timeout)
        if spool_path is not None:
            self.spool = Spool(spool_path, self.source.spool_key())
            self.delivery = Delivery(self.source, self.spool)

    def report(self, task: Task, result: TaskResult) -> Future[Any]:
        """Deliver ``result`` for ``task`` (retries, then the spool), in the background; then
        tell the hooks."""
        if _tracing.ACTIVE:
            _tracing.reported(task, result)  # the span the dead process could not end

        async def go() -> None:
            error: BaseException | None = None
            try:
                await self.delivery.deliver(task, result, chain=False)
            except Exception as exc:
                error = exc
                raise
            finally:
                if self.hooks is not None:
                    self.hooks.outcome(task, result, error)

        return self.submit(go())

    def extend(self, tasks: Sequence[Task]) -> Future[Any]:
        async def go() -> None:
            try:
                await self.source.extend(tasks)
            except SourceError as exc:
                log.warning("lease extension of %d task(s) failed: %s", len(tasks), exc)
                return
            m = metrics.get()
            for task in tasks:
                m.taskfleet_lease_extensions.labels(task.task_type).inc()

        return self.submit(go())

    def flush_spool(self) -> Future[Any]:
        async def go() -> None:
            try:
                await self.delivery.flush(None)
            except SourceError as exc:
                log.debug("spool flush postponed: %s", exc)

        return self.submit(go())

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every submitted call finished (reports delivered or spooled)."""
        with self._lock:
            pending = list(self._pending)
        for future in pending:
            try:
                future.result(timeout)
            except Exception:
                pass
        with self._lock:
            return not self._pending

    def close(self, timeout: float = 30.0) -> None:
        """Finish pending reports, close the source, stop the loop. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self.wait_idle(timeout)
        try:
            self.call(self.source.close(), timeout=10)
        except Exception as exc:
            log.warning("closing the supervisor's source: %r", exc)
        self._loop.stop(timeout=5)
        if self.spool is not None:
            self.spool.close()
        if self.hooks is not None:
            self.hooks.close()
