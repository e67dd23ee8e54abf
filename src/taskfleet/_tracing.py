"""Tracing with OpenTelemetry (docs/tracing.md): a span per task execution, context from the
task's ``traceparent``, spans for the outcomes the supervisor reports.

Nothing here imports ``opentelemetry`` unless the application did already: a process traces
when ``TASKFLEET_TRACING`` is not ``off``, the OpenTelemetry API is loaded and a tracer provider
was set (``trace.set_tracer_provider``) by the time its pool or worker process starts
(:func:`configure`). Otherwise :data:`ACTIVE` stays False, the callers' one check, and the
runner's methods are the plain ones: tracing off costs a task nothing.

When it is on, :func:`instrument` replaces a runner's two handler calls (``_call_sync``,
``_call_async``) on that runner object with ones that run the handler inside its span, so the
runner's code has no tracing branch of its own.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ._context import TaskContext, task_context
from ._outcome import result_from_exception, to_result
from ._task import Task, TaskResult

if TYPE_CHECKING:
    from ._config import Configuration
    from ._runner import Runner
    from ._sources.base import PollRequest

__all__ = [
    "ACTIVE",
    "TRACEPARENT",
    "configure",
    "flush",
    "inject",
    "instrument",
    "reported",
    "stamp",
]

#: True once :func:`configure` found a tracer provider in this process (and tracing not off).
ACTIVE = False
#: The W3C header (NATS task headers) and input key (Conductor) that carry a task's parent.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

_tracer: Any = None
_system = ""
_prefix = ""
_calls = False


def configure(config: Configuration) -> bool:
    """Decide whether this process traces (sets :data:`ACTIVE`); returns it."""
    global ACTIVE, _tracer, _system, _prefix, _calls
    ACTIVE = False
    if config.tracing == "off" or "opentelemetry.trace" not in sys.modules:
        return False
    from opentelemetry import trace

    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return False  # the API is loaded but nobody set a provider: spans would go nowhere
    _tracer = trace.get_tracer("taskfleet")
    _system = config.resolved_source
    _prefix = config.nats_prefix
    _calls = config.tracing == "calls"
    ACTIVE = True
    return True


def inject(headers: Mapping[str, str] | None) -> Mapping[str, str] | None:
    """``headers`` plus the current trace context (``traceparent``) when a span is current;
    ``headers`` themselves when none is, or the application never loaded OpenTelemetry."""
    if "opentelemetry.trace" not in sys.modules:
        return headers
    from opentelemetry import propagate, trace

    if not trace.get_current_span().get_span_context().is_valid:
        return headers
    carrier = dict(headers or {})
    propagate.inject(carrier)
    return carrier


# -- spans ----------------------------------------------------------------------------------


def _parent(task: Task) -> Any:
    """The context a task's span continues: its ``traceparent`` header (NATS), else a
    ``traceparent`` string in its input (Conductor's convention), else none (a new trace)."""
    from opentelemetry import context, propagate

    carrier: Mapping[str, Any] = task.headers
    if TRACEPARENT not in carrier:
        carrier = {
            key: value
            for key in (TRACEPARENT, TRACESTATE)
            if isinstance(value := task.input_data.get(key), str)
        }
        if not carrier:
            return context.Context()  # a new trace, not a child of whatever is current here
    return propagate.extract(carrier, context=context.Context())


def _attributes(task: Task, destination: str, operation: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": _system,
        "messaging.operation.type": "process" if operation == "execute" else operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": destination,
        "messaging.message.id": task.task_id,
        "taskfleet.task.type": task.task_type,
        "taskfleet.task.attempt": task.attempt,
    }
    if task.workflow_instance_id:
        attributes["taskfleet.workflow.instance_id"] = task.workflow_instance_id
    if task.correlation_id:
        attributes["messaging.message.conversation_id"] = task.correlation_id
    return attributes


@contextmanager
def _execute_span(task: Task, destination: str, worker_id: str) -> Iterator[Any]:
    from opentelemetry import propagate, trace

    attributes = _attributes(task, destination, "execute")
    attributes["taskfleet.worker.id"] = worker_id
    with _tracer.start_as_current_span(
        f"execute {task.task_type}",
        context=_parent(task),
        kind=trace.SpanKind.CONSUMER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        if task.output_subject and isinstance(task.headers, dict):
            # A pipeline stage: the next stage's task takes this task's headers (the NATS
            # source's _publish_next), so it continues the trace as this span's child.
            propagate.inject(task.headers)
        yield span


def _finish(span: Any, result: TaskResult, exc: BaseException | None = None) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("taskfleet.task.status", result.status.value)
    if exc is not None:
        span.record_exception(exc)
    if result.status.is_failure:
        if result.exception:
            span.set_attribute("error.type", result.exception)
        span.set_status(Status(StatusCode.ERROR, result.reason_for_incompletion or ""))


def _destination(task_type: str) -> str:
    """Where tasks of a type wait: the NATS subject, or the Conductor task type (its queue)."""
    return f"{_prefix}.tasks.{task_type}" if _system == "nats" else task_type


def instrument(runner: Runner) -> None:
    """Make ``runner`` run each handler inside an ``execute <taskType>`` span (and, with
    ``TASKFLEET_TRACING=calls``, its source's polls and reports inside client spans)."""
    worker, worker_id = runner.worker, runner.worker_id
    destination = _destination(runner.task_type)

    def invoke(task: Task) -> Any:
        if worker.style == "task":
            return worker.handler(task)
        return worker.handler(**worker.bind(task))

    def failed(span: Any, task: Task, exc: BaseException) -> TaskResult:
        result = result_from_exception(task, exc, worker_id)
        _finish(span, result, exc)
        return result

    def done(span: Any, task: Task, value: Any) -> TaskResult:
        try:
            result = to_result(task, value, worker_id)
        except Exception as exc:  # output that is not JSON
            return failed(span, task, exc)
        _finish(span, result)
        return result

    def call_sync(task: Task, ctx: TaskContext) -> TaskResult:
        with task_context(ctx), _execute_span(task, destination, worker_id) as span:
            try:
                value = invoke(task)
            except BaseException as exc:
                return failed(span, task, exc)
            return done(span, task, value)

    async def call_async(task: Task, ctx: TaskContext) -> TaskResult:
        from opentelemetry.trace import Status, StatusCode

        with task_context(ctx), _execute_span(task, destination, worker_id) as span:
            try:
                value = await invoke(task)
            except asyncio.CancelledError:
                # The runner's time limit of an async handler, or the process stopping.
                span.set_status(Status(StatusCode.ERROR, "cancelled (time limit or stop)"))
                raise
            except Exception as exc:
                return failed(span, task, exc)
            return done(span, task, value)

    setattr(runner, "_call_sync", call_sync)  # noqa: B010 - shadows the method on this object
    setattr(runner, "_call_async", call_async)  # noqa: B010
    if _calls:
        _instrument_calls(runner, destination)


def _instrument_calls(runner: Runner, destination: str) -> None:
    """Client spans around the source's poll and report calls (``TASKFLEET_TRACING=calls``)."""
    from opentelemetry import trace

    source = runner.source
    client = trace.SpanKind.CLIENT
    poll, report, report_blocking = source.poll, source.report, source.report_blocking

    def poll_span(request: PollRequest) -> Any:
        attributes = {
            "messaging.system": _system,
            "messaging.operation.type": "receive",
            "messaging.operation.name": "poll",
            "messaging.destination.name": destination,
            "messaging.batch.message_count": request.count,
        }
        return _tracer.start_as_current_span(
            f"poll {request.task_type}", kind=client, attributes=attributes
        )

    def report_span(task: Task, result: TaskResult) -> Any:
        attributes = _attributes(task, destination, "settle")
        attributes["taskfleet.task.status"] = result.status.value
        return _tracer.start_as_current_span(
            f"report {task.task_type}", context=_parent(task), kind=client, attributes=attributes
        )

    async def traced_poll(request: PollRequest) -> list[Task]:
        with poll_span(request) as span:
            tasks = await poll(request)
            span.set_attribute("taskfleet.poll.received", len(tasks))
            return tasks

    async def traced_report(task: Task, result: TaskResult, *, chain: bool = False) -> Any:
        with report_span(task, result):
            return await report(task, result, chain=chain)

    def traced_report_blocking(task: Task, result: TaskResult, *, chain: bool = False) -> Any:
        with report_span(task, result):
            return report_blocking(task, result, chain=chain)

    setattr(source, "poll", traced_poll)  # noqa: B010 - shadows the method on this object
    setattr(source, "report", traced_report)  # noqa: B010
    setattr(source, "report_blocking", traced_report_blocking)  # noqa: B010


def reported(task: Task, result: TaskResult) -> None:
    """The span of an outcome the supervisor reports for a task whose process could not (it
    died, or ran past its time limit): ``execute <taskType>``, in the task's trace when its
    ``traceparent`` came in its headers, ended at once."""
    from opentelemetry import trace

    attributes = _attributes(task, _destination(task.task_type), "execute")
    attributes["taskfleet.reported_by"] = "supervisor"
    span = _tracer.start_span(
        f"execute {task.task_type}",
        context=_parent(task),
        kind=trace.SpanKind.CONSUMER,
        attributes=attributes,
    )
    try:
        _finish(span, result)
        if result.status.is_failure:
            span.add_event(
                "exception",
                {
                    "exception.type": result.exception or "TaskFailed",
                    "exception.message": result.reason_for_incompletion or "",
                },
            )
    finally:
        span.end()


def flush(timeout: float = 5.0) -> None:
    """Export the spans a batching span processor still holds (a worker process leaves through
    ``os._exit``, so the SDK's own exit handler never runs there)."""
    from opentelemetry import trace

    force_flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if force_flush is not None:
        force_flush(int(timeout * 1000))


def stamp(record: logging.LogRecord) -> None:
    """Put the current span's ``trace_id`` and ``span_id`` (hex) on a log record, when a span
    is current (JSON log lines carry them)."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        record.trace_id = format(context.trace_id, "032x")
        record.span_id = format(context.span_id, "016x")
