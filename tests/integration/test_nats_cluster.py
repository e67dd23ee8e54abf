"""A 3-node loopback cluster with R3 streams carries tasks end to end."""

from __future__ import annotations

import threading
import time

import pytest
from helpers import run, wait_until

from taskfleet._client import TaskClient
from taskfleet._config import Configuration
from taskfleet._sources.base import PollRequest, WorkerBinding
from taskfleet._sources.nats import NatsSource
from taskfleet._task import TaskStatus
from taskfleet.testing.nats import nats_cluster

pytestmark = pytest.mark.slow


def test_a_three_node_cluster_serves_tasks_from_replicated_streams(tmp_path):
    with nats_cluster(tmp_path / "cluster", 3) as cluster:
        config = Configuration.from_env(
            {}, nats_url=cluster.url, nats_replicas=3, state_dir=str(tmp_path / "state")
        )

        async def provision_and_describe() -> int:
            source = NatsSource(config)
            await source.start()
            try:
                await source.prepare([WorkerBinding("r3")])
                info = await source._js.stream_info(source.subjects.tasks_stream)
                return 1 + len(info.cluster.replicas or [])
            finally:
                await source.close()

        assert run(provision_and_describe()) == 3
        with TaskClient(config) as client:
            task_id = client.submit("r3", {"x": 1})

            async def work() -> None:
                source = NatsSource(config)
                await source.start()
                try:
                    (task,) = await source.poll(PollRequest("r3", 1, 10.0, "w"))
                    await source.report(task.slim(), task.result(TaskStatus.COMPLETED, {"ok": 1}))
                finally:
                    await source.close()

            run(work())
            assert client.result(task_id, timeout=15).output == {"ok": 1}
            # The result is published before the ack: wait for the ack to land.
            wait_until(lambda: client.depth("r3") == 0, what="the acks")


def test_provisioning_waits_for_a_cluster_that_is_still_electing_its_leaders(tmp_path):
    # Two of three nodes down: no quorum, no meta leader, JetStream cannot answer. They come
    # back while start-up provisions R3 streams, as when a pool starts beside a forming cluster.
    with nats_cluster(tmp_path / "cluster", 3) as cluster:
        first, *others = cluster.servers
        config = Configuration.from_env(
            {}, nats_url=first.url, nats_replicas=3, state_dir=str(tmp_path / "state")
        )
        for node in others:
            node.kill()

        def back_later() -> None:
            time.sleep(4.0)
            for node in others:
                node.start(wait=False)

        async def provision() -> int:
            source = NatsSource(config)
            await source.start()
            try:
                await source.prepare([WorkerBinding("forming")])
                info = await source._js.stream_info(source.subjects.results_stream)
                return 1 + len(info.cluster.replicas or [])
            finally:
                await source.close()

        restarter = threading.Thread(target=back_later)
        restarter.start()
        try:
            assert run(provision()) == 3
        finally:
            restarter.join()
