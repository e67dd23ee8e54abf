"""The supervisor of a NATS pool killed -9 (docs/reliability.md, promise 5): its worker processes
stop polling, finish the tasks they hold within the drain timeout while extending those tasks'
leases themselves, hand back what is left, and exit; a new pool takes everything else.

Each pool runs in a process (and session) of its own, so the test can kill its supervisor alone.
The ack wait is short (2 s) and the tasks held at the kill run several ack waits longer: only the
worker processes' own lease extensions keep JetStream from handing them to the second pool,
which is started right after the kill and pulls while the first pool's processes drain."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import pool_process, run, session_pids, wait_until
from test_nats_source import Probe

from taskfleet import TaskClient
from taskfleet._child import ORPHAN_MARGIN
from taskfleet._config import Configuration

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

#: the consumer's ack wait (TASKFLEET_NATS_ACK_WAIT), seconds
ACK_WAIT = 2.0
#: seconds after the drain deadline within which the orphaned processes are gone: less than
#: ORPHAN_MARGIN, so the alarm that ends a stuck process cannot be what ended them
MARGIN = 4.0
assert MARGIN < ORPHAN_MARGIN


def pool_settings(
    config: Configuration, state: Path, drain: float, ack_wait: float = ACK_WAIT
) -> dict[str, Any]:
    return {
        "source": "nats",
        "nats_url": config.nats_url,
        "nats_prefix": config.nats_prefix,
        "nats_ack_wait": ack_wait,
        "state_dir": str(state),
        "metrics_address": "off",
        "drain_timeout": drain,
    }


class Began:
    """The file ``nats_held`` appends ``"<i> <pid>"`` to as each run of a task begins."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def runs(self) -> list[tuple[int, int]]:
        return [
            (int(i), int(pid))
            for i, pid in (line.split() for line in self.path.read_text().splitlines())
        ]

    def count(self) -> Counter[int]:
        return Counter(i for i, _ in self.runs())


def gone_within(sid: int, pids: set[int], seconds: float) -> set[int]:
    """Wait (bounded) until none of ``pids`` and no process of session ``sid`` is alive (zombies
    do not count); returns those still alive."""
    deadline = time.monotonic() + seconds
    while True:
        alive = set(session_pids(sid)) | {p for p in pids if _alive(p)}
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop(proc: Any) -> None:
    """Drain a pool process as systemd would (SIGTERM), bounded."""
    os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=60)


def final_results(config: Configuration, task_type: str) -> tuple[list[Any], list[Any]]:
    """Every result and dead letter of ``task_type``, read from the results stream itself."""

    async def read() -> tuple[list[Any], list[Any]]:
        async with Probe(config) as probe:
            return await probe.results(task_type), await probe.dead(task_type)

    return run(read())


def test_with_the_supervisor_killed_9_nats_processes_finish_their_tasks_once_and_a_new_pool_the_rest(
    nats_config, tmp_path
):
    drain = 15.0
    runs_for = 4 * ACK_WAIT  # running at the kill for well over one ack wait
    began = Began(tmp_path / "began")
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    client_config = nats_config.replace(nats_ack_wait=ACK_WAIT)
    with (
        TaskClient(client_config) as client,
        pool_process(
            first_dir,
            "nats_held",
            module="nats_pool_workers",
            session=True,
            **pool_settings(nats_config, tmp_path / "state1", drain),
        ) as first,
    ):
        # Two processes of two threads: four slots, all taken by the long tasks.
        held = client.submit_many(
            "nats_held",
            [{"i": i, "record": str(began.path), "seconds": runs_for} for i in range(4)],
        )
        wait_until(lambda: len(began.runs()) >= 4, timeout=60, what="four tasks running")
        queued = client.submit_many(
            "nats_held",
            [{"i": i, "record": str(began.path), "seconds": 0.1} for i in range(4, 10)],
        )
        workers = set(session_pids(first.pid)) - {first.pid}
        holders = {pid for _, pid in began.runs()}
        assert len(holders) == 2 and holders <= workers
        os.kill(first.pid, signal.SIGKILL)
        killed, killed_at = time.monotonic(), time.time()
        first.wait(10)
        # A pool that pulls at once: it would be handed any task whose lease lapsed.
        with pool_process(
            second_dir,
            "nats_held",
            module="nats_pool_workers",
            session=True,
            **pool_settings(nats_config, tmp_path / "state2", drain),
        ) as second:
            left = gone_within(first.pid, workers, drain + MARGIN)
            took = time.monotonic() - killed
            outcomes = {i: client.result(i, timeout=120) for i in held + queued}
            stop(second)
    assert left == set(), f"processes of the killed pool still alive {took:.1f}s after the kill"
    assert {i: o.status.value for i, o in outcomes.items()} == dict.fromkeys(
        held + queued, "COMPLETED"
    )

    results, dead = final_results(nats_config, "nats_held")
    assert dead == []
    per_task = Counter(r.task_id for r in results)
    assert per_task == Counter(held + queued), "exactly one result for every task"
    starts = began.count()
    assert starts == Counter(range(10)), "every task began once: none was redelivered"
    pid_of = {r.task_id: json.loads(r.output)["pid"] for r in results}
    first_runs = dict(began.runs())
    # The held tasks were finished by the processes that held them, more than an ack wait after
    # their supervisor died: only their own lease extensions kept them from the second pool.
    ended = {r.task_id: r.end_time_ms / 1000 for r in results}
    assert min(ended[t] for t in held) - killed_at > ACK_WAIT
    assert [pid_of[t] for t in held] == [first_runs[i] for i in range(4)]
    assert all(pid_of[t] in holders for t in held)
    # The queued ones waited for the new pool: the orphans polled no more.
    assert not {pid_of[t] for t in queued} & workers
    assert not {first_runs[i] for i in range(4, 10)} & workers


@pytest.mark.parametrize("max_attempts", [1, 3])
def test_with_the_supervisor_killed_9_nats_processes_hand_back_what_cannot_finish_in_the_drain(
    nats_config, tmp_path, max_attempts
):
    # A long ack wait here: without the hand-back the tasks would come back only once it ran
    # out (max_attempts 3), or be dead-lettered as stranded then (max_attempts 1).
    ack_wait = 120.0
    drain = 2.0
    began = Began(tmp_path / "began")
    release = tmp_path / "release"  # the tasks run until it exists
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    worker = f"nats_held.with_options(max_attempts={max_attempts})"
    client_config = nats_config.replace(nats_ack_wait=ack_wait)
    with TaskClient(client_config) as client:
        with pool_process(
            first_dir,
            worker,
            module="nats_pool_workers",
            session=True,
            **pool_settings(nats_config, tmp_path / "state1", drain, ack_wait),
        ) as first:
            ids = client.submit_many(
                "nats_held",
                [{"i": i, "record": str(began.path), "release": str(release)} for i in range(4)],
            )
            wait_until(lambda: len(began.runs()) >= 4, timeout=60, what="four tasks running")
            workers = set(session_pids(first.pid)) - {first.pid}
            os.kill(first.pid, signal.SIGKILL)
            first.wait(10)
            left = gone_within(first.pid, workers, drain + MARGIN)
        assert left == set(), "the killed pool's processes exit once they handed back"
        assert final_results(nats_config, "nats_held") == ([], []), "a hand-back is no outcome"
        release.touch()
        with pool_process(
            second_dir,
            worker,
            module="nats_pool_workers",
            session=True,
            **pool_settings(nats_config, tmp_path / "state2", drain, ack_wait),
        ) as second:
            # Bounded well within the ack wait: back in the queue at once, not by its clock.
            outcomes = [client.result(i, timeout=ack_wait / 2) for i in ids]
            stop(second)
    assert [o.status.value for o in outcomes] == ["COMPLETED"] * 4

    results, dead = final_results(nats_config, "nats_held")
    assert dead == [], "a hand-back uses up no delivery: nothing is dead-lettered"
    assert Counter(r.task_id for r in results) == Counter(ids), "exactly one result a task"
    assert all(r.status == r.COMPLETED for r in results)
    assert not {json.loads(r.output)["pid"] for r in results} & workers, "done by the new pool"
    assert began.count() == Counter(dict.fromkeys(range(4), 2)), "begun once by each pool"
    if max_attempts == 1:
        # Handed back on its only delivery: published again, so the next pool's run is a first.
        assert [r.attempt for r in results] == [1] * 4
