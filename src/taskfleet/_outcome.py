"""A handler's return value or exception as the :class:`TaskResult` that reports it
(docs/workers.md#outputs, docs/workers.md#errors-and-retries)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ._errors import OutputError, TaskError
from ._task import Task, TaskInProgress, TaskResult, TaskStatus

__all__ = ["normalise_output", "result_from_exception", "to_result"]


def normalise_output(value: Any) -> dict[str, Any]:
    """Turn a handler's return value into output data.

    A dict is the output; a dataclass becomes its fields; None is empty output; anything else
    goes under ``{"result": value}``.
    """
    if value is None:
        return {}
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise OutputError(
                f"output keys must be strings, got {type(bad[0]).__name__} {bad[0]!r}"
            )
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return {"result": value}


def result_from_exception(task: Task, exc: BaseException, worker_id: str) -> TaskResult:
    """The result that reports a handler's exception (class name only in ``exception``)."""
    if isinstance(exc, TaskError):
        status = TaskStatus.FAILED_WITH_TERMINAL_ERROR if exc.non_retryable else TaskStatus.FAILED
        reason = exc.message or type(exc).__name__
        output = exc.output
        retry_after = exc.retry_after
    else:
        status = TaskStatus.FAILED
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        output = {}
        retry_after = None
    result = task.result(status, output, reason=reason[:4000], worker_id=worker_id)
    result.retry_after = retry_after
    result.exception = type(exc).__name__
    return result


def to_result(task: Task, value: Any, worker_id: str) -> TaskResult:
    """Turn a handler's return value into a TaskResult, validating that it is JSON."""
    if isinstance(value, TaskResult):
        result = value
        if not result.worker_id:
            result.worker_id = worker_id
    elif isinstance(value, TaskInProgress):
        result = task.result(TaskStatus.IN_PROGRESS, dict(value.output), worker_id=worker_id)
        result.callback_after_seconds = value.callback_after_seconds
    else:
        result = task.result(TaskStatus.COMPLETED, normalise_output(value), worker_id=worker_id)
    result.output_json()  # raises OutputError naming the offending value; kept for the wire
    return result
