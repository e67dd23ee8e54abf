"""The durable local result spool.

A result that cannot be delivered after its retries is written here (SQLite in the state
directory, WAL journal, ``synchronous=FULL`` so a committed row survives power loss) and
delivered when the server is back. Every process of the pool, and a pool restarted after a crash,
shares the one file; rows are *claimed* before delivery so two processes do not deliver the same
row at once, and a claim by a process that died expires.

A row is never allowed to block the others (``docs/reliability.md``, promise 2):

- each row keeps its own count of failed deliveries and waits longer after each (up to
  ``RETRY_CAP``), so the rows behind a failing one go first; a failure counts only when it is
  the row's own (the server took other results meanwhile), so an outage of any length costs
  no row;
- a row that failed ``MAX_ATTEMPTS`` deliveries, is older than ``MAX_AGE``, was refused for good
  by the server, or cannot be decoded is moved to the ``dead`` table (kept, counted, shown by
  ``taskfleet status`` and ``/workers``), never retried again;
- a file that is not a readable database is moved aside and a fresh spool started.

Re-delivering a spooled result is safe: Conductor ignores updates to terminal tasks, and NATS
results carry ``Nats-Msg-Id`` for de-duplication.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _json
from ._backoff import Backoff
from ._private import private_dir, private_file, tighten
from ._task import Task, TaskLog, TaskResult, TaskStatus

__all__ = ["Spool", "SpooledResult"]

log = logging.getLogger("taskfleet.spool")

#: A claim older than this is considered abandoned (its process died mid-delivery).
CLAIM_TTL = 60.0
#: Failed deliveries of one row before it is given up (moved to the dead table).
MAX_ATTEMPTS = 100
#: Age in seconds after which a row that still fails is given up.
MAX_AGE = 7 * 24 * 3600.0
#: Seconds a row waits after its n-th failed delivery: ``min(RETRY_BASE * 2**(n-1), RETRY_CAP)``.
RETRY_BASE = 0.5
RETRY_CAP = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    source      TEXT NOT NULL,
    task_type   TEXT NOT NULL,
    task        TEXT NOT NULL,
    result      TEXT NOT NULL,
    created     REAL NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    claimed_by  INTEGER,
    claimed_at  REAL
);
CREATE INDEX IF NOT EXISTS results_by_type ON results (source, task_type, id);
CREATE TABLE IF NOT EXISTS dead (
    id          INTEGER PRIMARY KEY,
    source      TEXT NOT NULL,
    task_type   TEXT NOT NULL,
    task        TEXT NOT NULL,
    result      TEXT NOT NULL,
    created     REAL NOT NULL,
    attempts    INTEGER NOT NULL,
    died        REAL NOT NULL,
    reason      TEXT NOT NULL
);
"""
#: Columns added after the first release (an older spool file gains them when opened).
_ADDED = {"next_try": "REAL NOT NULL DEFAULT 0", "last_error": "TEXT NOT NULL DEFAULT ''"}
#: SQLite's names for a file that is not a (readable) database.
_CORRUPT = ("SQLITE_CORRUPT", "SQLITE_NOTADB")


@dataclass(frozen=True)
class SpooledResult:
    row_id: int
    task: Task
    result: TaskResult
    attempts: int = 0


def _task_to_json(task: Task) -> str:
    data = dataclasses.asdict(task.slim())
    data.pop("raw", None)
    data.pop("input_data", None)
    return json.dumps(data)


def _task_from_json(text: str) -> Task:
    data = json.loads(text)
    return Task(**data)


def _result_to_json(result: TaskResult) -> str:
    data = dataclasses.asdict(result)
    data["status"] = result.status.value
    return _json.dumps(data).decode("utf-8")


def _result_from_json(text: str) -> TaskResult:
    data = json.loads(text)
    data["status"] = TaskStatus(data["status"])
    data["logs"] = [TaskLog(**entry) for entry in data.get("logs", [])]
    known = {f.name for f in dataclasses.fields(TaskResult)}
    return TaskResult(**{k: v for k, v in data.items() if k in known})


def retry_delay(failures: int) -> float:
    """Seconds a row waits after its ``failures``-th failed delivery."""
    return Backoff(RETRY_BASE, RETRY_CAP).delay(failures)


def _gave_up(attempts: int, age: float, error: str) -> str:
    return f"gave up after {attempts} failed deliveries in {age:.0f}s; last error: {error}"


def _is_corrupt(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "")
    text = str(exc)
    return name in _CORRUPT or "not a database" in text or "malformed" in text


class Spool:
    """One SQLite file shared by every process of a pool (each opens its own connection).

    Every method blocks on disk I/O: callers on an event loop run them in a thread
    (:class:`~taskfleet._delivery.Delivery` does).

    Args:
        path: the database file (created with its directory). A file that is not a readable
            database is renamed to ``<path>.corrupt-<time>`` (logged with both paths) and a
            fresh spool is started.
        source: identifies the server the results belong to, so a pool pointed at another
            server never delivers them there.

    Raises:
        sqlite3.Error, OSError: the file cannot be created or opened (permissions, full disk).
    """

    def __init__(self, path: str | os.PathLike[str], source: str) -> None:
        self.path = Path(path)
        self.source = source
        # The spool holds task outputs: owner only, like the state directory it lives in.
        private_dir(self.path.parent)
        private_file(self.path)
        for extra in ("-wal", "-shm"):  # SQLite gives these the database file's mode
            tighten(f"{self.path}{extra}")
        self._lock = threading.Lock()
        #: where a corrupt file was moved (None: it was fine)
        self.moved_aside: Path | None = None
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise
            self._db = self._replace_corrupt(exc)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            have = {row[1] for row in db.execute("PRAGMA table_info(results)")}
            for column, kind in _ADDED.items():
                if column not in have:
                    try:
                        db.execute(f"ALTER TABLE results ADD COLUMN {column} {kind}")
                    except sqlite3.OperationalError as exc:
                        if "duplicate column" not in str(exc):  # another process was first
                            raise
        except BaseException:
            db.close()
            raise
        return db

    def _replace_corrupt(self, exc: sqlite3.Error) -> sqlite3.Connection:
        """Move the unreadable file (and its journal) aside, once across processes, and start
        a fresh one."""
        with open(f"{self.path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                return self._open()  # another process replaced it meanwhile
            except sqlite3.DatabaseError as again:
                if not _is_corrupt(again):
                    raise
            aside = self.path.with_name(
                f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
            )
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                journal = Path(f"{self.path}{suffix}")
                if journal.exists():
                    os.replace(journal, f"{aside}{suffix}")
            log.warning(
                "the result spool %s is not a readable database (%s): moved it to %s and"
                " started a fresh spool; results in the old file are not delivered",
                self.path,
                exc,
                aside,
            )
            self.moved_aside = aside
            return self._open()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                # SQLite has already rolled back after some errors (a full disk): a second
                # ROLLBACK would raise and hide the error that matters.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def put(self, task: Task, result: TaskResult) -> None:
        """Store a result durably (committed and synced when this returns).

        Raises:
            sqlite3.Error: the write failed (a full disk); nothing was stored.
        """
        row = (self.source, task.task_type, _task_to_json(task), _result_to_json(result))
        with self._tx() as db:
            db.execute(
                "INSERT INTO results (source, task_type, task, result, created) VALUES (?,?,?,?,?)",
                (*row, time.time()),
            )

    def _where(self, task_type: str | None) -> tuple[str, list[Any]]:
        if task_type is None:
            return "source = ?", [self.source]
        return "source = ? AND task_type = ?", [self.source, task_type]

    def count(self, task_type: str | None = None) -> int:
        """Rows waiting for delivery (of ``task_type``, or all)."""
        where, args = self._where(task_type)
        with self._lock:
            row = self._db.execute(f"SELECT COUNT(*) FROM results WHERE {where}", args).fetchone()
        return int(row[0])

    def dead_counts(self) -> dict[str, int]:
        """Rows given up, by task type (this server's only)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT task_type, COUNT(*) FROM dead WHERE source = ? GROUP BY task_type",
                (self.source,),
            ).fetchall()
        return {str(t): int(n) for t, n in rows}

    def dead(self, limit: int = 100) -> list[dict[str, Any]]:
        """The most recent rows given up: task id, type, attempts, when and why."""
        with self._lock:
            rows = self._db.execute(
                "SELECT task, task_type, attempts, died, reason FROM dead WHERE source = ?"
                " ORDER BY died DESC LIMIT ?",
                (self.source, limit),
            ).fetchall()
        out = []
        for task, task_type, attempts, died, reason in rows:
            try:
                task_id = str(json.loads(task).get("task_id", ""))
            except (ValueError, AttributeError):
                task_id = ""
            out.append(
                {
                    "task_id": task_id,
                    "task_type": task_type,
                    "attempts": attempts,
                    "died": died,
                    "reason": reason,
                }
            )
        return out

    def claim(self, task_type: str | None = None, limit: int = 50) -> list[SpooledResult]:
        """Claim up to ``limit`` rows due for delivery, oldest first.

        Rows past ``MAX_ATTEMPTS`` or ``MAX_AGE``, and rows that cannot be decoded, are moved
        to the dead table on the way (and not returned).
        """
        now = time.time()
        where, args = self._where(task_type)
        out: list[SpooledResult] = []
        with self._tx() as db:
            expired = db.execute(
                f"SELECT id, attempts, created, last_error FROM results WHERE {where}"
                f" AND (claimed_by IS NULL OR claimed_at < ?) AND attempts > 0"
                f" AND (attempts >= ? OR created < ?)",
                (*args, now - CLAIM_TTL, MAX_ATTEMPTS, now - MAX_AGE),
            ).fetchall()
            for row_id, attempts, created, last_error in expired:
                self._bury(db, row_id, _gave_up(attempts, now - created, last_error), now)
            rows = db.execute(
                f"SELECT id, task, result, attempts FROM results WHERE {where}"
                f" AND (claimed_by IS NULL OR claimed_at < ?) AND next_try <= ?"
                f" ORDER BY id LIMIT ?",
                (*args, now - CLAIM_TTL, now, limit),
            ).fetchall()
            undecodable: list[tuple[int, str]] = []
            for row_id, task, result, attempts in rows:
                try:
                    out.append(
                        SpooledResult(
                            row_id, _task_from_json(task), _result_from_json(result), attempts
                        )
                    )
                except Exception as exc:
                    undecodable.append((row_id, f"undecodable row: {type(exc).__name__}: {exc}"))
            db.executemany(
                "UPDATE results SET claimed_by = ?, claimed_at = ? WHERE id = ?",
                [(os.getpid(), now, r.row_id) for r in out],
            )
            for row_id, reason in undecodable:
                self._bury(db, row_id, reason, now)
                log.error("spooled row %d moved to the dead table: %s", row_id, reason[:300])
        return out

    def delivered(self, row_id: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM results WHERE id = ?", (row_id,))

    def failed(self, row_id: int, error: str, *, charge: bool = True) -> bool:
        """Record a failed delivery of a claimed row and release it.

        ``charge``: the failure is the row's own (the server took other results meanwhile):
        it counts towards ``MAX_ATTEMPTS`` and the row waits :func:`retry_delay` before it is
        claimed again. An uncharged failure (the server is down) only records the error.
        Returns True when the row was given up (it is then in the dead table)."""
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT attempts, created FROM results WHERE id = ?", (row_id,)
            ).fetchone()
            if row is None:
                return False
            if not charge:
                db.execute(
                    "UPDATE results SET last_error = ?, claimed_by = NULL, claimed_at = NULL"
                    " WHERE id = ?",
                    (error[:1000], row_id),
                )
                return False
            attempts = int(row[0]) + 1
            db.execute(
                "UPDATE results SET attempts = ?, last_error = ?, next_try = ?,"
                " claimed_by = NULL, claimed_at = NULL WHERE id = ?",
                (attempts, error[:1000], now + retry_delay(attempts), row_id),
            )
            if attempts < MAX_ATTEMPTS and row[1] >= now - MAX_AGE:
                return False
            self._bury(db, row_id, _gave_up(attempts, now - row[1], error), now)
        return True

    def give_up(self, row_id: int, reason: str) -> None:
        """Move a row to the dead table at once (the server refused it for good)."""
        with self._tx() as db:
            self._bury(db, row_id, reason, time.time())

    @staticmethod
    def _bury(db: sqlite3.Connection, row_id: int, reason: str, now: float) -> None:
        db.execute(
            "INSERT INTO dead (id, source, task_type, task, result, created, attempts, died,"
            " reason) SELECT id, source, task_type, task, result, created, attempts, ?, ?"
            " FROM results WHERE id = ?",
            (now, reason[:2000], row_id),
        )
        db.execute("DELETE FROM results WHERE id = ?", (row_id,))

    def release(self, row_ids: list[int]) -> None:
        """Give claimed rows back untried (someone may try again at once)."""
        if not row_ids:
            return
        with self._tx() as db:
            db.executemany(
                "UPDATE results SET claimed_by = NULL, claimed_at = NULL WHERE id = ?",
                [(i,) for i in row_ids],
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
