"""The task store behind :class:`~taskfleet.testing.ConductorTestServer`: Conductor's task
lifecycle, in memory, without HTTP.

One ``threading.Condition`` (over an ``RLock``, so inspection predicates may call back into the
store) guards every field; every state change notifies it, which is what wakes long polls and
``wait_for``. A reaper thread sleeps until the next response-timeout deadline instead of ticking.

Polls, updates and the reaper cost the same however many tasks the store holds: pollable tasks
wait in one heap per (type, domain), ordered by when they become pollable and then by age, and
running attempts in one heap of deadlines. Entries are never removed from the middle of a heap;
an entry whose task has moved on since (its ``gen`` changed) is dropped when it reaches the top.

Differences from a real Conductor server, chosen to make tests easy to write and to read:

- A retry keeps the task id (real Conductor schedules a new task instance with a new id). The
  attempt is visible as ``retryCount`` on the wire and in :attr:`Job.history`.
- A late result for a task that was already re-queued (its response timeout passed) is applied;
  the first terminal result wins and later ones are ignored, as for any terminal task.
"""

from __future__ import annotations

import heapq
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Job", "Outcome", "TaskDef", "TaskStore", "TERMINAL_STATUSES"]

SCHEDULED = "SCHEDULED"
IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
FAILED_WITH_TERMINAL_ERROR = "FAILED_WITH_TERMINAL_ERROR"
TIMED_OUT = "TIMED_OUT"
CANCELED = "CANCELED"

TERMINAL_STATUSES = frozenset({COMPLETED, FAILED, FAILED_WITH_TERMINAL_ERROR, TIMED_OUT, CANCELED})
RESULT_STATUSES = frozenset({IN_PROGRESS, COMPLETED, FAILED, FAILED_WITH_TERMINAL_ERROR, CANCELED})

#: Bounds, so a runaway test cannot grow the store without limit.
MAX_LOGS_PER_TASK = 10_000
MAX_HISTORY_PER_TASK = 10_000
#: The reaper re-checks at least this often (seconds) even when no deadline is near.
REAPER_MAX_SLEEP = 1.0
#: wait_for re-checks its predicate at least this often, for changes nobody notifies (a poll
#: parking, a delayed task becoming pollable).
WAIT_FOR_RECHECK = 0.05


def _epoch_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class TaskDef:
    """The parts of a Conductor task definition the store honours.

    ``timeout_seconds`` (0: none) caps one attempt's total run time, lease extensions included;
    past it the attempt times out like a missed response timeout.
    """

    name: str
    response_timeout_seconds: float = 3600.0
    retry_count: int = 3
    retry_delay_seconds: float = 0.0
    timeout_seconds: float = 0.0


@dataclass(frozen=True)
class Outcome:
    """One thing that happened to a task: a result a worker sent, or a timeout."""

    attempt: int
    status: str
    worker_id: str
    reason: str | None = None
    output: Mapping[str, Any] = field(default_factory=dict)
    at: int = field(default_factory=_epoch_ms)


@dataclass(frozen=True)
class Job:
    """A snapshot of one task, for assertions in tests.

    Attributes:
        status: SCHEDULED, IN_PROGRESS, COMPLETED, FAILED, FAILED_WITH_TERMINAL_ERROR,
            TIMED_OUT or CANCELED.
        poll_count: polls of the current attempt (as ``pollCount`` on the wire).
        retry_count: retries so far (``retryCount``); the current attempt is ``retry_count + 1``.
        history: every result received and every timeout, oldest first.
        logs: log lines from results and from ``POST /tasks/{id}/log``.
        lease_deadline: ``time.monotonic()`` at which the response timeout strikes while
            IN_PROGRESS, else None (a lease extension moves it).
    """

    task_id: str
    task_type: str
    status: str
    input: Mapping[str, Any]
    output: Mapping[str, Any]
    reason: str | None
    worker_id: str
    domain: str | None
    workflow_id: str
    correlation_id: str | None
    poll_count: int
    retry_count: int
    history: tuple[Outcome, ...]
    logs: tuple[str, ...]
    lease_deadline: float | None = None

    @property
    def lease_remaining(self) -> float | None:
        """Seconds left on the response-timeout clock, when it runs."""
        return None if self.lease_deadline is None else self.lease_deadline - time.monotonic()

    @property
    def attempt(self) -> int:
        return self.retry_count + 1

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def worker_ids(self) -> list[str]:
        """Workers that sent results, in order (repeats kept)."""
        return [o.worker_id for o in self.history if o.worker_id]


@dataclass(eq=False)
class _Task:
    task_id: str
    task_type: str
    input: dict[str, Any]
    domain: str | None
    workflow_id: str
    correlation_id: str | None
    seq: int
    status: str = SCHEDULED
    output: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    worker_id: str = ""
    poll_count: int = 0
    retry_count: int = 0
    callback_after: float = 0.0
    scheduled_time: int = field(default_factory=_epoch_ms)
    start_time: int = 0
    update_time: int = 0
    available_at: float = 0.0  # monotonic: SCHEDULED tasks are pollable from then on
    gen: int = 0  # bumped on every change of queue or deadline: older heap entries are stale
    started_at: float = 0.0  # monotonic start of the current attempt
    deadline: float = 0.0  # monotonic response-timeout deadline while IN_PROGRESS
    history: deque[Outcome] = field(default_factory=lambda: deque(maxlen=MAX_HISTORY_PER_TASK))
    logs: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_LOGS_PER_TASK))


class UnknownTask(KeyError):
    """No task has this id."""


class TaskStore:
    """Thread-safe in-memory task queue with Conductor's lifecycle rules."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.RLock())
        self._defs: dict[str, TaskDef] = {}
        self._tasks: dict[str, _Task] = {}
        #: (type, domain) -> heap of (available_at, seq, gen, task) of SCHEDULED tasks
        self._queues: dict[tuple[str, str | None], list[tuple[float, int, int, _Task]]] = {}
        #: heap of (expiry, seq, gen, task) of IN_PROGRESS attempts
        self._deadlines: list[tuple[float, int, int, _Task]] = []
        self._seq = 0
        self._closed = False
        self._reaper: threading.Thread | None = None
        self.waiting_polls = 0

    # -- lifetime --------------------------------------------------------------------------

    def start_reaper(self) -> None:
        with self.cond:
            if self._reaper is not None:
                return
            self._closed = False
            self._reaper = threading.Thread(
                target=self._reap_forever, name="conductor-test-reaper", daemon=True
            )
            self._reaper.start()

    def stop_reaper(self) -> None:
        with self.cond:
            reaper, self._reaper = self._reaper, None
            self._closed = True
            self.cond.notify_all()
        if reaper is not None and reaper is not threading.current_thread():
            reaper.join(timeout=5)

    def _reap_forever(self) -> None:
        with self.cond:
            while not self._closed:
                now = time.monotonic()
                self.reap(now)
                first = self._deadlines[0][0] if self._deadlines else now + REAPER_MAX_SLEEP
                wait = min(first, now + REAPER_MAX_SLEEP) - now
                self.cond.wait(timeout=max(wait, 0.001))

    # -- definitions and producing ----------------------------------------------------------

    def register(self, task_def: TaskDef) -> None:
        with self.cond:
            self._defs[task_def.name] = task_def
            # A new total time limit may bring running attempts' expiry forward.
            for task in self._tasks.values():
                if task.status == IN_PROGRESS and task.task_type == task_def.name:
                    self._track_deadline(task)

    def task_def(self, name: str) -> TaskDef:
        with self.cond:
            return self._defs.get(name) or TaskDef(name)

    def enqueue(
        self,
        task_type: str,
        input: Mapping[str, Any] | None = None,
        *,
        domain: str | None = None,
        workflow_id: str | None = None,
        correlation_id: str | None = None,
    ) -> str:
        with self.cond:
            self._seq += 1
            task = _Task(
                task_id=str(uuid.uuid4()),
                task_type=task_type,
                input=dict(input or {}),
                domain=domain or None,
                workflow_id=workflow_id or f"wf-{uuid.uuid4()}",
                correlation_id=correlation_id,
                seq=self._seq,
            )
            self._tasks[task.task_id] = task
            self._queue(task)
            self.cond.notify_all()
            return task.task_id

    # -- the worker's side --------------------------------------------------------------------

    def poll(
        self,
        task_type: str,
        worker_id: str,
        count: int,
        timeout: float,
        domain: str | None = None,
        *,
        abort: Callable[[], bool] = lambda: False,
    ) -> list[dict[str, Any]]:
        """Hand out up to ``count`` tasks, waiting up to ``timeout`` seconds for the first one.

        Returns the wire form of each task, already IN_PROGRESS for ``worker_id``. ``abort`` is
        checked on every wake-up (the server going down ends a long poll early).
        """
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                now = time.monotonic()
                self.reap(now)
                ready, next_at = self._ready(task_type, domain, now, count)
                if ready or now >= end or self._closed or abort():
                    return [self._start(t, worker_id, now) for t in ready]
                # Not notified: parked polls would wake each other in turn. wait_for re-checks
                # on its own, which is how a test sees a worker parked here.
                self.waiting_polls += 1
                try:
                    self.cond.wait(timeout=min(end, next_at) - now)
                finally:
                    self.waiting_polls -= 1

    def _queue(self, task: _Task) -> None:
        """Make a SCHEDULED task pollable (from ``task.available_at``)."""
        task.gen += 1
        heap = self._queues.setdefault((task.task_type, task.domain), [])
        heapq.heappush(heap, (task.available_at, task.seq, task.gen, task))

    def _ready(
        self, task_type: str, domain: str | None, now: float, count: int
    ) -> tuple[list[_Task], float]:
        """Up to ``count`` pollable tasks in queue order, taken off their queue (the caller
        starts them), and when the next delayed one becomes pollable."""
        heap = self._queues.get((task_type, domain or None))
        ready: list[_Task] = []
        while heap and len(ready) < count:
            available_at, _, gen, task = heap[0]
            if gen != task.gen or task.status != SCHEDULED:
                heapq.heappop(heap)  # stale: the task moved on since this entry was made
                continue
            if available_at > now:
                return ready, available_at
            heapq.heappop(heap)
            ready.append(task)
        return ready, float("inf")

    def _start(self, task: _Task, worker_id: str, now: float) -> dict[str, Any]:
        task_def = self.task_def(task.task_type)
        task.status = IN_PROGRESS
        task.worker_id = worker_id
        task.poll_count += 1
        if not task.started_at:
            task.started_at = now
            task.start_time = _epoch_ms()
        task.update_time = _epoch_ms()
        task.deadline = now + task_def.response_timeout_seconds
        self._track_deadline(task)
        self.cond.notify_all()
        return self._wire(task)

    def _track_deadline(self, task: _Task) -> None:
        """Let the reaper find this IN_PROGRESS attempt when it expires."""
        task.gen += 1
        heapq.heappush(self._deadlines, (self._expiry(task), task.seq, task.gen, task))

    def update(self, result: Mapping[str, Any]) -> None:
        """Apply a TaskResult (already validated). Raises UnknownTask."""
        with self.cond:
            task = self._tasks.get(str(result.get("taskId")))
            if task is None:
                raise UnknownTask(result.get("taskId"))
            now = time.monotonic()
            self.reap(now)
            for entry in result.get("logs") or ():
                text = entry.get("log") if isinstance(entry, Mapping) else entry
                if text is not None:
                    task.logs.append(str(text))
            if task.status in TERMINAL_STATUSES:
                return  # re-sent results are accepted and ignored: that is what makes spools safe
            worker_id = str(result.get("workerId") or task.worker_id)
            if result.get("extendLease"):
                # Only the clock moves; status and output of a lease extension are not applied.
                if task.status == IN_PROGRESS:
                    task.deadline = now + self.task_def(task.task_type).response_timeout_seconds
                    self._track_deadline(task)
                    task.update_time = _epoch_ms()
                    self.cond.notify_all()
                return
            status = str(result["status"])
            output = result.get("outputData") or {}
            reason = result.get("reasonForIncompletion")
            task.output.update(output)
            task.reason = reason
            task.worker_id = worker_id
            task.update_time = _epoch_ms()
            task.history.append(Outcome(task.retry_count + 1, status, worker_id, reason, output))
            if status == IN_PROGRESS:
                # Conductor re-queues an in-progress task; it is polled again after the callback.
                task.callback_after = float(result.get("callbackAfterSeconds") or 0)
                self._reschedule(task, now + task.callback_after, retry=False)
            elif status == FAILED:
                self._fail(task, FAILED, now)
            else:
                task.status = status
            self.cond.notify_all()

    def add_log(self, task_id: str, text: str) -> None:
        with self.cond:
            task = self._tasks.get(task_id)
            if task is None:
                raise UnknownTask(task_id)
            task.logs.append(text)

    def next_for(self, task_id: str, worker_id: str) -> dict[str, Any] | None:
        """The next task of the same type and domain as ``task_id``, started for ``worker_id``."""
        with self.cond:
            done = self._tasks.get(task_id)
            if done is None:
                return None
            now = time.monotonic()
            ready, _ = self._ready(done.task_type, done.domain, now, 1)
            return self._start(ready[0], worker_id, now) if ready else None

    # -- lifecycle rules ------------------------------------------------------------------------

    def reap(self, now: float) -> None:
        """Time out IN_PROGRESS attempts past their response timeout (or total timeout)."""
        with self.cond:
            heap = self._deadlines
            while heap and heap[0][0] <= now:
                _, _, gen, task = heapq.heappop(heap)
                if gen != task.gen or task.status != IN_PROGRESS:
                    continue  # stale: finished, or its deadline moved (a newer entry exists)
                why = "response timeout" if now >= task.deadline else "task timed out"
                task.history.append(Outcome(task.retry_count + 1, TIMED_OUT, task.worker_id, why))
                task.reason = why
                self._fail(task, TIMED_OUT, now)
                self.cond.notify_all()

    def _expiry(self, task: _Task) -> float:
        """When an IN_PROGRESS attempt times out: its lease, or its total time limit if sooner."""
        limit = self.task_def(task.task_type).timeout_seconds
        return min(task.deadline, task.started_at + limit) if limit > 0 else task.deadline

    def _fail(self, task: _Task, status: str, now: float) -> None:
        task_def = self.task_def(task.task_type)
        if task.retry_count < task_def.retry_count:
            self._reschedule(task, now + task_def.retry_delay_seconds, retry=True)
        else:
            task.status = status

    def _reschedule(self, task: _Task, available_at: float, *, retry: bool) -> None:
        task.status = SCHEDULED
        task.available_at = available_at
        task.deadline = 0.0
        if retry:
            task.retry_count += 1
            task.poll_count = 0
            task.started_at = 0.0
            task.callback_after = 0.0
        self._queue(task)

    def _wire(self, task: _Task) -> dict[str, Any]:
        task_def = self.task_def(task.task_type)
        return {
            "taskId": task.task_id,
            "taskType": task.task_type,
            "taskDefName": task.task_type,
            "referenceTaskName": f"{task.task_type}_ref",
            "workflowInstanceId": task.workflow_id,
            "workflowType": "test_workflow",
            "correlationId": task.correlation_id,
            "inputData": dict(task.input),
            "outputData": dict(task.output),
            "status": task.status,
            "pollCount": task.poll_count,
            "retryCount": task.retry_count,
            "responseTimeoutSeconds": int(task_def.response_timeout_seconds),
            "callbackAfterSeconds": int(task.callback_after),
            "domain": task.domain,
            "scheduledTime": task.scheduled_time,
            "startTime": task.start_time,
            "updateTime": task.update_time,
            "workerId": task.worker_id,
        }

    # -- inspection --------------------------------------------------------------------------

    def wire(self, task_id: str) -> dict[str, Any]:
        with self.cond:
            task = self._tasks.get(task_id)
            if task is None:
                raise UnknownTask(task_id)
            return self._wire(task)

    def job(self, task_id: str) -> Job:
        with self.cond:
            task = self._tasks.get(task_id)
            if task is None:
                raise UnknownTask(task_id)
            return Job(
                task_id=task.task_id,
                task_type=task.task_type,
                status=task.status,
                input=dict(task.input),
                output=dict(task.output),
                reason=task.reason,
                worker_id=task.worker_id,
                domain=task.domain,
                workflow_id=task.workflow_id,
                correlation_id=task.correlation_id,
                poll_count=task.poll_count,
                retry_count=task.retry_count,
                history=tuple(task.history),
                logs=tuple(task.logs),
                lease_deadline=task.deadline if task.status == IN_PROGRESS else None,
            )

    def jobs(self, task_type: str | None = None, status: str | None = None) -> list[Job]:
        with self.cond:
            return [
                self.job(t.task_id)
                for t in sorted(self._tasks.values(), key=lambda t: t.seq)
                if (task_type is None or t.task_type == task_type)
                and (status is None or t.status == status)
            ]

    def counts(self) -> dict[str, int]:
        with self.cond:
            out: dict[str, int] = {}
            for task in self._tasks.values():
                out[task.status] = out.get(task.status, 0) + 1
            return out

    def queue_sizes(self, queues: Iterable[str]) -> dict[str, int]:
        """Scheduled tasks per queue, as Conductor names them: ``type``, or ``domain:type`` for
        a domain's tasks (each name asked gets an answer, 0 for an unknown one)."""
        with self.cond:
            sizes = dict.fromkeys(queues, 0)
            for name in sizes:
                domain, _, task_type = name.rpartition(":")
                # The queue's own heap, not every task the server ever saw; entries of tasks
                # that moved on since they were queued are stale and not counted.
                heap = self._queues.get((task_type, domain or None), ())
                sizes[name] = sum(
                    1 for _, _, gen, t in heap if gen == t.gen and t.status == SCHEDULED
                )
            return sizes

    def all_terminal(self, task_ids: Iterable[str]) -> bool:
        with self.cond:
            return all(
                (t := self._tasks.get(i)) is not None and t.status in TERMINAL_STATUSES
                for i in task_ids
            )

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` is true (re-checked on every state change, and at least
        every :data:`WAIT_FOR_RECHECK` seconds). Returns False when ``timeout`` passes first."""
        end = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(timeout=min(left, WAIT_FOR_RECHECK))
            return True

    def notify(self) -> None:
        with self.cond:
            self.cond.notify_all()
