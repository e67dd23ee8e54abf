"""Results spooled for the embedded server are delivered by the next pool on the same state
directory, though that pool starts the server anew."""

from __future__ import annotations

import pytest
from helpers import run
from test_nats_source import Probe, poll_one, started

from taskfleet._config import Configuration
from taskfleet._delivery import Delivery
from taskfleet._sources.base import WorkerBinding
from taskfleet._spool import Spool
from taskfleet._task import TaskStatus

pytestmark = pytest.mark.slow


def test_results_spooled_for_the_embedded_server_are_delivered_after_a_restart(tmp_path):
    config = Configuration.from_env({}, source="nats", state_dir=str(tmp_path / "state"))
    spool_path = tmp_path / "state" / "spool.sqlite3"

    async def before_the_restart() -> None:
        source = await started(config, WorkerBinding("echo"))
        try:
            async with Probe(source.worker_config(config)) as probe:
                await probe.submit("echo", "t-1", {"x": 1})
            task = await poll_one(source, "echo")
            result = task.result(TaskStatus.COMPLETED, {"y": 2}, worker_id="w1")
            # The server could not take the result (an outage): it waits in the spool.
            spool = Spool(spool_path, source.spool_key())
            spool.put(task.slim(), result)
            spool.close()
        finally:
            await source.close()  # the last lease: the embedded server stops

    async def after_the_restart() -> None:
        source = await started(config, WorkerBinding("echo"))
        spool = Spool(spool_path, source.spool_key())
        try:
            assert spool.count() == 1, "the next pool does not see the spooled result as its own"
            assert await Delivery(source, spool).flush() == 1
            async with Probe(source.worker_config(config)) as probe:
                (only,) = await probe.results("echo")
                assert only.task_id == "t-1" and only.output == b'{"y":2}'
                assert await probe.tasks_left("echo") == 0
        finally:
            spool.close()
            await source.close()

    run(before_the_restart())
    run(after_the_restart())
