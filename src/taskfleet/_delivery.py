"""Result delivery: retries with jittered exponential backoff, then the durable spool.

Promise 2 of the design lives here: a result is never dropped because the server was briefly
unreachable. :class:`Delivery` retries retryable failures (tenacity), and when the server stays
unreachable the result goes to the local :class:`~taskfleet._spool.Spool`, from where
:meth:`Delivery.flush` delivers it when the server is back — before the process takes new work.

Worker processes and the supervisor (which reports the tasks of dead processes) use the same code.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)

from . import _metrics as metrics
from ._backoff import Backoff
from ._errors import OutputError, SourceError
from ._sources.base import TaskSource
from ._spool import Spool
from ._task import Task, TaskResult

__all__ = ["Delivery"]

log = logging.getLogger("taskfleet.delivery")

#: Attempts and total time spent on one result before it goes to the spool.
REPORT_ATTEMPTS = 5
REPORT_MAX_SECONDS = 20.0
#: Seconds of the first retry's wait (full jitter), doubled per attempt up to ``wait_max``.
RETRY_BASE = 0.1


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, SourceError) and exc.retryable


class Delivery:
    """Delivers results for one process.

    Args:
        source: the started source results go to.
        spool: where undeliverable results wait (None: no spool; they are logged as lost).
        on_spooled: called with (task_type, count) after results were written to the spool.
        attempts, max_seconds: retry budget per result before it is spooled.
    """

    def __init__(
        self,
        source: TaskSource,
        spool: Spool | None,
        *,
        on_spooled: Callable[[str, int], None] | None = None,
        attempts: int | None = None,
        max_seconds: float | None = None,
        wait_max: float = 5.0,
    ) -> None:
        self.source = source
        self.spool = spool
        self._on_spooled = on_spooled
        self._attempts = REPORT_ATTEMPTS if attempts is None else attempts
        self._max_seconds = REPORT_MAX_SECONDS if max_seconds is None else max_seconds
        self._wait_max = wait_max
        #: set when this process wrote to the spool or found rows in it; cleared by flush()
        self.spool_pending = spool is not None and spool.count() > 0

    async def _report_once(self, task: Task, result: TaskResult, chain: bool) -> Task | None:
        m = metrics.get()
        started = time.monotonic()
        try:
            next_task = await self.source.report(task, result, chain=chain)
        except SourceError as exc:
            m.task_update_error.labels(task.task_type, type(exc).__name__).inc()
            m.task_update_time_seconds.labels(task.task_type, "error").observe(
                time.monotonic() - started
            )
            log.warning(
                "result of task %s (%s) not delivered: %s", task.task_id, task.task_type, exc
            )
            raise
        m.task_update_time_seconds.labels(task.task_type, result.status.value).observe(
            time.monotonic() - started
        )
        return next_task

    async def _report_with_retries(
        self, task: Task, result: TaskResult, chain: bool
    ) -> Task | None:
        # The common case costs one call: the retry machinery starts only after a failure.
        try:
            return await self._report_once(task, result, chain)
        except SourceError as exc:
            if not exc.retryable or self._attempts <= 1:
                raise
        started = time.monotonic()
        wait = Backoff(RETRY_BASE, self._wait_max, jitter=1.0)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts - 1)
            | stop_after_delay(max(self._max_seconds - RETRY_BASE, 0.0)),
            wait=wait,
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        await asyncio.sleep(wait.delay(1))  # the first retry's wait
        async for attempt in retrying:
            with attempt:
                return await self._report_once(task, result, chain)
        raise SourceError(  # pragma: no cover - AsyncRetrying either returns or raises
            f"gave up after {time.monotonic() - started:.1f}s"
        )

    async def deliver(self, task: Task, result: TaskResult, *, chain: bool = False) -> Task | None:
        """Deliver ``result``; when the server stays unreachable, spool it durably.

        Returns the chained next task when ``chain`` was asked and the server gave one. Never
        raises for a transport failure: the result is either delivered, spooled, or (when the
        server rejects it permanently, e.g. an unknown task id) logged as rejected. A result
        whose output cannot be encoded is delivered as a terminal failure naming the value
        (:meth:`TaskResult.without_output`).
        """
        try:
            size = len(result.output_json())
        except OutputError as exc:
            # The one place output that cannot be encoded is dealt with: the task fails for
            # good, naming the value, instead of leaving it to the server's timeout. Sources
            # and the spool only ever see output that encodes.
            result = result.without_output(str(exc))
        else:
            metrics.get().task_result_size_bytes.labels(task.task_type).observe(size)
        try:
            return await self._report_with_retries(task, result, chain)
        except SourceError as exc:
            if not exc.retryable:
                log.error(
                    "server rejected the result of task %s (%s): %s",
                    task.task_id,
                    task.task_type,
                    exc,
                )
                return None
            self._spool(task, result, exc)
            return None

    def _spool(self, task: Task, result: TaskResult, exc: BaseException) -> None:
        if self.spool is None:
            log.error(
                "result of task %s lost: no spool and the server is down (%s)", task.task_id, exc
            )
            return
        self.spool.put(task.slim(), result)
        self.spool_pending = True
        m = metrics.get()
        m.taskfleet_results_spooled.labels(task.task_type).inc()
        m.taskfleet_spool_depth.set(self.spool.count())
        log.warning(
            "result of task %s (%s) spooled for later delivery: %s",
            task.task_id,
            task.task_type,
            exc,
        )
        if self._on_spooled is not None:
            self._on_spooled(task.task_type, 1)

    async def flush(self, task_type: str | None = None, batch: int = 50) -> int:
        """Deliver spooled results (of ``task_type``, or all). Returns how many were delivered.

        Raises:
            SourceError: when the server is still unreachable (the rows stay in the spool).
        """
        if self.spool is None:
            return 0
        delivered = 0
        while True:
            rows = self.spool.claim(task_type, batch)
            if not rows:
                break
            done: list[int] = []
            try:
                for row in rows:
                    try:
                        await self.source.report(row.task, row.result, chain=False)
                    except SourceError as exc:
                        if exc.retryable:
                            raise
                        log.error(
                            "server rejected spooled result of task %s: %s", row.task.task_id, exc
                        )
                    self.spool.delivered(row.row_id)
                    done.append(row.row_id)
                    delivered += 1
            except SourceError:
                self.spool.release([r.row_id for r in rows if r.row_id not in done])
                metrics.get().taskfleet_spool_depth.set(self.spool.count())
                raise
        self.spool_pending = False
        metrics.get().taskfleet_spool_depth.set(self.spool.count())
        if delivered:
            log.info("delivered %d spooled result(s)", delivered)
        return delivered
