"""TaskClient from plain sync code: submit, depth, results, and the shared embedded server."""

from __future__ import annotations

import json
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
from helpers import run, wait_until

from taskfleet._client import ResultTimeout, TaskClient
from taskfleet._config import Configuration
from taskfleet._sources.base import PollRequest, WorkerBinding
from taskfleet._sources.nats import NatsSource
from taskfleet._task import TaskStatus

pytestmark = pytest.mark.slow


def work_off(config: Configuration, task_type: str, n: int, *, fail: bool = False) -> None:
    """A minimal worker in this thread: take ``n`` tasks and report each (doubling ``x``)."""

    async def worker() -> None:
        source = NatsSource(config)
        await source.start()
        try:
            await source.prepare([WorkerBinding(task_type, max_attempts=1)])
            done = 0
            while done < n:
                for task in await source.poll(PollRequest(task_type, n - done, 1.0, "w")):
                    if fail:
                        result = task.result(TaskStatus.FAILED, reason="no luck")
                    else:
                        result = task.result(TaskStatus.COMPLETED, {"y": task.input_data["x"] * 2})
                    await source.report(task.slim(), result)
                    done += 1
        finally:
            await source.close()

    run(worker())


def test_submitted_tasks_are_counted_in_depth_and_their_results_come_back(nats_config):
    with TaskClient(nats_config) as client:
        ids = [client.submit("double", {"x": i}, correlation_id="batch") for i in range(3)]
        assert client.depth("double") == 3
        work_off(nats_config, "double", 3)
        outcomes = [client.result(task_id, timeout=10) for task_id in ids]
        assert [o.output["y"] for o in outcomes] == [0, 2, 4]
        assert all(o.ok and o.task_type == "double" and o.attempt == 1 for o in outcomes)
        # The result is published before the ack: wait for the ack to land.
        wait_until(lambda: client.depth("double") == 0, what="the acks")


def test_a_failed_task_reports_its_reason_to_the_client(nats_config):
    with TaskClient(nats_config) as client:
        task_id = client.submit("grumpy", {"x": 1})
        work_off(nats_config, "grumpy", 1, fail=True)
        outcome = client.result(task_id, timeout=10)
        assert outcome.status is TaskStatus.FAILED and "no luck" in outcome.reason


def test_submit_many_pipelines_and_every_result_is_iterated_once(nats_config):
    with TaskClient(nats_config) as client:
        ids = client.submit_many("bulk", ({"x": i} for i in range(300)))
        assert len(set(ids)) == 300
        assert client.depth("bulk") == 300
        worker = threading.Thread(target=work_off, args=(nats_config, "bulk", 300))
        worker.start()
        try:
            seen = set()
            for outcome in client.results("bulk", idle_timeout=10):
                seen.add(outcome.task_id)
                if len(seen) == len(ids):
                    break
        finally:
            worker.join(timeout=60)
        assert seen == set(ids)


def test_resubmitting_the_same_task_id_stores_it_once(nats_config):
    with TaskClient(nats_config) as client:
        client.submit("idem", {"x": 1}, task_id="same")
        client.submit("idem", {"x": 1}, task_id="same")
        assert client.depth("idem") == 1


def test_waiting_for_a_missing_result_times_out(nats_config):
    with TaskClient(nats_config) as client:
        task_id = client.submit("nobody", {"x": 1})
        began = time.monotonic()
        with pytest.raises(ResultTimeout):
            client.result(task_id, timeout=0.5)
        assert time.monotonic() - began < 5


def test_without_a_url_clients_share_one_embedded_server_that_stops_with_the_last(tmp_path):
    config = Configuration.from_env({}, state_dir=str(tmp_path))
    first = TaskClient(config)
    try:
        first.submit("local", {"x": 1})
        with TaskClient(config) as second:
            assert second.depth("local") == 1
        url = json.loads((tmp_path / "nats" / "server.json").read_text())["url"]
    finally:
        first.close()
        first.close()
    parts = urlsplit(url)
    with pytest.raises(OSError), socket.create_connection((parts.hostname, parts.port), 1):
        pass


def test_a_closed_client_refuses_calls(nats_config):
    client = TaskClient(nats_config)
    client.close()
    with pytest.raises(Exception, match="closed"):
        client.submit("x", {})


def test_submit_rides_out_a_moment_without_a_stream_leader(nats_config):
    # A replicated stream has no leader for a moment after it is created or when its leader's
    # node is lost: publishes get "no responders" then. Here the tasks stream is gone for a
    # moment (the same answer) and comes back while the submit waits.
    import asyncio

    import nats

    from taskfleet._nats.connect import ensure_streams
    from taskfleet._nats.wire import Subjects

    config = nats_config.replace(nats_prefix="leaderless")
    stream = Subjects(config.nats_prefix).tasks_stream

    async def on_the_server(action) -> None:
        nc = await nats.connect(config.nats_url)
        try:
            await action(nc.jetstream())
        finally:
            await nc.close()

    with TaskClient(config) as client:
        client.submit("pending", {"n": 1})  # the client has made its streams
        run(on_the_server(lambda js: js.delete_stream(stream)))
        restore = threading.Timer(
            0.8, lambda: asyncio.run(on_the_server(lambda js: ensure_streams(js, config)))
        )
        restore.start()
        try:
            started = time.monotonic()
            task_id = client.submit("pending", {"n": 2})
            waited = time.monotonic() - started
        finally:
            restore.join()
        assert waited >= 0.5  # it did wait for the stream to come back
        assert client.depth("pending") == 1  # stored once: the stream was empty again
        assert task_id
