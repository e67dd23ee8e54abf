"""The server dies under a connected worker: it reconnects and nothing is lost."""

from __future__ import annotations

import nats.errors
import pytest
from helpers import run

from taskfleet._client import TaskClient
from taskfleet._config import Configuration
from taskfleet._errors import SourceError
from taskfleet._sources.base import PollRequest, WorkerBinding
from taskfleet._sources.nats import NatsSource
from taskfleet._task import TaskStatus
from taskfleet.testing.nats import embedded_nats

pytestmark = [pytest.mark.slow, pytest.mark.chaos]


def test_a_worker_survives_a_killed_and_restarted_server_without_losing_tasks(tmp_path):
    with embedded_nats(tmp_path / "store") as server:
        # A short ack wait: an ack still in the client's buffer when the server died is lost,
        # and that task is redelivered (at least once) — the loop below takes it again.
        config = Configuration.from_env(
            {}, nats_url=server.url, state_dir=str(tmp_path), nats_ack_wait=2.0
        )
        with TaskClient(config) as client:
            ids = client.submit_many("sturdy", [{"x": i} for i in range(20)])

        async def scenario() -> set[str]:
            source = NatsSource(config)
            await source.start()
            await source.prepare([WorkerBinding("sturdy")])
            done: set[str] = set()
            try:
                first = await source.poll(PollRequest("sturdy", 5, 2.0, "w"))
                for task in first:
                    await source.report(task.slim(), task.result(TaskStatus.COMPLETED))
                    done.add(task.task_id)
                server.kill()  # SIGKILL: no clean JetStream shutdown
                server.start()  # same store, same port
                while True:
                    try:
                        if len(done) == len(ids) and not await _depth(source, "sturdy"):
                            break
                        tasks = await source.poll(PollRequest("sturdy", 5, 1.0, "w"))
                        for task in tasks:
                            await source.report(task.slim(), task.result(TaskStatus.COMPLETED))
                            done.add(task.task_id)
                    except (SourceError, nats.errors.Error):
                        continue  # reconnecting; the runner backs off here
            finally:
                await source.close()
            return done

        assert run(scenario(), timeout=90) == set(ids)
        with TaskClient(config) as client:
            assert all(client.result(i, timeout=10, task_type="sturdy").ok for i in ids)


async def _depth(source: NatsSource, task_type: str) -> int:
    subject = source.subjects.task(task_type)
    info = await source._js.stream_info(source.subjects.tasks_stream, subjects_filter=subject)
    return int((info.state.subjects or {}).get(subject, 0))
