"""The runner's loop, in one process over the in-memory source: execute, report, retry, spool."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import pickle
import threading
import time
from dataclasses import dataclass, replace
from typing import ClassVar

import pytest

from taskfleet import NonRetryableError, Task, TaskInProgress, TaskStatus, add_log, worker_task
from taskfleet import _metrics as metrics
from taskfleet import _runner as runner_module
from taskfleet._control import ControlClient
from taskfleet._delivery import Delivery
from taskfleet._ledger import RECORD_SIZE, Ledger, unpack_task
from taskfleet._runner import Runner, run_inline
from taskfleet._sources.memory import MemorySource
from taskfleet._spool import Spool


@worker_task("add")
def add(x: int, y: int) -> dict:
    add_log(f"adding {x} and {y}")
    return {"sum": x + y}


@dataclass
class Point:
    x: float
    y: float


@worker_task("norm", threads=2)
async def norm(p: Point) -> float:
    await asyncio.sleep(0)
    return (p.x**2 + p.y**2) ** 0.5


def test_completed_results_carry_output_and_logs():
    source = MemorySource()
    t = source.add("add", {"x": 2, "y": 3})
    run_inline(add, source, max_tasks=1)
    result = source.final(t.task_id)
    assert result is not None and result.status is TaskStatus.COMPLETED
    assert result.output_data == {"sum": 5}
    assert [entry.log for entry in result.logs] == ["adding 2 and 3"]


def test_async_handler_gets_dataclass_input_and_scalar_output_under_result():
    source = MemorySource()
    t = source.add("norm", {"p": {"x": 3, "y": 4}})
    run_inline(norm, source, max_tasks=1)
    assert source.final(t.task_id).output_data == {"result": 5.0}


def test_input_that_does_not_fit_fails_terminally_naming_the_parameter_and_the_worker_goes_on():
    source = MemorySource()
    bad = source.add("add", {"x": "two", "y": 3})
    good = source.add("add", {"x": 1, "y": 1})
    run_inline(add, source, max_tasks=2)
    result = source.final(bad.task_id)
    assert result.status is TaskStatus.FAILED_WITH_TERMINAL_ERROR
    assert "x" in result.reason_for_incompletion
    assert source.final(good.task_id).output_data == {"sum": 2}


def test_unserialisable_output_fails_the_task_with_a_reason():
    @worker_task("bad_output")
    def bad_output() -> dict:
        return {"y": [object()]}

    source = MemorySource()
    t = source.add("bad_output")
    run_inline(bad_output, source, max_tasks=1)
    result = source.final(t.task_id)
    assert result.status is TaskStatus.FAILED_WITH_TERMINAL_ERROR
    assert "output.y[0]" in result.reason_for_incompletion


def test_exceptions_fail_retryably_and_non_retryable_errors_terminally():
    calls = {"n": 0}

    @worker_task("flaky")
    def flaky(kind: str) -> dict:
        calls["n"] += 1
        if kind == "terminal":
            raise NonRetryableError("bad order")
        if calls["n"] < 3:
            raise RuntimeError("transient")
        return {"ok": True}

    source = MemorySource(max_attempts=5)
    retried = source.add("flaky", {"kind": "retry"})
    run_inline(flaky, source, max_tasks=3)
    statuses = [r.status for r in source.results[retried.task_id]]
    assert statuses == [TaskStatus.FAILED, TaskStatus.FAILED, TaskStatus.COMPLETED]
    assert source.results[retried.task_id][0].exception == "RuntimeError"

    terminal = source.add("flaky", {"kind": "terminal"})
    run_inline(flaky, source, max_tasks=1)
    assert source.final(terminal.task_id).status is TaskStatus.FAILED_WITH_TERMINAL_ERROR
    assert source.final(terminal.task_id).reason_for_incompletion == "bad order"


def test_task_in_progress_is_reported_and_the_task_comes_back():
    @worker_task("slowpoke")
    def slowpoke(task: Task) -> object:
        if task.poll_count < 2:
            return TaskInProgress(callback_after_seconds=5, output={"step": task.poll_count})
        return {"done": True}

    source = MemorySource()
    t = source.add("slowpoke")
    run_inline(slowpoke, source, max_tasks=3)
    statuses = [r.status for r in source.results[t.task_id]]
    assert statuses == [TaskStatus.IN_PROGRESS, TaskStatus.IN_PROGRESS, TaskStatus.COMPLETED]
    assert source.results[t.task_id][0].callback_after_seconds == 5


def test_async_time_limit_fails_the_task_retryably():
    @worker_task("sleepy", time_limit=0.05)
    async def sleepy() -> None:
        await asyncio.sleep(10)

    source = MemorySource()
    t = source.add("sleepy")
    run_inline(sleepy, source, max_tasks=1)
    result = source.final(t.task_id)
    assert result.status is TaskStatus.FAILED
    assert "time_limit" in result.reason_for_incompletion
    # The same label as the supervisor's hard limit: one failure, one metric label.
    assert result.exception == "TimeLimitExceeded"
    registry = metrics.get().registry
    labels = {"taskType": "sleepy", "exception": "TimeLimitExceeded"}
    assert registry.get_sample_value("task_execute_error_total", labels) >= 1


def test_threads_run_sync_handlers_concurrently_and_polls_ask_only_for_free_slots():
    barrier = threading.Barrier(3, timeout=5)

    @worker_task("meet", threads=3)
    def meet() -> dict:
        barrier.wait()  # passes only when 3 handlers run at the same time
        return {}

    class Recording(MemorySource):
        counts: ClassVar[list[int]] = []

        async def poll(self, request):
            self.counts.append(request.count)
            return await super().poll(request)

    source = Recording()
    ids = [source.add("meet").task_id for _ in range(6)]
    run_inline(meet, source, max_tasks=6)
    assert all(source.final(i).status is TaskStatus.COMPLETED for i in ids)
    assert max(source.counts) <= 3


class CountingSource(MemorySource):
    """Records how many tasks each poll asked for; hands out no chained tasks (like NATS)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: list[int] = []

    async def poll(self, request):
        self.counts.append(request.count)
        return await super().poll(request)

    async def report(self, task, result, *, chain=False):
        return await super().report(task, result, chain=False)


def test_slots_freed_together_are_filled_by_one_poll():
    @worker_task("quick", threads=4)
    async def quick(n: int) -> dict:
        await asyncio.sleep(0.0002 * (n % 4))  # four tasks end a little apart
        return {}

    source = CountingSource()
    ids = [source.add("quick", {"n": n}).task_id for n in range(200)]
    run_inline(quick, source, max_tasks=200)
    assert all(source.final(i).status is TaskStatus.COMPLETED for i in ids)
    # The runner waits (at most POLL_LINGER) for three of the four slots to be free instead
    # of polling for each one as it frees.
    assert max(source.counts) <= 4
    assert sum(source.counts) / len(source.counts) >= 3, source.counts


def test_a_slot_freed_beside_long_tasks_is_filled_without_waiting_for_them():
    release = asyncio.Event()
    started: list[str] = []

    @worker_task("mixed", threads=4)
    async def mixed(kind: str) -> dict:
        started.append(kind)
        if kind == "long":
            try:  # released only once two short tasks ran beside them
                await asyncio.wait_for(release.wait(), 10)
            except asyncio.TimeoutError:
                return {"released": False}
        elif started.count("short") == 2:
            release.set()
        return {"released": True}

    source = CountingSource()
    for _ in range(3):
        source.add("mixed", {"kind": "long"})
    source.add("mixed", {"kind": "short"})
    source.add("mixed", {"kind": "short"})
    run_inline(mixed, source, max_tasks=5)
    assert started == ["long", "long", "long", "short", "short"]
    assert all(r[-1].output_data == {"released": True} for r in source.results.values())


def test_poll_errors_back_off_and_polling_recovers():
    source = MemorySource()
    source.fail_polls = 3
    t = source.add("add", {"x": 1, "y": 2})
    run_inline(add, source, max_tasks=1)
    assert source.final(t.task_id).status is TaskStatus.COMPLETED
    assert source.polls >= 4


def test_a_result_that_cannot_be_delivered_goes_to_the_spool_and_is_delivered_later(
    tmp_path, monkeypatch
):
    # Shrink the retry budget so the test does not wait out the production backoff.
    monkeypatch.setattr("taskfleet._delivery.REPORT_MAX_SECONDS", 0.2)
    spool = Spool(tmp_path / "spool.sqlite3", "memory")
    source = MemorySource()
    t = source.add("add", {"x": 4, "y": 4})
    source.fail_reports = 100  # the server is down for longer than the retry budget

    async def run() -> None:
        await Runner(add, source, spool=spool, max_tasks=1).run()

    asyncio.run(run())
    assert source.final(t.task_id) is None
    assert spool.count("add") == 1

    source.fail_reports = 0  # the server is back: the next runner delivers before polling
    delivery = Delivery(source, spool)
    assert delivery.spool_pending
    assert asyncio.run(delivery.flush("add")) == 1
    assert source.final(t.task_id).output_data == {"sum": 8}
    assert spool.count() == 0
    spool.close()


def test_runner_stops_promptly_when_asked_while_idle():
    source = MemorySource()
    started = time.monotonic()
    stop_at = started + 0.3
    reason = run_inline(add, source, until=lambda: time.monotonic() > stop_at)
    assert reason == "done"
    assert time.monotonic() - started < 5


def test_a_process_due_for_recycling_takes_no_chained_task():
    source = MemorySource()  # hands out the next queued task with every report (chaining)
    for i in range(5):
        source.add("add", {"x": i, "y": 0})
    run_inline(add, source, max_tasks=2)
    assert len(source.results) == 2
    assert source.queued("add") == 3


class Overgenerous(MemorySource):
    """A source that hands out every queued task, however few were asked for."""

    async def poll(self, request):  # type: ignore[no-untyped-def]
        return await super().poll(replace(request, count=1_000))


def test_every_task_is_in_the_ledger_when_it_starts_even_when_too_big_or_beyond_the_slots(
    tmp_path,
):
    """The ledger is the one record of held tasks: a task too big for a record, or one of more
    tasks than slots, is known to the supervisor before it starts (and no more than ``threads``
    run at once)."""
    ledger_path = tmp_path / "0.ledger"
    supervisor_view = Ledger.create(ledger_path, 2)
    held_at_start: dict[int, set[str]] = {}
    running = 0
    most = 0

    @worker_task("held", threads=2)
    async def held(n: int) -> dict:
        nonlocal running, most
        running += 1
        most = max(most, running)
        records = supervisor_view.read()
        held_at_start[n] = {
            unpack_task(pickle.loads(r[2])).task_id for r in records if r is not None and r[2]
        }
        await asyncio.sleep(0.01)
        running -= 1
        return {"n": n}

    source = Overgenerous()
    big = {"h": "x" * RECORD_SIZE}
    tasks = [source.add("held", {"n": n}, headers=big if n == 0 else {}) for n in range(5)]

    async def main() -> None:
        await Runner(held, source, ledger=Ledger(ledger_path, 2), max_tasks=5).run()

    asyncio.run(main())
    assert all(source.final(t.task_id).output_data == {"n": n} for n, t in enumerate(tasks))
    assert most == 2, "the extra tasks waited for a slot"
    assert all(tasks[n].task_id in held_at_start[n] for n in range(5)), held_at_start
    assert all(r is not None and r[2] == b"" for r in supervisor_view.read()), "all cleared"
    supervisor_view.close(remove=True)


# -- cheap def handlers on the loop -------------------------------------------------------------


@pytest.fixture
def cheap_on_loop_quickly(monkeypatch):
    """Promotion after 8 calls (a mean over about 4); "cheap" and "too slow on the loop"
    generous enough that a loaded machine cannot make a fast call look slow (the constants'
    meaning is what is tested)."""
    monkeypatch.setattr(runner_module, "CHEAP_STREAK", 8)
    monkeypatch.setattr(runner_module, "CHEAP_MEAN_OVER", 4)
    monkeypatch.setattr(runner_module, "CHEAP_CALL", 0.05)
    monkeypatch.setattr(runner_module, "CHEAP_MEAN_CLIP", 0.5)
    monkeypatch.setattr(runner_module, "CHEAP_CALL_MAX", 0.1)


def thread_recorder(task_type: str, threads: int = 2, **options):
    """A def handler that records the thread each task ran on; ``sleep`` makes a call slow."""
    ran_on: dict[int, str] = {}

    @worker_task(task_type, threads=threads, **options)
    def handler(i: int, sleep: float = 0.0) -> dict:
        time.sleep(sleep)
        ran_on[i] = threading.current_thread().name
        return {"i": i}

    return handler, ran_on


def test_a_def_handler_proven_cheap_runs_on_the_loop_until_a_call_is_slow(cheap_on_loop_quickly):
    handler, ran_on = thread_recorder("cheap")
    source = MemorySource()
    ids = [source.add("cheap", {"i": i}).task_id for i in range(40)]
    ids.append(source.add("cheap", {"i": 40, "sleep": 0.3}).task_id)
    ids += [source.add("cheap", {"i": i}).task_id for i in range(41, 60)]
    run_inline(handler, source, max_tasks=60)
    assert all(source.final(i).status is TaskStatus.COMPLETED for i in ids)
    loop_thread = threading.current_thread().name  # run_inline runs the loop here
    # The first calls prove the handler cheap in slot threads, later ones skip the hand-off.
    assert all(ran_on[i] != loop_thread for i in range(8))
    assert all(ran_on[i] == loop_thread for i in range(20, 41))
    # The slow call sends it back to the threads for 4 x 8 calls: more than are left.
    assert all(ran_on[i] != loop_thread for i in range(41, 60))


def test_calls_cheap_on_average_run_on_the_loop_despite_an_occasional_slower_one(
    cheap_on_loop_quickly,
):
    # One call in five takes longer than CHEAP_CALL (as allocation or a cache miss makes some
    # calls of any handler); the mean stays well under it, so the handler still moves.
    handler, ran_on = thread_recorder("mostly", threads=1)  # calls strictly one after another
    source = MemorySource()
    ids = [
        source.add("mostly", {"i": i, "sleep": 0.06 if i % 5 == 4 else 0.0}).task_id
        for i in range(60)
    ]
    run_inline(handler, source, max_tasks=60)
    assert all(source.final(i).status is TaskStatus.COMPLETED for i in ids)
    loop_thread = threading.current_thread().name
    assert any(ran_on[i] == loop_thread for i in range(60))


def test_a_handler_that_turns_slower_on_average_goes_back_to_its_threads(
    cheap_on_loop_quickly, monkeypatch
):
    # No single call reaches CHEAP_CALL_MAX (0.1 s), but every call takes 0.08 s: the mean
    # passes twice CHEAP_CALL within a few calls, and the handler leaves the loop.
    monkeypatch.setattr(runner_module, "CHEAP_CALL", 0.02)
    monkeypatch.setattr(runner_module, "CHEAP_MEAN_CLIP", 0.2)
    handler, ran_on = thread_recorder("slower")
    source = MemorySource()
    ids = [source.add("slower", {"i": i}).task_id for i in range(30)]
    ids += [source.add("slower", {"i": i, "sleep": 0.08}).task_id for i in range(30, 45)]
    run_inline(handler, source, max_tasks=45)
    assert all(source.final(i).status is TaskStatus.COMPLETED for i in ids)
    loop_thread = threading.current_thread().name
    assert ran_on[30] == loop_thread  # the first slower call still ran on the loop
    assert all(ran_on[i] != loop_thread for i in range(38, 45))


def test_one_pause_on_the_loop_does_not_send_a_cheap_handler_back(
    cheap_on_loop_quickly, monkeypatch
):
    # A busy host can deschedule the loop's thread for some ms in the middle of a 10 us call:
    # that one call counts into the mean as at most CHEAP_MEAN_CLIP, so the handler stays.
    monkeypatch.setattr(runner_module, "CHEAP_CALL", 0.01)
    monkeypatch.setattr(runner_module, "CHEAP_MEAN_CLIP", 0.05)
    monkeypatch.setattr(runner_module, "CHEAP_CALL_MAX", 1.0)
    handler, ran_on = thread_recorder("paused_once", threads=1)
    source = MemorySource()
    ids = [
        source.add("paused_once", {"i": i, "sleep": 0.3 if i == 30 else 0.0}).task_id
        for i in range(40)
    ]
    run_inline(handler, source, max_tasks=40)
    assert all(source.final(i).status is TaskStatus.COMPLETED for i in ids)
    loop_thread = threading.current_thread().name
    assert ran_on[30] == loop_thread
    assert all(ran_on[i] == loop_thread for i in range(31, 40))


def test_cheap_on_loop_false_keeps_every_call_in_a_slot_thread(cheap_on_loop_quickly):
    handler, ran_on = thread_recorder("kept", cheap_on_loop=False)
    source = MemorySource()
    ids = [source.add("kept", {"i": i}).task_id for i in range(40)]
    run_inline(handler, source, max_tasks=40)
    assert all(source.final(i).status is TaskStatus.COMPLETED for i in ids)
    assert threading.current_thread().name not in set(ran_on.values())


def test_a_def_handler_on_the_loop_may_run_its_own_event_loop(cheap_on_loop_quickly):
    ran_on: list[str] = []

    async def fetch(i: int) -> int:
        await asyncio.sleep(0)
        return i * 2

    @worker_task("nested", threads=2)
    def nested(i: int) -> dict:
        ran_on.append(threading.current_thread().name)
        return {"doubled": asyncio.run(fetch(i))}

    source = MemorySource()
    ids = [source.add("nested", {"i": i}).task_id for i in range(30)]
    run_inline(nested, source, max_tasks=30)
    assert [source.final(i).output_data["doubled"] for i in ids] == [i * 2 for i in range(30)]
    assert threading.current_thread().name in ran_on  # some of them ran on the loop's thread


def test_a_call_blocking_the_loop_does_not_stop_the_heartbeats(cheap_on_loop_quickly, monkeypatch):
    monkeypatch.setattr(runner_module, "HEARTBEAT_INTERVAL", 0.2)
    monkeypatch.setattr(runner_module, "LOOP_CALL_WATCH", 0.05)
    handler, ran_on = thread_recorder("blocker")
    source = MemorySource()
    for i in range(20):
        source.add("blocker", {"i": i})
    source.add("blocker", {"i": 20, "sleep": 1.5})
    ours, theirs = multiprocessing.Pipe()
    beats: list[float] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            if theirs.poll(0.05):
                message = theirs.recv()
                if message[0] == "hb":
                    beats.append(time.monotonic())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        runner = Runner(handler, source, control=ControlClient(ours), max_tasks=21)
        asyncio.run(runner.run())
    finally:
        done.set()
        reader.join()
    assert ran_on[20] == threading.current_thread().name  # the blocking call ran on the loop
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    # The loop was blocked for 1.5 s; the watch stands in for it after HEARTBEAT_INTERVAL.
    assert beats and max(gaps) < 1.0, gaps
