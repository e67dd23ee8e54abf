"""The durable local result spool.

A result that cannot be delivered after its retries is written here (SQLite in the state
directory, WAL journal, ``synchronous=FULL`` so a committed row survives power loss) and
delivered when the server is back, before the process takes new work. Every process of the pool,
and a pool restarted after a crash, shares the one file; rows are *claimed* before delivery so two
processes do not deliver the same row at once, and a claim by a process that died expires.

Re-delivering a spooled result is safe: Conductor ignores updates to terminal tasks, and NATS
results carry ``Nats-Msg-Id`` for de-duplication.
"""

from __future__ import annotations

import dataclasses
import json
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
from ._private import private_dir, private_file, tighten
from ._task import Task, TaskLog, TaskResult, TaskStatus

__all__ = ["Spool", "SpooledResult"]

#: A claim older than this is considered abandoned (its process died mid-delivery).
CLAIM_TTL = 60.0

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
"""


@dataclass(frozen=True)
class SpooledResult:
    row_id: int
    task: Task
    result: TaskResult


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


class Spool:
    """One SQLite file shared by every process of a pool (each opens its own connection).

    Args:
        path: the database file (created with its directory).
        source: identifies the server the results belong to, so a pool pointed at another
            server never delivers them there.
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
        self._db = sqlite3.connect(
            self.path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def put(self, task: Task, result: TaskResult) -> None:
        """Store a result durably (committed and synced when this returns)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO results (source, task_type, task, result, created) VALUES (?,?,?,?,?)",
                (
                    self.source,
                    task.task_type,
                    _task_to_json(task),
                    _result_to_json(result),
                    time.time(),
                ),
            )

    def count(self, task_type: str | None = None) -> int:
        with self._lock:
            if task_type is None:
                row = self._db.execute(
                    "SELECT COUNT(*) FROM results WHERE source = ?", (self.source,)
                ).fetchone()
            else:
                row = self._db.execute(
                    "SELECT COUNT(*) FROM results WHERE source = ? AND task_type = ?",
                    (self.source, task_type),
                ).fetchone()
        return int(row[0])

    def claim(self, task_type: str | None = None, limit: int = 50) -> list[SpooledResult]:
        """Claim up to ``limit`` unclaimed (or abandoned) rows, oldest first."""
        now = time.time()
        pid = os.getpid()
        type_clause = "" if task_type is None else "AND task_type = ?"
        args: list[Any] = [self.source, now - CLAIM_TTL]
        if task_type is not None:
            args.append(task_type)
        with self._tx() as db:
            rows = db.execute(
                f"SELECT id, task, result FROM results WHERE source = ? "
                f"AND (claimed_by IS NULL OR claimed_at < ?) {type_clause} ORDER BY id LIMIT ?",
                (*args, limit),
            ).fetchall()
            db.executemany(
                "UPDATE results SET claimed_by = ?, claimed_at = ?, attempts = attempts + 1 "
                "WHERE id = ?",
                [(pid, now, row[0]) for row in rows],
            )
        return [
            SpooledResult(row[0], _task_from_json(row[1]), _result_from_json(row[2]))
            for row in rows
        ]

    def delivered(self, row_id: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM results WHERE id = ?", (row_id,))

    def release(self, row_ids: list[int]) -> None:
        """Give claimed rows back (delivery failed; someone may try again)."""
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
