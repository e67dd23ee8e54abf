"""Pausing, resuming and scaling a running pool, with real processes on the Conductor test server
and a real nats-server: from Python, over HTTP and with the ``taskfleet`` command (docs/workers.md,
Runtime control)."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import conductor_config, http_get, metric_total, run, wait_until
from nats_pool_workers import nats_manual, nats_square
from pool_workers import manual, scaled, steady
from test_cli import one_line_error, taskfleet
from test_nats_source import Probe
from test_pool_scaling import FAST_SCALING, Watch, pids_alive

from taskfleet import TaskClient, TaskHandler
from taskfleet.testing import ConductorTestServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

#: steady's long-poll timeout (its poll_timeout option), seconds.
POLL_TIMEOUT = 0.2


@pytest.fixture
def server():
    with ConductorTestServer() as s:
        yield s


def polls_since(server: ConductorTestServer, since: float) -> int:
    return sum(1 for r in server.requests if r.path.startswith("/tasks/poll") and r.at > since)


def paused_gauge(base: str, task_type: str) -> float:
    return metric_total(
        http_get(base + "/metrics")[1], "taskfleet_worker_paused", taskType=task_type
    )


def test_pause_stops_polling_running_tasks_complete_with_their_leases_resume_polls_again(
    server, tmp_path
):
    # A lease of 1 s: tasks of 3 s complete only if their leases are kept while paused.
    server.register_task_def("steady", response_timeout_seconds=1.0, retry_count=0)
    config = conductor_config(server, tmp_path / "state", metrics_address="127.0.0.1:0")
    with TaskHandler([steady], config, install_signal_handlers=False) as h:
        h.start_processes()
        base = h.metrics_url
        assert base is not None
        assert paused_gauge(base, "steady") == 0.0
        running = server.enqueue_many("steady", [{"seconds": 3.0}] * 2)
        wait_until(
            lambda: all(server.job(i).status == "IN_PROGRESS" for i in running), what="running"
        )
        state = h.pause("steady")
        assert state["paused"] is True
        # The poll that was waiting when the pause came ends within one poll timeout; after
        # that, nothing is polled however long the test watches.
        time.sleep(POLL_TIMEOUT + 0.5)
        quiet_from = time.monotonic()
        waiting = server.enqueue_many("steady", [{}] * 5)
        time.sleep(2.0)
        assert polls_since(server, quiet_from) == 0
        assert all(server.job(i).poll_count == 0 for i in waiting)
        workers = json.loads(http_get(base + "/workers")[1])
        assert all(w["paused"] for w in workers["workers"])
        assert workers["queues"]["steady"]["paused"] is True
        assert paused_gauge(base, "steady") == 1.0

        assert server.wait_for(running, timeout=30)
        for i in running:  # finished while paused, reported once, no lease lost
            job = server.job(i)
            assert (job.status, len(job.history)) == ("COMPLETED", 1), job

        assert h.resume("steady")["paused"] is False
        assert server.wait_for(waiting, timeout=30)
        assert all(server.job(i).status == "COMPLETED" for i in waiting)
        assert polls_since(server, quiet_from) > 0
        assert paused_gauge(base, "steady") == 0.0


def test_scale_one_three_one_over_2000_tasks_completes_each_once_and_leaves_no_process(
    server, tmp_path
):
    ids = server.enqueue_many("manual", [{"i": i} for i in range(2000)])
    config = conductor_config(server, tmp_path / "state", metrics_address="127.0.0.1:0")
    with TaskHandler([manual], config, install_signal_handlers=False) as h:
        h.start_processes()
        watch = Watch(h)
        done = lambda: server.counts().get("COMPLETED", 0)  # noqa: E731
        wait_until(lambda: done() >= 200, timeout=60, what="200 tasks done by one process")
        assert watch.serving() == 1
        assert h.scale("manual", processes=3)["processes"] == 3
        wait_until(
            lambda: watch.serving() == 3 and watch.settled_at(3), timeout=60, what="three running"
        )
        wait_until(lambda: done() >= 1200, timeout=90, what="1200 tasks done")
        assert h.scale("manual", processes=1)["processes"] == 1
        assert server.wait_for(ids, timeout=120)
        wait_until(lambda: watch.settled_at(1), timeout=60, what="back to one process")
        survivor = {w["pid"] for w in h.workers_status()}
        wait_until(lambda: pids_alive(watch.pids - survivor) == set(), timeout=15)
    assert pids_alive(watch.pids) == set()
    assert watch.most == 3
    jobs = [server.job(i) for i in ids]
    assert all(j.status == "COMPLETED" for j in jobs)
    assert all(len(j.history) == 1 for j in jobs), "a task ran twice"
    assert len({j.output["pid"] for j in jobs}) >= 3


def test_nats_scale_one_three_one_over_2000_tasks_runs_each_once_and_leaves_no_process(
    nats_config, tmp_path
):
    """Exactly once, not merely at least once: nothing here loses an ack. No process crashes,
    the server stays up, no task is held near the ack wait (30 s), and the processes removed by
    the scale-down drain as on SIGTERM: they finish what they began, hand back (nak, never run)
    what they fetched but had not begun, and close their connection only after their acks are
    flushed. A second result or a second start of any task is a bug."""
    record = tmp_path / "began"  # one line per start of a task, written by the handler
    record.touch()
    began = lambda: record.read_text().count("\n")  # noqa: E731
    config = nats_config.replace(metrics_address="127.0.0.1:0")
    with (
        TaskClient(config) as client,
        TaskHandler([nats_manual], config, install_signal_handlers=False) as h,
    ):
        h.start_processes()
        watch = Watch(h)
        wait_until(lambda: watch.settled_at(1), timeout=60, what="one process")
        inputs = [{"i": i, "record": str(record)} for i in range(2000)]
        ids = client.submit_many("nats_manual", inputs)
        wait_until(lambda: began() >= 200, timeout=60, what="200 tasks begun by one process")
        assert watch.serving() == 1
        assert h.scale("nats_manual", processes=3)["processes"] == 3
        wait_until(
            lambda: watch.serving() == 3 and watch.settled_at(3), timeout=60, what="three running"
        )
        wait_until(lambda: began() >= 1200, timeout=90, what="1200 tasks begun")
        assert h.scale("nats_manual", processes=1)["processes"] == 1
        # Tasks still flow when the scale-down comes: the two processes go while busy.
        assert client.depth("nats_manual") > 0
        outcomes = [client.result(i, timeout=120) for i in ids]
        wait_until(lambda: watch.settled_at(1), timeout=60, what="back to one process")
        survivor = {w["pid"] for w in h.workers_status()}
        wait_until(lambda: pids_alive(watch.pids - survivor) == set(), timeout=15)
        depth = client.depth("nats_manual")
    assert pids_alive(watch.pids) == set()
    assert watch.most == 3
    assert [o.status.value for o in outcomes] == ["COMPLETED"] * 2000
    assert [o.output["i"] for o in outcomes] == list(range(2000))
    assert len({o.output["pid"] for o in outcomes}) >= 3
    assert depth == 0

    async def on_the_subject() -> Counter[str]:
        async with Probe(config) as probe:
            return Counter(r.task_id for r in await probe.results("nats_manual"))

    results = run(on_the_subject())
    assert set(results) == set(ids)
    assert [i for i, n in results.items() if n != 1] == [], "more than one result for a task"
    starts = Counter(int(line.split()[0]) for line in record.read_text().splitlines())
    assert set(starts) == set(range(2000))
    assert [i for i, n in starts.items() if n != 1] == [], "a task began twice"


def test_autoscaling_waits_while_paused_and_keeps_to_a_fixed_count_set_by_hand(server, tmp_path):
    config = conductor_config(
        server, tmp_path / "state", metrics_address="127.0.0.1:0", **FAST_SCALING
    )
    with TaskHandler([scaled], config, install_signal_handlers=False) as h:
        h.start_processes()
        watch = Watch(h)
        wait_until(lambda: watch.settled_at(1), what="one process")
        h.pause("scaled")
        time.sleep(1.0 + 0.5)  # the long poll waiting when the pause came (1 s) has ended
        ids = server.enqueue_many("scaled", [{"i": i} for i in range(600)])
        # Ten times the backlog's wait before a scale-up: a paused type is not grown.
        wait_until(lambda: h.queues_status()["scaled"].get("waiting") == 600, what="backlog")
        time.sleep(10 * FAST_SCALING["scale_up_after"])
        assert watch.serving() == 1 and watch.most == 1

        state = h.scale("scaled", processes=2)
        assert (state["processes"], state["min"], state["max"]) == (2, 2, 2)
        h.resume("scaled")
        assert server.wait_for(ids, timeout=120)
        watch.serving()
        assert watch.most == 2  # the backlog did not grow it past the count set by hand

        # A range hands it back to autoscaling: idle, it shrinks to the range's minimum.
        state = h.scale("scaled", processes=(1, 3))
        assert (state["min"], state["max"]) == (1, 3)
        wait_until(lambda: watch.settled_at(1), timeout=60, what="autoscaled down to one")


# -- HTTP and the command line ----------------------------------------------------------------


def post(base: str, path: str, body: Any = None, token: str = "") -> tuple[int, dict[str, Any]]:
    data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(base + path, data=data, method="POST")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@contextlib.contextmanager
def steady_pool(
    server: ConductorTestServer, state: Path, **changes: Any
) -> Iterator[tuple[TaskHandler, str]]:
    """A running pool of ``steady`` with its endpoint on loopback: (handler, its URL)."""
    config = conductor_config(server, state, metrics_address="127.0.0.1:0", **changes)
    with TaskHandler([steady], config, install_signal_handlers=False) as h:
        h.start_processes()
        assert h.metrics_url is not None
        yield h, h.metrics_url


def test_http_control_needs_the_token_and_answers_bad_requests_with_json(server, tmp_path):
    with steady_pool(server, tmp_path / "state", metrics_token="s3cret") as (h, base):
        assert post(base, "/workers/steady/pause")[0] == 401
        assert post(base, "/workers/steady/pause", token="wrong")[0] == 401
        assert h.queues_status()["steady"]["paused"] is False  # nothing changed

        status, answer = post(base, "/workers/steady/pause", token="s3cret")
        assert (status, answer["task_type"], answer["paused"]) == (200, "steady", True)
        status, answer = post(base, "/workers/steady/resume", {}, token="s3cret")
        assert (status, answer["paused"]) == (200, False)
        status, answer = post(base, "/workers/steady/scale", {"processes": 2}, token="s3cret")
        assert (status, answer["processes"]) == (200, 2)
        wait_until(lambda: len(h.workers_status()) == 2, what="two processes")

        for path, body, code, says in [
            ("/workers/nosuch/pause", None, 404, "unknown task type 'nosuch'"),
            ("/workers/steady/stop", None, 404, "unknown action 'stop'"),
            ("/workers/steady/scale", b"{not json", 400, "not JSON"),
            ("/workers/steady/scale", [3], 400, "JSON object"),
            ("/workers/steady/scale", {}, 400, "scale needs"),
            ("/workers/steady/scale", {"processes": 0}, 400, "whole number >= 1"),
            ("/workers/steady/scale", {"processes": [3, 1]}, 400, "min is above max"),
            ("/workers/steady/scale", {"threads": 8}, 400, "threads cannot change"),
            ("/workers/steady/pause", {"now": True}, 400, "unknown field"),
            ("/metrics", None, 404, "POST /workers/"),
        ]:
            status, answer = post(base, path, body, token="s3cret")
            assert status == code and says in answer["error"], (path, status, answer)
        assert len(h.workers_status()) == 2


def test_without_a_token_post_is_served_on_loopback(server, tmp_path):
    with steady_pool(server, tmp_path / "state") as (h, base):
        assert post(base, "/workers/steady/pause")[0] == 200
        assert h.queues_status()["steady"]["paused"] is True


def test_the_command_pauses_resumes_and_scales_with_the_status_settings(server, tmp_path):
    with steady_pool(server, tmp_path / "state", metrics_token="s3cret") as (_, base):
        address = base.removeprefix("http://")
        env = {"TASKFLEET_METRICS_ADDRESS": address, "TASKFLEET_METRICS_TOKEN": "s3cret"}
        token_file = tmp_path / "token"
        token_file.write_text("s3cret\n")

        done = taskfleet("pause", "steady", env=env)
        assert (done.returncode, done.stdout) == (0, "steady: paused; 1 process(es)\n"), done.stderr
        status = taskfleet("status", env=env)
        assert "running (paused)" in status.stdout and "; paused" in status.stdout, status.stdout

        done = taskfleet(
            "resume", "steady", "--token-file", str(token_file),
            env={"TASKFLEET_METRICS_ADDRESS": address},
        )  # fmt: skip
        assert (done.returncode, done.stdout) == (0, "steady: polling; 1 process(es)\n")
        done = taskfleet("scale", "steady", "--processes", "2", env=env)
        assert (done.returncode, done.stdout) == (0, "steady: polling; 2 process(es)\n")
        done = taskfleet("scale", "steady", "--processes", "1-3", env=env)
        assert done.stdout == "steady: polling; 2 process(es), autoscaling 1-3\n"

        line = one_line_error(taskfleet("pause", "nosuch", env=env), 2)
        assert line == "taskfleet: unknown task type 'nosuch'"
        line = one_line_error(
            taskfleet("pause", "steady", env={**env, "TASKFLEET_METRICS_TOKEN": ""}), 4
        )
        assert "HTTP 401" in line and "TASKFLEET_METRICS_TOKEN" in line
        line = one_line_error(taskfleet("scale", "steady", "--processes", "0", env=env), 2)
        assert line == "taskfleet: --processes: expected a number >= 1 or MIN-MAX, not '0'"
    # The pool is gone: the command says so in one line.
    line = one_line_error(taskfleet("resume", "steady", env=env), 4)
    assert line.startswith("taskfleet: cannot reach http://")


def test_nats_a_paused_type_fetches_nothing_until_resumed(nats_config):
    config = nats_config.replace(metrics_address="127.0.0.1:0", queue_depth_interval=0.2)
    with (
        TaskClient(config) as client,
        TaskHandler([nats_square], config, install_signal_handlers=False) as h,
    ):
        h.start_processes()
        wait_until(lambda: all(w["state"] == "running" for w in h.workers_status()))
        h.pause("nats_square")
        time.sleep(1.0 + 0.5)  # the fetch waiting when the pause came (1 s) has ended
        ids = client.submit_many("nats_square", [{"x": i} for i in range(20)])
        # Still all pending, none handed to a worker, well past a poll timeout.
        time.sleep(2.0)
        backlog = wait_until(lambda: h.queues_status()["nats_square"].get("waiting") == 20)
        assert backlog and h.queues_status()["nats_square"]["held"] == 0
        h.resume("nats_square")
        outcomes = [client.result(i, timeout=60) for i in ids]
    assert [o.output["y"] for o in outcomes] == [i * i for i in range(20)]
