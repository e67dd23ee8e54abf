"""The supervisor's decisions about time: what is due, what is late, and why a process goes.

Pure functions of what the monitor thread reads (a process's in-flight tasks with their
deadlines and lease times, its last heartbeat, its state, the configured limits, ``now``, all
monotonic): they return what to do as plain data and do nothing themselves. The supervisor
(``_supervisor.py``) applies the answers: reports, signals, lease extensions, log lines.

- a task past its hard time limit: reported once, its process sent SIGTERM, then SIGKILL after
  the grace (:func:`check_run`);
- a lease extension due: sent, and the next one due half a server clock later;
- a process silent too long: wedged (no heartbeat) or not started in time (start-up limit);
- a drain, or the removal of one process, past its deadline: what it holds is handed back
  (:func:`drain_over`, :func:`retire_over`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from ._slots import InFlight, Run
from ._task import Task

__all__ = [
    "DRAIN_TIMEOUT",
    "STOPPED_AT_ONCE",
    "HandBack",
    "LeaseDue",
    "RunCheck",
    "check_run",
    "drain_over",
    "lease_every",
    "leases_due",
    "past_time_limit",
    "retire_over",
    "task_deadline",
    "time_limit_reason",
    "unresponsive",
]


class HandBack(NamedTuple):
    """Why a draining process's tasks are handed back: its kill reason, and the reason the
    tasks are reported with (after ``handed back: ``)."""

    kill_reason: str
    why: str


DRAIN_TIMEOUT = HandBack("drain timeout passed", "not finished within the drain timeout")
STOPPED_AT_ONCE = HandBack("stopped at once", "the pool was stopped")


@dataclass(frozen=True)
class LeaseDue:
    """A lease extension due: its next one is due at ``next_lease``; ``extend`` is False for a
    task already reported past its time limit (its clock moves on, nothing is sent)."""

    entry: InFlight
    next_lease: float
    extend: bool


@dataclass(frozen=True)
class RunCheck:
    """What one turn of the monitor does about one running process (:func:`check_run`)."""

    #: the grace after its SIGTERM ended: SIGKILL now
    sigkill: bool = False
    #: tasks past their time limit, not reported yet: report each as timed out
    timed_out: list[InFlight] = field(default_factory=list)
    #: when set, kill it for a time limit: this reason, SIGTERM now, SIGKILL at ``sigkill_at``
    time_limit_kill: str = ""
    sigkill_at: float | None = None
    #: lease extensions due, in the order of its in-flight tasks
    leases: list[LeaseDue] = field(default_factory=list)
    #: when set, it is wedged or did not start in time: this reason, SIGKILL now
    unresponsive_kill: str = ""

    @property
    def extend(self) -> list[Task]:
        """The tasks whose leases to extend now."""
        return [due.entry.task for due in self.leases if due.extend]


# -- when a task's clocks run out (set when the supervisor first reads the task) ------------------


def task_deadline(
    started: float, time_limit: float | None, is_async: bool, kill_grace: float
) -> float | None:
    """When a task started at ``started`` is past its hard time limit (None: no limit).

    An async handler's own (soft) limit fires first and fails just that task; the hard kill is
    the backstop for a handler that blocks the event loop, a kill grace and a second later.
    """
    if not time_limit:
        return None
    grace = kill_grace + 1.0 if is_async else 0.0
    return started + time_limit + grace


def lease_every(
    lease_extend: bool | float, from_source: Callable[[], float | None]
) -> float | None:
    """Seconds between a task's lease extensions: none (``lease_extend`` False), the number
    given, or (True) what the source says, asked only then."""
    if lease_extend is False:
        return None
    if not isinstance(lease_extend, bool):
        return float(lease_extend)
    return from_source()


# -- one turn of the monitor ------------------------------------------------------------------------


def past_time_limit(
    in_flight: Iterable[InFlight], timed_out: Collection[str], now: float
) -> list[InFlight]:
    """The tasks past their deadline at ``now`` that were not reported as such yet."""
    return [
        entry
        for entry in in_flight
        if entry.deadline is not None
        and now >= entry.deadline
        and entry.task.task_id not in timed_out
    ]


def time_limit_reason(task_id: str, limit: float) -> str:
    """The kill reason of a process whose task ``task_id`` ran past ``limit`` seconds."""
    return f"time limit: task {task_id} ran past {limit:g}s"


def leases_due(
    in_flight: Iterable[InFlight], timed_out: Collection[str], now: float
) -> list[LeaseDue]:
    """The lease extensions due at ``now``; none is sent for a task in ``timed_out``."""
    return [
        LeaseDue(entry, now + entry.lease_every, entry.task.task_id not in timed_out)
        for entry in in_flight
        if entry.next_lease is not None and entry.lease_every and now >= entry.next_lease
    ]


def unresponsive(
    *,
    starting: bool,
    last_heartbeat: float,
    kill_reason: str,
    startup_timeout: float,
    heartbeat_timeout: float,
    now: float,
) -> str:
    """Why a process is to be killed for its silence, or "" when it is not.

    Start-up (import, model loading, connecting) has its own, longer limit, until the first
    word from the process; a process already being killed (``kill_reason``) keeps its reason.
    """
    limit = startup_timeout if starting else heartbeat_timeout
    if kill_reason or now - last_heartbeat <= limit:
        return ""
    if starting:
        return f"not started within {limit:g}s (TASKFLEET_STARTUP_TIMEOUT)"
    return f"wedged: no heartbeat for {now - last_heartbeat:.0f}s"


def check_run(
    run: Run,
    *,
    starting: bool,
    time_limit: float | None,
    kill_grace: float,
    startup_timeout: float,
    heartbeat_timeout: float,
    now: float,
) -> RunCheck:
    """What to do about the running process ``run`` at ``now`` (it is left unchanged).

    ``starting``: not heard from yet. ``time_limit``: its worker's, in seconds.
    """
    sigkill = run.sigkill_at is not None and now >= run.sigkill_at
    entries = list(run.in_flight.values())
    late = past_time_limit(entries, run.timed_out, now)
    kill = sigkill_at = None
    if late and not run.kill_reason:
        assert time_limit is not None  # only a worker with a time limit has deadlines
        kill = time_limit_reason(late[0].task.task_id, time_limit)
        sigkill_at = now + kill_grace
    # A task reported past its time limit in this very turn has no lease extended either.
    timed_out = set(run.timed_out).union(entry.task.task_id for entry in late)
    return RunCheck(
        sigkill=sigkill,
        timed_out=late,
        time_limit_kill=kill or "",
        sigkill_at=sigkill_at,
        leases=leases_due(entries, timed_out, now),
        unresponsive_kill=unresponsive(
            starting=starting,
            last_heartbeat=run.last_heartbeat,
            kill_reason=run.kill_reason or kill or "",
            startup_timeout=startup_timeout,
            heartbeat_timeout=heartbeat_timeout,
            now=now,
        ),
    )


# -- ends of drains ---------------------------------------------------------------------------------


def drain_over(stop_now: bool, drain_deadline: float | None, now: float) -> HandBack | None:
    """Whether the pool's drain has ended at ``now`` (stopped at once, or its deadline passed;
    no deadline counts as passed), and why; None while it goes on."""
    if stop_now:
        return STOPPED_AT_ONCE
    if now >= (drain_deadline or now):
        return DRAIN_TIMEOUT
    return None


def retire_over(retire_by: float | None, kill_reason: str, now: float) -> HandBack | None:
    """Whether a process being removed (autoscaling, scale requests) has run past its drain
    and is not being killed yet, and why; None otherwise."""
    if retire_by is not None and now >= retire_by and not kill_reason:
        return DRAIN_TIMEOUT
    return None
