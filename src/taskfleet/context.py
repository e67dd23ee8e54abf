"""The context of the task being executed, available anywhere in its handler's call stack.

Backed by a ``contextvars.ContextVar``, so it follows the task into ``async`` code and into the
executor thread that runs a sync handler, and never leaks between concurrent tasks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from .task import Task, TaskfleetError, TaskLog

__all__ = ["TaskContext", "add_log", "get_task_context"]


@dataclass
class TaskContext:
    """What a handler may want to know about the task it runs."""

    task: Task
    worker_id: str = ""
    logs: list[TaskLog] = field(default_factory=list)

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
    def poll_count(self) -> int:
        return self.task.poll_count

    @property
    def retry_count(self) -> int:
        return self.task.retry_count

    @property
    def attempt(self) -> int:
        return self.task.attempt

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


@contextmanager
def task_context(ctx: TaskContext) -> Iterator[TaskContext]:
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)
