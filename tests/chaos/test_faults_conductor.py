"""Faults on the Conductor path: segfaults in native code, a frozen process, a server outage with
the whole pool killed while results are spooled, and drains."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from chaos_workers import chaos_native, chaos_slow, chaos_work
from helpers import conductor_config, report, wait_until

from taskfleet import TaskHandler
from taskfleet.testing import ConductorTestServer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # examples.native.workers, in this process and its children


@pytest.mark.timeout(300)
def test_50_segfaults_in_1000_tasks_fail_exactly_those_50_at_once(tmp_path, native_libs):
    runs = tmp_path / "runs"
    runs.mkdir()
    with ConductorTestServer() as server:
        server.register_task_def("chaos_native", retry_count=0)
        orders = [{"n": 2000 + i, "crash": i % 20 == 7, "runs": str(runs)} for i in range(1000)]
        ids = server.enqueue_many("chaos_native", orders)
        handler = TaskHandler(
            [chaos_native], conductor_config(server, tmp_path), install_signal_handlers=False
        )
        with handler:
            handler.start_processes()
            assert server.wait_for(ids, timeout=240)
        jobs = [server.job(i) for i in ids]
    bombs = [j for j, o in zip(jobs, orders, strict=True) if o["crash"]]
    others = [j for j, o in zip(jobs, orders, strict=True) if not o["crash"]]
    assert len(bombs) == 50
    assert all(j.status == "FAILED" and "SIGSEGV" in j.reason for j in bombs)
    assert all(j.status == "COMPLETED" for j in others)
    # reported by the supervisor, not by the server's response timeout
    delays = sorted(
        j.history[-1].at / 1000 - float((runs / f"crash-{o['n']}").read_text())
        for j, o in zip(jobs, orders, strict=True)
        if o["crash"]
    )
    report(
        f"native segfaults: 1000 tasks, 50 segfault -> {len(bombs)} FAILED naming SIGSEGV,"
        f" {sum(j.status == 'COMPLETED' for j in others)} of 950 COMPLETED; crash to report"
        f" median {delays[len(delays) // 2]:.2f}s, max {delays[-1]:.2f}s"
    )
    assert delays[-1] < 2.0
    assert all(len(j.history) == 1 for j in bombs)


@pytest.mark.timeout(120)
def test_a_frozen_process_is_detected_replaced_and_its_tasks_rerun(tmp_path):
    with ConductorTestServer() as server:
        server.register_task_def("chaos_slow", retry_count=3)
        ids = server.enqueue_many("chaos_slow", [{"seconds": 1.0} for _ in range(4)])
        cfg = conductor_config(server, tmp_path, heartbeat_timeout=3.0)
        with TaskHandler(
            [chaos_slow.with_options(processes=1)], cfg, install_signal_handlers=False
        ) as h:
            h.start_processes()
            # the supervisor knows all 4 (announced on the control channel) before the freeze
            wait_until(lambda: h.workers_status()[0]["in_flight"] == 4, timeout=30)
            frozen = h.workers_status()[0]["pid"]
            os.kill(frozen, signal.SIGSTOP)
            stopped = time.monotonic()
            assert server.wait_for(ids, timeout=60)
            detected = time.monotonic() - stopped
            status = h.workers_status()[0]
    jobs = [server.job(i) for i in ids]
    assert all(j.status == "COMPLETED" for j in jobs)
    assert all(any("wedged" in (o.reason or "") for o in j.history) for j in jobs)
    assert status["restarts"] == 1 and status["pid"] != frozen
    report(
        f"SIGSTOP: frozen process replaced and its 4 tasks re-run, all done {detected:.1f}s later"
    )


@pytest.mark.timeout(300)
def test_a_30s_outage_spools_results_and_survives_the_pool_killed_meanwhile(tmp_path):
    state = tmp_path / "state"
    with ConductorTestServer() as server:
        # Cutting connections can lose a response the server already acted on (a poll or an
        # update-v2 that handed out a task): those tasks come back by the response timeout,
        # the documented window. It is longer than the outage, so spooled results still land.
        server.register_task_def("chaos_work", response_timeout_seconds=60, retry_count=3)
        first = server.enqueue_many("chaos_work", [{"n": i} for i in range(200)])
        cfg = conductor_config(server, state)
        worker = chaos_work.with_options(processes=2)
        with TaskHandler([worker], cfg, install_signal_handlers=False) as h1:
            h1.start_processes()
            assert server.wait_for(
                lambda: sum(server.job(i).status == "IN_PROGRESS" for i in first) > 0, timeout=30
            )
            server.go_down("refuse")
            down_at = time.monotonic()
            requests_before = server.request_count()
            time.sleep(12)
            server.go_up()
            server.go_down("503")  # the server answers again, but only errors
            time.sleep(18)
            outage = time.monotonic() - down_at
            errors_seen = server.request_count() - requests_before
            # kill -9 the whole pool while results sit in the spool
            pids = [w["pid"] for w in h1.workers_status() if w["pid"]]
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            h1.request_stop(immediately=True)
            h1.join_processes(30)
        from taskfleet._sources import create_source
        from taskfleet._spool import Spool

        spool = Spool(state / "spool.sqlite3", create_source(cfg).spool_key())
        spooled = spool.count()
        spool.close()
        server.go_up()
        h2 = TaskHandler([worker], cfg, install_signal_handlers=False)
        with h2:
            h2.start_processes()
            done = server.wait_for(first, timeout=150)
        jobs = [server.job(i) for i in first]
    statuses = Counter(j.status for j in jobs)
    assert done, statuses
    assert all(j.status == "COMPLETED" for j in jobs)
    by_timeout = sum(any(o.status == "TIMED_OUT" for o in j.history) for j in jobs)
    report(
        f"outage: {outage:.0f}s down (12s refused, 18s 503), {errors_seen} requests answered 503"
        f" from 2 processes, {spooled} results spooled, pool killed -9 and restarted,"
        f" 200/200 COMPLETED, 0 lost ({by_timeout} handed out in responses the outage cut,"
        f" back by the response timeout)"
    )
    assert errors_seen <= 60, "no hot loop against a failing server"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("drain", [10.0, 1.0])
def test_sigterm_drain_of_20_running_3s_tasks(tmp_path, drain):
    with ConductorTestServer() as server:
        server.register_task_def("chaos_slow", retry_count=3)
        ids = server.enqueue_many("chaos_slow", [{"seconds": 3.0} for _ in range(20)])
        cfg = conductor_config(server, tmp_path, drain_timeout=drain)
        with TaskHandler([chaos_slow], cfg, install_signal_handlers=False) as h:
            h.start_processes()
            assert server.wait_for(
                lambda: sum(server.job(i).status == "IN_PROGRESS" for i in ids) == 20, timeout=30
            )
            t0 = time.monotonic()
            h.stop_processes()
            took = time.monotonic() - t0
        after_first = [server.job(i).status for i in ids]
        if drain >= 3.0:
            assert after_first == ["COMPLETED"] * 20
            report(
                f"drain {drain:g}s: 20 in-flight 3s tasks all COMPLETED before exit ({took:.1f}s)"
            )
            return
        handed_back = sum(
            any("handed back" in (o.reason or "") for o in server.job(i).history) for i in ids
        )
        assert handed_back == 20
        with TaskHandler([chaos_slow], cfg, install_signal_handlers=False) as second:
            second.start_processes()
            assert server.wait_for(ids, timeout=60)
        assert all(server.job(i).status == "COMPLETED" for i in ids)
        retries = sum(server.job(i).retry_count for i in ids)
        report(
            f"drain {drain:g}s: 20 handed back at the deadline, all COMPLETED by a second pool,"
            f" {retries} retries used"
        )
        assert retries == 0, "a hand-back is not a failure"
