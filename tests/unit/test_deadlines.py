"""The supervisor's decisions about time (time limits, leases, silence, drains), without
processes: what is due at a given ``now``, as data."""

from __future__ import annotations

import pytest

from taskfleet import Task
from taskfleet._deadlines import (
    DRAIN_TIMEOUT,
    STOPPED_AT_ONCE,
    check_run,
    drain_over,
    lease_every,
    retire_over,
    task_deadline,
    unresponsive,
)
from taskfleet._slots import InFlight, Run

LIMITS = {"kill_grace": 2.0, "startup_timeout": 300.0, "heartbeat_timeout": 30.0}


def _entry(task_id: str, deadline: float | None = None, every: float | None = None) -> InFlight:
    return InFlight(Task(task_id, "resize"), 0.0, deadline, every, every)


def _run(*entries: InFlight, last_heartbeat: float = 0.0) -> Run:
    run = Run(process=object(), pid=100, started=0.0, last_heartbeat=last_heartbeat)
    run.in_flight = {e.task.task_id: e for e in entries}
    return run


def _check(run: Run, now: float, *, starting: bool = False, time_limit: float | None = 10.0):
    return check_run(run, starting=starting, time_limit=time_limit, now=now, **LIMITS)


def test_a_task_past_its_time_limit_is_reported_once_and_its_process_killed_with_a_grace():
    run = _run(_entry("t1", deadline=10.0), _entry("t2", deadline=10.0), _entry("t3", 50.0))
    early = _check(run, 9.9)
    assert early.timed_out == [] and not early.time_limit_kill and early.sigkill_at is None

    check = _check(run, 10.0)
    assert [e.task.task_id for e in check.timed_out] == ["t1", "t2"]
    assert check.time_limit_kill == "time limit: task t1 ran past 10s"
    assert check.sigkill_at == 12.0 and not check.sigkill
    assert not check.unresponsive_kill
    assert run.kill_reason == "" and run.timed_out == set()  # decided, not applied

    # Applied: reported ones are not reported again, and a killed process is not killed twice.
    run.timed_out |= {"t1", "t2"}
    run.kill_reason, run.sigkill_at = check.time_limit_kill, check.sigkill_at
    later = _check(run, 11.0)
    assert later.timed_out == [] and not later.time_limit_kill and not later.sigkill
    assert _check(run, 12.0).sigkill


def test_a_task_past_its_time_limit_of_a_process_already_being_killed_keeps_that_reason():
    run = _run(_entry("t1", deadline=10.0))
    run.kill_reason = "drain timeout passed"
    check = _check(run, 10.0)
    assert [e.task.task_id for e in check.timed_out] == ["t1"]
    assert not check.time_limit_kill and check.sigkill_at is None


def test_the_hard_deadline_of_an_async_handler_leaves_its_own_soft_limit_time_to_fire():
    assert task_deadline(100.0, None, False, 2.0) is None
    assert task_deadline(100.0, 10.0, False, 2.0) == 110.0
    assert task_deadline(100.0, 10.0, True, 2.0) == 113.0


def test_a_lease_extension_is_due_at_its_time_and_then_one_interval_later():
    entry = _entry("t1", every=15.0)
    run = _run(entry, _entry("t2"))
    assert _check(run, 14.9).leases == [] and _check(run, 14.9).extend == []

    check = _check(run, 16.0)
    assert [(d.entry, d.next_lease, d.extend) for d in check.leases] == [(entry, 31.0, True)]
    assert check.extend == [entry.task]
    assert entry.next_lease == 15.0  # decided, not applied


def test_no_lease_is_extended_for_a_task_past_its_time_limit_but_its_clock_moves_on():
    entry = InFlight(Task("t1", "resize"), 0.0, 20.0, 10.0, 20.0)
    check = _check(_run(entry), 20.0)  # past its time limit in this very turn
    assert check.timed_out == [entry]
    assert [(d.next_lease, d.extend) for d in check.leases] == [(30.0, False)]
    assert check.extend == []

    run = _run(entry)
    run.timed_out.add("t1")  # reported in an earlier turn
    assert _check(run, 30.0).extend == [] and _check(run, 30.0).leases[0].next_lease == 40.0


def test_lease_extend_false_a_number_or_true_asking_the_source_only_then():
    asked: list[bool] = []

    def from_source() -> float:
        asked.append(True)
        return 30.0

    assert lease_every(False, from_source) is None
    assert lease_every(12, from_source) == 12.0
    assert lease_every(0.5, from_source) == 0.5
    assert asked == []
    assert lease_every(True, from_source) == 30.0
    assert asked == [True]


def test_a_silent_process_is_wedged_after_the_heartbeat_timeout():
    run = _run(last_heartbeat=100.0)
    assert _check(run, 130.0).unresponsive_kill == ""
    assert _check(run, 130.4).unresponsive_kill == "wedged: no heartbeat for 30s"


def test_a_process_still_starting_has_the_startup_timeout_instead():
    run = _run(last_heartbeat=100.0)
    assert _check(run, 130.4, starting=True).unresponsive_kill == ""
    assert _check(run, 400.0, starting=True).unresponsive_kill == ""
    assert (
        _check(run, 400.1, starting=True).unresponsive_kill
        == "not started within 300s (TASKFLEET_STARTUP_TIMEOUT)"
    )


def test_a_silent_process_already_being_killed_keeps_its_reason():
    run = _run(last_heartbeat=100.0)
    run.kill_reason = "time limit: task t1 ran past 10s"
    assert _check(run, 500.0).unresponsive_kill == ""
    # Killed for a time limit in this very turn: that reason is the one it goes with.
    run = _run(_entry("t1", deadline=10.0), last_heartbeat=-100.0)
    check = _check(run, 10.0)
    assert check.time_limit_kill and check.unresponsive_kill == ""
    assert (
        unresponsive(
            starting=False,
            last_heartbeat=0.0,
            kill_reason="",
            startup_timeout=300.0,
            heartbeat_timeout=30.0,
            now=61.0,
        )
        == "wedged: no heartbeat for 61s"
    )


@pytest.mark.parametrize(
    ("stop_now", "deadline", "now", "expected"),
    [
        (False, 130.0, 129.9, None),
        (False, 130.0, 130.0, DRAIN_TIMEOUT),
        (True, 130.0, 100.0, STOPPED_AT_ONCE),
        (False, None, 100.0, DRAIN_TIMEOUT),
    ],
)
def test_a_drain_ends_at_its_deadline_or_at_once(stop_now, deadline, now, expected):
    assert drain_over(stop_now, deadline, now) == expected


def test_the_drain_reasons_are_those_reported():
    assert DRAIN_TIMEOUT == ("drain timeout passed", "not finished within the drain timeout")
    assert STOPPED_AT_ONCE == ("stopped at once", "the pool was stopped")


def test_a_removed_process_past_its_drain_is_handed_back_once():
    assert retire_over(None, "", 1000.0) is None
    assert retire_over(130.0, "", 129.9) is None
    assert retire_over(130.0, "", 130.0) == DRAIN_TIMEOUT
    assert retire_over(130.0, "drain timeout passed", 131.0) is None
