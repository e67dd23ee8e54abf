"""An in-process task source: the reference implementation of the interface and a test fixture.

Tasks are queued in memory and results collected in memory, in the same process that runs the
:class:`~taskfleet._runner.Runner`. Used by ``taskfleet local`` (run a worker over a JSON file of
tasks, no server), by unit tests of the runner, and by the runner-overhead benchmark. It cannot
serve a multi-process pool: each process would have its own queue.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from .._errors import SourceError
from .._task import Task, TaskResult, TaskStatus
from .base import Backlog, PollRequest, TaskSource, WorkerBinding

__all__ = ["MemorySource"]


class MemorySource(TaskSource):
    """Queues per task type; every result is kept in :attr:`results` (task id → list of results).

    A task reported ``FAILED`` is queued again (attempt + 1) until ``max_attempts``; ``IN_PROGRESS``
    re-queues it at once (``callback_after_seconds`` is not waited for: tests want speed).
    ``fail_reports`` makes the next N reports raise a retryable :class:`SourceError`, to exercise
    retries and the spool.
    """

    name = "memory"

    def __init__(self, *, max_attempts: int = 1) -> None:
        self.max_attempts = max_attempts
        self.results: dict[str, list[TaskResult]] = {}
        self.fail_reports = 0
        self.fail_polls = 0
        self.polls = 0
        self._queues: dict[str, deque[Task]] = {}
        self._ids = itertools.count(1)
        self._cond: asyncio.Condition | None = None
        # Retries are re-queued from slim copies; keep each task's input to restore it.
        self._inputs: dict[str, Mapping[str, Any]] = {}
        self._attempts: dict[str, int] = {}  # per-task max_attempts given to add()
        self._held: dict[str, int] = {}  # per type: polled, not reported yet

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    def add(
        self,
        task_type: str,
        input_data: Mapping[str, Any] | None = None,
        *,
        max_attempts: int | None = None,
        **fields: Any,
    ) -> Task:
        """Queue a task (callable before the loop runs, or from the loop's thread).

        ``max_attempts`` overrides the source's for this task.
        """
        task = Task(
            task_id=fields.pop("task_id", None) or f"task-{next(self._ids)}",
            task_type=task_type,
            input_data=dict(input_data or {}),
            **fields,
        )
        self._inputs[task.task_id] = task.input_data
        if max_attempts is not None:
            self._attempts[task.task_id] = max_attempts
        self._queues.setdefault(task_type, deque()).append(task)
        if self._cond is not None:
            asyncio.get_running_loop().create_task(self._notify())
        return task

    async def _notify(self) -> None:
        async with self._condition():
            self._condition().notify_all()

    def queued(self, task_type: str | None = None) -> int:
        if task_type is None:
            return sum(len(q) for q in self._queues.values())
        return len(self._queues.get(task_type, ()))

    def final(self, task_id: str) -> TaskResult | None:
        """The last result of a task, or None when it was never reported."""
        results = self.results.get(task_id)
        return results[-1] if results else None

    async def poll(self, request: PollRequest) -> list[Task]:
        self.polls += 1
        if self.fail_polls > 0:
            self.fail_polls -= 1
            raise SourceError("memory source: injected poll failure")
        queue = self._queues.setdefault(request.task_type, deque())
        if not queue and request.timeout > 0:
            cond = self._condition()
            async with cond:
                try:
                    await asyncio.wait_for(cond.wait_for(lambda: bool(queue)), request.timeout)
                except asyncio.TimeoutError:
                    return []
        out: list[Task] = []
        while queue and len(out) < request.count:
            out.append(queue.popleft())
        self._hold(request.task_type, len(out))
        return out

    def _hold(self, task_type: str, n: int) -> None:
        self._held[task_type] = max(0, self._held.get(task_type, 0) + n)

    async def report(self, task: Task, result: TaskResult, *, chain: bool = False) -> Task | None:
        if self.fail_reports > 0:
            self.fail_reports -= 1
            raise SourceError("memory source: injected report failure")
        self.results.setdefault(task.task_id, []).append(result)
        self._hold(task.task_type, -1)
        retry = result.status is TaskStatus.IN_PROGRESS or (
            result.status is TaskStatus.FAILED
            and task.attempt < self._attempts.get(task.task_id, self.max_attempts)
        )
        if retry:
            self._queues.setdefault(task.task_type, deque()).append(
                Task(
                    task_id=task.task_id,
                    task_type=task.task_type,
                    input_data=self._inputs.get(task.task_id, task.input_data),
                    attempt=task.attempt + (result.status is TaskStatus.FAILED),
                    poll_count=task.poll_count + 1,
                )
            )
        if chain:
            queue = self._queues.get(task.task_type)
            if queue:
                self._hold(task.task_type, 1)
                return queue.popleft()
        return None

    async def extend(self, tasks: Sequence[Task]) -> None:
        return None

    async def backlog(self, workers: Sequence[WorkerBinding]) -> dict[str, Backlog]:
        """Queued tasks per type; ``held``: polled and not reported yet."""
        return {
            w.task_type: Backlog(self.queued(w.task_type), self._held.get(w.task_type, 0))
            for w in workers
        }
