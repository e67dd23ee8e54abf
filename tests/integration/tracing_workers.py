"""Workers and a pool for the tracing tests (tests/integration/test_tracing_pool.py).

Every process that imports this module (the pool's script and each worker process) sets a
tracer provider whose batching processor (flushed when a worker process leaves) appends finished spans, one JSON object a line, to
``$TRACING_SPANS_DIR/<pid>.jsonl``: the test reads what real processes exported.

Run as a script, it starts a pool of these workers (settings as JSON in
``$TRACING_POOL_CONFIG``; on NATS, or on a Conductor test server when ``$TRACING_POOL_MODE`` is
``conductor``), gives it tasks inside client spans, waits for their outcomes and prints the
client spans' ids and the outcomes as JSON.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from taskfleet import worker_task


class FileExporter(SpanExporter):
    def __init__(self, directory: str) -> None:
        self.directory = directory

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        path = os.path.join(self.directory, f"{os.getpid()}.jsonl")
        with open(path, "a") as f:
            for span in spans:
                entry = {
                    "name": span.name,
                    "trace_id": format(span.context.trace_id, "032x"),
                    "span_id": format(span.context.span_id, "016x"),
                    "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
                    "status": span.status.status_code.name,
                    "attributes": dict(span.attributes or {}),
                    "events": [
                        {"name": e.name, "attributes": dict(e.attributes or {})}
                        for e in span.events
                    ],
                    "pid": os.getpid(),
                }
                f.write(json.dumps(entry) + "\n")
        return SpanExportResult.SUCCESS


if os.environ.get("TRACING_SPANS_DIR"):
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(FileExporter(os.environ["TRACING_SPANS_DIR"])))
    trace.set_tracer_provider(provider)


@worker_task("tr_square", threads=2, poll_interval=20)
def tr_square(x: int) -> dict:
    with trace.get_tracer("tests").start_as_current_span("square inner"):
        return {"y": x * x}


@worker_task("tr_fail", poll_interval=20, max_attempts=1)
def tr_fail() -> dict:
    raise ValueError("bad input on purpose")


@worker_task("tr_killed", poll_interval=20, max_attempts=1)
def tr_killed() -> dict:
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


@worker_task("tr_stage1", poll_interval=20, output_subject="tr_stage2")
def tr_stage1(text: str) -> dict:
    return {"words": text.split()}


@worker_task("tr_stage2", poll_interval=20, output_subject="tr_stage3")
async def tr_stage2(words: list[str]) -> dict:
    return {"words": [w.upper() for w in words]}


@worker_task("tr_stage3", poll_interval=20)
def tr_stage3(words: list[str]) -> dict:
    return {"count": len(words)}


@worker_task("tr_logged", poll_interval=20)
def tr_logged(n: int) -> dict:
    logging.getLogger("tracing.handler").warning("tracing log line %d", n)
    return {"n": n}


@worker_task("tr_slow", poll_interval=20, time_limit=1.0)
def tr_slow() -> dict:
    time.sleep(60)
    return {}


WORKERS = [tr_square, tr_fail, tr_killed, tr_stage1, tr_stage2, tr_stage3]


def main() -> None:
    if os.environ.get("TRACING_POOL_MODE") == "conductor":
        conductor_main()
    else:
        nats_main()


def nats_main() -> None:
    """A NATS pool: tasks submitted inside client spans, a pipeline, a failure, a crash."""
    from taskfleet import Configuration, TaskClient, TaskHandler

    config = Configuration.from_env({}, **json.loads(os.environ["TRACING_POOL_CONFIG"]))
    tracer = trace.get_tracer("tests")
    report: dict = {"client": {}, "outcomes": {}}
    with (
        TaskClient(config) as client,
        TaskHandler(WORKERS, config, install_signal_handlers=False) as pool,
    ):
        pool.start_processes()
        waits = {}
        for name, task_type, data in [
            ("square", "tr_square", {"x": 7}),
            ("fail", "tr_fail", {}),
            ("killed", "tr_killed", {}),
            ("pipeline", "tr_stage1", {"text": "a b c"}),
        ]:
            with tracer.start_as_current_span(f"submit {name}") as span:
                task_id = client.submit(task_type, data)
                context = span.get_span_context()
                report["client"][name] = {
                    "trace_id": format(context.trace_id, "032x"),
                    "span_id": format(context.span_id, "016x"),
                    "task_id": task_id,
                }
            waits[name] = (task_id, task_type)
        waits["pipeline"] = (f"{waits['pipeline'][0]}>tr_stage2>tr_stage3", "tr_stage3")
        for name, (task_id, task_type) in waits.items():
            outcome = client.result(task_id, timeout=60, task_type=task_type)
            report["outcomes"][name] = outcome.status.value
        pool.stop_processes(30)
    print(json.dumps(report))


def conductor_main() -> None:
    """A pool on the Conductor test server: a task whose input carries a ``traceparent``, one
    without, one past its time limit; ``TASKFLEET_TRACING=calls`` and JSON logs."""
    from taskfleet import Configuration, TaskHandler
    from taskfleet.testing import ConductorTestServer

    tracer = trace.get_tracer("tests")
    report: dict = {"client": {}, "ids": {}}
    with ConductorTestServer() as server:
        server.register_task_def("tr_slow", retry_count=0)
        config = Configuration.from_env(
            {},
            **json.loads(os.environ["TRACING_POOL_CONFIG"]),
            source="conductor",
            conductor_server_url=server.url,
            tracing="calls",
            log_format="json",
        )
        with tracer.start_as_current_span("workflow start") as span:
            context = span.get_span_context()
            traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-01"
            report["client"]["linked"] = {
                "trace_id": format(context.trace_id, "032x"),
                "span_id": format(context.span_id, "016x"),
            }
        ids = {
            "linked": server.enqueue(
                "tr_logged", {"n": 1, "traceparent": traceparent}, workflow_id="wf-linked"
            ),
            "unlinked": server.enqueue("tr_logged", {"n": 2}, workflow_id="wf-unlinked"),
            "slow": server.enqueue("tr_slow", {"traceparent": traceparent}, workflow_id="wf-slow"),
        }
        report["ids"] = ids
        with TaskHandler([tr_logged, tr_slow], config, install_signal_handlers=False) as pool:
            pool.start_processes()
            assert server.wait_for(list(ids.values()), timeout=60), server.counts()
            pool.stop_processes(30)
        report["outcomes"] = {name: server.job(i).status for name, i in ids.items()}
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
