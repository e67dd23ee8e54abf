"""The result spool and its delivery under bad rows, refused results, disk and file faults."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time

import pytest

from taskfleet import Task, TaskResult, TaskStatus
from taskfleet import _spool as spool_module
from taskfleet._delivery import Delivery
from taskfleet._errors import SourceError
from taskfleet._sources.memory import MemorySource
from taskfleet._spool import Spool


def _result(task: Task, **output: object) -> TaskResult:
    return task.result(TaskStatus.COMPLETED, output_data=dict(output))


class PickySource(MemorySource):
    """Refuses some tasks' results: retryably (``bad``) or for good (``refused``, like a result
    over the server's size limit)."""

    def __init__(self) -> None:
        super().__init__()
        self.bad: set[str] = set()
        self.refused: set[str] = set()

    async def report(self, task: Task, result: TaskResult, *, chain: bool = False) -> Task | None:
        if task.task_id in self.bad:
            raise SourceError(f"cannot take {task.task_id} now")
        if task.task_id in self.refused and result.output_data:
            raise SourceError(
                "output is 2.0 MB; the server accepts at most 1 MB", rejects_result=True
            )
        return await super().report(task, result, chain=chain)


def _spooled(spool: Spool, *ids: str) -> list[Task]:
    tasks = [Task(task_id=i, task_type="t") for i in ids]
    for task in tasks:
        spool.put(task, _result(task, v=task.task_id))
    return tasks


def test_a_row_that_keeps_failing_never_blocks_the_rows_behind_it_and_is_given_up(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(spool_module, "RETRY_BASE", 0.0)  # no wait between attempts
    spool = Spool(tmp_path / "s.db", "memory")
    source = PickySource()
    source.bad = {"a"}
    _spooled(spool, "a", "b", "c")
    delivery = Delivery(source, spool)

    async def flush_until_done() -> int:
        asyncio.get_running_loop()
        delivery._last_ok = time.monotonic()  # the server took a result a moment ago
        total = 0
        for _ in range(spool_module.MAX_ATTEMPTS + 5):
            try:
                total += await delivery.flush("t")
            except SourceError:
                pass
            if spool.count("t") == 0:
                break
        return total

    assert asyncio.run(flush_until_done()) == 2
    assert source.final("b") is not None and source.final("c") is not None
    assert spool.count() == 0
    assert spool.dead_counts() == {"t": 1}
    (dead,) = spool.dead()
    assert dead["task_id"] == "a"
    assert dead["attempts"] == spool_module.MAX_ATTEMPTS
    assert "gave up after 100 failed deliveries" in dead["reason"]
    assert "cannot take a now" in dead["reason"]
    spool.close()


def test_an_outage_costs_a_row_no_attempt(tmp_path):
    spool = Spool(tmp_path / "s.db", "memory")
    source = PickySource()
    _spooled(spool, "a", "b")
    source.fail_reports = 1000  # the server is down: nothing has been delivered for a while
    delivery = Delivery(source, spool)
    for _ in range(20):
        with pytest.raises(SourceError):
            asyncio.run(delivery.flush("t"))
    source.fail_reports = 0
    assert asyncio.run(delivery.flush("t")) == 2
    assert spool.dead_counts() == {}
    spool.close()


def test_a_result_the_server_refuses_for_good_is_reported_failed_without_its_output(tmp_path):
    source = PickySource()
    task = source.add("t", {})
    source.refused = {task.task_id}
    delivery = Delivery(source, None)
    asyncio.run(delivery.deliver(task, _result(task, blob="x" * 100)))
    final = source.final(task.task_id)
    assert final is not None
    assert final.status is TaskStatus.FAILED_WITH_TERMINAL_ERROR
    assert final.output_data == {}
    assert final.reason_for_incompletion == (
        "result refused by the server: output is 2.0 MB; the server accepts at most 1 MB"
    )


def test_a_spooled_result_the_server_refuses_is_reported_failed_not_retried(tmp_path):
    spool = Spool(tmp_path / "s.db", "memory")
    source = PickySource()
    source.refused = {"a"}
    _spooled(spool, "a")
    assert asyncio.run(Delivery(source, spool).flush("t")) == 1
    final = source.final("a")
    assert final is not None and final.status is TaskStatus.FAILED_WITH_TERMINAL_ERROR
    assert spool.count() == 0
    spool.close()


def test_an_undecodable_row_is_moved_to_the_dead_table_and_the_others_are_delivered(tmp_path):
    spool = Spool(tmp_path / "s.db", "memory")
    _spooled(spool, "a", "b")
    raw = sqlite3.connect(tmp_path / "s.db")
    raw.execute("UPDATE results SET result = '{not json' WHERE task LIKE '%\"a\"%'")
    raw.commit()
    raw.close()
    source = PickySource()
    assert asyncio.run(Delivery(source, spool).flush("t")) == 1
    assert source.final("b") is not None
    (dead,) = spool.dead()
    assert dead["task_id"] == "a" and dead["reason"].startswith("undecodable row: ")
    assert spool.count() == 0
    spool.close()


def test_a_corrupt_spool_file_is_moved_aside_with_a_warning_naming_both_paths(tmp_path, caplog):
    path = tmp_path / "spool.sqlite3"
    path.write_bytes(b"this is not a database, it was overwritten " * 100)
    with caplog.at_level(logging.WARNING, "taskfleet.spool"):
        spool = Spool(path, "memory")
    assert spool.moved_aside is not None
    assert spool.moved_aside.read_bytes().startswith(b"this is not a database")
    (record,) = caplog.records
    assert str(path) in record.getMessage() and str(spool.moved_aside) in record.getMessage()
    task = Task(task_id="a", task_type="t")
    spool.put(task, _result(task))  # the fresh spool works
    assert spool.count() == 1
    spool.close()


def test_a_failed_spool_write_keeps_the_result_in_memory_and_delivers_it_later(tmp_path):
    spool = Spool(tmp_path / "s.db", "memory")
    _spooled(spool, "filler")
    # A full disk, for real as far as SQLite is concerned: no page may be added to the file.
    pages = spool._db.execute("PRAGMA page_count").fetchone()[0]
    spool._db.execute(f"PRAGMA max_page_count = {pages}")
    source = PickySource()
    task = source.add("t", {})
    source.fail_reports = 1000
    delivery = Delivery(source, spool, attempts=1)
    with pytest.raises(sqlite3.OperationalError, match="full"):
        spool.put(task, _result(task, blob="x" * 50_000))
    asyncio.run(delivery.deliver(task, _result(task, blob="x" * 50_000)))
    assert delivery.spool_pending and len(delivery._held) == 1
    source.fail_reports = 0
    assert asyncio.run(delivery.flush("t")) == 2  # the held result and the spooled one
    final = source.final(task.task_id)
    assert final is not None and final.output_data["blob"] == "x" * 50_000
    assert not delivery._held
    spool.close()


def test_spool_writes_run_off_the_event_loop(tmp_path):
    spool = Spool(tmp_path / "s.db", "memory")
    # Another connection holds the write lock: a spool write waits for it (up to its timeout).
    blocker = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    source = MemorySource()
    source.fail_reports = 1000
    delivery = Delivery(source, spool, attempts=1)
    task = Task(task_id="a", task_type="t")
    ticks = 0

    async def main() -> None:
        nonlocal ticks
        writing = asyncio.create_task(delivery.deliver(task, _result(task)))
        for _ in range(20):  # the loop keeps turning while the write waits
            await asyncio.sleep(0.01)
            ticks += 1
        assert not writing.done()
        blocker.execute("COMMIT")  # the lock is free: the write goes through
        await writing

    asyncio.run(main())
    assert ticks == 20
    assert spool.count() == 1
    spool.close()
    blocker.close()


def test_a_spooled_row_that_always_fails_does_not_stop_its_type_from_polling(tmp_path):
    from taskfleet import worker_task
    from taskfleet._runner import Runner

    @worker_task("t")
    def work(n: int) -> dict:
        return {"n": n}

    spool = Spool(tmp_path / "s.db", "memory")
    source = PickySource()
    source.bad = {"stuck"}
    _spooled(spool, "stuck")
    tasks = [source.add("t", {"n": n}) for n in range(20)]
    asyncio.run(Runner(work, source, spool=spool, max_tasks=20).run())
    assert all(source.final(t.task_id) is not None for t in tasks)
    assert spool.count() == 1  # still waiting its turn (or its age), never in the way


class FakePool:
    def __init__(self, workers: list[dict]) -> None:
        self.workers = workers

    def alive(self) -> bool:
        return True

    def workers_status(self) -> list[dict]:
        return self.workers


def _proc(task_type: str, last_poll: float, **kw: object) -> dict:
    w = {"task_type": task_type, "state": "running", "threads": 2, "in_flight": 0}
    w.update(up_seconds=600.0, last_poll=last_poll, paused=False)
    w.update(kw)
    return w


def test_healthz_names_a_task_type_that_has_not_polled_for_long():
    from taskfleet._admin import health

    now = 10_000.0
    pool = FakePool([_proc("a", now - 1), _proc("b", now - 300), _proc("b", now - 200)])
    assert health(pool, now) == (False, "b has not polled for 200s")  # type: ignore[arg-type]
    # Busy, paused, just started, or one process of the type still polling: all fine.
    for fine in (
        _proc("b", now - 300, in_flight=2),
        _proc("b", now - 300, paused=True),
        _proc("b", 0.0, up_seconds=5.0),
        _proc("b", now - 2),
    ):
        pool.workers[2] = fine
        assert health(pool, now) == (True, "ok")  # type: ignore[arg-type]
