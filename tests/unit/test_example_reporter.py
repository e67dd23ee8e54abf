"""The reporter example's own rules, without a pool: retries, what it drops, what it masks.

What it posts for real tasks, crashes included, and that nothing is lost while its endpoint is
down, is tested through a real pool in tests/integration/test_status_stream.py."""

from __future__ import annotations

import importlib.util
import json
import logging
import pickle
import socket
import sqlite3
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from taskfleet import Task, TaskResult, TaskStatus

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
        self.statuses: list[int] = []  # answered first, one per post, before ``status``
        self.release = threading.Event()  # set: answer at once; clear: hang until released
        self.release.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                receiver.release.wait(timeout=10)
                receiver.posts.append({"path": self.path, "headers": dict(self.headers), **body})
                code = receiver.statuses.pop(0) if receiver.statuses else receiver.status
                self.send_response(code)
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


TASK = Task("t-1", "resize", {"customer": "acme"}, correlation_id="order-1234")


def new_reporter(url: str, tmp_path: Path, **kwargs: Any) -> Any:
    return reporter.HttpStatusReporter(
        url, outbox=tmp_path / "outbox.sqlite3", max_backoff=0.2, flush_timeout=5, **kwargs
    )


def outbox_size(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "outbox.sqlite3") as db:
        return int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])


def test_a_task_without_correlation_id_is_keyed_by_its_task_id(receiver, tmp_path):
    status = new_reporter(receiver.url, tmp_path, headers={"Authorization": "Bearer abc"})
    status.before_execute(Task("t-2", "resize"))
    status.close()
    (post,) = receiver.posts
    assert (post["event"], post["correlationId"]) == ("started", "t-2")
    assert post["headers"]["Authorization"] == "Bearer abc"
    assert outbox_size(tmp_path) == 0


def test_a_5xx_is_retried_until_accepted_and_a_4xx_is_dropped(receiver, tmp_path, caplog):
    receiver.statuses = [503, 503, 400]
    status = new_reporter(receiver.url, tmp_path)
    with caplog.at_level(logging.WARNING, logger="taskfleet.examples.reporter"):
        status.before_execute(TASK)
        status.close()
    assert [p["event"] for p in receiver.posts] == ["started"] * 3
    assert len({p["eventId"] for p in receiver.posts}) == 1, "the same event, retried"
    assert "rejected an event: 400" in caplog.text
    assert outbox_size(tmp_path) == 0


def test_an_unreachable_endpoint_keeps_the_event_and_masks_the_url(tmp_path, caplog):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    status = new_reporter(f"http://user:pw-123@127.0.0.1:{port}/status", tmp_path)
    status.flush_timeout = 0.5
    with caplog.at_level(logging.WARNING, logger="taskfleet.examples.reporter"):
        status.before_execute(TASK)
        status.close()
    assert "ConnectionError" in caplog.text
    assert "pw-123" not in caplog.text
    assert outbox_size(tmp_path) == 1, "kept for the next process to post"


def test_a_broken_data_function_is_logged_not_raised(receiver, tmp_path, caplog):
    def broken(task: Task, result: TaskResult | None) -> dict[str, Any]:
        raise KeyError("customer")

    with caplog.at_level(logging.WARNING, logger="taskfleet.examples.reporter"):
        new_reporter(receiver.url, tmp_path, data=broken).before_execute(TASK)
    assert "KeyError" in caplog.text
    assert not (tmp_path / "outbox.sqlite3").exists(), "nothing recorded"


def order_data(task: Task, result: TaskResult | None) -> dict[str, Any]:
    return {"customer": task.input_data.get("customer")}


def test_the_reporter_pickles_for_worker_processes(receiver, tmp_path):
    status = new_reporter(receiver.url, tmp_path, data=order_data)
    status.before_execute(TASK)  # starts this process's sender; a copy starts its own
    copy = pickle.loads(pickle.dumps(status))
    copy.after_execute(TASK, TASK.result(TaskStatus.COMPLETED))
    copy.close()
    status.close()
    assert sorted(p["event"] for p in receiver.posts) == ["completed", "started"]
    assert all(p["data"] == {"customer": "acme"} for p in receiver.posts)


def test_events_claimed_by_a_process_that_died_are_posted_at_once(receiver, tmp_path):
    import subprocess
    import time

    status = new_reporter(receiver.url, tmp_path)
    status.before_execute(TASK)
    status.close()
    receiver.posts.clear()
    # A process claimed an event for the next minute and died before posting it (a crash right
    # after its task started): its pid is gone, so the claim is void.
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    with sqlite3.connect(tmp_path / "outbox.sqlite3") as db:
        db.execute(
            "INSERT INTO outbox (body, claimed_until, claimed_by) VALUES (?, ?, ?)",
            (json.dumps({"event": "started", "taskId": "t-dead"}), time.time() + 60,
             int(gone.stdout)),
        )  # fmt: skip
    status = new_reporter(receiver.url, tmp_path)
    status.after_execute(TASK, TASK.result(TaskStatus.COMPLETED))
    status.close()
    assert receiver.posts[0].get("taskId") == "t-dead", "the oldest event goes first"
    assert outbox_size(tmp_path) == 0
