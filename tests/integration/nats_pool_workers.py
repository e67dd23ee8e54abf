"""Workers for the NATS pool tests (module level: worker processes import them by name)."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from taskfleet import Task, TaskInProgress, get_task_context, worker_task

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "native"))
from workers import count_primes, segfault, spin_forever


@worker_task("nats_square", threads=2, processes=2, poll_interval=20)
def nats_square(x: int) -> dict:
    return {"y": x * x, "pid": os.getpid()}


@worker_task("native_mixed", threads=2, poll_interval=20, max_attempts=3)
def native_mixed(n: int, crash: bool = False) -> dict:
    """Counts primes in native code; ``crash`` segfaults inside the library instead."""
    if crash:
        segfault()
    return {"primes": count_primes(n)}


@worker_task("native_spin", poll_interval=20, time_limit=1.0, max_attempts=1)
def native_spin(spin: bool = False) -> dict:
    """``spin`` never returns (a native loop holding no lock the supervisor needs)."""
    if spin:
        spin_forever()
    return {"spun": False}


@worker_task("nats_cube", threads=2, processes=2, poll_interval=20)
def nats_cube(x: int) -> dict:
    return {"y": x * x * x, "pid": os.getpid()}


# A three-stage pipeline: each stage's output is the next stage's input.
@worker_task("stage_parse", threads=4, poll_interval=20, output_subject="stage_enrich")
def stage_parse(text: str) -> dict:
    return {"words": text.split()}


@worker_task("stage_enrich", threads=4, poll_interval=20, output_subject="stage_count")
def stage_enrich(words: list[str]) -> dict:
    return {"words": words, "upper": [w.upper() for w in words]}


@worker_task("stage_count", threads=4, poll_interval=20)
def stage_count(words: list[str], upper: list[str]) -> dict:
    return {"count": len(words), "first": upper[0] if upper else ""}


@worker_task("nats_held_back", paused=True)
def nats_held_back() -> dict:
    return {}


@worker_task("nats_scaled", threads=2, processes=(1, 3), poll_interval=20)
def nats_scaled(i: int) -> dict:
    time.sleep(0.005)
    return {"i": i, "pid": os.getpid()}


@worker_task("nats_progress", poll_interval=20)
def nats_progress(release: str, steps: int = 1000) -> dict:
    ctx = get_task_context()
    for i in range(steps):
        ctx.progress(output={"done": i + 1}, log=f"step {i + 1}" if i + 1 == steps else None)
    while not os.path.exists(release):
        time.sleep(0.02)
    return {"steps": steps}


@worker_task("nats_later", poll_interval=20)
def nats_later(task: Task) -> object:
    if task.attempt == 1:
        return TaskInProgress(callback_after_seconds=0.1, output={"stage": "waiting"})
    return {"stage": "done"}


@worker_task("nats_turns_slow", threads=2, poll_interval=20)
def nats_turns_slow(i: int, sleep: float = 0.0) -> dict:
    if sleep:  # time.sleep(0) would wait for the GIL, and cheap calls must stay cheap
        time.sleep(sleep)
    return {"i": i, "thread": threading.current_thread().name, "pid": os.getpid()}


@worker_task("nats_manual", threads=2, poll_interval=20)
def nats_manual(i: int, record: str) -> dict:
    """Appends ``"<i> <pid>"`` to the file ``record`` as it begins, in one ``O_APPEND`` write
    (lines from concurrent processes do not interleave), so a test counts how often each task
    began, a run cut short included."""
    _began(i, record)
    time.sleep(0.02)
    return {"i": i, "pid": os.getpid()}


@worker_task("nats_held", threads=2, processes=2, poll_interval=20)
def nats_held(i: int, record: str, seconds: float = 0.0, release: str = "") -> dict:
    """Records its start as ``nats_manual`` does, sleeps ``seconds``, then, with ``release``,
    waits (at most 300 s) for that file to exist: a task that runs as long as a test wants."""
    _began(i, record)
    time.sleep(seconds)
    deadline = time.monotonic() + 300
    while release and not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"i": i, "pid": os.getpid()}


def _began(i: int, record: str) -> None:
    fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{i} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
