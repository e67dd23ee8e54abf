"""A process slot's transitions and the restart policy, without processes."""

from __future__ import annotations

import signal

import pytest

from taskfleet import Task, worker_task
from taskfleet._child import EXIT_START_FAILED
from taskfleet._control import ChildStatus
from taskfleet._slots import HEALTHY_AFTER, InFlight, Run, Slot, State, exit_reason


@worker_task("resize", threads=2)
def resize() -> None:
    return None


def _slot() -> Slot:
    slot = Slot(resize, resize.options, 0)
    slot.spawned(Run(process=object(), pid=100, started=0.0))
    return slot


def _status(completed: int = 0, last_poll_ok: float = 0.0) -> ChildStatus:
    return ChildStatus(0, completed, last_poll_ok, "", True)


def _crash(slot: Slot, now: float, exitcode: int = -signal.SIGSEGV) -> float:
    slot.exited(exitcode)
    delay = slot.plan_restart(exitcode, now, backoff_max=30.0)
    slot.spawned(Run(process=object(), pid=slot.run.pid + 1, started=now + delay))
    return delay


def test_a_process_that_keeps_crashing_at_start_is_restarted_at_once_then_with_backoff():
    slot = _slot()
    delays = [_crash(slot, now=float(i)) for i in range(5)]
    assert delays == [0.0, 0.25, 0.5, 1.0, 2.0]
    assert slot.restarts == 5 and slot.state is State.STARTING


def test_a_process_that_polled_or_worked_or_lived_long_starts_a_new_streak():
    slot = _slot()
    _crash(slot, 0.0)
    _crash(slot, 1.0)
    slot.heard_from(_status(last_poll_ok=123.0))  # got far enough to poll
    assert _crash(slot, 2.0) == 0.0
    _crash(slot, 3.0)
    slot.did_work()  # its ledger shows reported tasks
    assert _crash(slot, 4.0) == 0.0
    _crash(slot, 5.0)
    assert _crash(slot, 5.0 + HEALTHY_AFTER + 1) == 0.0  # lived long enough


def test_a_process_that_could_not_start_backs_off_however_long_it_took():
    slot = _slot()
    assert _crash(slot, 0.0, EXIT_START_FAILED) == 0.0
    assert _crash(slot, HEALTHY_AFTER * 3, EXIT_START_FAILED) == 0.25


def test_the_exit_reason_names_the_signal_or_the_supervisors_reason_or_the_goodbye():
    assert exit_reason(-signal.SIGSEGV) == ("worker process killed by SIGSEGV", "SIGSEGV")
    assert exit_reason(3) == ("worker process exited with code 3", "exit_3")
    assert exit_reason(None)[1] == "unknown"

    slot = _slot()
    slot.run.kill_reason = "time limit: task t1 ran past 5s"
    assert slot.exited(-signal.SIGKILL) == (
        "worker process killed by SIGKILL (time limit: task t1 ran past 5s)",
        "time_limit",
    )
    assert slot.run.process is None and slot.last_exit.startswith("worker process killed")

    slot = _slot()
    slot.run.leaving = "recycled after 100 tasks"
    assert slot.exited(0) == ("recycled after 100 tasks", "recycled")
    assert slot.plan_restart(0, 1.0, 30.0) == 0.0 and slot.crashes_in_a_row == 0


def test_a_new_process_inherits_nothing_from_the_one_it_replaces():
    slot = _slot()
    slot.heard_from(_status(completed=7))
    slot.run.in_flight["t1"] = InFlight(Task("t1", "resize"), 0.0, None, None, None)
    slot.run.kill_reason = "wedged: no heartbeat for 30s"
    slot.run.timed_out.add("t1")
    slot.exited(-signal.SIGKILL)
    slot.plan_restart(-signal.SIGKILL, 1.0, 30.0)
    assert slot.describe()["state"] == "waiting to restart"
    slot.spawned(Run(process=object(), pid=200, started=2.0))
    run = slot.run
    assert (run.in_flight, run.kill_reason, run.timed_out, run.status) == ({}, "", set(), None)
    described = slot.describe()
    assert described["pid"] == 200 and described["state"] == "starting"
    assert described["completed"] == 0 and described["restarts"] == 1


@pytest.mark.parametrize("status", [None, _status()])
def test_hello_or_a_heartbeat_makes_a_starting_process_running(status):
    slot = _slot()
    assert slot.state is State.STARTING
    slot.heard_from(status)
    assert slot.state is State.RUNNING
    assert slot.describe()["polling"] is (status is not None)
