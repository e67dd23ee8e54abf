"""The pool's helper processes die under load: the multiprocessing fork server (parent of every
worker process under the default start method) and its resource tracker, killed -9 while
2,000 tasks run and processes recycle; and a spawn racing the fork server's death."""

from __future__ import annotations

import os
import signal
import time

import pytest
from chaos_workers import chaos_work
from helpers import conductor_config, helper_pids, live_pids, report, wait_until

from taskfleet import TaskHandler
from taskfleet.testing import ConductorTestServer

TASKS = int(os.environ.get("TASKFLEET_CHAOS_TASKS", "2000"))
FORKSERVER = b"forkserver import main"
TRACKER = b"resource_tracker import main"
ROUNDS = 6


@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore:resource_tracker:UserWarning")  # the stdlib's, on relaunch
def test_fork_server_and_resource_tracker_killed_under_load_cost_no_task(tmp_path):
    with ConductorTestServer() as server:
        server.register_task_def("chaos_work", retry_count=3)
        cfg = conductor_config(server, tmp_path, start_method="forkserver")
        # Recycled processes need the fork server again and again while it is being killed.
        worker = chaos_work.with_options(max_tasks_per_child=150)
        with TaskHandler([worker], cfg, install_signal_handlers=False) as handler:
            handler.start_processes()
            ids = server.enqueue_many("chaos_work", [{"n": i} for i in range(TASKS)])
            started = time.monotonic()
            kills = {FORKSERVER: 0, TRACKER: 0}
            for _ in range(ROUNDS):
                for marker in kills:
                    for pid in helper_pids(marker):
                        os.kill(pid, signal.SIGKILL)
                        kills[marker] += 1
                # A round every 1.5 s: each new fork server (started by the next process the
                # pool needs) gets time to start one before it is killed in its turn.
                if server.wait_for(ids, timeout=1.5):
                    break
            assert server.wait_for(ids, timeout=240)
            elapsed = time.monotonic() - started
            more = server.enqueue_many("chaos_work", [{"n": i} for i in range(50)])
            assert server.wait_for(more, timeout=60), "the pool takes new work afterwards"
            status = handler.workers_status()
        jobs = [server.job(i) for i in ids + more]
    completed = sum(j.status == "COMPLETED" for j in jobs)
    failed_attempts = sum(o.status != "COMPLETED" for j in jobs for o in j.history)
    recycles = sum(w["restarts"] for w in status)
    report(
        f"helper processes: {TASKS} tasks, fork server killed -9 {kills[FORKSERVER]} times and"
        f" resource tracker {kills[TRACKER]} times, {recycles} processes recycled meanwhile,"
        f" {completed - 50} completed, {TASKS + 50 - completed} lost, {failed_attempts} task"
        f" attempts failed, 50 more completed afterwards, {elapsed:.1f}s"
    )
    assert kills[FORKSERVER] >= 2
    assert completed == TASKS + 50
    assert failed_attempts == 0


@pytest.mark.timeout(120)
def test_a_spawn_racing_the_fork_server_death_is_a_restart_failure_not_the_pool_end(tmp_path):
    with ConductorTestServer() as server:
        server.register_task_def("chaos_work", retry_count=3)
        cfg = conductor_config(server, tmp_path, start_method="forkserver")
        worker = chaos_work.with_options(processes=1)
        with TaskHandler([worker], cfg, install_signal_handlers=False) as handler:
            handler.start_processes()
            [old] = wait_until(lambda: live_pids(handler), timeout=30)
            [forkserver] = helper_pids(FORKSERVER)
            # Frozen, the fork server takes the supervisor's request for a replacement process
            # and never answers; killed, it closes the connection mid-spawn.
            os.kill(forkserver, signal.SIGSTOP)
            try:
                os.kill(old, signal.SIGKILL)
                wait_until(lambda: handler.workers_status()[0]["last_exit"], timeout=30)
                time.sleep(1.0)  # the replacement's spawn is waiting for the frozen fork server
            finally:
                os.kill(forkserver, signal.SIGKILL)
            ids = server.enqueue_many("chaos_work", [{"n": i} for i in range(20)])
            assert server.wait_for(ids, timeout=60), "the pool serves again"
            [new] = live_pids(handler)
            status = handler.workers_status()[0]
            restarted = helper_pids(FORKSERVER)
    assert new != old
    assert restarted and restarted != [forkserver], "the fork server was started again"
    assert status["restarts"] >= 2, status  # the failed spawn counted as a restart failure
    assert all(server.job(i).status == "COMPLETED" for i in ids)
    report(
        "spawn racing the fork server's death: a restart failure"
        f" ({status['restarts'] - 1} failed start(s), tried again with backoff),"
        " a new fork server, 20 of 20 tasks COMPLETED afterwards"
    )
