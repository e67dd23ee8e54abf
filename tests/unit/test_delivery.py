"""Result delivery on its own: retries, the spool, rejections and output that cannot be encoded."""

from __future__ import annotations

import asyncio

from taskfleet import Task, TaskResult, TaskStatus
from taskfleet._delivery import Delivery
from taskfleet._errors import SourceError
from taskfleet._sources.memory import MemorySource
from taskfleet._spool import Spool


class Rejecting(MemorySource):
    """A server that refuses every result for good (an unknown task id, say)."""

    async def report(self, task: Task, result: TaskResult, *, chain: bool = False) -> Task | None:
        raise SourceError("404 task not found", retryable=False, status=404)


def _done(task: Task, output: dict) -> TaskResult:
    return task.result(TaskStatus.COMPLETED, output, worker_id="w")


def test_a_retryable_failure_is_retried_until_delivered():
    source = MemorySource()
    task = source.add("t")
    source.fail_reports = 2
    asyncio.run(Delivery(source, None).deliver(task, _done(task, {"n": 1})))
    assert source.final(task.task_id).output_data == {"n": 1}
    assert source.fail_reports == 0


def test_output_that_cannot_be_encoded_is_delivered_as_a_terminal_failure_naming_the_value():
    source = MemorySource()
    task = source.add("t")
    asyncio.run(Delivery(source, None).deliver(task, _done(task, {"blob": object()})))
    final = source.final(task.task_id)
    assert final.status is TaskStatus.FAILED_WITH_TERMINAL_ERROR
    assert "output.blob" in final.reason_for_incompletion
    assert final.exception == "OutputError" and final.output_data == {}


def test_output_that_cannot_be_encoded_still_reaches_the_spool_while_the_server_is_down(tmp_path):
    source = MemorySource()
    task = source.add("t")
    source.fail_reports = 100
    spool = Spool(tmp_path / "spool.sqlite3", "memory")
    delivery = Delivery(source, spool, attempts=1)
    asyncio.run(delivery.deliver(task, _done(task, {"blob": object()})))
    assert spool.count() == 1 and delivery.spool_pending
    source.fail_reports = 0
    assert asyncio.run(delivery.flush()) == 1
    assert source.final(task.task_id).status is TaskStatus.FAILED_WITH_TERMINAL_ERROR
    assert spool.count() == 0 and not delivery.spool_pending
    spool.close()


def test_a_result_the_server_rejects_for_good_is_neither_retried_nor_spooled(tmp_path):
    source = Rejecting()
    task = source.add("t")
    spool = Spool(tmp_path / "spool.sqlite3", "memory")
    delivery = Delivery(source, spool)
    assert asyncio.run(delivery.deliver(task, _done(task, {}))) is None
    assert spool.count() == 0 and delivery.held == 0
    spool.close()


def test_a_chained_task_comes_back_only_when_asked_for():
    source = MemorySource()
    first = source.add("t")
    source.add("t")
    queued = source.queued("t")
    delivery = Delivery(source, None)
    assert asyncio.run(delivery.deliver(first, _done(first, {}), chain=False)) is None
    assert source.queued("t") == queued
    chained = asyncio.run(delivery.deliver(first, _done(first, {}), chain=True))
    assert chained is not None and source.queued("t") == queued - 1


class LosesAnswers(MemorySource):
    """Applies the first report (and hands out a chained task), then loses the answer, as a
    timed-out update-v2 does."""

    lost = 0

    async def report(self, task: Task, result: TaskResult, *, chain: bool = False) -> Task | None:
        handed = await super().report(task, result, chain=chain)
        if not self.lost:
            self.lost += 1
            raise SourceError("POST /tasks/update-v2: read timed out")
        return handed


def test_a_chained_report_retried_after_a_timeout_asks_for_no_second_task():
    source = LosesAnswers()
    first = source.add("t")
    for _ in range(3):
        source.add("t")
    queued = source.queued("t")
    delivery = Delivery(source, None)
    assert asyncio.run(delivery.deliver(first, _done(first, {}), chain=True)) is None
    # The lost answer's task is the server's to time out; the retry took no other.
    assert source.queued("t") == queued - 1
