"""The loop of one worker process: poll sized to free slots → execute → report, with backoff.

One asyncio loop per process serves every source. Synchronous handlers run in a thread pool of
``threads`` slots (native calls release the GIL, so they run in parallel); ``async def``
handlers run on the loop, at most ``threads`` at a time. Poll, execute and report stay apart:

- **poll** asks only for as many tasks as there are free slots (a slot freed beside running
  tasks waits up to ``POLL_LINGER`` for more, so short tasks come several per poll); an empty
  answer backs off exponentially (with jitter) up to ``poll_interval``, an error backs off up to
  2 s, then 10 s once the outage is older than a minute — a dead server costs a few requests a
  minute (:class:`~taskfleet._backoff.Backoff`).
- **execute** binds input to the handler, turns its return value or exception into a
  :class:`~taskfleet._task.TaskResult`, and never lets bad input or output kill the process.
- **report** goes through :class:`~taskfleet._delivery.Delivery` (retries, then the spool); a
  chained next task from the server runs in the freed slot without a poll.

The supervisor knows every task this process holds — each slot's record in the in-flight ledger
(``ledger.py``) is written before its task starts and cleared once it is reported — so it can
report them if this process dies, and extend their leases while the handler holds the GIL.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import itertools
import logging
import math
import os
import pickle
import resource
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from . import _metrics as metrics
from ._backoff import Backoff
from ._context import TaskContext, task_context
from ._control import SUPERVISOR_GONE, ChildStatus, ControlClient
from ._delivery import Delivery
from ._errors import SourceError
from ._hookrun import HookRunner
from ._ledger import Ledger, pack_task, unpack_task
from ._logs import redact, redact_result
from ._options import WorkerOptions
from ._outcome import result_from_exception, to_result
from ._progress import DEFAULT_INTERVAL, ProgressSender
from ._sources.base import HANDED_BACK, PollRequest, TaskSource
from ._spool import Spool
from ._task import Task, TaskResult, TaskStatus
from ._threads import LoopThreads
from ._worker import Worker

__all__ = ["TIME_LIMIT_EXCEEDED", "Runner", "run_inline", "time_limit_result"]

log = logging.getLogger("taskfleet.runner")

HEARTBEAT_INTERVAL = 1.0
#: How long a process whose supervisor is gone waits for the server to take one hand-back.
HAND_BACK_TIMEOUT = 5.0
#: While other tasks of the process still run, a poll waits up to this many seconds for
#: three quarters of the slots to be free, so that one fetch brings several tasks.
POLL_LINGER = 0.002
#: A ``def`` handler runs its calls on the loop (``cheap_on_loop``; see ``_execute``) once its
#: calls take ``CHEAP_CALL`` seconds or less on average (a moving mean over about the last
#: ``CHEAP_MEAN_OVER`` calls) and none of the last ``CHEAP_STREAK`` took ``CHEAP_CALL_MAX`` or
#: more. On the loop, a call of ``CHEAP_CALL_MAX`` or more, or a mean past twice ``CHEAP_CALL``,
#: sends it back to the threads, and the streak it needs to come back grows fourfold each time
#: (up to ``CHEAP_STREAK_MOST``). CHEAP_CALL_MAX is well above the pauses any call may see from
#: the machine (the loop's thread descheduled for a few milliseconds on a busy host) and well
#: below a blocking wait worth moving off the loop.
#: CHEAP_CALL is about what the hand-off itself costs (docs/benchmarks.md): the mean is what a
#: call on the loop holds the loop for, so on average it holds it no longer than the hand-off
#: would, and even a call that releases the GIL (a native call, a hash of a large buffer) would
#: gain no more than that by running in parallel.
CHEAP_CALL = 0.00005
CHEAP_CALL_MAX = 0.02
CHEAP_STREAK = 256
CHEAP_STREAK_MOST = 65536
CHEAP_MEAN_OVER = 32
#: A call counts into the mean as at most this long: one pause of the machine (the loop's
#: thread descheduled for a few ms) must not carry the mean of a 10 us handler past
#: 2 x CHEAP_CALL, while calls that are all slower still do.
CHEAP_MEAN_CLIP = 10 * CHEAP_CALL
#: How often the watch of calls on the loop looks (seconds; see ``_watch_loop_calls``).
LOOP_CALL_WATCH = 0.5
#: The ``exception`` (metric label) of a task past its time limit.
TIME_LIMIT_EXCEEDED = "TimeLimitExceeded"


@dataclass
class _Stats:
    completed: int = 0
    last_poll_ok: float = 0.0
    last_poll: float = 0.0
    last_error: str = ""


class _Handback:
    """What a slot thread leaves to the loop (``Runner._run_chain``): the task it ran, and
    the part of its report the thread could not finish."""

    __slots__ = ("chain", "error", "next_task", "recycle", "result", "settled", "task")

    def __init__(
        self,
        task: Task,
        result: TaskResult,
        chain: bool,
        recycle: str,
        *,
        error: BaseException | None = None,
        next_task: Task | None = None,
        settled: bool = False,
    ) -> None:
        self.task = task
        self.result = result
        self.chain = chain
        self.recycle = recycle
        #: the failed first report attempt (None: the result was delivered)
        self.error = error
        #: a chained task, not yet announced (a recycle)
        self.next_task = next_task
        #: the task's ledger record was cleared already
        self.settled = settled


class Runner:
    """Runs one worker type in this process until stopped.

    Args:
        worker: the worker definition.
        options: its effective options (env overrides applied by the supervisor).
        source: a source, not yet started (the runner starts and closes it).
        spool: the durable result spool (None: results that cannot be delivered are lost).
        control: the channel to the supervisor (a disconnected client when run alone).
        hooks: objects with optional ``before_``/``after_`` poll, execute and report methods.
        ledger: where the supervisor reads which tasks this process holds (None: no supervisor
            reads them, e.g. ``taskfleet local``; see ``ledger.py``).
    """

    def __init__(
        self,
        worker: Worker,
        source: TaskSource,
        *,
        options: WorkerOptions | None = None,
        spool: Spool | None = None,
        control: ControlClient | None = None,
        hooks: Sequence[Any] = (),
        max_tasks: int = 0,
        ledger: Ledger | None = None,
    ) -> None:
        self.worker = worker
        self.options = options or worker.options
        self.source = source
        self.spool = spool
        self.control = control or ControlClient(None)
        self.hooks = list(hooks)
        self.worker_id = self.options.identity
        self.task_type = worker.task_type
        self.slots = self.options.threads
        #: runs the hooks off the loop (see ``_hookrun.py``); the hot path tests ``self.hooks``
        self._hooks = HookRunner(self.hooks, self.slots, f"tf-{self.task_type}", self.worker_id)
        if self.hooks:
            source.on_outcome = self._hooks.outcome
        #: stop after this many tasks (0: never); used by `taskfleet local` and tests
        self.max_tasks = max_tasks or self.options.max_tasks_per_child
        self.stop_reason = ""
        self._stats = _Stats()
        self._completed = itertools.count(1)  # next() is atomic: slot threads count too
        #: def handler, a source with blocking calls, no hooks: slot threads run whole chains
        self._inline = False
        #: def handler on an async source, ``cheap_on_loop``: cheap calls may run on the loop
        self._loop_calls = False
        #: calls since the last one of CHEAP_CALL_MAX or more, and the moving mean of their
        #: durations (written by the slot threads too; a lost update only delays a switch)
        self._cheap = 0
        self._call_mean = CHEAP_MEAN_CLIP
        #: the streak after which calls run on the loop (grows with each return to the threads)
        self._cheap_needed = CHEAP_STREAK
        #: ``time.monotonic()`` when the call running on the loop began (0.0: none runs)
        self._loop_call_started = 0.0
        self._on_loop = False  # calls run on the loop
        self._watch_stop: threading.Event | None = None
        self._running: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        #: no polling (the ``paused`` option, then the supervisor's pause and resume)
        self._paused = self.options.paused
        #: what the poll loop awaits while it sleeps (None: it is not sleeping)
        self._waiter: asyncio.Future[None] | None = None
        #: the poll loop sleeps to let more slots free up (see ``_poll_loop``)
        self._lingering = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: LoopThreads | None = None
        self._delivery: Delivery | None = None
        self._polling = False
        self._ledger = ledger if ledger is not None and ledger.slots >= self.slots else None
        self._free_records = list(range(self.slots - 1, -1, -1))
        #: free slots worth a poll at once while other tasks still run (see ``_poll_loop``)
        self._batch = max(1, math.ceil(self.slots * 0.75))
        #: tasks a source handed out beyond the free slots, waiting for one (see ``_start``)
        self._backlog: collections.deque[Task] = collections.deque()
        #: seconds in-flight tasks may take once the supervisor is gone (None: no limit);
        #: past it the rest are handed back and :attr:`abandoned` is set
        self.orphan_drain: float | None = None
        self.abandoned = 0
        self._drain_until: float | None = None  # loop time
        #: seconds between two progress updates of one task (TASKFLEET_PROGRESS_INTERVAL)
        self.progress_interval = DEFAULT_INTERVAL

    # -- control ------------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Stop polling and finish in-flight tasks. Safe from any thread and from signal handlers."""
        loop = self._loop
        if loop is None:
            self._stopping = True
            self.stop_reason = self.stop_reason or reason
            return
        loop.call_soon_threadsafe(self._stop_now, reason)

    def _stop_now(self, reason: str) -> None:
        if not self._stopping:
            log.info(
                "%s: stopping (%s); %d task(s) in flight",
                self.task_type,
                reason,
                len(self._running),
            )
        self._stopping = True
        self.stop_reason = self.stop_reason or reason
        if reason == SUPERVISOR_GONE and self.orphan_drain is not None and not self._drain_until:
            # Nobody extends leases, enforces time limits or reports for this process now:
            # finish what can be finished within the drain timeout, hand back the rest.
            assert self._loop is not None
            self._drain_until = self._loop.time() + self.orphan_drain
            log.warning(
                "%s: the supervisor is gone; finishing %d task(s) within %gs, then handing back"
                " the rest",
                self.task_type,
                len(self._running),
                self.orphan_drain,
            )
        self._wake_up()

    def set_paused(self, paused: bool) -> None:
        """Stop or start polling (docs/workers.md, Runtime control); running tasks go on.
        Safe from any thread."""
        loop = self._loop
        if loop is None:
            self._paused = paused
        else:
            loop.call_soon_threadsafe(self._pause_now, paused)

    def _pause_now(self, paused: bool) -> None:
        if paused != self._paused:
            log.info("%s: %s", self.task_type, "paused" if paused else "resumed")
        self._paused = paused
        self._wake_up()

    # -- hooks --------------------------------------------------------------------------------

    def _hook(self, name: str, *args: Any) -> None:
        """A poll hook, on the hooks' thread: the poll loop does not wait for it."""
        if self.hooks:
            self._hooks.poll_event(name, *args)

    async def _task_hook(self, name: str, task: Task, *args: Any) -> None:
        """A task's hook, off the loop with the task's context; only this task waits for it.
        Callers test ``self.hooks`` first: without hooks, no coroutine per task and hook point."""
        await self._hooks.task_event(name, task, *args)

    # -- the loop -----------------------------------------------------------------------------

    async def run(self) -> str:
        """Poll, execute and report until stopped; returns why it stopped.

        Raises:
            SourceError, ConfigurationError: when the source cannot start.
        """
        self._loop = asyncio.get_running_loop()
        self._progress = ProgressSender(self._loop, self.source, self.progress_interval)
        m = metrics.get()
        m.active_workers.labels(self.task_type).set(1)
        m.taskfleet_worker_slots.labels(self.task_type).set(self.slots)
        if not self.worker.is_async:
            self._threads = LoopThreads(self.slots, f"tf-{self.task_type}")
            self._inline = bool(getattr(self.source, "blocking", False)) and not self.hooks
            self._loop_calls = not self._inline and self.options.cheap_on_loop
        await self.source.start()
        self._delivery = Delivery(self.source, self.spool)
        self.control.hello()
        heartbeat = asyncio.create_task(self._heartbeat())
        flusher = asyncio.create_task(_flush_metrics()) if metrics.buffering() else None
        try:
            await self._poll_loop()
            if await self._drain():
                await self._flush_spool_quietly()
        finally:
            if self._hooks:
                # Every event given so far reaches the hooks before the process goes.
                await asyncio.get_running_loop().run_in_executor(None, self._hooks.close)
            heartbeat.cancel()
            if flusher is not None:
                flusher.cancel()
            if self._watch_stop is not None:
                self._watch_stop.set()
            self._send_heartbeat()
            if self._threads is not None:
                self._threads.shutdown()
            await self.source.close()
            m.active_workers.labels(self.task_type).set(0)
            m.taskfleet_worker_slots.labels(self.task_type).set(0)
            _write_metrics()
        return self.stop_reason or "stopped"

    async def _poll_loop(self) -> None:
        assert self._delivery is not None
        # Idle: from 1 ms up to poll_interval, little jitter so the interval is what was asked.
        empty = Backoff(0.001, max(self.options.poll_interval, 1) / 1000.0, jitter=0.2)
        errors = Backoff(0.1, 2.0, jitter=0.5)
        m = metrics.get()
        linger_until = 0.0
        while not self._stopping:
            if self._paused:
                self._polling = False
                await self._sleep(1.0)
                continue
            if self._delivery.flush_due:
                try:
                    await self._delivery.flush(self.task_type)
                except SourceError as exc:
                    # The spool waits its own backoff and polling goes on: a result the server
                    # does not take must not stop this task type (a dead server fails the poll).
                    self._record_error(exc)
            free = self.slots - len(self._running)
            if free <= 0:
                self._polling = False
                await self._sleep(None)
                continue
            if free < self._batch and self._running:
                # Other tasks are about to free their slots too (short tasks end together):
                # wait a moment so one fetch brings several tasks. Each fetch is a request and
                # a reply through the server; one per task costs both sides more than the wait.
                now = time.monotonic()
                if not linger_until:
                    linger_until = now + POLL_LINGER
                if now < linger_until:
                    self._lingering = True
                    try:
                        await self._sleep(linger_until - now)
                    finally:
                        self._lingering = False
                    continue
            linger_until = 0.0
            self._polling = True
            request = PollRequest(
                self.task_type,
                free,
                self.options.poll_timeout / 1000.0,
                self.worker_id,
                self.options.domain or "",
            )
            self._hook("before_poll", self.task_type)
            started = time.monotonic()
            self._stats.last_poll = time.time()
            m.task_poll.labels(self.task_type).inc()
            try:
                tasks = await self.source.poll(request)
            except Exception as exc:
                # SourceError is the contract; anything else is a bug in a source, and a bug
                # must cost a backoff, not the process (a crash would loop on the same input).
                if not isinstance(exc, SourceError):
                    log.exception("%s: the source's poll failed unexpectedly", self.task_type)
                m.task_poll_time_seconds.labels(self.task_type, "error").observe(
                    time.monotonic() - started
                )
                m.task_poll_error.labels(self.task_type, type(exc).__name__).inc()
                self._record_error(exc)
                self._hook("after_poll", self.task_type, [])
                await self._sleep(self._error_delay(errors))
                continue
            elapsed = time.monotonic() - started
            m.task_poll_time_seconds.labels(self.task_type, "ok").observe(elapsed)
            self._stats.last_poll_ok = time.time()  # exported by the heartbeat
            if errors.failures:
                log.info(
                    "%s: polling again after %d failed poll(s)", self.task_type, errors.failures
                )
                errors.reset()
            self._hook("after_poll", self.task_type, tasks)
            if tasks:
                empty.reset()
                self._start(tasks)
            else:
                # The wait is measured from the start of the poll: a long poll that waited its
                # full timeout polls again at once, a server that answers instantly is not hammered.
                await self._sleep(empty.next() - elapsed)

    def _error_delay(self, errors: Backoff) -> float:
        errors.cap = 10.0 if errors.elapsed > 60.0 else 2.0
        return errors.next()

    def _record_error(self, exc: BaseException) -> None:
        self._stats.last_error = redact(f"{type(exc).__name__}: {exc}")[:300]
        log.warning("%s: %s", self.task_type, self._stats.last_error)

    async def _sleep(self, seconds: float | None) -> None:
        """Sleep (None: until woken), waking early when asked to stop or when a slot frees up."""
        if seconds is not None and seconds <= 0:
            return
        # A stop or a freed slot may have come while the loop was busy.
        if self._stopping or (seconds is None and len(self._running) < self.slots):
            return
        # A bare future and a timer: asyncio.Event.wait() under wait_for() costs a Task per
        # sleep, and the poll loop sleeps between most polls. Everything here runs on the
        # loop's thread, so nothing can wake it between the checks above and the await.
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if seconds is None else loop.call_later(seconds, _release, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _wake_up(self) -> None:
        """End the poll loop's sleep, if it sleeps (on the loop's thread)."""
        if self._waiter is not None:
            _release(self._waiter)

    async def _drain(self) -> bool:
        """No more polls: let in-flight tasks finish and report. With the supervisor gone,
        only until ``orphan_drain`` has passed: then the tasks still running are handed back.
        Returns False when some were."""
        loop = asyncio.get_running_loop()
        next_lease = 0.0
        while self._running:
            left = None if self._drain_until is None else self._drain_until - loop.time()
            if left is not None and left <= 0:
                await self._hand_back_held()
                return False
            if left is not None and loop.time() >= next_lease:
                # The supervisor extended the leases; it is gone, so this process does.
                next_lease = loop.time() + await self._extend_held()
            # Woken at least once a second: the supervisor may die while this waits.
            await asyncio.wait(list(self._running.values()), timeout=min(left or 1.0, 1.0))
        return True

    async def _extend_held(self) -> float:
        """Extend the leases of the tasks this process holds, as the supervisor does; returns
        the seconds until the next extension is due."""
        lease = self.options.lease_extend
        if lease is False:
            return 3600.0
        held = self._held_tasks()
        every = [
            float(lease) if not isinstance(lease, bool) else self.source.lease_interval(t)
            for t in held
        ]
        due = [e for e in every if e]
        if not due:
            return 1.0
        try:
            await asyncio.wait_for(self.source.extend(held), HAND_BACK_TIMEOUT)
        except Exception as exc:  # the server's clock decides then
            log.warning("%s: extending leases failed: %s", self.task_type, exc)
        return min(due)

    async def _hand_back_held(self) -> None:
        """Hand back every task this process's ledger still holds (re-queued at once, no retry
        used up), as the supervisor does for a process it stops at its drain deadline."""
        held = self._held_tasks()
        reason = "handed back: the supervisor is gone and the drain timeout passed"
        for task in held:
            result = task.result(TaskStatus.IN_PROGRESS, reason=reason, worker_id=self.worker_id)
            result.exception = HANDED_BACK
            try:
                await asyncio.wait_for(self.source.report(task, result), HAND_BACK_TIMEOUT)
            except Exception as exc:  # the server's timeout brings it back instead
                log.warning(
                    "%s: handing back task %s failed: %s", self.task_type, task.task_id, exc
                )
        self.abandoned = len(held)
        log.warning("%s: handed back %d unfinished task(s)", self.task_type, len(held))

    def _held_tasks(self) -> list[Task]:
        """The tasks the ledger records (running, or reported but not yet cleared)."""
        if self._ledger is None:
            return []
        tasks = []
        for record in self._ledger.read():
            if record is not None and record[2]:
                with contextlib.suppress(Exception):  # torn: that task is left to the server
                    tasks.append(unpack_task(pickle.loads(record[2])))
        return tasks

    async def _heartbeat(self) -> None:
        # Whether the supervisor is alive is watched by the control channel's reader, on the
        # supervisor's process itself: never by this process's parent, which under the fork
        # server is the fork server (see ``_control.py``).
        while True:
            self._send_heartbeat()
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    def _send_heartbeat(self) -> None:
        # Gauges that change with every task are exported once a beat, not per task: each
        # write is a locked mmap update in multiprocess mode, and scrapes are seconds apart.
        m = metrics.get()
        m.taskfleet_tasks_in_flight.labels(self.task_type).set(len(self._running))
        if self._stats.last_poll_ok:
            m.taskfleet_last_poll_success_timestamp_seconds.labels(self.task_type).set(
                self._stats.last_poll_ok
            )
        self.control.heartbeat(self._status())

    def _status(self) -> ChildStatus:
        return ChildStatus(
            in_flight=len(self._running),
            completed=self._stats.completed,
            last_poll_ok=self._stats.last_poll_ok,
            last_error=self._stats.last_error,
            polling=self._polling and not self._stopping,
            last_poll=self._stats.last_poll,
        )

    async def _flush_spool_quietly(self) -> None:
        assert self._delivery is not None
        if self._delivery.spool_pending:
            try:
                await self._delivery.flush(self.task_type)
            except SourceError as exc:
                log.warning("%s: spooled results stay in the spool: %s", self.task_type, exc)
        if self._delivery.held:
            log.error(
                "%s: %d result(s) neither delivered nor stored (the spool cannot be written) are"
                " lost with this process; their tasks run again after the server's timeout",
                self.task_type,
                self._delivery.held,
            )

    # -- tasks --------------------------------------------------------------------------------

    def _announce(self, tasks: Sequence[Task], records: Sequence[int]) -> list[Task]:
        """Every task about to start (polled or chained): record it in the ledger, count it.

        ``records[i]`` is the ledger record of the slot that will run ``tasks[i]``. This
        happens before any of them starts, so a crash in a handler always finds its task known.
        """
        if self.options.output_subject:
            # Pipelines: the worker's output goes on as the next task unless the task names
            # its own next step.
            tasks = [
                t if t.output_subject else replace(t, output_subject=self.options.output_subject)
                for t in tasks
            ]
        ledger = self._ledger
        if ledger is not None:
            now = time.monotonic()
            for task, record in zip(tasks, records, strict=True):
                try:
                    ledger.put(record, pack_task(task), now)
                except OSError as exc:  # a spilled record that could not be written
                    log.warning(
                        "%s: task %s runs unrecorded (the server's timeout covers a crash): %s",
                        self.task_type,
                        task.task_id,
                        exc,
                    )
        return list(tasks)

    def _start(self, tasks: Sequence[Task]) -> None:
        metrics.get().taskfleet_tasks_received.labels(self.task_type).inc(len(tasks))
        if len(tasks) > len(self._free_records):
            # A source handed out more than asked: the rest wait for a slot (and its record),
            # so no task starts without the supervisor knowing it. Expected on NATS after an
            # idle spell: a fetch also hands out what an earlier, expired pull request brought
            # in late (nats-py returns everything pending), so this is not worth a warning.
            log.debug(
                "%s: the source returned %d task(s) for %d free slot(s); the rest wait",
                self.task_type,
                len(tasks),
                len(self._free_records),
            )
            self._backlog.extend(tasks[len(self._free_records) :])
            tasks = tasks[: len(self._free_records)]
        self._launch(tasks)

    def _launch(self, tasks: Sequence[Task]) -> None:
        """Start each task in a slot of its own (there is a free one for each)."""
        records = [self._free_records.pop() for _ in tasks]
        for task, record in zip(self._announce(tasks, records), records, strict=True):
            self._running[task.task_id] = asyncio.create_task(self._slot(task, record))

    async def _slot(self, task: Task | None, record: int) -> None:
        """Run a task, report it, and run chained tasks in the same slot (ledger ``record``)."""
        assert self._delivery is not None
        first_id = task.task_id if task else ""
        try:
            while task is not None:
                if self._inline:
                    # One hand-off for the whole chain: the slot's thread executes, reports and
                    # takes the chained task itself, and comes back when the chain ends or
                    # something needs the loop.
                    assert self._threads is not None
                    call = contextvars.copy_context().run
                    back = await self._threads.run(call, self._run_chain, task, record)
                    if back is None:
                        return
                    task = await self._finish(back, record)
                    continue
                result = await self._execute(task)
                completed = self._stats.completed = next(self._completed)
                # Checked once per task (it may read /proc); a process about to be recycled
                # does not take a chained task it would have to run first.
                recycle = self._recycle_reason(completed)
                chain = not self._stopping and not self._paused and not recycle
                if self.hooks:
                    await self._task_hook("before_report", task, result)
                error: BaseException | None = None
                next_task: Task | None = None
                try:
                    next_task = await self._delivery.deliver(task, result, chain=chain)
                except Exception as exc:  # a bug in a source must not leave the slot hanging
                    error = exc
                    log.exception("%s: reporting task %s failed", self.task_type, task.task_id)
                if self.hooks:
                    await self._task_hook("after_report", task, result, error)
                if self._ledger is not None:
                    self._ledger.clear(record)
                if recycle:
                    self._stop_now(recycle)
                if next_task is not None:
                    metrics.get().taskfleet_tasks_received.labels(self.task_type).inc()
                    task = self._announce([next_task], [record])[0]
                else:
                    task = None
        finally:
            self._running.pop(first_id, None)
            self._free_records.append(record)
            if self._backlog:
                self._launch([self._backlog.popleft()])
            # A lingering poll loop needs waking only once enough slots are free (its timer
            # ends the linger otherwise): one wake-up per batch, not one per task.
            if (
                not self._lingering
                or self.slots - len(self._running) >= self._batch
                or not self._running
            ):
                self._wake_up()

    def _run_chain(self, task: Task, record: int) -> _Handback | None:
        """In a slot's thread: execute, report (first attempt) and go on with the chained task,
        until there is none (None: the slot is free) or something needs the loop: a failed
        report (retries, spool) or a recycle."""
        assert self._delivery is not None
        delivery = self._delivery
        ledger = self._ledger
        received = metrics.get().taskfleet_tasks_received.labels(self.task_type)
        while True:
            result = self._execute_blocking(task)
            completed = self._stats.completed = next(self._completed)
            recycle = self._recycle_reason(completed)
            chain = not self._stopping and not self._paused and not recycle
            try:
                next_task = delivery.report_blocking(task, result, chain=chain)
            except Exception as exc:  # SourceError: the loop retries or spools
                return _Handback(task, result, chain, recycle, error=exc)
            if ledger is not None:
                ledger.clear(record)
            if recycle:
                return _Handback(task, result, chain, recycle, next_task=next_task, settled=True)
            if next_task is None:
                return None
            received.inc()
            # Recorded in the ledger before it starts, as every task (_announce is thread-safe).
            task = self._announce([next_task], [record])[0]

    async def _finish(self, back: _Handback, record: int) -> Task | None:
        """On the loop: what a slot thread left of a task (see ``_run_chain``); returns the next
        task to run in the slot, announced."""
        assert self._delivery is not None
        task, next_task = back.task, back.next_task
        if back.error is not None:
            if isinstance(back.error, SourceError):
                next_task = await self._delivery.deliver(
                    task, back.result, chain=back.chain, first_error=back.error
                )
            else:  # a bug in a source must not leave the slot hanging
                log.error(
                    "%s: reporting task %s failed",
                    self.task_type,
                    task.task_id,
                    exc_info=back.error,
                )
        if not back.settled and self._ledger is not None:
            self._ledger.clear(record)
        if back.recycle:
            self._stop_now(back.recycle)
        if next_task is None:
            return None
        metrics.get().taskfleet_tasks_received.labels(self.task_type).inc()
        return self._announce([next_task], [record])[0]

    async def _execute(self, task: Task) -> TaskResult:
        if self.hooks:
            await self._task_hook("before_execute", task)
        ctx = self._context(task)
        started = time.monotonic()
        try:
            if self.worker.is_async:
                coro = self._call_async(task, ctx)
                if self.options.time_limit:
                    try:
                        result = await asyncio.wait_for(coro, self.options.time_limit)
                    except asyncio.TimeoutError:
                        result = time_limit_result(task, self.options.time_limit, self.worker_id)
                else:
                    result = await coro
            elif self._loop_calls and (
                self._on_loop
                or (self._cheap >= self._cheap_needed and self._call_mean <= CHEAP_CALL)
            ):
                result = self._call_on_loop(task, ctx)
            else:
                assert self._threads is not None
                call = contextvars.copy_context().run
                fn = self._timed_call if self._loop_calls else self._call_sync
                result = await self._threads.run(call, fn, task, ctx)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            result = result_from_exception(task, exc, self.worker_id)
        self._executed(task, result, ctx, started)
        if self.hooks:
            await self._task_hook("after_execute", task, result)
        return result

    def _execute_blocking(self, task: Task) -> TaskResult:
        """A ``def`` handler in the calling slot thread (no hooks: see ``_inline``)."""
        ctx = self._context(task)
        started = time.monotonic()
        result = self._call_sync(task, ctx)
        self._executed(task, result, ctx, started)
        return result

    # -- cheap def handlers on the loop (docs/workers.md, "Plain def handlers") ----------------
    #
    # Handing a call to a slot thread and back costs a thread wake-up and the GIL crossing
    # twice: ~50 us of CPU per task on the machine of docs/benchmarks.md, more than a short
    # handler itself. A handler whose calls take no longer than the hand-off on average (see
    # CHEAP_CALL) runs on the loop: a call there holds the loop about as long as the hand-off
    # would have, and even one that releases the GIL would gain no more than that by running
    # in parallel. An average, not every call: a no-op's calls take 10 us, yet one in fifty
    # takes over 50 us (allocation, caches), and a rule of "every call" would rarely be met.
    # Calls that wait (I/O, sleeps) raise the mean and stay in threads; a handler that turns
    # slow on the loop goes back to the threads, and meanwhile ``_watch_loop_calls`` sends the
    # heartbeats the blocked loop cannot.

    def _timed(self, took: float) -> None:
        """Count a call of ``took`` seconds into the mean and the streak (any thread)."""
        self._call_mean += (min(took, CHEAP_MEAN_CLIP) - self._call_mean) / CHEAP_MEAN_OVER
        self._cheap = self._cheap + 1 if took < CHEAP_CALL_MAX else 0

    def _timed_call(self, task: Task, ctx: TaskContext) -> TaskResult:
        """In a slot thread: the ``def`` handler's call, timed (see ``_timed``)."""
        started = time.monotonic()
        result = self._call_sync(task, ctx)
        self._timed(time.monotonic() - started)
        return result

    def _call_on_loop(self, task: Task, ctx: TaskContext) -> TaskResult:
        """On the loop: the ``def`` handler's call, as it would run in a slot thread (its own
        copy of the context, no running loop: ``asyncio.run`` inside works as in a thread)."""
        if not self._on_loop:
            self._on_loop = True
            log.info(
                "%s: the handler's calls take %.0f us on average: they run on the event loop",
                self.task_type,
                self._call_mean * 1e6,
            )
            if self._watch_stop is None:
                self._watch_stop = threading.Event()
                threading.Thread(
                    target=self._watch_loop_calls,
                    args=(self._watch_stop,),
                    name=f"tf-{self.task_type}-watch",
                    daemon=True,
                ).start()
        loop = self._loop
        started = self._loop_call_started = time.monotonic()
        asyncio._set_running_loop(None)
        try:
            result = contextvars.copy_context().run(self._call_sync, task, ctx)
        finally:
            asyncio._set_running_loop(loop)
            self._loop_call_started = 0.0
        took = time.monotonic() - started
        self._timed(took)
        if took >= CHEAP_CALL_MAX or self._call_mean > 2 * CHEAP_CALL:
            self._on_loop = False
            self._cheap = 0
            self._cheap_needed = min(self._cheap_needed * 4, CHEAP_STREAK_MOST)
            level = logging.WARNING if took > HEARTBEAT_INTERVAL else logging.INFO
            log.log(
                level,
                "%s: a call of the handler took %.1f ms on the event loop (%.0f us on average);"
                " its calls run in slot threads again (back on the loop after %d calls)",
                self.task_type,
                took * 1000,
                self._call_mean * 1e6,
                self._cheap_needed,
            )
        return result

    def _watch_loop_calls(self, stop: threading.Event) -> None:
        """A thread: while a call on the loop blocks it, send the heartbeats the loop cannot (the
        call is a task the supervisor knows, with its time limit, as if it ran in a thread)."""
        warned = 0.0  # the start of the call last warned about
        while not stop.wait(LOOP_CALL_WATCH):
            started = self._loop_call_started
            if not started:
                continue
            blocked = time.monotonic() - started
            if blocked < HEARTBEAT_INTERVAL:
                continue
            if warned != started:
                warned = started
                log.warning(
                    "%s: a call of the handler has blocked the event loop for %.1f s (other"
                    " tasks of this process wait); its calls go back to slot threads when it"
                    " returns",
                    self.task_type,
                    blocked,
                )
            self.control.heartbeat(self._status())

    def _context(self, task: Task) -> TaskContext:
        ctx = TaskContext(task, self.worker_id)
        ctx.progress_sink = self._progress.offer
        return ctx

    def _executed(self, task: Task, result: TaskResult, ctx: TaskContext, started: float) -> None:
        self._progress.finished(task.task_id)
        if ctx.logs:
            result.logs[:0] = ctx.logs
        if ctx.details or ctx.message is not None:
            result.details = {**ctx.details, **result.details}
            result.message = result.message if result.message is not None else ctx.message
        if result.reason_for_incompletion or result.logs:
            redact_result(result)  # both leave the process: to the server, into results
        duration = time.monotonic() - started
        metrics.get().task_execute_time_seconds.labels(self.task_type, result.status.value).observe(
            duration
        )
        if result.status.is_failure:
            metrics.get().task_execute_error.labels(
                self.task_type, result.exception or "TaskFailed"
            ).inc()
            log.info(
                "%s: task %s failed: %s",
                self.task_type,
                task.task_id,
                result.reason_for_incompletion,
            )

    def _call_sync(self, task: Task, ctx: TaskContext) -> TaskResult:
        with task_context(ctx):
            try:
                if self.worker.style == "task":
                    value = self.worker.handler(task)
                else:
                    value = self.worker.handler(**self.worker.bind(task))
                return to_result(task, value, self.worker_id)
            except BaseException as exc:
                return result_from_exception(task, exc, self.worker_id)

    async def _call_async(self, task: Task, ctx: TaskContext) -> TaskResult:
        with task_context(ctx):
            try:
                if self.worker.style == "task":
                    value = await self.worker.handler(task)
                else:
                    value = await self.worker.handler(**self.worker.bind(task))
                return to_result(task, value, self.worker_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                return result_from_exception(task, exc, self.worker_id)

    # -- recycling ----------------------------------------------------------------------------

    def _recycle_reason(self, completed: int) -> str:
        if self.max_tasks and completed >= self.max_tasks:
            return f"recycled after {completed} tasks"
        limit = self.options.max_memory_per_child
        if limit:
            rss = _rss_mib()
            if rss > limit:
                return f"recycled at {rss:.0f} MiB resident (max_memory_per_child={limit})"
        return ""


def time_limit_result(
    task: Task, limit: float, worker_id: str, *, process_killed: bool = False
) -> TaskResult:
    """The retryable failure of a task past its ``time_limit``: the runner's own (soft) limit of
    an async handler, or the supervisor's hard one (``process_killed``). One exception label,
    :data:`TIME_LIMIT_EXCEEDED`, either way."""
    reason = f"timed out after {limit:g}s (time_limit)"
    if process_killed:
        reason += "; worker process killed"
    result = task.result(TaskStatus.FAILED, reason=reason, worker_id=worker_id)
    result.exception = TIME_LIMIT_EXCEEDED
    return result


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _flush_metrics() -> None:
    """Write buffered metric increments out every ``metrics.FLUSH_INTERVAL`` seconds."""
    failing = False
    while True:
        await asyncio.sleep(metrics.FLUSH_INTERVAL)
        failing = _write_metrics(failing)


def _write_metrics(failing: bool = False) -> bool:
    """``metrics.flush()``; a failure (a full disk under the metrics directory) costs those
    metrics, never the process, and is logged once until a flush works again. Returns whether
    it failed."""
    try:
        metrics.flush()
    except Exception as exc:
        if not failing:
            log.warning("writing metrics failed (tasks are not affected): %s", exc)
        return True
    return False


def _rss_mib() -> float:
    """Current resident set size in MiB (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 1024 if sys.platform != "darwin" else peak / (1024 * 1024)


def run_inline(
    worker: Worker,
    source: TaskSource,
    *,
    max_tasks: int = 0,
    until: Callable[[], bool] | None = None,
) -> str:
    """Run a worker in this process (no supervisor) until ``max_tasks`` are done or ``until()``."""

    async def main() -> str:
        runner = Runner(worker, source, max_tasks=max_tasks)
        if until is not None:

            async def watch() -> None:
                while not until():
                    await asyncio.sleep(0.01)
                runner.request_stop("done")

            watcher = asyncio.create_task(watch())
            try:
                return await runner.run()
            finally:
                watcher.cancel()
        return await runner.run()

    return asyncio.run(main())
