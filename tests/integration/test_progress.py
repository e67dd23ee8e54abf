"""Progress from running handlers through real pools: Conductor IN_PROGRESS updates with partial
output and logs, NATS progress events a TaskClient reads, coalesced so that a handler calling
``progress`` in a tight loop sends few updates, the latest value last, at most one per
``TASKFLEET_PROGRESS_INTERVAL``."""

from __future__ import annotations

import pytest
from helpers import conductor_config, wait_until
from nats_pool_workers import nats_later, nats_progress
from pool_workers import progressing, progressing_async, progressing_for

from taskfleet import TaskClient, TaskHandler, TaskStatus
from taskfleet.testing import ConductorTestServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

STEPS = 10000


@pytest.fixture
def server():
    with ConductorTestServer() as s:
        yield s


@pytest.mark.parametrize("worker", [progressing, progressing_async], ids=["def", "async def"])
def test_conductor_gets_coalesced_in_progress_updates_with_the_latest_output(
    server, tmp_path, worker
):
    server.register_task_def(worker.task_type, response_timeout_seconds=300)
    release = tmp_path / "release"
    task_id = server.enqueue(worker.task_type, {"release": str(release), "steps": STEPS})
    config = conductor_config(server, tmp_path / "state")
    with TaskHandler([worker], config, install_signal_handlers=False) as h:
        h.start_processes()

        def updates() -> list:
            return [o for o in server.job(task_id).history if o.status == "IN_PROGRESS"]

        # The handler is still running (it waits for the release file): the server has its
        # progress with the output of the last call.
        wait_until(
            lambda: updates() and updates()[-1].output == {"done": STEPS},
            what="the latest progress on the server",
        )
        assert server.job(task_id).logs[:1] == ("starting",)
        release.touch()
        assert server.wait_for([task_id], timeout=60)
    job = server.job(task_id)
    assert job.status == "COMPLETED"
    assert job.output["steps"] == STEPS
    sent = updates()
    assert 1 <= len(sent) < 20, f"{STEPS} calls must be coalesced, got {len(sent)} updates"
    # The first update may carry only the log line (it goes out at once); then outputs rise.
    done = [o.output["done"] for o in sent if "done" in o.output]
    assert done == sorted(done) and done[-1] == STEPS
    assert [o.status for o in job.history][-1] == "COMPLETED"


def test_the_progress_interval_setting_reaches_the_worker_processes(server, tmp_path):
    interval = 0.05
    server.register_task_def("progressing_for", response_timeout_seconds=300)
    task_id = server.enqueue("progressing_for", {"seconds": 1.0})
    config = conductor_config(server, tmp_path / "state", progress_interval=interval)
    with TaskHandler([progressing_for], config, install_signal_handlers=False) as h:
        h.start_processes()
        assert server.wait_for([task_id], timeout=60)
    job = server.job(task_id)
    assert job.status == "COMPLETED"
    sent = len([o for o in job.history if o.status == "IN_PROGRESS"])
    elapsed = job.output["elapsed"]
    # At most one update per interval (the first at once) ...
    assert sent <= 1 + elapsed / interval + 1, (sent, elapsed)
    # ... and about that often: at the default of 1 s, a second of progress sends at most two.
    assert sent >= 3, f"{sent} updates in {elapsed:.2f}s at one per {interval}s"


def test_nats_progress_events_reach_the_task_client_then_the_result(nats_config, tmp_path):
    config = nats_config.replace(metrics_address="off")
    release = tmp_path / "release"
    with (
        TaskClient(config) as client,
        TaskHandler([nats_progress], config, install_signal_handlers=False) as h,
    ):
        h.start_processes()
        assert client.progress("none", task_type="nats_progress") is None  # listening from now
        task_id = client.submit("nats_progress", {"release": str(release)})
        seen = []
        for event in client.events(task_id, timeout=60):
            seen.append(event)
            if event.status is TaskStatus.IN_PROGRESS and event.output == {"done": 1000}:
                assert client.progress(task_id) is not None
                release.touch()
    assert seen[-1].status is TaskStatus.COMPLETED and seen[-1].output == {"steps": 1000}
    progress = [e for e in seen if e.status is TaskStatus.IN_PROGRESS]
    assert 1 <= len(progress) < 20
    assert progress[-1].output == {"done": 1000}
    assert any(entry.log == "step 1000" for e in progress for entry in e.logs)


def test_nats_task_in_progress_keeps_its_output(nats_config):
    config = nats_config.replace(metrics_address="off")
    with (
        TaskClient(config) as client,
        TaskHandler([nats_later], config, install_signal_handlers=False) as h,
    ):
        h.start_processes()
        client.progress("warm-up", task_type="nats_later")  # listening before the task exists
        task_id = client.submit("nats_later", {})
        events = list(client.events(task_id, timeout=60))
    assert [e.status for e in events] == [TaskStatus.IN_PROGRESS, TaskStatus.COMPLETED]
    assert events[0].output == {"stage": "waiting"}
    assert events[1].output == {"stage": "done"}
