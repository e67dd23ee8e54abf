"""The supervisor's own source client on its thread, driven from the test's (no processes)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from taskfleet import Task, TaskStatus
from taskfleet import _metrics as metrics
from taskfleet._agent import SourceAgent
from taskfleet._errors import SourceError
from taskfleet._loop import CallTimedOut
from taskfleet._sources.base import WorkerBinding
from taskfleet._sources.memory import MemorySource


class Recording(MemorySource):
    """Remembers what the agent asked of it."""

    def __init__(self) -> None:
        super().__init__()
        self.prepared: list[WorkerBinding] = []
        self.extended: list[str] = []
        self.fail_extends = False
        self.closed = False

    async def prepare(self, workers: Sequence[WorkerBinding]) -> None:
        self.prepared = list(workers)

    async def extend(self, tasks: Sequence[Task]) -> None:
        if self.fail_extends:
            raise SourceError("server down")
        self.extended += [t.task_id for t in tasks]

    async def close(self) -> None:
        self.closed = True


def test_start_provisions_the_workers_and_opens_the_spool_for_this_source(tmp_path):
    source = Recording()
    agent = SourceAgent(source)
    try:
        agent.start([WorkerBinding("resize", processes=2)], tmp_path / "spool.sqlite3")
        assert [b.task_type for b in source.prepared] == ["resize"]
        assert agent.spool is not None and agent.delivery.spool is agent.spool
    finally:
        agent.close(timeout=5)
    assert source.closed


def test_a_report_from_any_thread_is_delivered_and_close_waits_for_it():
    source = Recording()
    task = source.add("resize")
    agent = SourceAgent(source)
    agent.start([WorkerBinding("resize")])
    agent.report(task, task.result(TaskStatus.FAILED, reason="worker lost"))
    agent.close(timeout=5)
    assert source.final(task.task_id).reason_for_incompletion == "worker lost"


def test_results_spooled_while_the_server_was_down_are_flushed_when_asked(tmp_path):
    source = Recording()
    task = source.add("resize")
    agent = SourceAgent(source)
    agent.start([WorkerBinding("resize")], tmp_path / "spool.sqlite3")
    source.fail_reports = 100  # down for longer than the retries (about a second)
    agent.report(task, task.result(TaskStatus.COMPLETED)).result(30)
    assert agent.spool is not None and agent.spool.count() == 1
    assert source.final(task.task_id) is None
    source.fail_reports = 0
    agent.flush_spool().result(5)
    assert agent.spool.count() == 0
    assert source.final(task.task_id).status is TaskStatus.COMPLETED
    agent.close(timeout=5)


def test_lease_extensions_are_counted_and_a_failed_one_is_logged_not_raised(caplog):
    source = Recording()
    tasks = [Task("t1", "resize"), Task("t2", "resize")]
    agent = SourceAgent(source)
    agent.start([WorkerBinding("resize")])
    registry = metrics.get().registry
    before = registry.get_sample_value("taskfleet_lease_extensions_total", {"taskType": "resize"})
    agent.extend(tasks).result(5)
    after = registry.get_sample_value("taskfleet_lease_extensions_total", {"taskType": "resize"})
    assert source.extended == ["t1", "t2"]
    assert after - (before or 0.0) == 2
    source.fail_extends = True
    agent.extend(tasks).result(5)  # does not raise
    assert "lease extension of 2 task(s) failed" in caplog.text
    agent.close(timeout=5)


def test_a_call_that_outlives_its_timeout_is_cancelled():
    agent = SourceAgent(Recording())
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(CallTimedOut):
        agent.call(forever(), timeout=0.05)
    agent.call(asyncio.wait_for(cancelled.wait(), 5), timeout=5)
    agent.close(timeout=5)
