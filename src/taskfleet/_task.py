"""The transport-neutral model: tasks, results and logs.

Everything here is independent of how a task arrived (Conductor over HTTP, NATS JetStream, or
memory). Sources translate their wire formats to and from these types at their boundary.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from ._json import dumps

__all__ = [
    "Task",
    "TaskInProgress",
    "TaskLog",
    "TaskResult",
    "TaskStatus",
    "epoch_ms",
]


def epoch_ms() -> int:
    """Wall-clock time in epoch milliseconds, the unit every timestamp on the wire uses."""
    return time.time_ns() // 1_000_000


class TaskStatus(str, Enum):
    """Status of a task result, spelled as on the Conductor wire."""

    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    FAILED_WITH_TERMINAL_ERROR = "FAILED_WITH_TERMINAL_ERROR"

    @property
    def is_terminal(self) -> bool:
        return self is not TaskStatus.IN_PROGRESS

    @property
    def is_failure(self) -> bool:
        return self in (TaskStatus.FAILED, TaskStatus.FAILED_WITH_TERMINAL_ERROR)


@dataclass(frozen=True)
class TaskLog:
    """One log line attached to a task result; ``created_time`` is epoch milliseconds."""

    log: str
    task_id: str
    created_time: int = field(default_factory=epoch_ms)

    def to_wire(self) -> dict[str, Any]:
        return {"log": self.log, "taskId": self.task_id, "createdTime": self.created_time}


@dataclass(frozen=True)
class Task:
    """A unit of work as a worker sees it, whatever source delivered it.

    Attributes:
        task_id: unique id assigned by the server (Conductor) or the producer (NATS).
        task_type: the worker type that executes it (Conductor ``taskDefName``/``taskType``).
        input_data: the task's input, bound to handler parameters by name.
        workflow_instance_id: owning workflow, when there is one.
        attempt: 1 for the first execution, 2 for the first retry, and so on (Conductor:
            ``retryCount + 1``; NATS: the delivery count).
        poll_count: how many times this task instance was handed to a worker (Conductor).
        retry_count: how many times the task was retried after failure (Conductor).
        response_timeout_seconds: how long the server waits for an update before it
            reschedules the task; 0 when the source has no such clock.
        output_subject: NATS pipelines: where this task's output goes as the next task.
        headers: string metadata travelling with the task.
        handle: the source's opaque acknowledgement handle (NATS: the reply subject). Lets the
            supervisor settle the task on behalf of a child that died.
        deadline: monotonic time past which the task's process is killed (set by the runner).
        raw: the source's decoded form, for users who need fields taskfleet does not model.
    """

    task_id: str
    task_type: str
    input_data: Mapping[str, Any] = field(default_factory=dict)
    workflow_instance_id: str = ""
    correlation_id: str = ""
    attempt: int = 1
    poll_count: int = 0
    retry_count: int = 0
    response_timeout_seconds: float = 0.0
    callback_after_seconds: float = 0.0
    domain: str = ""
    workflow_type: str = ""
    reference_task_name: str = ""
    created_time: int = 0
    output_subject: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    handle: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def slim(self) -> Task:
        """A copy without the payload: what the supervisor needs to settle the task."""
        return replace(self, input_data={}, raw={})

    def result(
        self,
        status: TaskStatus = TaskStatus.COMPLETED,
        output_data: Mapping[str, Any] | None = None,
        *,
        reason: str | None = None,
        worker_id: str = "",
    ) -> TaskResult:
        """Start a result for this task (class workers build theirs from this)."""
        return TaskResult(
            task_id=self.task_id,
            workflow_instance_id=self.workflow_instance_id,
            worker_id=worker_id,
            status=status,
            output_data=dict(output_data or {}),
            reason_for_incompletion=reason,
        )


@dataclass
class TaskResult:
    """The outcome of one task execution, as reported to the server.

    Mutable on purpose: class workers (``WorkerInterface.execute``) build it step by step,
    as users of the Conductor SDK are used to.
    """

    task_id: str
    workflow_instance_id: str = ""
    worker_id: str = ""
    status: TaskStatus = TaskStatus.COMPLETED
    output_data: dict[str, Any] = field(default_factory=dict)
    reason_for_incompletion: str | None = None
    callback_after_seconds: float = 0.0
    logs: list[TaskLog] = field(default_factory=list)
    extend_lease: bool = False
    #: NATS: seconds before a failed task is redelivered (``None``: the source's backoff).
    retry_after: float | None = None
    #: Name of the exception class that failed the task (for metrics; never its message).
    exception: str | None = None
    #: What the handler attached to its outcome for whoever tracks tasks (hooks), with
    #: ``TaskContext.attach``; it does not go to the server.
    details: dict[str, Any] = field(default_factory=dict)
    #: A line for whoever tracks tasks (hooks), set with ``TaskContext.attach``.
    message: str | None = None

    def output_json(self) -> bytes:
        """``output_data`` as compact UTF-8 JSON, the bytes that go on the wire.

        Encoded once and cached; assigning a new ``output_data`` encodes again. (Changing the
        dict in place after the result was handed back is not supported: hooks observe
        results, they do not change them.)

        Raises:
            OutputError: the output is not JSON-serialisable (naming the offending value).
        """
        # Cached in the instance dict, not a field: it stays out of asdict(), replace() and
        # comparisons. (output_data object, its JSON)
        cached = self.__dict__.get("_output_json")
        if cached is not None and cached[0] is self.output_data:
            return cached[1]
        data = dumps(self.output_data)
        self.__dict__["_output_json"] = (self.output_data, data)
        return data

    def without_output(self, reason: str) -> TaskResult:
        """This result as a terminal failure with no output: what a source reports when the
        output cannot be encoded (``reason`` names the offending value)."""
        return TaskResult(
            task_id=self.task_id,
            workflow_instance_id=self.workflow_instance_id,
            worker_id=self.worker_id,
            status=TaskStatus.FAILED_WITH_TERMINAL_ERROR,
            reason_for_incompletion=reason,
            logs=list(self.logs),
            exception="OutputError",
        )

    def add_output_data(self, key: str, value: Any) -> None:
        self.output_data[key] = value

    def log(self, message: str) -> None:
        self.logs.append(TaskLog(message, self.task_id))

    def to_wire(self) -> dict[str, Any]:
        """The Conductor TaskResult JSON object."""
        body: dict[str, Any] = {
            "workflowInstanceId": self.workflow_instance_id,
            "taskId": self.task_id,
            "workerId": self.worker_id,
            "status": self.status.value,
            "outputData": self.output_data,
            "callbackAfterSeconds": int(self.callback_after_seconds),
            "logs": [entry.to_wire() for entry in self.logs],
            "extendLease": self.extend_lease,
        }
        if self.reason_for_incompletion is not None:
            body["reasonForIncompletion"] = self.reason_for_incompletion
        return body


@dataclass(frozen=True)
class TaskInProgress:
    """Returned by a handler that is not done yet: the task comes back after a while.

    Conductor: reported ``IN_PROGRESS`` with ``callbackAfterSeconds``; the server re-queues the
    task and it is polled again with ``poll_count`` + 1. NATS: the message is nak'd with this
    delay (each redelivery counts towards the consumer's ``max_deliver``).
    """

    callback_after_seconds: float = 60.0
    output: Mapping[str, Any] = field(default_factory=dict)
