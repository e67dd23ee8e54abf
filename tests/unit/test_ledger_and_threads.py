"""The in-flight ledger (shared records the supervisor reads) and the runner's slot threads."""

from __future__ import annotations

import asyncio
import os
import pickle
import threading
import time

import pytest

from taskfleet._ledger import RECORD_SIZE, Ledger, pack_task, unpack_task
from taskfleet._task import Task
from taskfleet._threads import LoopThreads


def _task(task_id: str, **extra: object) -> Task:
    return Task(
        task_id,
        "resize",
        {"big": "x" * 10_000},
        workflow_instance_id="wf-1",
        attempt=3,
        handle="$JS.ACK.S.C.3.9.9.1.0",
        headers={"trace": "abc"},
        **extra,  # type: ignore[arg-type]
    )


def test_a_packed_task_comes_back_without_its_payload():
    task = _task("t-1", output_subject="next")
    back = unpack_task(pickle.loads(pickle.dumps(pack_task(task))))
    assert back.task_id == "t-1" and back.attempt == 3 and back.handle == task.handle
    assert back.headers == {"trace": "abc"} and back.output_subject == "next"
    assert back.input_data == {} and back.raw == {}


def test_the_supervisor_reads_what_the_worker_wrote_in_another_mapping(tmp_path):
    path = tmp_path / "1.ledger"
    supervisor = Ledger.create(path, 3)
    worker = Ledger(path, 3)
    assert supervisor.read() == [(0, 0.0, b""), (0, 0.0, b""), (0, 0.0, b"")]

    worker.put(1, pack_task(_task("t-1")), 123.5)
    records = supervisor.read()
    assert records[0] == (0, 0.0, b"") and records[2] == (0, 0.0, b"")
    seq, started, payload = records[1]  # type: ignore[misc]
    assert seq == 2 and started == 123.5
    assert unpack_task(pickle.loads(payload)).task_id == "t-1"

    worker.clear(1)
    assert supervisor.read()[1] == (4, 0.0, b"")  # cleared: seq moved on, nothing held
    worker.close()
    supervisor.close(remove=True)
    assert not path.exists()


def test_a_record_being_written_reads_as_unknown_not_as_garbage(tmp_path):
    path = tmp_path / "1.ledger"
    supervisor = Ledger.create(path, 1)
    worker = Ledger(path, 1)
    worker.put(0, pack_task(_task("t-1")), 1.0)
    # A writer stopped half-way (killed mid-write) leaves an odd sequence number behind.
    worker._map[0:4] = (3).to_bytes(4, "little")
    assert supervisor.read() == [None]
    worker.clear(0)  # the next complete write makes the record readable again
    assert supervisor.read()[0] is not None
    worker.close()
    supervisor.close(remove=True)


def test_a_task_too_big_for_a_record_is_spilled_to_a_side_file_and_still_read(tmp_path):
    path = tmp_path / "1.ledger"
    supervisor = Ledger.create(path, 2)
    worker = Ledger(path, 2)
    huge = Task("t-1", "resize", headers={"h": "x" * RECORD_SIZE})
    worker.put(1, pack_task(huge), 7.0)
    seq, started, payload = supervisor.read()[1]  # type: ignore[misc]
    assert started == 7.0
    assert unpack_task(pickle.loads(payload)).headers == huge.headers
    side = worker.side_file(1)
    assert os.path.exists(side)
    worker.clear(1)
    assert supervisor.read()[1] == (seq + 2, 0.0, b"")
    assert not os.path.exists(side), "a cleared record's side file is removed"
    worker.close()
    supervisor.close(remove=True)


def test_a_spilled_record_whose_side_file_belongs_to_another_task_reads_as_unknown(tmp_path):
    path = tmp_path / "1.ledger"
    ledger = Ledger.create(path, 1)
    ledger.put(0, pack_task(Task("t-1", "resize", headers={"h": "x" * RECORD_SIZE})), 1.0)
    side = ledger.side_file(0)
    os.remove(side)  # the writer is between clearing the record and spilling the next task
    assert ledger.read() == [None]
    with open(side, "wb") as f:  # a side file stamped for a later write of the record
        f.write((99).to_bytes(4, "little") + b"x")
    assert ledger.read() == [None]
    ledger.close(remove=True)
    assert not os.path.exists(side) and not path.exists()


def test_loop_threads_return_results_and_raise_errors_in_the_caller():
    async def main() -> None:
        threads = LoopThreads(2, "t")

        def boom() -> None:
            raise KeyError("nope")

        assert await threads.run(lambda a, b: a + b, 2, 3) == 5
        with pytest.raises(KeyError, match="nope"):
            await threads.run(boom)
        threads.shutdown()
        with pytest.raises(RuntimeError, match="shut down"):
            threads.run(lambda: None)

    asyncio.run(main())


def test_loop_threads_run_at_most_size_calls_at_once_and_use_them_all():
    running = 0
    peak = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    async def main() -> float:
        threads = LoopThreads(3, "t")
        started = time.monotonic()
        await asyncio.gather(*(threads.run(work) for _ in range(9)))
        threads.shutdown()
        return time.monotonic() - started

    elapsed = asyncio.run(main())
    assert peak == 3
    assert elapsed >= 0.15  # 9 calls of 50 ms, 3 at a time: three rounds at least


def test_a_cancelled_call_that_has_not_started_never_runs():
    ran: list[int] = []
    gate = threading.Event()

    async def main() -> None:
        threads = LoopThreads(1, "t")
        first = threads.run(gate.wait, 5)
        second = threads.run(ran.append, 2)
        second.cancel()
        gate.set()
        assert await first is True
        third = threads.run(ran.append, 3)
        await third
        threads.shutdown()

    asyncio.run(main())
    assert ran == [3]


def test_loop_threads_serve_one_loop_after_another():
    threads = LoopThreads(1, "t")

    async def once(value: int) -> int:
        return await threads.run(lambda: value * 2)

    assert asyncio.run(once(1)) == 2
    assert asyncio.run(once(2)) == 4  # a later asyncio.run takes over the same threads
    threads.shutdown()
