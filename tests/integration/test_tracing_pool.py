"""Tracing across real processes on NATS and Conductor (docs/tracing.md): a pool started by a
script whose processes all export their spans to files (tracing_workers.py); the tests read the
files and the script's log lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

HERE = Path(__file__).resolve().parent


def run_pool(tmp_path, settings, mode):
    """Run tracing_workers.py: (its report, every span its processes exported, its stderr)."""
    spans_dir = tmp_path / "spans"
    spans_dir.mkdir()
    settings = {
        "state_dir": str(tmp_path / "state"),
        "metrics_address": "off",
        "kill_grace": 0.5,
        **settings,
    }
    env = {
        **os.environ,
        "TRACING_SPANS_DIR": str(spans_dir),
        "TRACING_POOL_CONFIG": json.dumps(settings),
        "TRACING_POOL_MODE": mode,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, str(HERE / "tracing_workers.py")],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    spans = [
        json.loads(line)
        for path in spans_dir.glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    return report, spans, done.stderr


@pytest.fixture(scope="module")
def traced_pool(nats_server, tmp_path_factory):
    """One NATS pool run for the module's tests: (the script's report, every exported span)."""
    settings = {"nats_url": nats_server.url, "nats_prefix": "tracing", "nats_ack_wait": 30.0}
    report, spans, _ = run_pool(tmp_path_factory.mktemp("tracing"), settings, "nats")
    return report, spans


def test_tasks_submitted_in_a_span_run_in_child_spans_of_it_in_the_worker_processes(traced_pool):
    report, spans = traced_pool
    assert report["outcomes"] == {
        "square": "COMPLETED",
        "fail": "FAILED",
        "killed": "FAILED",
        "pipeline": "COMPLETED",
    }
    client = report["client"]
    pool_pid = {s["pid"] for s in spans if s["name"].startswith("submit ")}

    # A task submitted inside a span: the worker's execute span is its child, in another process.
    (square,) = [s for s in spans if s["name"] == "execute tr_square"]
    assert square["trace_id"] == client["square"]["trace_id"]
    assert square["parent_id"] == client["square"]["span_id"]
    assert square["pid"] not in pool_pid
    assert square["status"] == "UNSET"
    assert square["attributes"]["messaging.system"] == "nats"
    assert square["attributes"]["messaging.message.id"] == client["square"]["task_id"]
    assert square["attributes"]["messaging.destination.name"].endswith(".tasks.tr_square")
    # The handler's own span is the execute span's child.
    (inner,) = [s for s in spans if s["name"] == "square inner"]
    assert inner["parent_id"] == square["span_id"]

    # A three-stage pipeline is one trace: each stage the child of the one before.
    stages = [next(s for s in spans if s["name"] == f"execute tr_stage{n}") for n in (1, 2, 3)]
    assert {s["trace_id"] for s in stages} == {client["pipeline"]["trace_id"]}
    assert stages[0]["parent_id"] == client["pipeline"]["span_id"]
    assert stages[1]["parent_id"] == stages[0]["span_id"]
    assert stages[2]["parent_id"] == stages[1]["span_id"]


def test_a_failing_handler_records_its_exception_in_the_worker_span(traced_pool):
    report, spans = traced_pool
    (fail,) = [s for s in spans if s["name"] == "execute tr_fail"]
    assert fail["trace_id"] == report["client"]["fail"]["trace_id"]
    assert fail["status"] == "ERROR"
    (event,) = fail["events"]
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"] == "ValueError"
    assert event["attributes"]["exception.message"] == "bad input on purpose"


def test_a_task_whose_process_is_killed_gets_an_error_span_from_the_supervisor(traced_pool):
    report, spans = traced_pool
    killed = [s for s in spans if s["name"] == "execute tr_killed"]
    # The worker's own span died with its process; the supervisor's is the only one.
    (span,) = killed
    assert span["pid"] in {s["pid"] for s in spans if s["name"].startswith("submit ")}
    assert span["trace_id"] == report["client"]["killed"]["trace_id"]
    assert span["parent_id"] == report["client"]["killed"]["span_id"]
    assert span["status"] == "ERROR"
    assert span["attributes"]["taskfleet.reported_by"] == "supervisor"
    assert span["events"][0]["attributes"]["exception.type"] == "WorkerLost"


def test_conductor_tasks_continue_a_traceparent_in_their_input_or_start_a_trace(tmp_path):
    report, spans, stderr = run_pool(tmp_path, {}, "conductor")
    assert report["outcomes"] == {"linked": "COMPLETED", "unlinked": "COMPLETED", "slow": "FAILED"}
    client = report["client"]["linked"]
    executed = {
        s["attributes"]["messaging.message.id"]: s
        for s in spans
        if s["name"] == "execute tr_logged"
    }
    linked, unlinked = executed[report["ids"]["linked"]], executed[report["ids"]["unlinked"]]
    assert linked["attributes"]["messaging.system"] == "conductor"
    assert linked["trace_id"] == client["trace_id"]
    assert linked["parent_id"] == client["span_id"]
    assert unlinked["parent_id"] is None
    assert unlinked["trace_id"] != client["trace_id"]
    assert unlinked["attributes"]["taskfleet.workflow.instance_id"] == "wf-unlinked"

    # The handler's JSON log line names the execute span.
    lines = [json.loads(line) for line in stderr.splitlines() if "tracing log line 1" in line]
    (line,) = lines
    assert (line["trace_id"], line["span_id"]) == (linked["trace_id"], linked["span_id"])

    # Past its hard time limit: the pool's error span, in the trace of the task's input (the
    # worker that held the task was killed; the pool knew the task from its ledger only).
    (slow,) = [s for s in spans if s["name"] == "execute tr_slow"]
    assert slow["attributes"]["taskfleet.reported_by"] == "supervisor"
    assert slow["attributes"]["taskfleet.workflow.instance_id"] == "wf-slow"
    assert (slow["trace_id"], slow["parent_id"]) == (client["trace_id"], client["span_id"])
    assert slow["status"] == "ERROR"
    assert slow["events"][0]["attributes"]["exception.type"] == "TimeLimitExceeded"

    # TASKFLEET_TRACING=calls: polls and reports are client spans; a report joins its task's trace.
    assert any(s["name"] == "poll tr_logged" for s in spans)
    reports = [s for s in spans if s["name"] == "report tr_logged"]
    assert {s["trace_id"] for s in reports} >= {linked["trace_id"]}
