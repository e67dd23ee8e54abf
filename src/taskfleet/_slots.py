"""Process slots: what the supervisor knows about each worker process, and how that changes.

A pool has one :class:`Slot` per worker definition and process index (``processes=N``: N
slots). A slot outlives its processes: each process started in it gets a fresh :class:`Run`
(pipe, ledger, heartbeats, the tasks it holds, why it is being killed), so nothing of a dead
process leaks into its replacement. The slot keeps what spans processes: its state, restarts and
the crash streak that the restart policy (:meth:`Slot.plan_restart`) reads.

States: ``STARTING`` (spawned, not heard from) → ``RUNNING`` (said hello or sent a heartbeat)
→ on exit ``WAITING`` (to restart, after a delay) → ``STARTING`` again; while the pool drains,
``STOPPING`` → ``STOPPED``.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from enum import Enum
from multiprocessing.connection import Connection
from typing import Any

from ._backoff import restart_delay
from ._child import EXIT_START_FAILED
from ._control import ChildStatus
from ._ledger import Ledger
from ._options import WorkerOptions
from ._task import Task
from ._worker import Worker

__all__ = ["HEALTHY_AFTER", "InFlight", "Run", "Slot", "State", "exit_reason"]

#: A process that lived this long (or did work) is healthy: its next crash restarts it at once
#: instead of with a growing delay.
HEALTHY_AFTER = 30.0


class State(str, Enum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    WAITING = "waiting to restart"
    STOPPED = "stopped"


@dataclass
class InFlight:
    """A task a process holds, as its ledger record says, with the supervisor's clocks for it."""

    task: Task
    started: float  # monotonic
    deadline: float | None  # monotonic; None: no time limit
    lease_every: float | None  # seconds between lease extensions
    next_lease: float | None


@dataclass
class Run:
    """One process in a slot, from its start until the next one replaces it."""

    process: Any = None  # None once its exit has been handled
    conn: Connection | None = None
    pid: int = 0
    started: float = 0.0
    last_heartbeat: float = 0.0
    status: ChildStatus | None = None
    in_flight: dict[str, InFlight] = field(default_factory=dict)
    #: why it said it is leaving (a clean exit: drained, recycled)
    leaving: str = ""
    #: why the supervisor is killing it (time limit, wedged, drain)
    kill_reason: str = ""
    sigkill_at: float | None = None
    #: tasks already reported as past their time limit
    timed_out: set[str] = field(default_factory=set)
    #: its in-flight ledger, and what was last read from each record: (seq, task id)
    ledger: Ledger | None = None
    ledger_view: dict[int, tuple[int, str]] = field(default_factory=dict)
    #: a pidfd of the process (``_control.watch_process``): readable once it has ended,
    #: whoever its parent is (None: none here; the process's sentinel tells instead)
    watch: int | None = None
    #: its parent, the fork server, died before it: its exit status went with the fork server
    parent_lost: bool = False

    @property
    def alive(self) -> bool:
        """Started and its exit not handled yet."""
        return self.process is not None


def exit_reason(exitcode: int | None) -> tuple[str, str]:
    """(human reason, bounded metric label) for a process exit code."""
    if exitcode is None:
        return "worker process vanished", "unknown"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"worker process killed by {name}", name
    return f"worker process exited with code {exitcode}", f"exit_{exitcode}"


@dataclass
class Slot:
    """A worker type and process index; survives restarts of its process."""

    worker: Worker
    options: WorkerOptions
    index: int
    state: State = State.STARTING
    run: Run = field(default_factory=Run)
    restarts: int = 0
    crashes_in_a_row: int = 0
    restart_at: float = 0.0
    last_exit: str = ""
    #: being removed (autoscaling): drains like the pool does, by then; it is not replaced
    retire_by: float | None = None

    @property
    def task_type(self) -> str:
        return self.worker.task_type

    @property
    def name(self) -> str:
        return f"{self.task_type}#{self.index}"

    # -- transitions ----------------------------------------------------------------------------

    def spawned(self, run: Run) -> None:
        """A new process runs in this slot: everything about the previous one is gone."""
        self.run = run
        self.state = State.STARTING

    def heard_from(self, status: ChildStatus | None = None) -> None:
        """The process said hello (``status`` None) or sent a heartbeat."""
        if status is not None:
            self.run.status = status
            if status.completed or status.last_poll_ok:
                # Started up far enough to poll: restart backoff is for processes that cannot
                # get going (bad import, unreachable server), not for ones killed mid-work.
                self.crashes_in_a_row = 0
        if self.state is State.STARTING:
            self.state = State.RUNNING

    def did_work(self) -> None:
        """The process reported a task: a later death is not a crash loop."""
        self.crashes_in_a_row = 0

    def exited(self, exitcode: int | None) -> tuple[str, str]:
        """The process is gone (its exit is being handled): record why.

        Returns:
            (reason, metric label): the supervisor's kill reason, else the process's own
            goodbye for a clean exit, else what the exit code says.
        """
        run = self.run
        reason, label = exit_reason(exitcode)
        if exitcode is None and run.parent_lost:
            reason = "worker process exited (its exit status went with the fork server)"
        if run.kill_reason:
            reason = f"{reason} ({run.kill_reason})"
            label = run.kill_reason.split(":")[0].replace(" ", "_")
        elif self.exited_cleanly(exitcode):
            reason = run.leaving
            label = "recycled" if run.leaving.startswith("recycled") else "exited"
        self.last_exit = reason
        run.process = None  # handled: the monitor must not see this death twice
        return reason, label

    def exited_cleanly(self, exitcode: int | None) -> bool:
        # A process whose fork server died first has no exit status: its goodbye tells.
        known = exitcode == 0 or (exitcode is None and self.run.parent_lost)
        return known and bool(self.run.leaving)

    def stopped(self) -> None:
        self.state = State.STOPPED

    def plan_restart(self, exitcode: int | None, now: float, backoff_max: float) -> float:
        """The restart policy: when the process that exited with ``exitcode`` is replaced.

        The first crash restarts at once; crashes in a row of a process that never got going
        back off (``_backoff.restart_delay``). A clean exit (recycled, told to leave) or a crash
        after :data:`HEALTHY_AFTER` seconds of life starts a new streak, and so does a process
        that did work (:meth:`did_work`, :meth:`heard_from`). Returns the delay in seconds.
        """
        if exitcode == EXIT_START_FAILED:
            self.crashes_in_a_row += 1
        elif self.exited_cleanly(exitcode):
            self.crashes_in_a_row = 0
        elif now - self.run.started > HEALTHY_AFTER:
            self.crashes_in_a_row = 1
        else:
            self.crashes_in_a_row += 1
        delay = restart_delay(self.crashes_in_a_row, backoff_max)
        self.restarts += 1
        self.state = State.WAITING
        self.restart_at = now + delay
        return delay

    def restart_due(self, now: float) -> bool:
        return self.state is State.WAITING and now >= self.restart_at

    # -- reading ------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What ``/workers`` shows for this slot."""
        run = self.run
        status = run.status
        return {
            "name": self.name,
            "task_type": self.task_type,
            "index": self.index,
            "pid": run.pid or None,
            "state": self.state.value,
            "threads": self.options.threads,
            "in_flight": len(run.in_flight),
            "completed": status.completed if status else 0,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "last_error": status.last_error if status else "",
            "last_poll_ok": status.last_poll_ok if status else 0.0,
            "last_poll": status.last_poll if status else 0.0,
            "up_seconds": round(time.monotonic() - run.started, 1) if run.started else 0.0,
            "paused": self.options.paused,
            "polling": bool(status and status.polling),
            "retiring": self.retire_by is not None,
        }
