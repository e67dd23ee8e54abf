"""The supervised pool against the Conductor test server: real processes, HTTP and signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
from helpers import (
    conductor_config,
    conductor_settings,
    http_get,
    metric_total,
    pool_process,
    wait_until,
)
from pool_workers import blocker, crashy, long_lease, sleeper, sleepy, square, whoami

from taskfleet import TaskHandler
from taskfleet.testing import ConductorTestServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture
def server():
    with ConductorTestServer() as s:
        yield s


def test_pool_completes_every_task_once_and_one_scrape_sums_all_processes(server, tmp_path):
    ids = server.enqueue_many("square", [{"x": i} for i in range(200)])
    with TaskHandler(
        [square],
        conductor_config(server, tmp_path / "state", metrics_address="127.0.0.1:0"),
        install_signal_handlers=False,
    ) as h:
        h.start_processes()
        assert server.wait_for(ids, timeout=60)
        base = h.metrics_url
        wait_until(lambda: http_get(base + "/readyz")[0] == 200)

        def completed() -> float:
            body = http_get(base + "/metrics")[1]
            return metric_total(
                body, "task_execute_time_seconds_count", taskType="square", status="COMPLETED"
            )

        wait_until(lambda: completed() >= 200, timeout=5, what="200 executions in /metrics")
        status, body = http_get(base + "/metrics")
        assert status == 200

        # What /healthz and `taskfleet status` read: each process's last poll (sent with its
        # next heartbeat, at most a second after the poll), the spool.
        def pool() -> dict:
            return json.loads(http_get(base + "/workers")[1])

        wait_until(
            lambda: all(w["last_poll"] > 0 and w["up_seconds"] > 0 for w in pool()["workers"]),
            timeout=10,
            what="each process's last poll in /workers",
        )
        workers = pool()["workers"]
        assert pool()["spool"] == {"waiting": 0, "dead": {}, "recent_dead": []}
        assert http_get(base + "/healthz") == (200, "ok\n")
    jobs = [server.job(i) for i in ids]
    assert all(j.status == "COMPLETED" for j in jobs)
    assert all(len(j.history) == 1 for j in jobs), "a task was executed twice"
    assert [j.output["y"] for j in jobs] == [i * i for i in range(200)]
    assert jobs[0].logs == ("squaring 0",)
    assert len({j.output["pid"] for j in jobs}) == 2, "both processes should have served tasks"
    assert len(workers) == 2 and all(w["task_type"] == "square" for w in workers)
    if shutil.which("promtool"):  # Debian's prometheus package; .ci/run installs it
        check = subprocess.run(
            ["promtool", "check", "metrics"],
            input=body,
            capture_output=True,
            text=True,
            check=False,
        )
        # `taskType` is camelCase on purpose (the Conductor SDKs' label, so their dashboards
        # work); promtool's style lint says so for each metric. Anything else is a problem.
        problems = [
            line
            for line in (check.stdout + check.stderr).splitlines()
            if line.strip() and "should be written in 'snake_case' not 'camelCase'" not in line
        ]
        assert problems == [], problems
    # per-task metrics reach the scrape within metrics.FLUSH_INTERVAL (0.1 s); each task once
    assert (
        metric_total(body, "task_execute_time_seconds_count", taskType="square", status="COMPLETED")
        == 200
    )
    assert metric_total(body, "active_workers", taskType="square") == 2


def test_a_segfault_fails_exactly_that_task_at_once_naming_the_signal(server, tmp_path):
    # A short response timeout bounds the known window (docs/reliability.md): the other slot may
    # be waiting for an answer that hands it a task when the process dies; that task was never
    # recorded, so only the server's clock can bring it back.
    server.register_task_def("crashy", retry_count=0, response_timeout_seconds=3)
    before = server.enqueue_many("crashy", [{"x": i} for i in range(5)])
    bomb = server.enqueue("crashy", {"x": -1, "crash": True})
    after = server.enqueue_many("crashy", [{"x": i} for i in range(5, 20)])
    cfg = conductor_config(server, tmp_path / "state", metrics_address="127.0.0.1:0")
    with TaskHandler([crashy], cfg, install_signal_handlers=False) as h:
        h.start_processes()
        assert server.wait_for([*before, bomb, *after], timeout=60)
        status = h.workers_status()[0]
    crashed = server.job(bomb)
    # Reported by the supervisor, not timed out by the server (that would be TIMED_OUT).
    assert crashed.status == "FAILED"
    assert "SIGSEGV" in (crashed.reason or "")
    others = [server.job(i) for i in [*before, *after]]
    # retry_count=0, so a task that shared the dead process stays failed: count those.
    reported = [j for j in others if j.status == "FAILED"]
    assert all("SIGSEGV" in (j.reason or "") for j in reported)
    assert len(reported) <= 1  # threads=2: at most the one task running beside the bomb
    in_window = [j for j in others if j.status == "TIMED_OUT"]
    assert len(in_window) <= 1  # at most one answer was on its way to the other slot
    assert all(j.status == "COMPLETED" for j in others if j not in reported + in_window)
    assert status["restarts"] >= 1 and "SIGSEGV" in status["last_exit"]


def test_a_task_too_big_for_a_ledger_record_is_still_reported_at_once_when_its_process_dies(
    server, tmp_path
):
    # Its record is spilled to a side file (the ledger stays the one record of held tasks); the
    # server's response timeout is an hour, so only the supervisor can have reported it.
    server.register_task_def("crashy", retry_count=0, response_timeout_seconds=3600)
    huge = "c" * 10_000  # a ledger record is 4 KiB
    bomb = server.enqueue("crashy", {"x": -1, "crash": True}, correlation_id=huge)
    cfg = conductor_config(server, tmp_path / "state", metrics_address="127.0.0.1:0")
    with TaskHandler([crashy], cfg, install_signal_handlers=False) as h:
        h.start_processes()
        assert server.wait_for([bomb], timeout=60)
    crashed = server.job(bomb)
    assert crashed.status == "FAILED"
    assert "SIGSEGV" in (crashed.reason or "")


def test_a_task_past_its_time_limit_is_killed_reported_and_the_process_replaced(server, tmp_path):
    server.register_task_def("sleeper", retry_count=0)
    stuck = server.enqueue("sleeper", {"seconds": 60})
    cfg = conductor_config(
        server, tmp_path / "state", metrics_address="127.0.0.1:0", kill_grace=0.5
    )
    with TaskHandler([sleeper], cfg, install_signal_handlers=False) as h:
        h.start_processes()
        assert server.wait_for([stuck], timeout=20)
        quick = server.enqueue("sleeper", {"seconds": 0.01})
        assert server.wait_for([quick], timeout=20)
        wait_until(lambda: h.workers_status()[0]["restarts"] == 1)
    job = server.job(stuck)
    assert job.status == "FAILED"
    assert "timed out after 1s" in job.reason
    assert server.job(quick).status == "COMPLETED"


def test_leases_are_extended_by_the_supervisor_while_a_task_runs(server, tmp_path):
    server.register_task_def("long_lease", response_timeout_seconds=1, retry_count=0)
    task = server.enqueue("long_lease", {"seconds": 3})
    with TaskHandler(
        [long_lease],
        conductor_config(server, tmp_path / "state", metrics_address="127.0.0.1:0"),
        install_signal_handlers=False,
    ) as h:
        h.start_processes()
        assert server.wait_for([task], timeout=20)
    job = server.job(task)
    assert job.status == "COMPLETED", job.history
    assert [o.status for o in job.history] == ["COMPLETED"]


def test_a_wedged_process_is_killed_and_its_task_reported(server, tmp_path):
    server.register_task_def("blocker", retry_count=0)
    task = server.enqueue("blocker", {"seconds": 30})
    cfg = conductor_config(
        server, tmp_path / "state", metrics_address="127.0.0.1:0", heartbeat_timeout=2.0
    )
    with TaskHandler([blocker], cfg, install_signal_handlers=False) as h:
        h.start_processes()
        assert server.wait_for([task], timeout=20)
    job = server.job(task)
    assert job.status == "FAILED"
    assert "wedged" in job.reason and "SIGKILL" in job.reason


def test_results_are_spooled_while_the_server_is_down_and_delivered_when_it_returns(
    server, tmp_path
):
    # Tasks that finish during the outage outlast their retries and must reach the spool (the
    # outage lasts until the pool's own metrics say so), then be delivered once it is back.
    ids = server.enqueue_many("sleeper", [{"seconds": 0.8} for _ in range(4)])
    cfg = conductor_config(server, tmp_path / "state", metrics_address="127.0.0.1:0")
    with TaskHandler(
        [sleeper.with_options(time_limit=None)], cfg, install_signal_handlers=False
    ) as h:
        h.start_processes()
        assert server.wait_for(lambda: server.job(ids[0]).status == "IN_PROGRESS", timeout=20)
        server.go_down("503")

        def spooled() -> float:
            return metric_total(
                http_get(h.metrics_url + "/metrics")[1],
                "taskfleet_results_spooled_total",
                taskType="sleeper",
            )

        wait_until(lambda: spooled() >= 1, timeout=60, what="a result in the spool")
        in_spool = spooled()
        assert not any(server.job(i).status == "COMPLETED" for i in ids)
        server.go_up()
        assert server.wait_for(ids, timeout=60)
    assert all(server.job(i).status == "COMPLETED" for i in ids)
    assert in_spool >= 1


def test_drain_hands_back_what_cannot_finish_without_using_up_a_retry(server, tmp_path):
    server.register_task_def("sleeper", retry_count=0)  # a FAILED hand-back would end it
    short = server.enqueue("sleeper", {"seconds": 0.5})
    cfg = conductor_config(
        server, tmp_path / "state", metrics_address="127.0.0.1:0", drain_timeout=0.3
    )
    # One slot: no poll of the process is parked on the server when it is killed, which would
    # take the handed-back task for a dead process (the known window of docs/reliability.md).
    one_slot = sleeper.with_options(time_limit=None, threads=1)
    with TaskHandler([one_slot], cfg, install_signal_handlers=False) as h:
        h.start_processes()
        assert server.wait_for(lambda: server.job(short).status == "IN_PROGRESS", timeout=20)
        h.stop_processes()
    job = server.job(short)
    assert "handed back" in job.reason
    # IN_PROGRESS with callbackAfterSeconds 0 puts the task back in the queue (the test server
    # shows it SCHEDULED), pollable at once: no retry is used, so even a task with no retries
    # left runs again.
    assert job.status == "SCHEDULED" and job.retry_count == 0
    with TaskHandler([sleeper], cfg, install_signal_handlers=False) as second:
        second.start_processes()
        assert server.wait_for([short], timeout=30)
    job = server.job(short)
    assert job.status == "COMPLETED" and job.retry_count == 0


def test_sigterm_drains_in_flight_tasks_to_completion_and_exits_zero(server, tmp_path):
    ids = server.enqueue_many("sleeper", [{"seconds": 1.5}, {"seconds": 1.5}])
    config = conductor_settings(
        server, tmp_path / "s", metrics_address="127.0.0.1:0", drain_timeout=30
    )
    with pool_process(tmp_path, "sleeper.with_options(time_limit=None)", **config) as proc:
        wait_until(lambda: all(server.job(i).status == "IN_PROGRESS" for i in ids), timeout=30)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "drained" in out
    assert all(server.job(i).status == "COMPLETED" for i in ids)
    assert os.path.exists(tmp_path / "s" / "spool.sqlite3")


def test_counters_survive_a_killed_process_and_its_live_gauges_go_with_it(server, tmp_path):
    # A process killed while parked in a long poll leaves the server handing its next tasks to a
    # dead connection: those come back after the response timeout (the documented window).
    server.register_task_def("square", response_timeout_seconds=3)
    first = server.enqueue_many("square", [{"x": i} for i in range(60)])
    cfg = conductor_config(server, tmp_path / "state", metrics_address="127.0.0.1:0")
    with TaskHandler([square.with_options(processes=3)], cfg, install_signal_handlers=False) as h:
        h.start_processes()
        assert server.wait_for(first, timeout=60)
        base = h.metrics_url
        wait_until(lambda: metric_total(http_get(base + "/metrics")[1], "active_workers") == 3)

        def executed() -> float:
            return metric_total(http_get(base + "/metrics")[1], "task_execute_time_seconds_count")

        # Per-task metrics reach the files within metrics.FLUSH_INTERVAL of the task.
        before = wait_until(lambda: executed() >= 60 and executed(), what="60 executions")
        victim = h.workers_status()[0]["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: h.workers_status()[0]["restarts"] == 1)
        second = server.enqueue_many("square", [{"x": i} for i in range(60)])
        assert server.wait_for(second, timeout=60)
        wait_until(lambda: h.workers_status()[0]["state"] == "running")
        # the killed process's counts are still summed in: 60 more, not 60 more minus its share
        wait_until(lambda: executed() >= before + 60, timeout=5, what="the second 60")
        body = http_get(base + "/metrics")[1]
    # 3 live processes: the dead one's gauge files were removed, not summed in
    assert metric_total(body, "active_workers") == 3
    assert metric_total(body, "worker_restart_total", taskType="square") == 1


def test_readyz_flips_while_the_server_is_down_and_healthz_stays_ok(server, tmp_path):
    cfg = conductor_config(server, tmp_path / "state", metrics_address="127.0.0.1:0")
    with TaskHandler([whoami], cfg, install_signal_handlers=False) as h:
        h.start_processes()
        base = h.metrics_url
        wait_until(lambda: http_get(base + "/readyz")[0] == 200)
        server.go_down("refuse")
        went_down = time.monotonic()
        wait_until(lambda: http_get(base + "/readyz")[0] == 503, timeout=30)
        not_ready_after = time.monotonic() - went_down
        assert http_get(base + "/healthz")[0] == 200
        server.go_up()
        wait_until(lambda: http_get(base + "/readyz")[0] == 200, timeout=30)
    assert not_ready_after < 15


def test_scratch_directories_of_a_pool_killed_with_sigkill_are_removed_by_the_next(
    server, tmp_path, monkeypatch
):
    from taskfleet import _scratch
    from taskfleet._ledger import ledger_dir

    bases = {tempfile.gettempdir(), ledger_dir() or tempfile.gettempdir()}

    def scratch_of(pid: int) -> set[str]:
        """The scratch directories whose lock file process ``pid`` holds open: this pool's
        own, whatever other pools on the machine have made meanwhile."""
        found = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            directory, name = os.path.split(target)
            if name == _scratch.LOCK_NAME and os.path.dirname(directory) in bases:
                found.add(directory)
        return found

    config = conductor_settings(server, tmp_path / "s")
    with pool_process(tmp_path, "whoami", **config) as proc:
        left = wait_until(lambda: len(scratch_of(proc.pid)) == 2 and scratch_of(proc.pid))
        proc.kill()  # SIGKILL: the supervisor cannot clean up
        proc.wait()
    assert {os.path.basename(d).split("-")[1] for d in left} == {"metrics", "ledger"}
    assert all(os.path.isdir(d) for d in left)
    monkeypatch.setattr(_scratch, "MIN_ORPHAN_AGE", 0.0)  # they are seconds old, not minutes
    with TaskHandler([whoami], conductor_config(server, tmp_path / "t")) as h:
        h.start_processes()
        assert not any(os.path.exists(d) for d in left)
        ours = scratch_of(os.getpid())
        assert len(ours) == 2, "the new pool made its own"
    assert not any(os.path.exists(d) for d in ours), "and removed them when it stopped"


def test_a_worker_process_whose_ledger_is_gone_still_serves(server, tmp_path):
    # A process spawned as its pool stops finds the ledger file removed; it must not crash.
    import multiprocessing

    from taskfleet._child import ChildRecipe, child_main

    task_id = server.enqueue("whoami", {})
    recipe = ChildRecipe(
        whoami,
        whoami.options,
        0,
        conductor_config(server, tmp_path / "state"),
        None,
        None,
        ledger_path=str(tmp_path / "gone" / "0.ledger"),
    )
    process = multiprocessing.get_context("spawn").Process(target=child_main, args=(recipe,))
    process.start()
    try:
        assert server.wait_for([task_id], timeout=30)
        os.kill(process.pid, signal.SIGTERM)  # drain and exit
        process.join(30)
    finally:
        if process.is_alive():
            process.kill()
            process.join()
    assert process.exitcode == 0
    assert server.job(task_id).status == "COMPLETED"


def test_ctrl_c_is_the_programs_again_once_a_pool_stopped_by_a_signal_is_joined(server, tmp_path):
    # A program in a terminal has Python's Ctrl-C handler (a suite run in the background starts
    # with SIGINT ignored instead).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        with TaskHandler([whoami], conductor_config(server, tmp_path / "state")) as h:
            h.start_processes()
            assert signal.getsignal(signal.SIGINT) is not before[signal.SIGINT]
            os.kill(os.getpid(), signal.SIGTERM)  # the drain, as from systemd
            assert h.join_processes(60)
            assert {sig: signal.getsignal(sig) for sig in before} == before
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the interrupt lands here
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_module_slower_to_import_than_the_heartbeat_timeout_is_not_killed_as_wedged(
    server, tmp_path
):
    from slow_start_workers import IMPORT_SECONDS, slow_start

    task_id = server.enqueue("slow_start", {"x": 7})
    # The heartbeat timeout is shorter than the import; the start-up limit is not.
    cfg = conductor_config(server, tmp_path / "state", heartbeat_timeout=IMPORT_SECONDS / 4)
    with TaskHandler([slow_start], cfg, install_signal_handlers=False) as h:
        h.start_processes()
        assert server.wait_for([task_id], timeout=60)
        (worker,) = h.workers_status()
    assert server.job(task_id).output == {"x": 7}
    assert worker["restarts"] == 0, worker["last_exit"]


def test_a_process_that_does_not_start_within_the_startup_timeout_is_killed_saying_so(
    server, tmp_path
):
    from slow_start_workers import IMPORT_SECONDS, slow_start

    cfg = conductor_config(server, tmp_path / "state", startup_timeout=IMPORT_SECONDS / 4)
    with TaskHandler([slow_start], cfg, install_signal_handlers=False) as h:
        h.start_processes()
        wait_until(
            lambda: h.workers_status()[0]["restarts"] >= 1, timeout=30, what="the first kill"
        )
        (worker,) = h.workers_status()
    assert "not started within 1s (TASKFLEET_STARTUP_TIMEOUT)" in worker["last_exit"]


def test_the_monitor_outlives_a_failing_turn_and_hands_back_tasks_if_it_gives_up(
    server, tmp_path, monkeypatch
):
    ids = server.enqueue_many("sleepy", [{"seconds": 600.0} for _ in range(4)])
    cfg = conductor_config(server, tmp_path / "state")
    worker = sleepy.with_options(processes=1)
    with TaskHandler([worker], cfg, install_signal_handlers=False) as h:
        h.start_processes()
        assert server.wait_for(
            lambda: all(server.job(i).status == "IN_PROGRESS" for i in ids), timeout=30
        )
        real = h._check_deadlines
        failures = {"left": 5}

        def failing(now: float) -> None:
            if failures["left"] > 0:
                failures["left"] -= 1
                raise RuntimeError("a bug in one turn")
            real(now)

        # A few failing turns: logged, and the pool goes on.
        monkeypatch.setattr(h, "_check_deadlines", failing)
        wait_until(lambda: failures["left"] == 0, timeout=30)
        time.sleep(0.5)
        assert h.alive() and not h._done.is_set()
        # Failing for good: the monitor gives up, handing back what the process holds first.
        failures["left"] = 10**6
        assert h.join_processes(60)
    jobs = [server.job(i) for i in ids]
    assert all(
        any("handed back: the supervisor failed" in (o.reason or "") for o in j.history)
        for j in jobs
    ), [j.history for j in jobs]
    assert all(j.status == "SCHEDULED" for j in jobs)
