"""The context of the task being executed, available anywhere in its handler's call stack.

Backed by a ``contextvars.ContextVar``, so it follows the task into ``async`` code and into the
executor thread that runs a sync handler, and never leaks between concurrent tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

from ._errors import TaskfleetError
from ._task import Task, TaskLog

__all__ = ["TaskContext", "add_log", "get_task_context"]


@dataclass
class TaskContext:
    """What a handler may want to know about the task it runs."""

    task: Task
    worker_id: str = ""
    logs: list[TaskLog] = field(default_factory=list)
    #: what :meth:`attach` collected, copied onto the task's result
    details: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
    #: where :meth:`progress` goes (set by the runner; None: progress is not sent)
    progress_sink: Callable[[Task, Mapping[str, Any] | None, str | None], None] | None = field(
        default=None, repr=False, compare=False
    )

    @property
    def task_id(self) -> str:
        return self.task.task_id

    @property
    def task_type(self) -> str:
        return self.task.task_type

    @property
    def workflow_instance_id(self) -> str:
        return self.task.workflow_instance_id

    @property
    def correlation_id(self) -> str:
        """The id a producer gave the piece of work this task belongs to ("" when none)."""
        return self.task.correlation_id

    @property
    def poll_count(self) -> int:
        return self.task.poll_count

    @property
    def retry_count(self) -> int:
        return self.task.retry_count

    @property
    def attempt(self) -> int:
        return self.task.attempt

    def attach(self, message: str | None = None, **details: Any) -> None:
        """Attach a message and data to this task's outcome, for whoever tracks tasks: event
        hooks find them on the result as ``result.message`` and ``result.details`` (a later
        call adds to the details and replaces the message). They do not go to the server."""
        if message is not None:
            self.message = str(message)
        self.details.update(details)

    def progress(self, output: Mapping[str, Any] | None = None, log: str | None = None) -> None:
        """Report progress while the task runs: partial ``output`` and/or a ``log`` line.

        Returns at once, from any thread (a ``def`` handler's, native code's wrapper between
        calls, ``async def`` code): the update is sent in the background, at most one per task
        per ``TASKFLEET_PROGRESS_INTERVAL`` (1 s by default), the latest ``output`` winning and
        log lines accumulating. Conductor gets an ``IN_PROGRESS`` update with the output and
        logs (which extends the task's lease); NATS an in-progress ack and a progress event
        ``TaskClient.progress`` sees. See docs/workers.md, "Progress".
        """
        sink = self.progress_sink
        if sink is not None:
            sink(self.task, output, log)

    def add_log(self, message: str) -> None:
        """Attach a log line to the task's result (Conductor shows it with the task)."""
        self.logs.append(TaskLog(str(message), self.task.task_id))


_current: ContextVar[TaskContext | None] = ContextVar("taskfleet_task_context", default=None)


def get_task_context() -> TaskContext:
    """The context of the task running in the caller's context.

    Raises:
        TaskfleetError: when called outside a task handler.
    """
    ctx = _current.get()
    if ctx is None:
        raise TaskfleetError("get_task_context() called outside a task handler")
    return ctx


def current_task_context() -> TaskContext | None:
    """The running task's context, or None outside a handler (for logging filters)."""
    return _current.get()


def add_log(message: str) -> None:
    """Attach a log line to the current task's result."""
    get_task_context().add_log(message)


class task_context:
    """``with task_context(ctx):`` makes ``ctx`` the current task's context for the block.

    A class rather than a ``@contextmanager`` generator: it is entered for every task, and a
    generator-based manager costs several times as much.
    """

    __slots__ = ("ctx", "token")

    def __init__(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        self.token: Token[TaskContext | None] | None = None

    def __enter__(self) -> TaskContext:
        self.token = _current.set(self.ctx)
        return self.ctx

    def __exit__(self, *exc: object) -> None:
        if self.token is not None:
            _current.reset(self.token)
            self.token = None
