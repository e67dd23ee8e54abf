"""10,000 hostile messages on a NATS task subject: each ends failed or dead-lettered with a
reason, no worker process crashes, and memory stays flat."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path

import nats
import pytest
from chaos_workers import hostile
from helpers import report

from taskfleet import Configuration, TaskClient, TaskHandler, TaskStatus
from taskfleet._nats.server import NatsServer
from taskfleet._proto.taskfleet.v1 import task_pb2

MESSAGES = 10_000


def _message(i: int, rng: random.Random) -> tuple[str, bytes]:
    """(kind, bytes) for message i: undecodable, malformed, wrongly typed, huge or deep."""

    def task(input_bytes: bytes, task_id: str = f"h{i}") -> bytes:
        return task_pb2.Task(id=task_id, type="hostile", input=input_bytes).SerializeToString()

    kind = i % 7
    if i % 50 == 49:
        return "huge", task(b'{"x": "' + b"a" * 200_000 + b'"}')
    if kind == 0:
        return "random bytes", rng.randbytes(rng.randint(1, 300))
    if kind == 1:
        return "malformed json", task(b'{"x": 1,,')
    if kind == 2:
        return "wrong type", task(b'{"x": "not a number"}')
    if kind == 3:
        return "deep nesting", task(b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    if kind == 4:
        return "not an object", task(b"[1, 2, 3]")
    if kind == 5:
        return "no id", task(b'{"x": 1}', task_id="")
    return "missing parameter", task(b'{"y": 1}')


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _publish_all(url: str, subject: str, payloads: list[bytes]) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        for start in range(0, len(payloads), 500):
            chunk = payloads[start : start + 500]
            await asyncio.gather(*(js.publish(subject, p, timeout=30) for p in chunk))
    finally:
        await nc.close()


@pytest.mark.timeout(600)
def test_10000_hostile_inputs_fail_with_reasons_and_crash_nothing(tmp_path):
    rng = random.Random(5)
    made = [_message(i, rng) for i in range(MESSAGES)]
    kinds = Counter(kind for kind, _ in made)
    with NatsServer(tmp_path / "nats") as server:
        config = Configuration.from_env(
            {}, nats_url=server.url, state_dir=str(tmp_path / "state"), metrics_address="off"
        )
        with (
            TaskClient(config) as client,
            TaskHandler([hostile], config, install_signal_handlers=False) as handler,
        ):
            handler.start_processes()
            deadline = time.monotonic() + 30
            while not all(w["state"] == "running" for w in handler.workers_status()):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            pids = [w["pid"] for w in handler.workers_status()]
            rss_before = sum(_rss_mib(p) for p in pids)
            asyncio.run(_publish_all(server.url, "taskfleet.tasks.hostile", [b for _, b in made]))
            outcomes = []
            for outcome in client.results("hostile", idle_timeout=20.0):
                outcomes.append(outcome)
                if len(outcomes) == MESSAGES:
                    break
            rss_after = sum(_rss_mib(p) for p in pids)
            # each result is published before its task is settled: wait for the last acks
            deadline = time.monotonic() + 30
            while (depth := client.depth("hostile")) and time.monotonic() < deadline:
                time.sleep(0.1)
            restarts = sum(w["restarts"] for w in handler.workers_status())
    statuses = Counter(o.status for o in outcomes)
    report(
        f"hostile inputs: {MESSAGES} messages ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})"
        f" -> {len(outcomes)} failed results with a reason, {statuses[TaskStatus.COMPLETED]}"
        f" completed, {restarts} worker crashes, worker RSS {rss_before:.0f} -> {rss_after:.0f} MiB"
    )
    assert len(outcomes) == MESSAGES
    assert statuses[TaskStatus.COMPLETED] == 0
    assert all(o.reason for o in outcomes)
    assert restarts == 0
    assert depth == 0
    assert rss_after - rss_before < 100
