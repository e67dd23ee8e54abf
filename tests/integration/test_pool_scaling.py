"""The backlog per task type and autoscaling inside a pool, with real processes, on the Conductor
test server and a real nats-server (docs/scaling.md)."""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import pytest
from helpers import conductor_config, http_get, metric_total, wait_until
from nats_pool_workers import nats_held_back, nats_scaled
from pool_workers import held_back, scaled, square

from taskfleet import Configuration, TaskClient, TaskHandler
from taskfleet.testing import ConductorTestServer
from taskfleet.testing.nats import embedded_nats

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

#: What autoscaling waits for, shortened so a test sees it grow and shrink in seconds.
FAST_SCALING: dict[str, Any] = {
    "queue_depth_interval": 0.2,
    "scale_up_after": 0.5,
    "scale_down_after": 1.5,
    "drain_timeout": 10.0,
}


@pytest.fixture
def server():
    with ConductorTestServer() as s:
        yield s


def depth_samples(base: str) -> dict[str, float]:
    """``taskfleet_queue_depth`` per task type in the pool's ``/metrics`` (absent: no key)."""
    body = http_get(base + "/metrics")[1]
    pattern = r'^taskfleet_queue_depth\{taskType="([^"]+)"\} (\S+)$'
    return {m[1]: float(m[2]) for m in re.finditer(pattern, body, re.M)}


def queues(base: str) -> dict[str, Any]:
    return dict(json.loads(http_get(base + "/workers")[1])["queues"])


def test_conductor_backlog_one_request_per_interval_for_all_types_absent_in_an_outage(
    server, tmp_path
):
    server.enqueue_many("held_back", [{}] * 7)
    config = conductor_config(
        server, tmp_path / "state", metrics_address="127.0.0.1:0", queue_depth_interval=0.2
    )
    with TaskHandler([held_back, square], config, install_signal_handlers=False) as h:
        h.start_processes()
        base = h.metrics_url
        assert base is not None
        wait_until(lambda: depth_samples(base) == {"held_back": 7.0, "square": 0.0}, what="depths")
        shown = queues(base)
        assert shown["held_back"]["waiting"] == 7 and shown["held_back"]["depth"] == 7
        assert shown["square"] == {**shown["square"], "processes": 2, "min": 2, "max": 2}

        # Asked by the supervisor once per interval for every type: square's two processes and
        # held_back's one do not ask on their own.
        before = server.request_count("/tasks/queue/sizes")
        started = time.monotonic()
        time.sleep(2.0)
        asked = server.request_count("/tasks/queue/sizes") - before
        elapsed = time.monotonic() - started
        assert 1 <= asked <= elapsed / 0.2 + 2, asked
        sizes = [r for r in server.requests if r.path == "/tasks/queue/sizes" and r.at >= started]
        assert all(
            sorted(re.findall(r"taskType=([^&]+)", r.query)) == ["held_back", "square"]
            for r in sizes
        )

        server.go_down()
        wait_until(lambda: depth_samples(base) == {}, what="depth gauges gone in the outage")
        assert "depth" not in queues(base)["held_back"]
        server.go_up()
        wait_until(lambda: depth_samples(base).get("held_back") == 7.0, what="depth back")


def test_nats_backlog_is_pending_plus_ack_pending(nats_config, tmp_path):
    config = nats_config.replace(metrics_address="127.0.0.1:0", queue_depth_interval=0.2)
    with (
        TaskClient(config) as client,
        TaskHandler([nats_held_back], config, install_signal_handlers=False) as h,
    ):
        h.start_processes()
        base = h.metrics_url
        assert base is not None
        client.submit_many("nats_held_back", [{}] * 5)
        wait_until(lambda: depth_samples(base) == {"nats_held_back": 5.0}, what="depth 5")
        shown = queues(base)["nats_held_back"]
        assert (shown["waiting"], shown["held"]) == (5, 0)


def test_nats_backlog_is_absent_while_the_server_is_down_and_back_after_it_restarts(tmp_path):
    # A server of its own: the session's is shared by the other tests.
    with embedded_nats(tmp_path / "nats") as server:
        config = Configuration.from_env(
            {},
            nats_url=server.url,
            nats_connect_timeout=5.0,
            state_dir=str(tmp_path / "state"),
            metrics_address="127.0.0.1:0",
            queue_depth_interval=0.2,
        )
        with (
            TaskClient(config) as client,
            TaskHandler([nats_held_back], config, install_signal_handlers=False) as h,
        ):
            h.start_processes()
            base = h.metrics_url
            assert base is not None
            client.submit_many("nats_held_back", [{}] * 5)
            wait_until(lambda: depth_samples(base) == {"nats_held_back": 5.0}, what="depth 5")
            port, store = server.port, server.store_dir

            server.stop()
            # Unknown, not zero: no sample at all while JetStream cannot answer (an answer
            # times out after 5 s), and none on any later scrape of the outage.
            wait_until(lambda: depth_samples(base) == {}, timeout=30, what="depth gone")
            assert "depth" not in queues(base)["nats_held_back"]
            for _ in range(5):
                time.sleep(0.2)  # an interval: a new question is asked and fails
                assert depth_samples(base) == {}

            server.start()  # the same port and store: the tasks are still there
            assert (server.port, server.store_dir) == (port, store)
            wait_until(
                lambda: depth_samples(base) == {"nats_held_back": 5.0}, timeout=60, what="back"
            )
            assert queues(base)["nats_held_back"]["depth"] == 5


def pids_alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.add(pid)
    return alive


class Watch:
    """The pool's process count and the pids it ever ran, sampled by the test."""

    def __init__(self, handler: TaskHandler) -> None:
        self.handler = handler
        self.most = 0
        self.pids: set[int] = set()

    def serving(self) -> int:
        workers = self.handler.workers_status()
        self.pids |= {w["pid"] for w in workers if w["pid"]}
        n = sum(1 for w in workers if not w["retiring"])
        self.most = max(self.most, n)
        return n

    def settled_at(self, n: int) -> bool:
        workers = self.handler.workers_status()
        self.pids |= {w["pid"] for w in workers if w["pid"]}
        return len(workers) == n and all(w["state"] == "running" for w in workers)


def test_conductor_pool_grows_to_its_maximum_and_back_completing_every_task_once(server, tmp_path):
    ids = server.enqueue_many("scaled", [{"i": i} for i in range(2000)])
    config = conductor_config(
        server, tmp_path / "state", metrics_address="127.0.0.1:0", **FAST_SCALING
    )
    with TaskHandler([scaled], config, install_signal_handlers=False) as h:
        h.start_processes()
        watch = Watch(h)
        wait_until(lambda: watch.serving() == 3, timeout=60, what="three processes")
        assert server.wait_for(ids, timeout=120)
        wait_until(lambda: watch.settled_at(1), timeout=60, what="back to one process")
        body = http_get(h.metrics_url + "/metrics")[1]
        survivor = {w["pid"] for w in h.workers_status()}
        # the removed processes drained and exited: none is left over
        wait_until(lambda: pids_alive(watch.pids - survivor) == set(), timeout=15)
    assert pids_alive(watch.pids) == set()
    assert watch.most == 3
    ups = metric_total(body, "taskfleet_autoscale_decisions_total", direction="up")
    downs = metric_total(body, "taskfleet_autoscale_decisions_total", direction="down")
    assert (ups, downs) == (2, 2)
    jobs = [server.job(i) for i in ids]
    assert all(j.status == "COMPLETED" for j in jobs)
    assert all(len(j.history) == 1 for j in jobs), "a task ran twice"
    assert len({j.output["pid"] for j in jobs}) >= 2


def test_nats_pool_grows_to_its_maximum_and_back_completing_every_task_once(nats_config):
    config: Configuration = nats_config.replace(metrics_address="127.0.0.1:0", **FAST_SCALING)
    with (
        TaskClient(config) as client,
        TaskHandler([nats_scaled], config, install_signal_handlers=False) as h,
    ):
        h.start_processes()
        watch = Watch(h)
        ids = client.submit_many("nats_scaled", [{"i": i} for i in range(2000)])
        wait_until(lambda: watch.serving() == 3, timeout=60, what="three processes")
        outcomes = [client.result(i, timeout=120) for i in ids]
        wait_until(lambda: watch.settled_at(1), timeout=60, what="back to one process")
        survivor = {w["pid"] for w in h.workers_status()}
        wait_until(lambda: pids_alive(watch.pids - survivor) == set(), timeout=15)
    assert pids_alive(watch.pids) == set()
    assert watch.most == 3
    assert [o.output["i"] for o in outcomes] == list(range(2000))
    assert all(o.status.value == "COMPLETED" for o in outcomes)
