"""Progress through a runner: a handler calling ``progress`` in a loop sends one update per
``progress_interval`` (``TASKFLEET_PROGRESS_INTERVAL``), the first at once, never more often."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from taskfleet import Task, TaskLog, TaskStatus
from taskfleet._runner import Runner
from taskfleet._sources.memory import MemorySource

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from pool_workers import progressing_for

#: Seconds the handler keeps reporting progress: a bounded loop, measured by the handler.
REPORTING = 1.0


class RecordingSource(MemorySource):
    """Keeps every progress update it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.updates: list[Mapping[str, Any] | None] = []

    async def progress(
        self, task: Task, output: Mapping[str, Any] | None, logs: Sequence[TaskLog]
    ) -> None:
        self.updates.append(output)


def run_with_interval(interval: float) -> tuple[RecordingSource, dict]:
    source = RecordingSource()
    task = source.add("progressing_for", {"seconds": REPORTING})

    async def main() -> None:
        runner = Runner(progressing_for, source, max_tasks=1)
        runner.progress_interval = interval  # as a worker process sets it from its configuration
        await runner.run()

    asyncio.run(main())
    result = source.final(task.task_id)
    assert result is not None and result.status is TaskStatus.COMPLETED
    return source, dict(result.output_data)


def test_a_short_progress_interval_sends_an_update_per_interval_and_never_more():
    interval = 0.05
    source, output = run_with_interval(interval)
    sent = len(source.updates)
    # Never more often than the interval: the first at once, then one per interval at most.
    assert sent <= 1 + output["elapsed"] / interval + 1, (sent, output)
    # And about that often: with the default of 1 s, a second of reporting sends at most two.
    assert sent >= 3, f"{sent} updates in {output['elapsed']:.2f}s at one per {interval}s"
    calls = [u["calls"] for u in source.updates if u is not None]
    assert calls == sorted(calls) and calls[0] == 1 and calls[-1] <= output["calls"]
