"""The reporter example posts started/completed/failed events and never raises into the worker."""

from __future__ import annotations

import importlib.util
import json
import logging
import pickle
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from taskfleet import Task, TaskResult, TaskStatus
from taskfleet._outcome import result_from_exception
from taskfleet.hooks import call_hooks

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "reporter" / "reporter.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reporter_example", EXAMPLE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # importable by name, as pickling hooks for children needs
    spec.loader.exec_module(module)
    return module


reporter = load_example()


class Receiver:
    """A stdlib HTTP server on 127.0.0.1 that records the JSON bodies posted to it."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.status = 204
        self.release = threading.Event()  # set: answer at once; clear: hang until released
        self.release.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                receiver.release.wait(timeout=10)
                receiver.posts.append({"path": self.path, "headers": dict(self.headers), **body})
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/status"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def order_data(task: Task, result: TaskResult | None) -> dict[str, Any]:
    return {"customer": task.input_data.get("customer"), "done": result is not None}


TASK = Task(
    "t-1",
    "resize",
    {"customer": "acme"},
    workflow_instance_id="wf-1",
    correlation_id="order-1234",
)


def test_a_completed_task_posts_started_then_completed_with_custom_data(receiver):
    hooks = [reporter.HttpStatusReporter(receiver.url, data=order_data)]
    call_hooks(hooks, "before_execute", TASK)
    call_hooks(hooks, "after_execute", TASK, TASK.result(TaskStatus.COMPLETED, {"path": "x"}))
    started, completed = receiver.posts
    assert started["event"] == "started"
    assert completed["event"] == "completed"
    for post in (started, completed):
        assert post["path"] == "/status"
        assert post["correlationId"] == "order-1234"
        assert (post["taskId"], post["taskType"], post["workflowInstanceId"]) == (
            "t-1",
            "resize",
            "wf-1",
        )
        assert post["headers"]["Content-Type"] == "application/json"
    assert started["data"] == {"customer": "acme", "done": False}
    assert completed["data"] == {"customer": "acme", "done": True}
    assert completed["status"] == "COMPLETED"


def test_a_failed_task_posts_failed_with_the_reason_and_exception_class(receiver):
    result = result_from_exception(TASK, ValueError("bad pixel"), "w-1")
    reporter.HttpStatusReporter(receiver.url).after_execute(TASK, result)
    (failed,) = receiver.posts
    assert failed["event"] == "failed"
    assert failed["status"] == "FAILED"
    assert failed["exception"] == "ValueError"
    assert "bad pixel" in failed["reason"]


def test_a_task_without_correlation_id_is_keyed_by_its_task_id(receiver):
    reporter.HttpStatusReporter(receiver.url).before_execute(Task("t-2", "resize"))
    assert receiver.posts[0]["correlationId"] == "t-2"


def test_custom_headers_are_sent(receiver):
    hooks = reporter.HttpStatusReporter(receiver.url, headers={"Authorization": "Bearer abc"})
    hooks.before_execute(TASK)
    assert receiver.posts[0]["headers"]["Authorization"] == "Bearer abc"


def test_an_unreachable_endpoint_is_logged_not_raised(caplog):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hooks = reporter.HttpStatusReporter(f"http://user:pw-123@127.0.0.1:{port}/status")
    with caplog.at_level(logging.WARNING, logger="taskfleet.examples.reporter"):
        hooks.before_execute(TASK)
    (record,) = caplog.records
    assert "ConnectionError" in record.getMessage()
    assert "pw-123" not in record.getMessage()


def test_a_hanging_endpoint_costs_at_most_the_timeout(receiver, caplog):
    receiver.release.clear()
    hooks = reporter.HttpStatusReporter(receiver.url, timeout=0.2)
    with caplog.at_level(logging.WARNING, logger="taskfleet.examples.reporter"):
        hooks.before_execute(TASK)
    assert "ReadTimeout" in caplog.records[0].getMessage()


def test_an_error_status_is_logged_not_raised(receiver, caplog):
    receiver.status = 503
    with caplog.at_level(logging.WARNING, logger="taskfleet.examples.reporter"):
        reporter.HttpStatusReporter(receiver.url).before_execute(TASK)
    assert "503" in caplog.records[0].getMessage()


def test_a_broken_data_function_is_logged_not_raised(receiver, caplog):
    def broken(task: Task, result: TaskResult | None) -> dict[str, Any]:
        raise KeyError("customer")

    with caplog.at_level(logging.WARNING, logger="taskfleet.examples.reporter"):
        reporter.HttpStatusReporter(receiver.url, data=broken).before_execute(TASK)
    assert "KeyError" in caplog.records[0].getMessage()
    assert receiver.posts == []


def test_the_reporter_pickles_for_worker_processes(receiver):
    copy = pickle.loads(pickle.dumps(reporter.HttpStatusReporter(receiver.url, data=order_data)))
    copy.before_execute(TASK)
    assert receiver.posts[0]["data"]["customer"] == "acme"
