"""What the Conductor path promises on the wire, checked against the test server's request log."""

from __future__ import annotations

import itertools
import signal
import time
import urllib.parse
from collections import Counter

import pytest
from helpers import conductor_config, conductor_settings, pool_process
from pool_workers import alpha, beta, idle, whoami

from taskfleet import TaskHandler
from taskfleet.testing import ConductorTestServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


def polls(server: ConductorTestServer, task_type: str | None = None) -> list:
    out = []
    for r in server.requests:
        if r.path.startswith("/tasks/poll/batch/") and (
            task_type is None or r.path.endswith("/" + task_type)
        ):
            out.append((r, dict(urllib.parse.parse_qsl(r.query))))
    return out


def test_two_types_two_processes_four_threads_complete_2000_tasks_each_reported_once(
    tmp_path,
):
    with ConductorTestServer() as server:
        a = server.enqueue_many("alpha", [{"x": i} for i in range(1000)])
        b = server.enqueue_many("beta", [{"x": i} for i in range(1000)])
        cfg = conductor_config(server, tmp_path / "state")
        with TaskHandler([alpha, beta], cfg, install_signal_handlers=False) as handler:
            handler.start_processes()
            assert server.wait_for(a + b, timeout=120)
        jobs_a = [server.job(i) for i in a]
        jobs_b = [server.job(i) for i in b]
        assert [j.output for j in jobs_a] == [{"alpha": i + 1} for i in range(1000)]
        assert [j.output for j in jobs_b] == [{"beta": i * 2} for i in range(1000)]
        assert all(len(j.history) == 1 for j in jobs_a + jobs_b), "a task was reported twice"
        seen = polls(server)
        assert seen
        # never more than the 4 slots of one process, and the configured long-poll wait
        assert max(int(q["count"]) for _, q in seen) <= 4
        assert {q["timeout"] for _, q in seen} == {"700"}
        assert {q["workerid"] for _, q in seen} and all(q["workerid"] for _, q in seen)


def test_a_failing_server_is_polled_a_handful_of_times_and_work_resumes_quickly(tmp_path):
    outage = 10.0
    with ConductorTestServer() as server:
        cfg = conductor_config(server, tmp_path / "state")
        handler = TaskHandler(
            [whoami.with_options(processes=2)], cfg, install_signal_handlers=False
        )
        with handler:
            handler.start_processes()
            assert server.wait_for(lambda: len(polls(server)) >= 2, timeout=30)
            server.go_down("500")
            start = time.monotonic()
            time.sleep(outage)
            during = [r for r, _ in polls(server) if start <= r.at <= start + outage]
            server.go_up()
            back = time.monotonic()
            task = server.enqueue("whoami", {})
            assert server.wait_for([task], timeout=30)
            resumed = time.monotonic() - back
    per_process = len(during) / 2
    print(
        f"\n{len(during)} polls from 2 processes during a {outage:.0f}s outage; "
        f"first task done {resumed:.2f}s after recovery"
    )
    assert per_process <= 15, "a failing server must not be hammered"
    assert resumed < 4.0


def test_an_idle_worker_polls_at_its_poll_interval_not_faster(tmp_path):
    with ConductorTestServer() as server:
        cfg = conductor_config(server, tmp_path / "state")
        with TaskHandler([idle], cfg, install_signal_handlers=False) as handler:
            handler.start_processes()
            assert server.wait_for(lambda: len(polls(server, "idle")) >= 17, timeout=90)
        times = [r.at for r, _ in polls(server, "idle")]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # the backoff grows from milliseconds to poll_interval (2 s) and stays there
    assert max(gaps) <= 2.0 + 0.5
    assert min(gaps[-3:]) >= 2.0 * 0.75


def test_sigterm_with_eight_tasks_running_reports_all_eight_completed_and_exits_zero(tmp_path):
    with ConductorTestServer() as server:
        ids = server.enqueue_many("drainer", [{"seconds": 2.0} for _ in range(8)])
        config = conductor_settings(server, tmp_path / "state", drain_timeout=30)
        with pool_process(tmp_path, "drainer", **config) as proc:
            assert server.wait_for(
                lambda: all(server.job(i).status == "IN_PROGRESS" for i in ids), timeout=60
            )
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert all(server.job(i).status == "COMPLETED" for i in ids)
        # polls already waiting at the signal may be answered within their timeout (1 s)
        late = [r for r, _ in polls(server) if r.at > signalled + 1.5]
        assert late == [], "no new polls after SIGTERM"


def test_auth_token_is_sent_refreshed_once_when_expired_and_never_logged(tmp_path):
    # In a process of its own, so every log line of the pool (debug level) is on its stderr.
    secret = "s3cr3t-value-never-logged"
    with ConductorTestServer(auth=("key-id", secret)) as server:
        ids = server.enqueue_many("whoami", [{} for _ in range(5)])
        config = conductor_settings(
            server,
            tmp_path / "state",
            conductor_auth_key="key-id",
            conductor_auth_secret=secret,
            log_level="debug",
        )
        with pool_process(tmp_path, "whoami", **config) as proc:
            assert server.wait_for(ids, timeout=60)
            server.expire_tokens()
            more = server.enqueue_many("whoami", [{} for _ in range(5)])
            assert server.wait_for(more, timeout=60)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        tokens = Counter(r.status for r in server.requests if r.path == "/token")
        done = all(server.job(i).status == "COMPLETED" for i in ids + more)
    assert proc.returncode == 0, err
    assert tokens[200] >= 2  # the first token, and a new one after they expired
    assert done
    assert "DEBUG" in err  # the debug logs were captured ...
    assert secret not in out + err  # ... and the secret is in none of them
