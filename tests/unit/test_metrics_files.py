"""Metrics stay bounded: files of dead processes in the multiprocess directory are folded, not
piled up (after 200 recycled processes the directory holds a few files and the totals are all
there), and label values are configured task types, never taken from a message."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from test_metrics_buffer import scrape

from taskfleet import _metrics as metrics
from taskfleet._sources.conductor import task_from_wire

PROCESSES = 200


@pytest.fixture
def multiproc_dir(tmp_path) -> Iterator[str]:
    path = tmp_path / "prom"
    path.mkdir()
    metrics.setup(str(path))
    yield str(path)
    metrics.setup(None)  # back to in-process values for the other tests


def run_and_die(pid: int) -> None:
    """What a worker process writes in its life (prometheus_client names the files by the
    process id taskfleet hands it), then what the supervisor does when it has exited."""
    real = metrics._pid
    metrics._pid = pid
    try:
        m = metrics.get()
        m.taskfleet_tasks_received.labels("resize").inc(3)
        m.task_execute_time_seconds.labels("resize", "COMPLETED").observe(0.02)
        m.active_workers.labels("resize").set(1)
    finally:
        metrics._pid = real
    metrics.mark_process_dead(pid)


def test_two_hundred_recycled_processes_leave_a_flat_directory_and_every_count(multiproc_dir):
    first = 4_000_000  # above any real pid on this machine's default pid_max
    run_and_die(first)
    after_one = sorted(os.listdir(multiproc_dir))
    for pid in range(first + 1, first + PROCESSES):
        run_and_die(pid)
    after_all = sorted(os.listdir(multiproc_dir))
    assert after_all == after_one, "one file per dead process piles up"
    assert len(after_all) <= 2
    samples = scrape(multiproc_dir)
    received = samples[("taskfleet_tasks_received_total", (("taskType", "resize"),))]
    assert received == 3 * PROCESSES
    labels = (("status", "COMPLETED"), ("taskType", "resize"))
    assert samples[("task_execute_time_seconds_count", labels)] == PROCESSES
    bucket = (("le", "0.025"), *labels)
    assert samples[("task_execute_time_seconds_bucket", tuple(sorted(bucket)))] == PROCESSES
    assert samples.get(("active_workers", (("taskType", "resize"),)), 0.0) == 0.0


def test_a_live_process_keeps_its_own_files_beside_the_folded_ones(multiproc_dir):
    run_and_die(4_100_000)
    metrics.get().taskfleet_tasks_received.labels("resize").inc()  # this process, alive
    samples = scrape(multiproc_dir)
    assert samples[("taskfleet_tasks_received_total", (("taskType", "resize"),))] == 4
    assert any(name.endswith(f"_{os.getpid()}.db") for name in os.listdir(multiproc_dir))


def test_a_polled_task_carries_the_type_polled_for_not_the_one_its_message_names():
    # The type labels every metric of the task: a server's (or an impostor's) answer naming
    # another type must not mint new series.
    task = task_from_wire({"taskId": "t-1", "taskDefName": "x" * 200, "taskType": "y"}, "resize")
    assert task.task_type == "resize"


def test_the_empty_files_of_a_process_killed_as_it_started_are_removed_not_fatal(multiproc_dir):
    # kill -9 between creating a metrics file and writing its header leaves 0 bytes.
    for kind in ("counter", "histogram"):
        open(os.path.join(multiproc_dir, f"{kind}_4242.db"), "wb").close()
    metrics.mark_process_dead(4242)
    assert not [n for n in os.listdir(multiproc_dir) if "4242" in n]
