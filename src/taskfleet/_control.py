"""The control channel between a worker process and its supervisor.

Each child owns one end of a ``multiprocessing`` pipe. It says that it is up, sends a heartbeat
from its loop (how the supervisor tells a wedged process from a busy one), and says why it
leaves. The supervisor sends instructions: stop (drain), pause and resume polling. Which tasks a child holds is not
said here: the in-flight ledger (``ledger.py``) is the one place for that.

Messages are small tuples. The child sends from its event-loop thread, and heartbeats also
from the thread that stands in while a handler's call blocks the loop (``_runner.py``), so
sends take a lock.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

__all__ = ["SUPERVISOR_GONE", "ChildStatus", "ControlClient", "watch_process"]

log = logging.getLogger("taskfleet.control")

# child -> supervisor
HELLO = "hello"  # (HELLO,): the loop runs
HEARTBEAT = "hb"  # (HEARTBEAT, ChildStatus)
LEAVING = "bye"  # (LEAVING, reason): a clean, intended exit (drained, recycled, parent gone)
# supervisor -> child
STOP = "stop"
PAUSE = "pause"
RESUME = "resume"
#: why a child stops when its supervisor has died (the reason ``listen`` gives)
SUPERVISOR_GONE = "supervisor gone"


def watch_process(pid: int) -> int | None:
    """A file descriptor that becomes readable when process ``pid`` ends (a pidfd: it works
    for processes that are not this one's children), or None where there is none (not Linux,
    or a kernel older than 5.3).

    Raises:
        ProcessLookupError: the process is already gone.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None or pid <= 0:
        return None
    try:
        fd: int = pidfd_open(pid)
    except OSError as exc:
        if isinstance(exc, ProcessLookupError):
            raise
        return None  # not supported here
    return fd


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
        self._lock = threading.Lock()

    @property
    def connected(self) -> bool:
        """True while a supervisor is listening."""
        return not self._broken

    def _send(self, message: tuple[Any, ...]) -> None:
        if self._broken:
            return
        assert self._conn is not None
        try:
            with self._lock:
                self._conn.send(message)
        except (OSError, EOFError, ValueError):
            # The supervisor is gone; the reader thread notices the same and stops the runner.
            self._broken = True

    def hello(self) -> None:
        self._send((HELLO,))

    def heartbeat(self, status: ChildStatus) -> None:
        self._send((HEARTBEAT, status))

    def leaving(self, reason: str) -> None:
        self._send((LEAVING, reason))

    def listen(
        self,
        on_stop: Callable[[str], None],
        on_pause: Callable[[bool], None] | None = None,
        supervisor: int = 0,
    ) -> None:
        """Start a daemon thread that calls ``on_stop(reason)`` when told to stop,
        ``on_pause(True or False)`` when told to pause or resume polling, and
        ``on_stop(SUPERVISOR_GONE)`` the moment the supervisor (process ``supervisor``) dies:
        end of file on the pipe, or the end of that process itself. The supervisor is watched
        as such, never as this process's parent: under the fork server the parent is the fork
        server, whose death says nothing about the supervisor."""
        if self._conn is None:
            return
        conn = self._conn
        try:
            watched = watch_process(supervisor)
        except ProcessLookupError:
            on_stop(SUPERVISOR_GONE)
            return

        def reader() -> None:
            waiting: list[Any] = [conn] if watched is None else [conn, watched]
            while True:
                try:
                    if watched in wait(waiting):
                        on_stop(SUPERVISOR_GONE)
                        return
                    message = conn.recv()
                except (EOFError, OSError):
                    on_stop(SUPERVISOR_GONE)
                    return
                if message and message[0] == STOP:
                    on_stop("asked to stop")
                elif message and message[0] in (PAUSE, RESUME) and on_pause is not None:
                    on_pause(message[0] == PAUSE)

        threading.Thread(target=reader, name="taskfleet-control", daemon=True).start()
