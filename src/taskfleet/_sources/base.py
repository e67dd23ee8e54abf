"""The one small interface every task source implements.

A source is created inside the process that uses it (a worker child, or the supervisor) from a
picklable :class:`~taskfleet._config.Configuration`, never inherited across a fork. All methods are
coroutines on that process's event loop, so the runner has one loop for every source. A source
whose client blocks (Conductor's HTTP) runs those coroutines' calls in threads of its own, and may
also offer the calls as plain methods (``blocking = True``: :meth:`TaskSource.poll_blocking`,
:meth:`TaskSource.report_blocking`), which a thread that runs ``def`` handlers calls directly
instead of handing each call to another thread and back.

Errors: transport exceptions never cross this boundary. A failed call raises
:class:`~taskfleet._errors.SourceError` (``retryable`` says whether trying again can help).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._task import Task, TaskLog, TaskResult

if TYPE_CHECKING:
    from .._config import Configuration

__all__ = ["HANDED_BACK", "Backlog", "PollRequest", "TaskSource", "WorkerBinding"]

#: ``TaskResult.exception`` of a task handed back unfinished (the drain timeout passed): it did
#: not fail, so a source re-queues it without using up one of its retries where the protocol
#: allows (Conductor: ``IN_PROGRESS`` with ``callbackAfterSeconds`` 0; NATS: a nak, or on the
#: last delivery a fresh copy of the task).
HANDED_BACK = "HandedBack"


@dataclass(frozen=True)
class PollRequest:
    """Ask for at most ``count`` tasks of one type, waiting up to ``timeout`` seconds."""

    task_type: str
    count: int
    timeout: float
    worker_id: str
    domain: str = ""


@dataclass(frozen=True)
class WorkerBinding:
    """What a source must know about a worker type to serve it (provisioning, consumers)."""

    task_type: str
    processes: int = 1
    threads: int = 1
    output_subject: str = ""
    max_attempts: int = 0  # 0: the source's default
    domain: str = ""


@dataclass(frozen=True)
class Backlog:
    """What the server holds for one task type: ``waiting`` (not handed to any worker yet) and
    ``held`` (handed out, not settled; 0 when the source cannot tell them apart)."""

    waiting: int
    held: int = 0

    @property
    def depth(self) -> int:
        """Tasks not finished: what ``taskfleet_queue_depth`` exports."""
        return self.waiting + self.held


class TaskSource(abc.ABC):
    """A place tasks come from and results go to.

    The lifetime is ``start()`` → any number of calls → ``close()``; ``close()`` is safe to call
    twice or without ``start()``.
    """

    #: Short name used in logs and metrics labels ("conductor", "nats", "memory").
    name: str = "source"
    #: True when :meth:`poll_blocking` and :meth:`report_blocking` work, from any thread.
    blocking: bool = False
    #: Told of a final outcome the source decided by itself, outside any ``report`` (NATS: the
    #: dead letter of an undecodable or stranded task), so that hooks see it too. Set by the
    #: runner and the supervisor; called on the source's loop and must not block.
    on_outcome: Callable[[Task, TaskResult], object] | None = None

    def outcome_decided(self, task: Task, result: TaskResult) -> None:
        """Pass an outcome the source decided by itself to :attr:`on_outcome`; never raises."""
        listener = self.on_outcome
        if listener is not None:
            try:
                listener(task, result)
            except Exception:
                logging.getLogger("taskfleet.source").exception("outcome listener failed")

    async def start(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Open connections. Raises SourceError (or ConfigurationError) when that is impossible."""

    async def prepare(self, workers: Sequence[WorkerBinding]) -> None:  # noqa: B027
        """Provision what the workers need on the server (streams, consumers). Idempotent.

        Called once by the supervisor before any child starts.
        """

    @abc.abstractmethod
    async def poll(self, request: PollRequest) -> list[Task]:
        """Return up to ``request.count`` tasks; an empty list when none came within the timeout."""

    @abc.abstractmethod
    async def report(self, task: Task, result: TaskResult, *, chain: bool = False) -> Task | None:
        """Deliver a result, then settle the task (ack after result).

        Args:
            task: the task (a :meth:`Task.slim` copy is enough).
            result: the outcome, whose output encodes (``_delivery.py`` sees to that); a
                failure's retry behaviour follows its status and the task's attempt (retry with
                backoff, or terminal / dead-lettered when attempts are spent).
            chain: the caller has a free slot: a source that can hand out the next task in the
                same round trip (Conductor ``update-v2``) may return it.

        Returns:
            The next task when ``chain`` was granted and the server had one, else None.
        """

    def poll_blocking(self, request: PollRequest) -> list[Task]:
        """:meth:`poll` in the calling thread (only when ``blocking``)."""
        raise NotImplementedError

    def report_blocking(
        self, task: Task, result: TaskResult, *, chain: bool = False
    ) -> Task | None:
        """:meth:`report` in the calling thread (only when ``blocking``)."""
        raise NotImplementedError

    async def extend(self, tasks: Sequence[Task]) -> None:  # noqa: B027
        """Tell the server these tasks are still being worked on (lease / in-progress ack)."""

    async def progress(
        self, task: Task, output: Mapping[str, Any] | None, logs: Sequence[TaskLog]
    ) -> None:
        """A running handler's progress: partial ``output`` (None: unchanged) and new log
        lines; also extends the task's lease. Default: :meth:`extend`.

        Raises:
            SourceError: the update was not sent (the caller logs it and goes on).
        """
        await self.extend([task])

    async def close(self) -> None:  # noqa: B027
        """Release connections. Safe to call twice."""

    async def backlog(self, workers: Sequence[WorkerBinding]) -> dict[str, Backlog]:
        """How many tasks wait for each worker type, in one round of questions to the server.

        Asked by the supervisor only, once per type per ``TASKFLEET_QUEUE_DEPTH_INTERVAL``. A
        type the source cannot answer for is left out (its gauge stays absent, not zero).
        Default: no answers.
        """
        return {}

    # -- what the supervisor asks a source about itself (no I/O) --------------------------------

    def preload_modules(self) -> tuple[str, ...]:
        """Modules the supervisor imports into its fork server before starting worker
        processes, so a restarted process is serving sooner. Default: this source's module."""
        return (type(self).__module__,)

    def worker_config(self, config: Configuration) -> Configuration:
        """The configuration worker processes get, once this source has started: what it
        resolved at start-up (NATS: the embedded server's URL) filled in. Default: ``config``."""
        return config

    def lease_interval(self, task: Task) -> float | None:
        """Seconds between lease extensions of ``task`` while it runs (None: it needs none):
        half the time the server gives before it takes the task back. Default: half the
        task's response timeout."""
        clock = task.response_timeout_seconds
        return clock / 2 if clock else None

    def spool_key(self) -> str:
        """Which server results belong to, so the spool never delivers one elsewhere (no
        secrets: it is stored on disk). Default: :attr:`name`."""
        return self.name
