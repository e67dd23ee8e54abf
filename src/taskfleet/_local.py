"""``taskfleet local``: a file of tasks through the real worker code, no server, crashes contained.

The tasks run on a :class:`~taskfleet._sources.memory.MemorySource` through the same
:class:`~taskfleet._runner.Runner` a pool uses (input binding, ``async def``, errors, retries),
in a child process. The child tells this process, over a pipe, when a task starts and when its
outcome is final; each outcome is handed to ``on_outcome`` as it arrives. When the child dies —
a native handler's segfault, ``os._exit``, the OOM killer — the tasks it was executing fail with
the signal named (or run again while ``max_attempts`` allows), their finished neighbours keep
their outcomes, and the remaining tasks go on in a new child. It is the pool's promise (a crash
costs the tasks in flight, not the run) on a developer's laptop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import multiprocessing
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from ._task import Task, TaskResult, TaskStatus
from ._worker import Worker

__all__ = ["LocalOutcome", "LocalTask", "run_local"]


@dataclass(frozen=True)
class LocalTask:
    """One entry of a tasks file."""

    task_id: str
    task_type: str
    input: dict[str, Any]


@dataclass(frozen=True)
class LocalOutcome:
    """A task's final outcome."""

    task_id: str
    task_type: str
    status: TaskStatus
    output: dict[str, Any]
    reason: str | None


# child -> parent messages
_STARTED = "started"  # (_STARTED, task_id)
_FINAL = "final"  # (_FINAL, task_id, status value, output JSON, reason)


def run_local(
    workers: Sequence[Worker],
    tasks: Sequence[LocalTask],
    *,
    max_attempts: int = 1,
    on_outcome: Callable[[LocalOutcome], None] | None = None,
) -> dict[str, LocalOutcome]:
    """Run ``tasks`` through ``workers``; return every task's final outcome by task id.

    ``max_attempts`` counts handler failures and crashes of the child alike.
    """
    from ._slots import exit_reason

    by_id = {t.task_id: t for t in tasks}
    outcomes: dict[str, LocalOutcome] = {}
    crashes: Counter[str] = Counter()

    def settle(outcome: LocalOutcome) -> None:
        outcomes[outcome.task_id] = outcome
        if on_outcome is not None:
            on_outcome(outcome)

    # Forked: the parent is the single-threaded CLI that has just imported the workers, so the
    # child starts at once with them loaded, whatever path they were imported from.
    ctx = multiprocessing.get_context("fork")
    pending = list(tasks)
    while pending:
        attempts_left = {t.task_id: max_attempts - crashes[t.task_id] for t in pending}
        receiver, sender = ctx.Pipe(duplex=False)
        child = ctx.Process(
            target=_child_main,
            args=(workers, pending, attempts_left, sender),
            name="taskfleet local",
            daemon=True,
        )
        child.start()
        sender.close()
        running: set[str] = set()
        while True:
            try:
                message = receiver.recv()
            except (EOFError, OSError):
                break
            if message[0] == _STARTED:
                running.add(message[1])
            else:
                _, task_id, status, output, reason = message
                running.discard(task_id)
                task = by_id[task_id]
                settle(
                    LocalOutcome(
                        task_id, task.task_type, TaskStatus(status), json.loads(output), reason
                    )
                )
        receiver.close()
        child.join()
        if child.exitcode != 0:
            reason, _ = exit_reason(child.exitcode)
            for task_id in sorted(running):
                crashes[task_id] += 1
                if crashes[task_id] >= max_attempts:
                    task = by_id[task_id]
                    settle(LocalOutcome(task_id, task.task_type, TaskStatus.FAILED, {}, reason))
        left = [t for t in pending if t.task_id not in outcomes]
        if len(left) == len(pending) and not running:
            # The child died before it started anything: starting it again would do the same.
            reason, _ = exit_reason(child.exitcode)
            for task in left:
                settle(LocalOutcome(task.task_id, task.task_type, TaskStatus.FAILED, {}, reason))
            left = []
        pending = left
    return {t.task_id: outcomes[t.task_id] for t in tasks}


class _Reporter:
    """Hooks in the child: a task's start (on its execution slot) and its final outcome (on the
    loop) go to the parent. Sends come from several threads, hence the lock."""

    def __init__(self, conn: Connection, attempts: dict[str, int]) -> None:
        self._conn = conn
        self._attempts = attempts
        self._lock = threading.Lock()
        self.final: set[str] = set()

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            self._conn.send(message)

    def before_execute(self, task: Task) -> None:
        self._send((_STARTED, task.task_id))

    def after_report(self, task: Task, result: TaskResult, error: BaseException | None) -> None:
        if result.status is TaskStatus.IN_PROGRESS:
            return  # comes back
        if result.status is TaskStatus.FAILED and task.attempt < self._attempts[task.task_id]:
            return  # queued again by the source
        self.final.add(task.task_id)
        output = result.output_json().decode() if not result.status.is_failure else "{}"
        self._send(
            (_FINAL, task.task_id, result.status.value, output, result.reason_for_incompletion)
        )


def _child_main(
    workers: Sequence[Worker],
    tasks: Sequence[LocalTask],
    attempts: dict[str, int],
    conn: Connection,
) -> None:
    from ._runner import Runner
    from ._sources.memory import MemorySource

    source = MemorySource()
    for task in tasks:
        source.add(
            task.task_type, task.input, task_id=task.task_id, max_attempts=attempts[task.task_id]
        )
    reporter = _Reporter(conn, attempts)
    used = {t.task_type for t in tasks}
    runners = [
        # No long poll: an idle runner must notice "all done" at once.
        Runner(w, source, options=dataclasses.replace(w.options, poll_timeout=0), hooks=[reporter])
        for w in workers
        if w.task_type in used
    ]

    async def main() -> None:
        async def watch() -> None:
            while len(reporter.final) < len(tasks):
                await asyncio.sleep(0.01)
            for runner in runners:
                runner.request_stop("all tasks done")

        watcher = asyncio.create_task(watch())
        try:
            await asyncio.gather(*(runner.run() for runner in runners))
        finally:
            watcher.cancel()

    asyncio.run(main())
    conn.close()
