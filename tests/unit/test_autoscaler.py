"""The backlog each source reports, and the autoscaler's decisions (docs/scaling.md)."""

from __future__ import annotations

import asyncio
import random

import pytest
from helpers import run

from taskfleet._config import Configuration
from taskfleet._errors import ConfigurationError
from taskfleet._options import WorkerOptions, options_from_env
from taskfleet._scaling import Autoscaler
from taskfleet._sources.base import Backlog, PollRequest, WorkerBinding
from taskfleet._sources.conductor import ConductorSource
from taskfleet._sources.memory import MemorySource
from taskfleet._task import TaskStatus
from taskfleet.testing import ConductorTestServer

pytestmark = pytest.mark.timeout(60)


def test_conductor_backlog_asks_all_types_in_one_request_and_reads_a_domain():
    with ConductorTestServer() as server:
        server.enqueue_many("a", [{}] * 4)
        server.enqueue("b", {}, domain="blue")
        server.enqueue("b", {})  # another domain's queue: not counted for "blue:b"
        source = ConductorSource(Configuration.from_env({}, conductor_server_url=server.url))

        async def go() -> dict[str, Backlog]:
            await source.start()
            try:
                await source.poll(PollRequest("a", 1, 0, "w"))  # polled: no longer waiting
                return await source.backlog([WorkerBinding("a"), WorkerBinding("b", domain="blue")])
            finally:
                await source.close()

        assert run(go()) == {"a": Backlog(3), "b": Backlog(1)}
        assert server.request_count("/tasks/queue/sizes") == 1


def test_memory_backlog_counts_waiting_and_held_tasks():
    source = MemorySource()
    for i in range(4):
        source.add("t", {"i": i})

    async def go() -> tuple[dict[str, Backlog], dict[str, Backlog]]:
        tasks = await source.poll(PollRequest("t", 3, 0, "w"))
        before = await source.backlog([WorkerBinding("t"), WorkerBinding("u")])
        await source.report(tasks[0], tasks[0].result(TaskStatus.COMPLETED))
        return before, await source.backlog([WorkerBinding("t")])

    before, after = asyncio.run(go())
    assert before == {"t": Backlog(1, 3), "u": Backlog(0, 0)}
    assert after == {"t": Backlog(1, 2)}
    assert after["t"].depth == 3


@pytest.mark.parametrize(("text", "value"), [("3", 3), ("1-4", (1, 4)), (" 2..2 ", (2, 2))])
def test_processes_is_a_number_or_a_range_in_the_environment(text, value):
    env = {"CONDUCTOR_WORKER_RESIZE_PROCESSES": text}
    assert options_from_env("resize", WorkerOptions(), env).processes == value


@pytest.mark.parametrize("text", ["0", "4-1", "0-2", "1-", "a-b", "1-2-3"])
def test_a_bad_process_range_names_the_variable(text):
    env = {"CONDUCTOR_WORKER_RESIZE_PROCESSES": text}
    with pytest.raises(ConfigurationError, match="CONDUCTOR_WORKER_RESIZE_PROCESSES"):
        options_from_env("resize", WorkerOptions(), env)


@pytest.mark.parametrize("value", [(0, 2), (3, 1), (1, 2, 3), (1.0, 2), 0])
def test_a_bad_process_range_in_code_names_the_option(value):
    with pytest.raises(ConfigurationError, match=r"resize\.processes"):
        WorkerOptions(processes=value).validate("resize")


def test_the_range_is_min_and_max():
    assert WorkerOptions(processes=(1, 4)).process_range == (1, 4)
    assert WorkerOptions(processes=2).process_range == (2, 2)


def scaler(**changes: float) -> Autoscaler:
    settings = {"threshold": 1.0, "up_after": 10.0, "down_after": 60.0, **changes}
    return Autoscaler(1, 4, **settings)  # type: ignore[arg-type]


def test_grows_only_after_the_backlog_stayed_above_the_threshold():
    s = scaler()
    # 2 threads, both busy, 5 waiting: above 1 per free slot (none free counts as one)
    assert s.decide(0.0, 5, 1, 2, 2) == 0
    assert s.decide(5.0, 5, 1, 2, 2) == 0
    assert s.decide(5.5, 0, 1, 2, 2) == 0  # dipped: the clock starts again
    assert s.decide(6.0, 5, 1, 2, 2) == 0
    assert s.decide(16.0, 5, 1, 2, 2) == +1
    # the next addition needs the backlog to stay above for another up_after
    assert s.decide(20.0, 9, 2, 2, 4) == 0
    assert s.decide(26.0, 9, 2, 2, 4) == +1


def test_shrinks_after_the_idle_cool_down_and_never_below_the_minimum():
    s = scaler()
    assert s.decide(0.0, 0, 3, 2, 3) == 0  # 3 running fit in two processes' 4 slots
    assert s.decide(59.0, 0, 3, 2, 3) == 0
    assert s.decide(60.0, 0, 3, 2, 3) == -1
    assert s.decide(61.0, 0, 2, 2, 0) == 0  # one removal per cool-down
    assert s.decide(120.0, 0, 2, 2, 0) == -1
    assert s.decide(500.0, 0, 1, 2, 0) == 0  # the minimum
    # busy slots beyond what one process fewer holds: not idle
    s2 = scaler()
    assert s2.decide(0.0, 0, 2, 2, 3) == 0
    assert s2.decide(100.0, 0, 2, 2, 3) == 0


def test_a_noisy_backlog_around_the_threshold_changes_the_pool_at_most_a_few_times_a_minute():
    rng = random.Random(7)
    s = scaler(up_after=10.0, down_after=60.0)
    processes, threads = 2, 4
    changes: list[float] = []
    now = 0.0
    while now < 600.0:  # ten minutes, a measurement every 0.5 s
        busy = rng.randint(threads * processes - 2, threads * processes)
        free = processes * threads - busy
        waiting = max(0, round(max(1, free) * (1.0 + rng.uniform(-0.6, 0.6))))
        if rng.random() < 0.1:
            waiting = 0  # the queue empties now and then
        step = s.decide(now, waiting, processes, threads, busy)
        if step:
            processes += step
            changes.append(now)
        now += 0.5
    per_minute = [sum(1 for t in changes if m * 60 <= t < (m + 1) * 60) for m in range(10)]
    assert max(per_minute) <= 3, per_minute
    assert len(changes) <= 3, changes  # up to the maximum, and no flapping back down
