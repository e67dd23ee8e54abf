"""The backlog of each task type, and the decisions of autoscaling inside a pool.

The supervisor asks its source, through its agent, how many tasks wait for each type: one round
of questions for all types every ``TASKFLEET_QUEUE_DEPTH_INTERVAL`` seconds, however many
processes the pool runs, and never on the monitor thread (it submits the question and picks the
answer up on a later tick). Each answer sets ``taskfleet_queue_depth``; a type the source could
not answer for has no value, rather than a zero that would read as "nothing waits".

A worker type with a process range (``processes=(1, 4)``) gets an :class:`Autoscaler`, fed one
measurement per answer. It adds a process while the backlog per free execution slot stays above
``TASKFLEET_SCALE_UP_BACKLOG`` for ``TASKFLEET_SCALE_UP_AFTER`` seconds, and removes one once the
type has been idle (nothing waiting, one process fewer would hold what runs) for
``TASKFLEET_SCALE_DOWN_AFTER`` seconds. The gap between the two conditions, and the wait after
every change, are the hysteresis: a backlog wavering around the threshold adds at most one
process per ``SCALE_UP_AFTER`` and removes none. See docs/scaling.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _metrics as metrics
from ._sources.base import Backlog, WorkerBinding

if TYPE_CHECKING:
    from ._agent import SourceAgent

__all__ = ["Autoscaler", "QueueDepths"]

log = logging.getLogger("taskfleet.scaling")

QUEUE_DEPTH = "taskfleet_queue_depth"


class QueueDepths:
    """The latest backlog per type, refreshed through ``agent`` every ``interval`` seconds."""

    def __init__(
        self, agent: SourceAgent, bindings: Sequence[WorkerBinding], interval: float
    ) -> None:
        self._agent = agent
        self._bindings = list(bindings)
        self.interval = interval
        #: the last answer: type -> backlog (types the source did not answer for are absent)
        self.latest: dict[str, Backlog] = {}
        #: monotonic time of the last answer (None: none yet)
        self.measured_at: float | None = None
        self._next = 0.0
        self._future: Future[Any] | None = None
        self._failing = False
        metrics.POOL_GAUGES[QUEUE_DEPTH].clear()

    def tick(self, now: float) -> bool:
        """Ask when due, take an answer that arrived. Returns True when one did."""
        fresh = False
        future = self._future
        if future is not None and future.done():
            self._future = None
            self._take(None if future.cancelled() else future.result(), now)
            fresh = True
        if self.interval > 0 and self._future is None and now >= self._next:
            self._next = now + self.interval
            self._future = self._agent.submit(self._ask())
        return fresh

    async def _ask(self) -> dict[str, Backlog] | None:
        try:
            return await asyncio.wait_for(
                self._agent.source.backlog(self._bindings), max(5.0, self.interval)
            )
        except Exception as exc:  # a server outage: the values become unknown, not zero
            if not self._failing:
                log.warning("cannot read the backlog: %s", exc)
            self._failing = True
            return None

    def _take(self, answer: dict[str, Backlog] | None, now: float) -> None:
        if answer is not None:
            self._failing = False
        self.latest = dict(answer or {})
        self.measured_at = now
        gauge = metrics.POOL_GAUGES[QUEUE_DEPTH]
        for binding in self._bindings:
            backlog = self.latest.get(binding.task_type)
            if backlog is None:
                gauge.remove((binding.task_type,))
            else:
                gauge.set((binding.task_type,), backlog.depth)

    def close(self) -> None:
        if self._future is not None:
            self._future.cancel()
        metrics.POOL_GAUGES[QUEUE_DEPTH].clear()


@dataclass
class Autoscaler:
    """Decides, one measurement at a time, whether a type gains or loses a process."""

    low: int
    high: int
    threshold: float  # tasks waiting per free slot above which the type needs more
    up_after: float  # seconds the backlog must stay above the threshold; and between two ups
    down_after: float  # seconds the type must stay idle; and between a change and a removal
    above_since: float | None = None
    idle_since: float | None = None
    last_change: float | None = None

    def decide(self, now: float, waiting: int, processes: int, threads: int, in_flight: int) -> int:
        """+1 (add a process), -1 (remove one) or 0, for a type that runs ``processes``
        processes of ``threads`` slots holding ``in_flight`` tasks while ``waiting`` wait."""
        free = max(0, processes * threads - in_flight)
        pressing = waiting > self.threshold * max(1, free)
        idle = waiting == 0 and in_flight <= (processes - 1) * threads
        self.above_since = (
            (self.above_since if self.above_since is not None else now) if (pressing) else None
        )
        self.idle_since = (
            (self.idle_since if self.idle_since is not None else now) if (idle) else None
        )
        since_change = float("inf") if self.last_change is None else now - self.last_change
        if processes < self.low:
            return self._changed(now, +1)
        if processes > self.high:
            return self._changed(now, -1)
        if (
            pressing
            and processes < self.high
            and self.above_since is not None
            and now - self.above_since >= self.up_after
            and since_change >= self.up_after
        ):
            return self._changed(now, +1)
        if (
            idle
            and processes > self.low
            and self.idle_since is not None
            and now - self.idle_since >= self.down_after
            and since_change >= self.down_after
        ):
            return self._changed(now, -1)
        return 0

    def _changed(self, now: float, step: int) -> int:
        self.last_change = now
        # The next change of the same kind waits for the condition to hold again, afresh.
        self.above_since = now if self.above_since is not None else None
        self.idle_since = now if self.idle_since is not None else None
        return step
