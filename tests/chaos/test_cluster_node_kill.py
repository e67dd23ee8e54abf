"""A 3-node NATS cluster with R3 streams: one node killed -9 mid-run costs no task."""

from __future__ import annotations

import time

import pytest
from chaos_workers import chaos_work
from helpers import report

from taskfleet import Configuration, TaskClient, TaskHandler, TaskStatus
from taskfleet.testing.nats import nats_cluster

TASKS = 1000


@pytest.mark.timeout(300)
def test_killing_one_node_of_three_mid_run_loses_no_task(tmp_path):
    with nats_cluster(tmp_path / "cluster", 3) as cluster:
        config = Configuration.from_env(
            {},
            nats_url=cluster.url,
            nats_replicas=3,
            nats_ack_wait=5.0,
            state_dir=str(tmp_path / "state"),
            metrics_address="off",
        )
        started = time.monotonic()
        with (
            TaskClient(config) as client,
            TaskHandler([chaos_work], config, install_signal_handlers=False) as handler,
        ):
            handler.start_processes()
            ids = client.submit_many("chaos_work", [{"n": i} for i in range(TASKS)])
            # let a part of the run go by, then kill -9 one node (not the first: clients list it
            # first, so this also exercises the ones connected elsewhere moving over)
            client.result(ids[100], timeout=120)
            cluster.servers[1].kill()
            outcomes = [client.result(i, timeout=180) for i in ids]
        elapsed = time.monotonic() - started
    completed = sum(o.status is TaskStatus.COMPLETED for o in outcomes)
    report(
        f"nats cluster: {TASKS} tasks on 3 nodes (R3), one node killed -9 mid-run,"
        f" {completed} completed, {TASKS - completed} lost, {elapsed:.1f}s"
    )
    assert completed == TASKS
