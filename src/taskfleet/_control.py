"""The control channel between a worker process and its supervisor.

Each child owns one end of a ``multiprocessing`` pipe. It reports what the supervisor needs to
keep its promises when the child cannot: a heartbeat from its loop, and the tasks it holds that
do not fit its in-flight ledger (``ledger.py``; normally every task goes there, not here) and
when those are settled. The supervisor sends one instruction: stop (drain).

Messages are small tuples; a batch of received tasks travels as one message. Every send happens
on the child's event-loop thread, so no lock is needed on the child side.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from ._task import Task

__all__ = ["ChildStatus", "ControlClient", "pack_task", "unpack_task"]

log = logging.getLogger("taskfleet.control")

# child -> supervisor
HELLO = "hello"  # (HELLO, pid, slots)
HEARTBEAT = "hb"  # (HEARTBEAT, ChildStatus)
RECEIVED = "recv"  # (RECEIVED, [pack_task(task), ...])
SETTLED = "done"  # (SETTLED, [task_id, ...])
SPOOLED = "spool"  # (SPOOLED, task_type, count written)
LEAVING = "bye"  # (LEAVING, reason): a clean, intended exit (drained, recycled, parent gone)
# supervisor -> child
STOP = "stop"


# A received task crosses the pipe as a plain tuple of its fields without the payload
# (``input_data``, ``raw``): pickling a dataclass per task cost more than the rest of the
# channel put together.
_FIELDS = [f.name for f in dataclasses.fields(Task)]
assert _FIELDS[2] == "input_data" and _FIELDS[-1] == "raw", _FIELDS
pack_task: Callable[[Task], tuple[Any, ...]] = operator.attrgetter(
    *(name for name in _FIELDS if name not in ("input_data", "raw"))
)


def unpack_task(packed: Sequence[Any]) -> Task:
    """The slim :class:`Task` (no ``input_data``, no ``raw``) that :func:`pack_task` packed."""
    return Task(packed[0], packed[1], {}, *packed[2:])


@dataclass(frozen=True)
class ChildStatus:
    """What a heartbeat says about the child's loop."""

    in_flight: int
    completed: int
    last_poll_ok: float  # time.time() of the last successful poll (0: none yet)
    last_error: str  # class name and short text of the last poll/report error ("" if none)
    polling: bool  # False while paused, draining or backing off after errors
    last_poll: float = 0.0  # time.time() of the last poll tried, ok or not (0: none yet)


class ControlClient:
    """The child's end. Safe to use without a supervisor (``conn=None``): every call is a no-op."""

    def __init__(self, conn: Connection | None) -> None:
        self._conn = conn
        self._broken = conn is None

    @property
    def connected(self) -> bool:
        """True while a supervisor is listening."""
        return not self._broken

    def _send(self, message: tuple[Any, ...]) -> None:
        if self._broken:
            return
        assert self._conn is not None
        try:
            self._conn.send(message)
        except (OSError, EOFError, ValueError):
            # The supervisor is gone; the reader thread notices the same and stops the runner.
            self._broken = True

    def hello(self, slots: int) -> None:
        self._send((HELLO, os.getpid(), slots))

    def heartbeat(self, status: ChildStatus) -> None:
        self._send((HEARTBEAT, status))

    def received(self, tasks: Sequence[Task]) -> None:
        if tasks and not self._broken:
            self._send((RECEIVED, [pack_task(t) for t in tasks]))

    def settled(self, task_ids: Sequence[str]) -> None:
        if task_ids:
            self._send((SETTLED, list(task_ids)))

    def spooled(self, task_type: str, count: int) -> None:
        self._send((SPOOLED, task_type, count))

    def leaving(self, reason: str) -> None:
        self._send((LEAVING, reason))

    def listen(self, on_stop: Callable[[str], None]) -> None:
        """Start a daemon thread that calls ``on_stop(reason)`` when told to stop or when the
        supervisor disappears (end of file on the pipe)."""
        if self._conn is None:
            return
        conn = self._conn

        def reader() -> None:
            while True:
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    on_stop("supervisor gone")
                    return
                if message and message[0] == STOP:
                    on_stop("asked to stop")

        threading.Thread(target=reader, name="taskfleet-control", daemon=True).start()
