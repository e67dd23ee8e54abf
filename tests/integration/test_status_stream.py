"""The status stream through a real pool: every task that starts reaches one final outcome in the
hooks (also when the supervisor reports it), a blocking hook holds only its own task, and the
reporter example delivers every event after its endpoint was down."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from helpers import conductor_config, wait_until
from pool_workers import HoldingHook, sleeper, tracked, tracked_async

from taskfleet import TaskHandler
from taskfleet.testing import ConductorTestServer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "reporter"))
import reporter  # the example, importable by name in worker processes too

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


class Receiver:
    """A status endpoint on 127.0.0.1 that records the JSON events posted to it."""

    def __init__(self, port: int = 0) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver._lock:
                    receiver.events.append(body)
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/status"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def of(self, task_id: str) -> list[str]:
        with self._lock:
            return [e["event"] for e in self.events if e["taskId"] == task_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def server() -> Iterator[ConductorTestServer]:
    with ConductorTestServer() as s:
        yield s


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_each_task_posts_started_then_one_outcome_with_what_the_handler_attached(
    server, receiver, tmp_path
):
    server.register_task_def("tracked", retry_count=0)
    ids = [
        server.enqueue("tracked", {"x": x}, correlation_id=f"order-{x}") for x in (-1, *range(30))
    ]
    status = reporter.HttpStatusReporter(
        receiver.url, outbox=tmp_path / "outbox.sqlite3", flush_timeout=30
    )
    config = conductor_config(server, tmp_path / "state")
    with TaskHandler([tracked], config, hooks=[status], install_signal_handlers=False) as h:
        h.start_processes()
        assert server.wait_for(ids, timeout=60)
    # Stopping the pool closed the hooks: every event was posted before it ended.
    events = {(e["taskId"], e["event"]): e for e in receiver.events}
    assert len(events) == len(receiver.events) == 2 * len(ids), "each event once"
    for x, task_id in zip((-1, *range(30)), ids, strict=True):
        assert receiver.of(task_id) == ["started", "failed" if x < 0 else "completed"]
        final = events[(task_id, "failed" if x < 0 else "completed")]
        assert final["correlationId"] == f"order-{x}"
        assert final["data"] == {"rows": x}
        assert final["message"] == f"row {x} done"
    assert events[(ids[0], "failed")]["exception"] == "ValueError"


def test_outcomes_the_supervisor_reports_reach_the_hooks(server, receiver, tmp_path):
    server.register_task_def("tracked", retry_count=0, response_timeout_seconds=30)
    server.register_task_def("sleeper", retry_count=0)
    crashed = server.enqueue("tracked", {"x": 1, "crash": True}, correlation_id="order-crash")
    stuck = server.enqueue("sleeper", {"seconds": 60}, correlation_id="order-stuck")
    status = reporter.HttpStatusReporter(
        receiver.url, outbox=tmp_path / "outbox.sqlite3", flush_timeout=30
    )
    config = conductor_config(server, tmp_path / "state", kill_grace=0.5)
    with TaskHandler(
        [tracked.with_options(threads=1), sleeper],
        config,
        hooks=[status],
        install_signal_handlers=False,
    ) as h:
        h.start_processes()
        assert server.wait_for([crashed, stuck], timeout=60)
        wait_until(lambda: len(receiver.of(crashed)) == 2 and len(receiver.of(stuck)) == 2)
    assert receiver.of(crashed) == ["started", "failed"]
    assert receiver.of(stuck) == ["started", "failed"]
    finals = {e["taskId"]: e for e in receiver.events if e["event"] == "failed"}
    assert finals[crashed]["exception"] == "WorkerLost"
    assert "SIGSEGV" in finals[crashed]["reason"]
    assert finals[crashed]["correlationId"] == "order-crash"
    assert finals[stuck]["exception"] == "TimeLimitExceeded"
    assert finals[stuck]["correlationId"] == "order-stuck"


@pytest.mark.parametrize("worker", [tracked, tracked_async], ids=["def", "async def"])
def test_a_blocking_hook_holds_only_its_own_task(server, tmp_path, worker):
    release = tmp_path / "release"
    config = conductor_config(server, tmp_path / "state")
    with TaskHandler([worker], config, hooks=[HoldingHook()], install_signal_handlers=False) as h:
        h.start_processes()
        held = server.enqueue(worker.task_type, {"x": 0, "hold": str(release)})
        wait_until(lambda: server.job(held).status == "IN_PROGRESS", what="the held task polled")
        others = server.enqueue_many(worker.task_type, [{"x": x} for x in range(1, 41)])
        # The hook blocks until the file exists; the other slot and the loop go on meanwhile.
        assert server.wait_for(others, timeout=60)
        assert server.job(held).status == "IN_PROGRESS", "the held task waits for its hook"
        release.touch()
        assert server.wait_for([held], timeout=60)
    assert all(server.job(i).status == "COMPLETED" for i in [held, *others])


def test_the_reporter_delivers_every_event_after_its_endpoint_was_down(server, tmp_path):
    port = free_port()  # nobody listens there yet: every post is refused
    ids = [server.enqueue("tracked", {"x": x}, correlation_id=f"order-{x}") for x in range(40)]
    status = reporter.HttpStatusReporter(
        f"http://127.0.0.1:{port}/status", outbox=tmp_path / "outbox.sqlite3", max_backoff=2.0
    )
    config = conductor_config(server, tmp_path / "state")
    receiver: Receiver | None = None
    with TaskHandler([tracked], config, hooks=[status], install_signal_handlers=False) as h:
        h.start_processes()
        assert server.wait_for(ids, timeout=60)
        time.sleep(10)  # the endpoint stays down for 10 s while the pool runs on
        receiver = Receiver(port)
        try:
            wait_until(
                lambda: len(receiver.events) >= 2 * len(ids), timeout=120, what="every event"
            )
        finally:
            receiver.close()
    counts = Counter((e["taskId"], e["event"]) for e in receiver.events)
    assert set(counts) == {(i, ev) for i in ids for ev in ("started", "completed")}
    assert set(counts.values()) == {1}, "each event once"
