"""The NATS wire format: subjects, names, and the protobuf ↔ model translation.

Pure functions, no I/O, so the source, the client and the tests agree on one definition:

- tasks on ``<prefix>.tasks.<type>`` in the work-queue stream ``<PREFIX>_TASKS``;
- results on ``<prefix>.results.<type>`` and dead-letter copies on ``<prefix>.dead.<type>``, both
  in the limits stream ``<PREFIX>_RESULTS``;
- one durable pull consumer per task type on ``<PREFIX>_TASKS``, named by :func:`consumer_name`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import _json
from .._errors import ConfigurationError, DecodeError
from .._proto.taskfleet.v1 import task_pb2
from .._task import Task, TaskResult, TaskStatus, epoch_ms

__all__ = [
    "Handle",
    "Subjects",
    "consumer_name",
    "decode_result",
    "decode_task",
    "encode_result",
    "encode_task",
    "parse_handle",
    "parse_task",
    "task_from_message",
    "task_id_of",
]

_TOKEN_BAD = re.compile(r"[\s*>]")
_NAME_BAD = re.compile(r"[^A-Za-z0-9_-]")

#: Header on dead-letter copies: why the task was given up.
REASON_HEADER = "Taskfleet-Reason"
#: Header on dead-letter copies: the subject the task was published on.
SUBJECT_HEADER = "Taskfleet-Subject"


@dataclass(frozen=True)
class Subjects:
    """Subjects and stream names under one prefix."""

    prefix: str

    @property
    def tasks_stream(self) -> str:
        return f"{self._stream_base}_TASKS"

    @property
    def results_stream(self) -> str:
        return f"{self._stream_base}_RESULTS"

    @property
    def _stream_base(self) -> str:
        # Stream names may not contain dots; a prefix "acme.prod" gives ACME_PROD_TASKS.
        return _NAME_BAD.sub("_", self.prefix).upper()

    def task(self, task_type: str) -> str:
        return f"{self.prefix}.tasks.{check_task_type(task_type)}"

    def result(self, task_type: str) -> str:
        return f"{self.prefix}.results.{check_task_type(task_type)}"

    def progress(self, task_type: str) -> str:
        """Progress events of running tasks (core NATS, in no stream: only live readers)."""
        return f"{self.prefix}.progress.{check_task_type(task_type)}"

    def dead(self, task_type: str) -> str:
        return f"{self.prefix}.dead.{check_task_type(task_type)}"

    def type_of_task_subject(self, subject: str) -> str:
        """The task type a subject addresses (the tail after ``<prefix>.tasks.``)."""
        head = f"{self.prefix}.tasks."
        return subject[len(head) :] if subject.startswith(head) else subject.rpartition(".")[2]


def check_task_type(task_type: str) -> str:
    """Return ``task_type`` if it can be a subject token; raise ConfigurationError otherwise."""
    if (
        not task_type
        or _TOKEN_BAD.search(task_type)
        or task_type.startswith(".")
        or ".." in task_type
    ):
        raise ConfigurationError(
            "task_type", f"{task_type!r} cannot be used in a NATS subject (no spaces, '*' or '>')"
        )
    return task_type


def consumer_name(task_type: str) -> str:
    """Durable consumer name of a task type: the type with unsafe characters replaced.

    When characters had to be replaced, a short hash of the original is appended so ``a.b`` and
    ``a_b`` do not share a consumer.
    """
    safe = _NAME_BAD.sub("_", task_type)
    if safe != task_type:
        safe += "_" + hashlib.sha1(task_type.encode()).hexdigest()[:8]
    return safe


@dataclass(frozen=True)
class Handle:
    """What a JetStream ack subject (a task's ``handle``) says about its delivery."""

    stream: str
    consumer: str
    delivered: int
    stream_seq: int


def parse_handle(handle: str) -> Handle | None:
    """Parse ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>...`` (v1 and v2 forms)."""
    tokens = handle.split(".")
    if len(tokens) < 9 or tokens[0] != "$JS" or tokens[1] != "ACK":
        return None
    # v1: $JS.ACK.stream.consumer.delivered.sseq.cseq.ts.pending (9 tokens);
    # v2 adds domain and account hash before the stream and a random token at the end.
    offset = 2 if len(tokens) == 9 else 4
    try:
        return Handle(
            stream=tokens[offset],
            consumer=tokens[offset + 1],
            delivered=int(tokens[offset + 2]),
            stream_seq=int(tokens[offset + 3]),
        )
    except (IndexError, ValueError):
        return None


# -- tasks ----------------------------------------------------------------------------------


def encode_task(
    task_id: str,
    task_type: str,
    input_data: Mapping[str, Any],
    *,
    workflow_id: str = "",
    correlation_id: str = "",
    output_subject: str = "",
    headers: Mapping[str, str] | None = None,
    response_timeout_seconds: float = 0.0,
) -> bytes:
    """Serialise a task for ``<prefix>.tasks.<type>``.

    Raises:
        OutputError: ``input_data`` is not JSON-serialisable.
    """
    message = task_pb2.Task(
        id=task_id,
        type=task_type,
        input=_json.dumps(dict(input_data)),
        workflow_id=workflow_id,
        correlation_id=correlation_id,
        attempt=1,
        created_time_ms=epoch_ms(),
        response_timeout_seconds=response_timeout_seconds,
        headers=dict(headers or {}),
    )
    if output_subject:
        message.output_subject = output_subject
    return bytes(message.SerializeToString())


def decode_task(data: bytes) -> task_pb2.Task:
    """Parse a task message; its input must be a JSON object.

    Raises:
        DecodeError: not a Task protobuf, no id, or input that is not a JSON object.
    """
    return parse_task(data)[0]


def parse_task(data: bytes) -> tuple[task_pb2.Task, dict[str, Any]]:
    """Parse a task message and its JSON input (decoded once, for :func:`task_from_message`).

    Raises:
        DecodeError: as :func:`decode_task`.
    """
    try:
        message = task_pb2.Task.FromString(data)
    except Exception as exc:  # protobuf raises DecodeError, but upb may raise others
        raise DecodeError(f"not a taskfleet.v1.Task protobuf: {exc}", data[:256], exc) from None
    if not message.id:
        raise DecodeError("task message has no id", data[:256])
    if not message.input:
        return message, {}
    try:
        value = _json.loads(message.input)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: JSON nested deeper than the parser's stack allows.
        raise DecodeError(f"task input is not JSON: {exc}", data[:256], exc) from None
    if not isinstance(value, dict):
        raise DecodeError(
            f"task input must be a JSON object, got {type(value).__name__}", data[:256]
        )
    return message, value


def task_id_of(data: bytes) -> str:
    """The id of a task message whose other parts may be broken; empty when unreadable."""
    try:
        return str(task_pb2.Task.FromString(data).id)
    except Exception:
        return ""


def task_from_message(
    message: task_pb2.Task,
    *,
    task_type: str,
    handle: str,
    attempt: int,
    raw: Mapping[str, Any],
    input_data: dict[str, Any] | None = None,
) -> Task:
    """Build the model's Task; the delivery count (``attempt``) wins over the wire field.

    ``task_type`` is the type of the subject the message came on; a message whose own ``type``
    field names another is not trusted with it (its result would go to that type's subject).

    ``input_data``: the input already decoded by :func:`parse_task` (else decoded here).

    Raises:
        DecodeError: the message's ``type`` is not the subject's.
    """
    if message.type and message.type != task_type:
        raise DecodeError(
            f"task message says type {message.type[:100]!r} but came on the subject of"
            f" {task_type!r}",
            message.id.encode()[:256],
        )
    if input_data is None:
        input_data = _json.loads(message.input) if message.input else {}
    return Task(
        task_id=message.id,
        task_type=task_type,
        input_data=input_data,
        workflow_instance_id=message.workflow_id,
        correlation_id=message.correlation_id,
        attempt=attempt,
        poll_count=attempt,
        retry_count=attempt - 1,
        response_timeout_seconds=message.response_timeout_seconds,
        created_time=message.created_time_ms,
        output_subject=message.output_subject if message.HasField("output_subject") else "",
        headers=dict(message.headers),
        handle=handle,
        raw=raw,
    )


# -- results --------------------------------------------------------------------------------


def encode_result(
    task: Task,
    result: TaskResult,
    *,
    status: TaskStatus | None = None,
    reason: str | None = None,
    start_time_ms: int = 0,
) -> bytes:
    """Serialise a result for ``<prefix>.results.<type>``; ``status``/``reason`` override.

    Raises:
        OutputError: the output cannot be encoded (delivery turns such a result into a terminal
            failure before it reaches a source).
    """
    final_status = status or result.status
    final_reason = reason if reason is not None else (result.reason_for_incompletion or "")
    output = result.output_json()
    message = task_pb2.TaskResult(
        task_id=task.task_id,
        task_type=task.task_type,
        status=final_status.value,
        output=output,
        reason=final_reason,
        worker_id=result.worker_id,
        attempt=task.attempt,
        start_time_ms=start_time_ms,
        end_time_ms=epoch_ms(),
        correlation_id=task.correlation_id,
    )
    for entry in result.logs:
        message.logs.add(message=entry.log, created_time_ms=entry.created_time)
    return bytes(message.SerializeToString())


def decode_result(data: bytes) -> task_pb2.TaskResult:
    """Parse a result message.

    Raises:
        DecodeError: not a TaskResult protobuf.
    """
    try:
        return task_pb2.TaskResult.FromString(data)
    except Exception as exc:
        raise DecodeError(
            f"not a taskfleet.v1.TaskResult protobuf: {exc}", data[:256], exc
        ) from None


def header_value(text: str, limit: int = 1024) -> str:
    """A string made safe for a NATS header value (one line, bounded length)."""
    return " ".join(text.split())[:limit]
