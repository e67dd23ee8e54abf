"""kill -9 of a random child every 0.5 s during a 2,000-task run on the Conductor path."""

from __future__ import annotations

import os
import time

import pytest
from chaos_workers import chaos_work
from helpers import killer, live_pids, report

from taskfleet import Configuration, TaskHandler
from taskfleet.testing import ConductorTestServer

TASKS = int(os.environ.get("TASKFLEET_CHAOS_TASKS", "2000"))


@pytest.mark.timeout(300)
def test_kill_9_every_half_second_loses_no_task_on_conductor(tmp_path):
    with ConductorTestServer() as server:
        # Generous retries: a task may be killed more than once. A short response timeout only
        # matters for the one window the supervisor cannot see (tasks a child polled but had not
        # yet announced when it died); the suite counts how often the server had to use it.
        server.register_task_def("chaos_work", retry_count=20, response_timeout_seconds=10)
        ids = server.enqueue_many("chaos_work", [{"n": i} for i in range(TASKS)])
        config = Configuration.from_env(
            {},
            source="conductor",
            conductor_server_url=server.url,
            state_dir=str(tmp_path / "state"),
            metrics_address="off",
        )
        started = time.monotonic()
        with TaskHandler([chaos_work], config, install_signal_handlers=False) as handler:
            handler.start_processes()
            with killer(lambda: live_pids(handler), every=0.5) as killed:
                done = server.wait_for(ids, timeout=240)
            elapsed = time.monotonic() - started
        jobs = [server.job(i) for i in ids]
    completed = sum(j.status == "COMPLETED" for j in jobs)
    twice = sum(
        sum(o.status == "COMPLETED" or o.status == "FAILED" for o in j.history) > 1 for j in jobs
    )
    by_crash = sum(any("SIGKILL" in (o.reason or "") for o in j.history) for j in jobs)
    by_timeout = sum(any(o.status == "TIMED_OUT" for o in j.history) for j in jobs)
    report(
        f"conductor: {TASKS} tasks, {len(killed)} kill -9, {completed} completed,"
        f" {TASKS - completed} lost, {twice} ran more than once ({by_crash} reported by the"
        f" supervisor at once, {by_timeout} retried after the server's response timeout),"
        f" {elapsed:.1f}s"
    )
    assert done
    assert completed == TASKS
    assert len(killed) >= 3
