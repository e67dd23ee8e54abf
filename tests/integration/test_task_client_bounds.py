"""TaskClient's memory is bounded: outcomes by number and age, submitted ids by number, and one
subscription per watched type however many calls watch it at once."""

from __future__ import annotations

import asyncio
import time

import pytest
from helpers import run

from taskfleet._client import TaskClient
from taskfleet._nats.connect import connect
from taskfleet._nats.wire import Subjects, encode_result
from taskfleet._task import Task, TaskResult

pytestmark = pytest.mark.slow


def publish_results(config, task_type: str, ids: list[str]) -> None:
    """Final results on the results subject, as a pool publishes them."""
    subjects = Subjects(config.nats_prefix)

    async def publish() -> None:
        nc = await connect(config, config.nats_urls)
        js = nc.jetstream()
        for task_id in ids:
            task = Task(task_id=task_id, task_type=task_type)
            await js.publish(subjects.result(task_type), encode_result(task, TaskResult(task_id)))
        await nc.close()

    run(publish())


def test_kept_outcomes_and_submitted_ids_are_bounded_by_number_and_age(nats_config):
    with TaskClient(nats_config, max_results=5, results_max_age=1.0) as client:
        ids = client.submit_many("many", [{"n": i} for i in range(12)])
        assert len(client._types) == 5 and list(client._types) == ids[-5:]
        publish_results(nats_config, "many", ids)
        outcome = client.result(ids[-1], task_type="many", timeout=10)
        assert outcome.task_id == ids[-1]
        assert len(client._outcomes) <= 5
        assert list(client._outcomes)[-1] == ids[-1]
        time.sleep(1.2)
        publish_results(nats_config, "many", ["late"])
        assert client.result("late", task_type="many", timeout=10).task_id == "late"
        assert list(client._outcomes) == ["late"], "outcomes older than the age bound stay"


def test_two_concurrent_watches_of_one_type_subscribe_once(nats_config):
    subjects = Subjects(nats_config.nats_prefix)
    with TaskClient(nats_config) as client:

        async def watch_twice_and_count() -> int:
            await asyncio.gather(client._watch("both"), client._watch("both"))
            info = await client._js.stream_info(subjects.results_stream)
            return int(info.state.consumer_count)

        assert client._call(watch_twice_and_count()) == 1
