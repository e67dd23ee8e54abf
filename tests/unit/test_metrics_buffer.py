"""Buffered per-task metrics in worker processes: nothing is written until flush(), then the
exported numbers are exactly what direct writes would have produced."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.utils import floatToGoString

from taskfleet import TaskStatus
from taskfleet import _metrics as metrics


@pytest.fixture
def multiproc_dir(tmp_path) -> Iterator[str]:
    path = tmp_path / "prom"
    path.mkdir()
    yield str(path)
    metrics.setup(None)  # back to in-process values for the other tests


def scrape(path: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


#: includes values exactly on a bucket bound (0.0005, 5) and past the last one (400)
DURATIONS = [0.0001, 0.0005, 0.0007, 0.003, 0.003, 0.2, 5.0, 7.5, 400.0]


def test_buffered_metrics_are_written_at_flush_and_match_direct_writes(multiproc_dir):
    metrics.setup(multiproc_dir, buffered=True)
    assert metrics.buffering()
    m = metrics.get()
    for d in DURATIONS:
        m.task_execute_time_seconds.labels("t", "COMPLETED").observe(d)
    m.task_poll.labels("t").inc()
    m.taskfleet_tasks_received.labels("t").inc(3)
    m.task_execute_error.labels("t", "ValueError").inc()  # not a per-task metric: at once

    before = scrape(multiproc_dir)
    assert value(before, "task_execute_error_total", taskType="t", exception="ValueError") == 1
    assert value(before, "task_poll_total", taskType="t") == 0
    assert value(before, "task_execute_time_seconds_count", taskType="t", status="COMPLETED") == 0

    metrics.flush()
    after = scrape(multiproc_dir)
    assert value(after, "task_poll_total", taskType="t") == 1
    assert value(after, "taskfleet_tasks_received_total", taskType="t") == 3
    labels = {"taskType": "t", "status": "COMPLETED"}
    assert value(after, "task_execute_time_seconds_count", **labels) == len(DURATIONS)
    assert value(after, "task_execute_time_seconds_sum", **labels) == pytest.approx(sum(DURATIONS))
    for bound in metrics.TIME_BUCKETS:  # cumulative, as Prometheus defines buckets
        got = value(after, "task_execute_time_seconds_bucket", le=floatToGoString(bound), **labels)
        assert got == sum(1 for d in DURATIONS if d <= bound), bound
    assert value(after, "task_execute_time_seconds_bucket", le="+Inf", **labels) == len(DURATIONS)

    metrics.flush()  # nothing new: nothing is written twice
    assert scrape(multiproc_dir) == after


def test_increments_from_many_threads_are_all_counted(multiproc_dir):
    metrics.setup(multiproc_dir, buffered=True)
    poll = metrics.get().task_poll.labels("t")

    def work() -> None:
        for _ in range(5000):
            poll.inc()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(20):
        metrics.flush()  # flushes racing the writers lose nothing
    for t in threads:
        t.join()
    metrics.flush()
    assert value(scrape(multiproc_dir), "task_poll_total", taskType="t") == 20000


def test_without_buffering_every_write_lands_at_once(multiproc_dir):
    metrics.setup(multiproc_dir)
    assert not metrics.buffering()
    metrics.get().task_poll.labels("t").inc()
    assert value(scrape(multiproc_dir), "task_poll_total", taskType="t") == 1


def test_a_forked_child_does_not_write_its_parents_unflushed_values(multiproc_dir):
    metrics.setup(multiproc_dir, buffered=True)
    poll = metrics.get().task_poll.labels("t")
    poll.inc()
    pid = os.fork()
    if pid == 0:  # the child: flushing must not count the parent's increment
        try:
            metrics.flush()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert value(scrape(multiproc_dir), "task_poll_total", taskType="t") == 0
    metrics.flush()
    assert value(scrape(multiproc_dir), "task_poll_total", taskType="t") == 1


def test_a_flush_writes_bucket_totals_not_one_observation_at_a_time(multiproc_dir, monkeypatch):
    metrics.setup(multiproc_dir, buffered=True)
    child = metrics.get().task_execute_time_seconds.labels("t", "COMPLETED")
    for d in DURATIONS:
        child.observe(d)

    def one_at_a_time(*_: object) -> None:
        raise AssertionError("flush fell back to observe() per value")

    monkeypatch.setattr(child._child, "observe", one_at_a_time)
    metrics.flush()
    labels = {"taskType": "t", "status": "COMPLETED"}
    assert value(scrape(multiproc_dir), "task_execute_time_seconds_count", **labels) == 9


def test_a_directory_that_is_gone_is_not_created_again(tmp_path):
    gone = tmp_path / "removed-by-its-pool"
    try:
        metrics.setup(str(gone), buffered=True)
        metrics.get().task_poll.labels("t").inc()  # in-process: works, writes no file
        assert not gone.exists()
        assert metrics.multiproc_dir() is None and not metrics.buffering()
    finally:
        metrics.setup(None)


def test_a_negative_increment_is_refused_at_once_as_prometheus_does(multiproc_dir):
    metrics.setup(multiproc_dir, buffered=True)
    with pytest.raises(ValueError, match="non-negative"):
        metrics.get().task_poll.labels("t").inc(-1)
    metrics.flush()  # nothing bad was queued


def test_failing_flushes_cost_metrics_not_the_worker_and_flushing_resumes(
    multiproc_dir, monkeypatch
):
    from taskfleet import worker_task
    from taskfleet._runner import run_inline
    from taskfleet._sources.memory import MemorySource

    metrics.setup(multiproc_dir, buffered=True)
    real_flush, calls = metrics.flush, []

    def flaky() -> None:
        calls.append(1)
        if len(calls) <= 2:
            raise OSError(28, "No space left on device")
        real_flush()

    monkeypatch.setattr(metrics, "flush", flaky)

    @worker_task("slowish")
    async def slowish() -> dict:
        await asyncio.sleep(0.05)
        return {}

    source = MemorySource()
    ids = [source.add("slowish").task_id for _ in range(10)]  # ~0.5 s: several flushes
    run_inline(slowish, source, max_tasks=10)
    assert all(source.final(i).status is TaskStatus.COMPLETED for i in ids)
    assert len(calls) >= 3  # kept flushing after the failures
    executed = value(
        scrape(multiproc_dir),
        "task_execute_time_seconds_count",
        taskType="slowish",
        status="COMPLETED",
    )
    assert 0 < executed <= 10  # what the failed flushes held is lost; the rest is written
