"""Signals to the whole pool, as systemd (``KillMode=control-group``), ``timeout`` and
``kill -- -PGID`` send them, and the supervisor killed -9: every in-flight task completes or is
handed back, and no process of the pool is left afterwards."""

from __future__ import annotations

import os
import signal
import time

import pytest
from helpers import conductor_settings, pool_process, report, session_pids

from taskfleet.testing import ConductorTestServer


def _gone_within(sid: int, seconds: float) -> list[int]:
    """Wait (bounded) for every process of session ``sid`` to end; returns those left."""
    deadline = time.monotonic() + seconds
    while session_pids(sid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return session_pids(sid)


def _all_in_progress(server, ids):
    return server.wait_for(
        lambda: all(server.job(i).status == "IN_PROGRESS" for i in ids), timeout=60
    )


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("start_method", "sig", "drain"),
    [
        ("forkserver", signal.SIGTERM, 20.0),
        ("spawn", signal.SIGTERM, 20.0),
        ("forkserver", signal.SIGINT, 20.0),
        ("forkserver", signal.SIGTERM, 1.0),
    ],
)
def test_a_signal_to_the_whole_process_group_drains_as_one_to_the_supervisor(
    tmp_path, start_method, sig, drain
):
    with ConductorTestServer() as server:
        server.register_task_def("sleepy", retry_count=3)
        ids = server.enqueue_many("sleepy", [{"seconds": 3.0} for _ in range(8)])
        config = conductor_settings(
            server, tmp_path / "state", drain_timeout=drain, start_method=start_method
        )
        with pool_process(tmp_path, "sleepy", session=True, **config) as proc:
            assert _all_in_progress(server, ids)
            os.killpg(proc.pid, sig)
            signalled = time.monotonic()
            _, err = proc.communicate(timeout=60)
            took = time.monotonic() - signalled
            left = _gone_within(proc.pid, 5.0)
        jobs = [server.job(i) for i in ids]
    assert proc.returncode == 0, err
    assert left == [], "no process of the pool keeps running"
    failed = [o for j in jobs for o in j.history if o.status not in ("COMPLETED", "IN_PROGRESS")]
    assert failed == [], "no attempt used up"
    if drain > 3.0:
        assert all(j.status == "COMPLETED" for j in jobs), [j.status for j in jobs]
        what = "8 in-flight 3s tasks all COMPLETED"
    else:
        handed = [j for j in jobs if any("handed back" in (o.reason or "") for o in j.history)]
        assert len(handed) == 8 and all(j.status == "SCHEDULED" for j in jobs)
        what = "8 in-flight 3s tasks handed back at the 1s deadline"
    report(
        f"{sig.name} to the process group ({start_method}, drain {drain:g}s): {what},"
        f" 0 attempts failed, pool exited 0 after {took:.1f}s, no process left"
    )


@pytest.mark.timeout(180)
@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_the_supervisor_killed_9_leaves_no_process_past_the_drain_timeout(tmp_path, start_method):
    drain = 4.0
    with ConductorTestServer() as server:
        server.register_task_def("sleepy", retry_count=3)
        short = server.enqueue_many("sleepy", [{"seconds": 1.0} for _ in range(4)])
        long = server.enqueue_many("sleepy", [{"seconds": 600.0} for _ in range(4)])
        config = conductor_settings(
            server, tmp_path / "state", drain_timeout=drain, start_method=start_method
        )
        with pool_process(tmp_path, "sleepy", session=True, **config) as proc:
            assert _all_in_progress(server, short + long)
            os.kill(proc.pid, signal.SIGKILL)
            killed = time.monotonic()
            proc.wait(10)
            left = _gone_within(proc.pid, drain + 10.0)
            took = time.monotonic() - killed
        jobs = {i: server.job(i) for i in short + long}
    assert left == [], "no process of the pool outlives the drain timeout"
    assert all(jobs[i].status == "COMPLETED" for i in short)
    handed = [i for i in long if any("handed back" in (o.reason or "") for o in jobs[i].history)]
    assert handed == long and all(jobs[i].status == "SCHEDULED" for i in long)
    report(
        f"supervisor killed -9 ({start_method}, drain {drain:g}s): 4 running 1s tasks"
        f" COMPLETED by their processes, 4 running 600s tasks handed back by them,"
        f" last process gone {took:.1f}s after the kill"
    )


@pytest.mark.timeout(120)
def test_with_the_supervisor_killed_9_its_processes_extend_their_leases_while_they_finish(
    tmp_path,
):
    drain = 10.0
    with ConductorTestServer() as server:
        # 6 s tasks on a 3 s response timeout: they finish only if their leases are extended.
        server.register_task_def("sleepy", retry_count=3, response_timeout_seconds=3)
        ids = server.enqueue_many("sleepy", [{"seconds": 6.0} for _ in range(4)])
        config = conductor_settings(server, tmp_path / "state", drain_timeout=drain)
        with pool_process(tmp_path, "sleepy", session=True, **config) as proc:
            assert _all_in_progress(server, ids)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            left = _gone_within(proc.pid, drain + 10.0)
        jobs = [server.job(i) for i in ids]
    assert left == []
    assert all(j.status == "COMPLETED" and len(j.history) == 1 for j in jobs), [
        (j.status, j.history) for j in jobs
    ]
