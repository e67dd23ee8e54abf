"""Result delivery: retries with jittered exponential backoff, then the durable spool.

Promise 2 of ``docs/reliability.md`` lives here: a result is never dropped because the server was
briefly unreachable. :class:`Delivery` retries retryable failures (tenacity), and when the server
stays unreachable the result goes to the local :class:`~taskfleet._spool.Spool` (or, while the
spool cannot be written, waits in memory), from where :meth:`Delivery.flush` delivers it when the
server is back — tried before the process polls again, never in the way of polling. A result the
server refuses itself (too large) is reported as a failure without its output instead.

Worker processes and the supervisor (which reports the tasks of dead processes) use the same code.
"""

from __future__ import annotations

import asyncio
import logging
import time

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
from ._spool import Spool, SpooledResult
from ._task import Task, TaskResult

__all__ = ["Delivery"]

log = logging.getLogger("taskfleet.delivery")

#: Attempts and total time spent on one result before it goes to the spool.
REPORT_ATTEMPTS = 5
REPORT_MAX_SECONDS = 20.0
#: Seconds of the first retry's wait (full jitter), doubled per attempt up to ``wait_max``.
RETRY_BASE = 0.1
#: After a failed flush, the next is due after a backoff from 1 s up to this many seconds.
FLUSH_BACKOFF_CAP = 10.0
#: A failed delivery of a spooled row counts against the row when the server took a result
#: within this many seconds (else the server is taken to be down, and the row is not charged).
SERVER_UP_WINDOW = 30.0
#: Rows left in the spool after a flush (waiting their own backoff) are looked at this often.
FLUSH_RECHECK = 5.0


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, SourceError) and exc.retryable


class Delivery:
    """Delivers results for one process.

    Args:
        source: the started source results go to.
        spool: where undeliverable results wait (None: no spool; they are logged as lost).
        attempts, max_seconds: retry budget per result before it is spooled.
    """

    def __init__(
        self,
        source: TaskSource,
        spool: Spool | None,
        *,
        attempts: int | None = None,
        max_seconds: float | None = None,
        wait_max: float = 5.0,
    ) -> None:
        self.source = source
        self.spool = spool
        self._attempts = REPORT_ATTEMPTS if attempts is None else attempts
        self._max_seconds = REPORT_MAX_SECONDS if max_seconds is None else max_seconds
        self._wait_max = wait_max
        #: set when this process wrote to the spool (or has not looked at it yet); cleared by
        #: a flush that left nothing behind
        self.spool_pending = spool is not None
        #: results the spool could not store (a full disk): delivered or stored by flush()
        self._held: list[tuple[Task, TaskResult]] = []
        #: monotonic time before which flush_due is False (after a failed flush)
        self._flush_at = 0.0
        #: monotonic time the server last took a result from this process
        self._last_ok = -SERVER_UP_WINDOW
        self._flush_backoff = Backoff(1.0, FLUSH_BACKOFF_CAP, jitter=0.5)

    def _failed_once(self, task: Task, exc: SourceError, started: float) -> None:
        m = metrics.get()
        m.task_update_error.labels(task.task_type, type(exc).__name__).inc()
        m.task_update_time_seconds.labels(task.task_type, "error").observe(
            time.monotonic() - started
        )
        log.warning("result of task %s (%s) not delivered: %s", task.task_id, task.task_type, exc)

    def _delivered_once(self, task: Task, result: TaskResult, started: float) -> None:
        self._last_ok = time.monotonic()
        metrics.get().task_update_time_seconds.labels(task.task_type, result.status.value).observe(
            self._last_ok - started
        )

    def _prepare(self, task: Task, result: TaskResult) -> TaskResult:
        """The result as it is delivered: output that cannot be encoded makes it a terminal
        failure naming the value (:meth:`TaskResult.without_output`)."""
        try:
            size = len(result.output_json())
        except OutputError as exc:
            # The one place output that cannot be encoded is dealt with: the task fails for
            # good, naming the value, instead of leaving it to the server's timeout. Sources
            # and the spool only ever see output that encodes.
            return result.without_output(str(exc))
        metrics.get().task_result_size_bytes.labels(task.task_type).observe(size)
        return result

    async def _report_once(self, task: Task, result: TaskResult, chain: bool) -> Task | None:
        started = time.monotonic()
        try:
            next_task = await self.source.report(task, result, chain=chain)
        except SourceError as exc:
            self._failed_once(task, exc, started)
            raise
        self._delivered_once(task, result, started)
        return next_task

    def report_blocking(
        self, task: Task, result: TaskResult, *, chain: bool = False
    ) -> Task | None:
        """The first attempt of :meth:`deliver`, in the calling thread, for a source with
        blocking calls (``source.blocking``). On a SourceError, pass it to :meth:`deliver` as
        ``first_error``: it goes on with the retries and the spool from there."""
        result = self._prepare(task, result)
        started = time.monotonic()
        try:
            next_task = self.source.report_blocking(task, result, chain=chain)
        except SourceError as exc:
            self._failed_once(task, exc, started)
            raise
        self._delivered_once(task, result, started)
        return next_task

    async def _retry(
        self, task: Task, result: TaskResult, chain: bool, failed: SourceError
    ) -> Task | None:
        """The attempts after a first one that failed with ``failed``."""
        if not failed.retryable or self._attempts <= 1:
            raise failed
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
                # Never chained: the failed call may have reached the server and dequeued a
                # task whose answer was lost; asking again would dequeue another nobody runs.
                return await self._report_once(task, result, False)
        raise SourceError(  # pragma: no cover - AsyncRetrying either returns or raises
            f"gave up after {time.monotonic() - started:.1f}s"
        )

    async def deliver(
        self,
        task: Task,
        result: TaskResult,
        *,
        chain: bool = False,
        first_error: SourceError | None = None,
    ) -> Task | None:
        """Deliver ``result``; when the server stays unreachable, spool it durably.

        Returns the chained next task when ``chain`` was asked and the server gave one. Never
        raises for a transport failure: the result is either delivered, spooled (or held in
        memory while the spool cannot be written), reported failed without its output (the
        server refused the result itself, e.g. too large), or (when the server rejects it
        permanently, e.g. an unknown task id) logged as rejected. A result
        whose output cannot be encoded is delivered as a terminal failure naming the value
        (:meth:`TaskResult.without_output`). ``first_error``: the first attempt was made already
        (:meth:`report_blocking`) and failed with it; the retries go on from there.
        """
        if first_error is None:
            result = self._prepare(task, result)
        else:
            try:
                result.output_json()
            except OutputError as exc:  # counted when the first attempt prepared it
                result = result.without_output(str(exc))
        try:
            if first_error is None:
                # The common case costs one call: the retry machinery starts after a failure.
                try:
                    return await self._report_once(task, result, chain)
                except SourceError as exc:
                    first_error = exc
            return await self._retry(task, result, chain, first_error)
        except SourceError as exc:
            if exc.rejects_result and result.exception != _REFUSED:
                return await self.deliver(task, _refused(result, exc), chain=chain)
            if not exc.retryable:
                log.error(
                    "server rejected the result of task %s (%s): %s",
                    task.task_id,
                    task.task_type,
                    exc,
                )
                return None
            await self._spool(task, result, exc)
            return None

    async def _spool(self, task: Task, result: TaskResult, exc: BaseException) -> None:
        if self.spool is None:
            log.error(
                "result of task %s lost: no spool and the server is down (%s)", task.task_id, exc
            )
            return
        self.spool_pending = True
        self._flush_at = 0.0
        try:
            await asyncio.to_thread(self.spool.put, task.slim(), result)
        except Exception as err:
            # A full disk, say: the result waits in memory and flush() tries it again.
            self._held.append((task.slim(), result))
            log.warning(
                "result of task %s (%s) could not be written to the spool (%s: %s): kept in"
                " memory (%d held) and tried again",
                task.task_id,
                task.task_type,
                type(err).__name__,
                err,
                len(self._held),
            )
            return
        m = metrics.get()
        m.taskfleet_results_spooled.labels(task.task_type).inc()
        log.warning(
            "result of task %s (%s) spooled for later delivery: %s",
            task.task_id,
            task.task_type,
            exc,
        )

    @property
    def held(self) -> int:
        """Results kept in memory because the spool could not store them."""
        return len(self._held)

    @property
    def flush_due(self) -> bool:
        """Whether :meth:`flush` has something to do now (spooled rows, or results held in
        memory, and no recent failed flush to wait out)."""
        return self.spool_pending and time.monotonic() >= self._flush_at

    async def flush(self, task_type: str | None = None, batch: int = 50) -> int:
        """Deliver spooled results (of ``task_type``, or all). Returns how many were delivered.

        A row whose delivery fails waits its own backoff (``_spool.retry_delay``) and the rows
        behind it go first; after ``_spool.MAX_ATTEMPTS`` failures, or when the server refuses
        it for good, it is moved to the spool's dead table. Spool I/O runs in a thread.

        Raises:
            SourceError: when the server is unreachable (the rows stay in the spool; the next
                flush is due after a backoff).
        """
        if self.spool is None:
            return 0
        try:
            delivered = await self._flush(task_type, batch)
        except Exception as exc:
            self._flush_at = time.monotonic() + self._flush_backoff.next()
            if not isinstance(exc, SourceError):
                # The spool itself failed (a full disk, a lock held too long): not the server.
                log.warning(
                    "spool flush failed (%s: %s); tried again later", type(exc).__name__, exc
                )
                raise SourceError(f"spool flush failed: {type(exc).__name__}: {exc}") from exc
            raise
        self._flush_backoff.reset()
        if delivered:
            log.info("delivered %d spooled result(s)", delivered)
        return delivered

    async def _flush(self, task_type: str | None, batch: int) -> int:
        assert self.spool is not None
        spool = self.spool
        delivered = await self._deliver_held(task_type)
        while True:
            rows = await asyncio.to_thread(spool.claim, task_type, batch)
            if not rows:
                break
            failures = 0
            for i, row in enumerate(rows):
                try:
                    await self._deliver_row(row)
                except SourceError as exc:
                    # The server took results in the last seconds: this row's own failure (it
                    # waits its backoff, the others go on). Otherwise, or twice in a row, the
                    # server is down: the rest is given back untried.
                    failures += 1
                    up = time.monotonic() - self._last_ok < SERVER_UP_WINDOW
                    await asyncio.to_thread(spool.failed, row.row_id, str(exc), charge=up)
                    if up and failures < 2:
                        continue
                    await asyncio.to_thread(spool.release, [r.row_id for r in rows[i + 1 :]])
                    await self._export_depth()
                    raise
                failures = 0
                self._last_ok = time.monotonic()
                delivered += 1
        remaining = await asyncio.to_thread(spool.count, task_type)
        self.spool_pending = remaining > 0 or bool(self._held)
        # Rows left are waiting their own backoff: look again in a while, not before each poll.
        self._flush_at = time.monotonic() + (FLUSH_RECHECK if self.spool_pending else 0.0)
        await self._export_depth()
        return delivered

    async def _deliver_row(self, row: SpooledResult) -> None:
        """Deliver one spooled row and remove it, or bury it when the server refuses it.

        Raises:
            SourceError: a retryable failure (the caller records it on the row).
        """
        assert self.spool is not None
        result = row.result
        try:
            try:
                await self.source.report(row.task, result, chain=False)
            except SourceError as exc:
                if not exc.rejects_result or result.exception == _REFUSED:
                    raise
                await self.source.report(row.task, _refused(result, exc), chain=False)
        except SourceError as exc:
            if exc.retryable:
                raise
            log.error(
                "server refused spooled result of task %s (%s) for good: %s",
                row.task.task_id,
                row.task.task_type,
                exc,
            )
            await asyncio.to_thread(self.spool.give_up, row.row_id, f"refused by the server: {exc}")
            return
        except Exception as exc:  # a bug in a source: this row only, never the flush
            log.exception("delivering spooled result of task %s failed", row.task.task_id)
            raise SourceError(f"{type(exc).__name__}: {exc}") from exc
        await asyncio.to_thread(self.spool.delivered, row.row_id)

    async def _deliver_held(self, task_type: str | None) -> int:
        """Results the spool could not store: deliver them now, else try the spool again."""
        assert self.spool is not None
        delivered = 0
        held, self._held = self._held, []
        for n, (task, result) in enumerate(held):
            if task_type is not None and task.task_type != task_type:
                self._held.append((task, result))
                continue
            try:
                await self.source.report(task, result, chain=False)
                delivered += 1
            except SourceError as exc:
                if not exc.retryable:
                    log.error("server rejected the result of task %s: %s", task.task_id, exc)
                    continue
                try:
                    await asyncio.to_thread(self.spool.put, task, result)
                except Exception:
                    self._held.extend(held[n:])
                    raise exc from None
        return delivered

    async def _export_depth(self) -> None:
        """The spool's gauges (the counting in a thread, like all spool I/O)."""
        spool = self.spool
        if spool is None:
            return
        try:
            waiting, dead = await asyncio.to_thread(
                lambda: (spool.count(), sum(spool.dead_counts().values()))
            )
        except Exception as exc:  # a metric is not worth a failed flush
            log.debug("spool depth not exported: %s", exc)
            return
        m = metrics.get()
        m.taskfleet_spool_depth.set(waiting + len(self._held))
        m.taskfleet_spool_dead_results.set(dead)


#: ``TaskResult.exception`` of a result the server refused, reported without its output.
_REFUSED = "ResultRefused"


def _refused(result: TaskResult, exc: SourceError) -> TaskResult:
    """The terminal failure reported instead of a result the server refused for good."""
    stripped = result.without_output(f"result refused by the server: {exc}")
    stripped.exception = _REFUSED
    log.error("task %s: %s; reporting it failed without its output", result.task_id, exc)
    return stripped
