"""Tracing in one process: the execute span of def and async def handlers over the memory
source, its parent from a task's ``traceparent``, recorded exceptions, handlers' own spans and
log lines, the supervisor's span of a lost task, poll and report spans; and that nothing of
OpenTelemetry is loaded when the application does not use it (docs/tracing.md)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from taskfleet import TaskStatus, _tracing, worker_task
from taskfleet._logs import JsonFormatter, TaskContextFilter
from taskfleet._runner import Runner
from taskfleet._sources.memory import MemorySource

#: not the global provider: the rest of the suite's processes must not trace
provider = TracerProvider()
exporter = InMemorySpanExporter()
provider.add_span_processor(SimpleSpanProcessor(exporter))
own_tracer = provider.get_tracer("tests")

PARENT_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT_SPAN = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{PARENT_TRACE:032x}-{PARENT_SPAN:016x}-01"

records: list[logging.LogRecord] = []


class _Keep(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        records.append(record)


handler_log = logging.getLogger("tests.tracing.handler")
handler_log.addHandler(_Keep())
handler_log.addFilter(TaskContextFilter())
handler_log.setLevel(logging.INFO)
handler_log.propagate = False


@worker_task("traced_add")
def traced_add(x: int, y: int) -> dict:
    with own_tracer.start_as_current_span("inner sync"):
        handler_log.info("adding")
    return {"sum": x + y}


@worker_task("traced_async")
async def traced_async(x: int) -> dict:
    await asyncio.sleep(0)
    with own_tracer.start_as_current_span("inner async"):
        await asyncio.sleep(0)
    return {"x": x}


@worker_task("traced_fail")
def traced_fail() -> dict:
    raise ValueError("no such thing")


@pytest.fixture(autouse=True)
def tracing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    exporter.clear()
    records.clear()
    monkeypatch.setattr(_tracing, "ACTIVE", True)
    monkeypatch.setattr(_tracing, "_tracer", provider.get_tracer("taskfleet"))
    monkeypatch.setattr(_tracing, "_system", "conductor")
    monkeypatch.setattr(_tracing, "_calls", False)
    yield


def run(worker, source: MemorySource, tasks: int) -> None:
    runner = Runner(worker, source, max_tasks=tasks)
    _tracing.instrument(runner)
    asyncio.run(runner.run())


def spans_named(name: str) -> list:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def test_a_def_handler_runs_in_an_execute_span_continuing_the_traceparent_of_its_input():
    source = MemorySource()
    task = source.add(
        "traced_add",
        {"x": 1, "y": 2, "traceparent": TRACEPARENT},
        workflow_instance_id="wf-1",
        correlation_id="order-7",
    )
    run(traced_add, source, 1)
    assert source.final(task.task_id).output_data == {"sum": 3}
    (span,) = spans_named("execute traced_add")
    assert span.context.trace_id == PARENT_TRACE
    assert span.parent is not None and span.parent.span_id == PARENT_SPAN
    assert span.kind is trace.SpanKind.CONSUMER
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes["messaging.system"] == "conductor"
    assert span.attributes["messaging.operation.type"] == "process"
    assert span.attributes["messaging.destination.name"] == "traced_add"
    assert span.attributes["messaging.message.id"] == task.task_id
    assert span.attributes["messaging.message.conversation_id"] == "order-7"
    assert span.attributes["taskfleet.workflow.instance_id"] == "wf-1"
    assert span.attributes["taskfleet.task.attempt"] == 1
    assert span.attributes["taskfleet.task.status"] == "COMPLETED"
    # The handler's own span is the execute span's child, and its log line names both ids.
    (inner,) = spans_named("inner sync")
    assert inner.parent is not None and inner.parent.span_id == span.context.span_id
    (record,) = records
    line = json.loads(JsonFormatter().format(record))
    assert line["trace_id"] == f"{PARENT_TRACE:032x}"
    assert line["span_id"] == f"{inner.context.span_id:016x}"
    assert line["task_id"] == task.task_id


def test_a_task_without_traceparent_starts_a_new_trace_naming_its_workflow():
    source = MemorySource()
    source.add("traced_add", {"x": 1, "y": 2}, workflow_instance_id="wf-2")
    with own_tracer.start_as_current_span("unrelated"):
        run(traced_add, source, 1)
    (span,) = spans_named("execute traced_add")
    assert span.parent is None
    assert span.attributes["taskfleet.workflow.instance_id"] == "wf-2"


def test_an_async_handler_runs_in_its_execute_span_and_its_own_spans_are_children():
    source = MemorySource()
    source.add("traced_async", {"x": 5}, headers={"traceparent": TRACEPARENT})
    run(traced_async, source, 1)
    (span,) = spans_named("execute traced_async")
    assert span.parent is not None and span.parent.span_id == PARENT_SPAN
    (inner,) = spans_named("inner async")
    assert inner.parent is not None and inner.parent.span_id == span.context.span_id


def test_a_failing_handler_records_its_exception_and_the_span_is_an_error():
    source = MemorySource()
    task = source.add("traced_fail", {})
    run(traced_fail, source, 1)
    assert source.final(task.task_id).status is TaskStatus.FAILED
    (span,) = spans_named("execute traced_fail")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ValueError: no such thing"
    assert span.attributes["error.type"] == "ValueError"
    (event,) = [e for e in span.events if e.name == "exception"]
    assert event.attributes["exception.type"] == "ValueError"
    assert "traced_fail" in event.attributes["exception.stacktrace"]


def test_an_outcome_the_supervisor_reports_is_an_error_span_in_the_task_trace():
    source = MemorySource()
    task = source.add("traced_add", {}, headers={"traceparent": TRACEPARENT}).slim()
    result = task.result(TaskStatus.FAILED, reason="worker process died (SIGKILL)")
    result.exception = "WorkerLost"
    _tracing.reported(task, result)
    (span,) = spans_named("execute traced_add")
    assert span.context.trace_id == PARENT_TRACE
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["taskfleet.reported_by"] == "supervisor"
    (event,) = span.events
    assert event.attributes["exception.type"] == "WorkerLost"


def test_poll_and_report_spans_only_when_asked(monkeypatch: pytest.MonkeyPatch):
    source = MemorySource()
    source.add("traced_add", {"x": 1, "y": 1})
    run(traced_add, source, 1)
    assert not spans_named("poll traced_add") and not spans_named("report traced_add")

    monkeypatch.setattr(_tracing, "_calls", True)
    source = MemorySource()
    source.add("traced_add", {"x": 1, "y": 1})
    run(traced_add, source, 1)
    assert spans_named("poll traced_add")
    (report,) = spans_named("report traced_add")
    assert report.kind is trace.SpanKind.CLIENT


WITHOUT_OTEL = """
import sys
from taskfleet import Configuration, worker_task
from taskfleet import _tracing
from taskfleet._runner import Runner
from taskfleet._sources.memory import MemorySource
import asyncio

@worker_task("plain")
def plain(x: int) -> dict:
    return {"x": x}

source = MemorySource()
source.add("plain", {"x": 1})
runner = Runner(plain, source, max_tasks=1)
assert not _tracing.configure(Configuration(conductor_server_url="http://127.0.0.1:1/api"))
asyncio.run(runner.run())
assert _tracing.inject({"a": "b"}) == {"a": "b"}
loaded = sorted(m for m, v in sys.modules.items() if m.startswith("opentelemetry") and v)
assert not loaded, loaded
print("ok")
"""

BLOCKED = "import sys; sys.modules['opentelemetry'] = None\n"

PROVIDER_SET = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from taskfleet import Configuration
from taskfleet import _tracing
config = Configuration(conductor_server_url="http://127.0.0.1:1/api")
assert not _tracing.configure(config), "no provider yet"
trace.set_tracer_provider(TracerProvider())
assert _tracing.configure(config)
assert not _tracing.configure(config.replace(tracing="off"))
print("ok")
"""


@pytest.mark.parametrize(
    "script", [WITHOUT_OTEL, BLOCKED + WITHOUT_OTEL, PROVIDER_SET], ids=["unused", "absent", "set"]
)
def test_tracing_is_on_only_with_a_provider_and_nothing_is_imported_without_one(script: str):
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
