"""Forward task status to an HTTP endpoint from event hooks: started, then one final outcome.

Each event is one ``POST`` of a JSON object keyed by the task's correlation id, so an external
system (a job tracker, a CRM, a status page) can follow a piece of work without knowing
taskfleet::

    {"event": "completed", "eventId": "...", "correlationId": "order-1234", "taskId": "...",
     "taskType": "resize", "workflowInstanceId": "...", "attempt": 1, "time": 1718000000000,
     "status": "COMPLETED", "message": "...", "data": {...}}

Nothing is lost when the endpoint is down: a hook only writes the event to an outbox (SQLite,
on disk, shared by the pool's processes) and returns; a thread of each process posts what the
outbox holds, oldest first, and deletes an event once the endpoint accepted it (2xx). A refused
connection, a timeout or a 5xx is retried with exponential backoff (up to ``max_backoff``); a 4xx
other than 408/429 is a bad event, logged and dropped. Events a process could not post before
it stopped stay in the outbox and go out from the next process that reports anything. The task
never waits for the endpoint, and its result reaches the task server as usual.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import sqlite3
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import requests

from taskfleet import Task, TaskResult, TaskStatus
from taskfleet.hooks import HookBase

logger = logging.getLogger("taskfleet.examples.reporter")


def _without_credentials(url: str) -> str:
    """``url`` as logs may show it: any ``user:password@`` left out."""
    parts = urllib.parse.urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


#: Builds extra fields for an event's ``data`` from the task and, after execution, its result.
DataFunction = Callable[[Task, "TaskResult | None"], Mapping[str, Any]]

#: An event taken for posting by one process is left alone by the others this long.
CLAIM_SECONDS = 60.0


def default_outbox() -> Path:
    """``$TASKFLEET_STATE_DIR/status-outbox.sqlite3`` (default state directory otherwise)."""
    base = os.environ.get("TASKFLEET_STATE_DIR") or "~/.local/state/taskfleet"
    return Path(base).expanduser() / "status-outbox.sqlite3"


class HttpStatusReporter(HookBase):
    """Posts ``started`` before a task runs and ``completed``/``failed``/``in_progress`` after.

    Args:
        url: the endpoint receiving the posts.
        outbox: the SQLite file holding events until they are posted (default:
            :func:`default_outbox`). Give every pool on a machine its own.
        timeout: seconds per request (connect and read).
        max_backoff: the longest wait between two attempts while the endpoint fails.
        flush_timeout: how long a stopping process keeps posting what it still holds.
        data: optional function returning extra fields for the event's ``data``; a module-level
            function (hooks are pickled into each worker process).
        headers: extra request headers, e.g. an ``Authorization`` header for the endpoint.
    """

    def __init__(
        self,
        url: str,
        *,
        outbox: str | os.PathLike[str] | None = None,
        timeout: float = 2.0,
        max_backoff: float = 5.0,
        flush_timeout: float = 5.0,
        data: DataFunction | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url
        self.outbox = Path(outbox) if outbox is not None else default_outbox()
        self.timeout = timeout
        self.max_backoff = max_backoff
        self.flush_timeout = flush_timeout
        self.data = data
        self.headers = dict(headers or {})
        self._sender: _Sender | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # The sender thread and its lock are per process: a worker process starts its own.
        state = dict(self.__dict__)
        state["_sender"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- hooks ----------------------------------------------------------------------------

    def before_execute(self, task: Task) -> None:
        self._record("started", task, None)

    def after_execute(self, task: Task, result: TaskResult) -> None:
        if result.status.is_failure:
            event = "failed"
        elif result.status is TaskStatus.IN_PROGRESS:
            event = "in_progress"  # the task comes back later; not done yet
        else:
            event = "completed"
        self._record(event, task, result)

    def close(self) -> None:
        """Called when the process stops: post what is left, for up to ``flush_timeout``."""
        sender = self._sender
        if sender is not None:
            sender.stop(self.flush_timeout)

    # -- events ---------------------------------------------------------------------------

    @staticmethod
    def key(task: Task) -> str:
        """The correlation id; tasks without one are keyed by their task id."""
        return task.correlation_id or task.task_id

    def event(self, event: str, task: Task, result: TaskResult | None) -> dict[str, Any]:
        """The JSON object posted for ``event``."""
        body: dict[str, Any] = {
            "event": event,
            "eventId": uuid.uuid4().hex,
            "correlationId": self.key(task),
            "taskId": task.task_id,
            "taskType": task.task_type,
            "workflowInstanceId": task.workflow_instance_id,
            "attempt": task.attempt,
            "time": int(time.time() * 1000),
        }
        data: dict[str, Any] = {}
        if result is not None:
            body["status"] = result.status.value
            if result.status.is_failure:
                body["reason"] = result.reason_for_incompletion
                body["exception"] = result.exception
            if result.message is not None:
                body["message"] = result.message
            data.update(result.details)
        if self.data is not None:
            data.update(self.data(task, result))
        body["data"] = data
        return body

    def _record(self, event: str, task: Task, result: TaskResult | None) -> None:
        # Catch everything: a reporting problem must not become a task failure, and the
        # runner's own hook guard is a last resort, not the plan.
        try:
            body = json.dumps(self.event(event, task, result), default=str)
            with _connect(self.outbox) as db:
                db.execute("INSERT INTO outbox (body, claimed_until) VALUES (?, 0)", (body,))
        except Exception as exc:
            logger.warning("could not record %s of task %s: %r", event, task.task_id, exc)
            return
        self._sending().wake()

    def _sending(self) -> _Sender:
        with self._lock:
            if self._sender is None or self._sender.pid != os.getpid():
                self._sender = _Sender(self)
            return self._sender


class _Sender:
    """One thread per process posting the outbox's events, oldest first."""

    def __init__(self, reporter: HttpStatusReporter) -> None:
        self.reporter = reporter
        self.pid = os.getpid()
        self._wake = threading.Event()
        self._stop_by: float | None = None
        self._thread = threading.Thread(target=self._run, name="status-reporter", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float) -> None:
        self._stop_by = time.monotonic() + timeout
        self._wake.set()
        self._thread.join(timeout + self.reporter.timeout + 1)

    def _run(self) -> None:
        failures = 0
        while True:
            self._wake.clear()
            try:
                sent, pending = self._post_batch()
            except Exception as exc:  # an outbox problem: try again later
                logger.warning("status outbox %s: %r", self.reporter.outbox, exc)
                sent, pending = False, True
            if self._stop_by is not None and (not pending or time.monotonic() >= self._stop_by):
                return
            if sent:
                failures = 0
                continue
            if not pending:
                self._wake.wait(CLAIM_SECONDS)  # new events wake it; claims of the dead expire
                continue
            failures += 1
            delay = min(self.reporter.max_backoff, 0.1 * 2**failures) * random.uniform(0.5, 1.0)
            self._wake.wait(delay)

    def _post_batch(self) -> tuple[bool, bool]:
        """Claim and post a batch; returns (some were delivered, some are still pending)."""
        rows = self._claim(20)
        if not rows:
            return False, self._pending()
        session = requests.Session()
        delivered = 0
        try:
            for row_id, body in rows:
                if not self._post(session, body):
                    self._release([r for r, _ in rows if r >= row_id])
                    return delivered > 0, True
                with _connect(self.reporter.outbox) as db:
                    db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                delivered += 1
        finally:
            session.close()
        return True, True

    def _post(self, session: requests.Session, body: str) -> bool:
        """True when the event is done with (accepted, or rejected for good)."""
        r = self.reporter
        try:
            response = session.post(
                r.url,
                data=body,
                headers={"Content-Type": "application/json", **r.headers},
                timeout=r.timeout,
            )
        except Exception as exc:
            # The class name only: messages of connection errors repeat the URL, which may
            # hold credentials. The traceback is there at debug level for whoever needs it.
            logger.warning(
                "status post to %s failed: %s", _without_credentials(r.url), type(exc).__name__
            )
            logger.debug("status post failed", exc_info=True)
            return False
        code = response.status_code
        if code < 300:
            return True
        if 400 <= code < 500 and code not in (408, 429):
            logger.warning(
                "status endpoint %s rejected an event: %d", _without_credentials(r.url), code
            )
            return True
        logger.warning(
            "status endpoint %s answered %d; retrying", _without_credentials(r.url), code
        )
        return False

    def _claim(self, limit: int) -> list[tuple[int, str]]:
        now = time.time()
        with _connect(self.reporter.outbox) as db:
            db.execute("BEGIN IMMEDIATE")
            # A process that died holding a claim (a crash right after its task started) gives
            # its events back at once, not when the claim runs out: the outbox is on this
            # machine, so its pid tells whether it still lives.
            holders = db.execute(
                "SELECT DISTINCT claimed_by FROM outbox WHERE claimed_until >= ?", (now,)
            ).fetchall()
            for (pid,) in holders:
                if pid and pid != os.getpid() and not _alive(pid):
                    db.execute("UPDATE outbox SET claimed_until = 0 WHERE claimed_by = ?", (pid,))
            rows = db.execute(
                "SELECT id, body FROM outbox WHERE claimed_until < ? ORDER BY id LIMIT ?",
                (now, limit),
            ).fetchall()
            db.executemany(
                "UPDATE outbox SET claimed_until = ?, claimed_by = ? WHERE id = ?",
                [(now + CLAIM_SECONDS, os.getpid(), row_id) for row_id, _ in rows],
            )
            db.execute("COMMIT")
        return rows

    def _release(self, ids: list[int]) -> None:
        with _connect(self.reporter.outbox) as db:
            db.executemany("UPDATE outbox SET claimed_until = 0 WHERE id = ?", [(i,) for i in ids])

    def _pending(self) -> bool:
        """Whether events wait that no process is posting."""
        with _connect(self.reporter.outbox) as db:
            row = db.execute(
                "SELECT 1 FROM outbox WHERE claimed_until < ? LIMIT 1", (time.time(),)
            ).fetchone()
            return row is not None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


@contextlib.contextmanager
def _connect(path: Path) -> Iterator[sqlite3.Connection]:
    """A short-lived connection to the outbox (created owner-only on first use)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        # Switching to WAL needs the database to itself and does not wait for it: processes
        # opening a new outbox at once can be told "locked" here, so this step is retried.
        for attempt in range(100):
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                    " body TEXT NOT NULL, claimed_until REAL, claimed_by INTEGER)"
                )
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 99:
                    raise
                time.sleep(0.05)
        yield db
    finally:
        db.close()
