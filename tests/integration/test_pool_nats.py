"""The supervised pool on NATS JetStream: a real nats-server, real processes, real native code."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from helpers import http_get, metric_total, wait_until
from nats_pool_workers import (
    native_mixed,
    native_spin,
    nats_cube,
    nats_square,
    nats_turns_slow,
    stage_count,
    stage_enrich,
    stage_parse,
)

from taskfleet import Configuration, TaskClient, TaskHandler, TaskStatus

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def pool_config(nats_config: Configuration) -> Configuration:
    return nats_config.replace(metrics_address="127.0.0.1:0", kill_grace=0.5)


def test_pool_on_nats_completes_every_task_and_metrics_sum_over_processes(nats_config):
    config = pool_config(nats_config)
    with (
        TaskClient(config) as client,
        TaskHandler([nats_square], config, install_signal_handlers=False) as h,
    ):
        h.start_processes()
        ids = client.submit_many("nats_square", [{"x": i} for i in range(300)])
        outcomes = [client.result(i, timeout=60) for i in ids]

        def executed() -> float:
            body = http_get(h.metrics_url + "/metrics")[1]
            return metric_total(body, "task_execute_time_seconds_count", taskType="nats_square")

        # Per-task metrics reach the scrape within metrics.FLUSH_INTERVAL (0.1 s).
        # At-least-once: a redelivery could add one, never fewer.
        wait_until(lambda: executed() >= 300, timeout=5, what="300 executions in /metrics")
        workers = json.loads(urllib.request.urlopen(h.metrics_url + "/workers").read())["workers"]
    assert [o.status for o in outcomes] == [TaskStatus.COMPLETED] * 300
    assert [o.output["y"] for o in outcomes] == [i * i for i in range(300)]
    assert len({o.output["pid"] for o in outcomes}) == 2
    assert len(workers) == 2


def test_a_segfault_in_native_code_costs_exactly_that_task(nats_config, native_libs):
    config = pool_config(nats_config)
    with (
        TaskClient(config) as client,
        TaskHandler([native_mixed], config, install_signal_handlers=False) as h,
    ):
        h.start_processes()
        before = client.submit_many("native_mixed", [{"n": 2000 + i} for i in range(20)])
        bomb = client.submit("native_mixed", {"n": 1, "crash": True})
        after = client.submit_many("native_mixed", [{"n": 3000 + i} for i in range(20)])
        crashed = client.result(bomb, timeout=60)
        others = [client.result(i, timeout=60) for i in before + after]
        # The result can be read before the counters that go with it reach the scrape.
        wait_until(lambda: h.workers_status()[0]["restarts"] >= 3, what="three restarts")

        def scrape_with_the_dead_letter() -> str | None:
            body = http_get(h.metrics_url + "/metrics")[1]
            dead = metric_total(body, "taskfleet_dead_letters_total", taskType="native_mixed")
            return body if dead >= 1 else None

        body = wait_until(scrape_with_the_dead_letter, what="the dead letter counted")
    assert crashed.status is TaskStatus.FAILED
    assert "SIGSEGV" in crashed.reason
    assert all(o.status is TaskStatus.COMPLETED for o in others)
    # the bomb was delivered 3 times (max_attempts=3), each killed a process
    assert metric_total(body, "taskfleet_dead_letters_total", taskType="native_mixed") == 1
    assert metric_total(body, "taskfleet_nats_redeliveries_total", taskType="native_mixed") >= 1
    assert metric_total(body, "worker_restart_total", taskType="native_mixed") >= 3


def test_a_native_call_that_never_returns_is_stopped_by_the_hard_time_limit(
    nats_config, native_libs
):
    config = pool_config(nats_config)
    with (
        TaskClient(config) as client,
        TaskHandler([native_spin], config, install_signal_handlers=False) as h,
    ):
        h.start_processes()
        submitted = time.monotonic()
        stuck = client.submit("native_spin", {"spin": True})
        outcome = client.result(stuck, timeout=60)
        reported_after = time.monotonic() - submitted
        fine = client.result(client.submit("native_spin", {}), timeout=60)
    assert outcome.status is TaskStatus.FAILED
    assert "time_limit" in outcome.reason
    # Reported by the pool's time limit (1 s), not redelivered after the server's ack wait.
    assert reported_after < config.nats_ack_wait, reported_after
    assert fine.status is TaskStatus.COMPLETED


def test_two_types_two_processes_5000_tasks_one_result_each_and_an_empty_queue(nats_config):
    config = pool_config(nats_config).replace(metrics_address="off")
    workers = [nats_square, nats_cube]
    with (
        TaskClient(config) as client,
        TaskHandler(workers, config, install_signal_handlers=False) as h,
    ):
        h.start_processes()
        squares = client.submit_many("nats_square", [{"x": i} for i in range(2500)])
        cubes = client.submit_many("nats_cube", [{"x": i} for i in range(2500)])
        outcomes = [client.result(i, timeout=120) for i in squares + cubes]
        depth = client.depth("nats_square") + client.depth("nats_cube")
        seen = [o.task_id for o in client.results("nats_square", idle_timeout=1.0)]
        seen += [o.task_id for o in client.results("nats_cube", idle_timeout=1.0)]
    assert all(o.status is TaskStatus.COMPLETED for o in outcomes)
    assert sorted(seen) == sorted(squares + cubes), "exactly one result per task on the subject"
    assert depth == 0


def test_a_three_stage_pipeline_completes_1000_chains(nats_config):
    config = pool_config(nats_config).replace(metrics_address="off")
    stages = [stage_parse, stage_enrich, stage_count]
    with (
        TaskClient(config) as client,
        TaskHandler(stages, config, install_signal_handlers=False) as h,
    ):
        h.start_processes()
        ids = client.submit_many("stage_parse", [{"text": f"w{i} b c"} for i in range(1000)])
        # The last stage's task id is derived from the first: "<id>>stage_enrich>stage_count".
        finals = [
            client.result(f"{i}>stage_enrich>stage_count", timeout=120, task_type="stage_count")
            for i in ids
        ]
        depth = sum(client.depth(t) for t in ("stage_parse", "stage_enrich", "stage_count"))
    assert [f.output["first"] for f in finals] == [f"W{i}" for i in range(1000)]
    assert all(f.output["count"] == 3 for f in finals)
    assert depth == 0


def test_a_cheap_def_handler_that_blocks_the_loop_is_not_killed_as_wedged(nats_config):
    # A def handler proven cheap runs on its process's event loop (its main thread). When a call
    # then blocks for longer than the heartbeat timeout, the process must not be taken for
    # wedged: the task completes, later tasks too, in the same process.
    config = pool_config(nats_config).replace(heartbeat_timeout=2.0)
    with (
        TaskClient(config) as client,
        TaskHandler([nats_turns_slow], config, install_signal_handlers=False) as h,
    ):
        h.start_processes()
        for _ in range(20):  # bounded: each round is 300 cheap calls
            ids = client.submit_many("nats_turns_slow", [{"i": i} for i in range(300)])
            fast = [client.result(i, timeout=60) for i in ids]
            if fast[-1].output["thread"] == "MainThread":
                break
        else:
            pytest.fail("no call ran on the event loop after 6,000 cheap ones")
        slow = client.submit("nats_turns_slow", {"i": -1, "sleep": 4.0})
        time.sleep(0.5)
        later = client.submit_many("nats_turns_slow", [{"i": i} for i in range(10)])
        blocked = client.result(slow, timeout=60)
        rest = [client.result(i, timeout=60) for i in later]
        restarts = h.workers_status()[0]["restarts"]
    pid = fast[-1].output["pid"]
    assert blocked.status is TaskStatus.COMPLETED
    assert blocked.output == {"i": -1, "thread": "MainThread", "pid": pid}
    assert [o.status for o in rest] == [TaskStatus.COMPLETED] * 10
    assert {o.output["pid"] for o in rest} == {pid}
    assert restarts == 0
