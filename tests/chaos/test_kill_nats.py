"""kill -9 of a random child every 0.5 s during a 2,000-task run on the NATS path."""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest
from chaos_workers import chaos_work
from helpers import killer, live_pids, report

from taskfleet import Configuration, TaskClient, TaskHandler, TaskStatus
from taskfleet._nats.server import NatsServer

TASKS = int(os.environ.get("TASKFLEET_CHAOS_TASKS", "2000"))


@pytest.mark.timeout(300)
def test_kill_9_every_half_second_loses_no_task_on_nats(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    with NatsServer(tmp_path / "nats") as server:
        config = Configuration.from_env(
            {},
            nats_url=server.url,
            state_dir=str(tmp_path / "state"),
            metrics_address="off",
            nats_ack_wait=5.0,  # bounds the one window the supervisor cannot see
            nats_max_deliver=20,
        )
        started = time.monotonic()
        with (
            TaskClient(config) as client,
            TaskHandler([chaos_work], config, install_signal_handlers=False) as handler,
        ):
            handler.start_processes()
            ids = client.submit_many(
                "chaos_work", [{"n": i, "runs": str(runs)} for i in range(TASKS)]
            )
            with killer(lambda: live_pids(handler), every=0.5) as killed:
                outcomes = [client.result(i, timeout=240) for i in ids]
            elapsed = time.monotonic() - started
    executions = Counter()
    for path in runs.iterdir():
        executions.update(int(line) for line in path.read_text().split())
    completed = sum(o.status is TaskStatus.COMPLETED for o in outcomes)
    twice = sum(1 for n in range(TASKS) if executions[n] > 1)
    report(
        f"nats: {TASKS} tasks, {len(killed)} kill -9, {completed} completed,"
        f" {TASKS - completed} lost, {twice} ran more than once"
        f" (handler finished twice; killed mid-task runs are not counted), {elapsed:.1f}s"
    )
    assert completed == TASKS
    assert sorted(o.output["n"] for o in outcomes) == list(range(TASKS))
    assert len(killed) >= 3
