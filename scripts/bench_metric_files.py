"""Scrape time and file count of the multiprocess metrics directory after N processes have come
and gone, with dead processes' files folded (what the supervisor does) and left in place (what
prometheus_client alone does). Results go to docs/benchmarks.md by hand.

    .venv/bin/python scripts/bench_metric_files.py [N ...]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from prometheus_client import multiprocess

from taskfleet import _metrics as metrics
from taskfleet._admin import render_metrics


def one_life(pid: int, fold: bool) -> None:
    real = metrics._pid
    metrics._pid = pid
    try:
        m = metrics.get()
        for task_type in ("resize", "thumbnail"):
            m.taskfleet_tasks_received.labels(task_type).inc(3)
            m.task_poll.labels(task_type).inc()
            m.task_execute_time_seconds.labels(task_type, "COMPLETED").observe(0.02)
            m.task_update_time_seconds.labels(task_type, "COMPLETED").observe(0.002)
            m.active_workers.labels(task_type).set(1)
    finally:
        metrics._pid = real
    if fold:
        metrics.mark_process_dead(pid)
    else:
        multiprocess.mark_process_dead(pid, metrics.multiproc_dir())


def measure(n: int, fold: bool) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as path:
        metrics.setup(path)
        for pid in range(4_000_000, 4_000_000 + n):
            one_life(pid, fold)
        files = len(os.listdir(path))
        start = time.perf_counter()
        rounds = 20
        for _ in range(rounds):
            render_metrics()
        per_scrape = (time.perf_counter() - start) / rounds
        metrics.setup(None)
    return files, per_scrape


def main() -> None:
    counts = [int(a) for a in sys.argv[1:]] or [0, 200, 2000]
    print("| dead processes | files, folded | scrape, folded | files, left | scrape, left |")
    print("|---:|---:|---:|---:|---:|")
    for n in counts:
        folded = measure(n, fold=True)
        left = measure(n, fold=False)
        print(
            f"| {n} | {folded[0]} | {folded[1] * 1000:.1f} ms | {left[0]} |"
            f" {left[1] * 1000:.1f} ms |"
        )


if __name__ == "__main__":
    main()
