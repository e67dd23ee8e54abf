"""Workers used by the pool tests. Module level, so worker processes import them by name."""

from __future__ import annotations

import logging
import os
import signal
import time

from taskfleet import Task, add_log, get_task_context, worker_task


@worker_task("square", threads=2, processes=2, poll_interval=20)
def square(x: int) -> dict:
    add_log(f"squaring {x}")
    return {"y": x * x, "pid": os.getpid()}


@worker_task("crashy", threads=2, poll_interval=20)
def crashy(x: int, crash: bool = False) -> dict:
    if crash:
        os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(0.05)
    return {"y": x}


@worker_task("sleeper", threads=2, poll_interval=20, time_limit=1.0)
def sleeper(seconds: float) -> dict:
    time.sleep(seconds)
    return {"slept": seconds}


@worker_task("long_lease", threads=1, poll_interval=20, lease_extend=0.5)
def long_lease(seconds: float) -> dict:
    time.sleep(seconds)
    return {"slept": seconds}


@worker_task("blocker", poll_interval=20)
async def blocker(seconds: float) -> dict:
    time.sleep(seconds)  # blocks the event loop on purpose: no heartbeats while it runs
    return {"slept": seconds}


@worker_task("whoami", poll_interval=20)
def whoami(task: Task) -> dict:
    return {"attempt": task.attempt, "pid": os.getpid()}


@worker_task("alpha", threads=4, processes=2, poll_interval=20, poll_timeout=700)
def alpha(x: int) -> dict:
    return {"alpha": x + 1}


@worker_task("beta", threads=4, processes=2, poll_interval=20, poll_timeout=700)
async def beta(x: int) -> dict:
    return {"beta": x * 2}


@worker_task("drainer", threads=4, processes=2, poll_interval=20)
def drainer(seconds: float) -> dict:
    time.sleep(seconds)
    return {"slept": seconds}


@worker_task("idle", poll_interval=2000, poll_timeout=100)
def idle() -> dict:
    return {}


@worker_task("chatty", poll_interval=20)
def chatty(x: int) -> dict:
    # A handler's own logger, as any library would create one: no taskfleet set-up in sight.
    logging.getLogger("shop.billing").info("charging order %d", x)
    logging.getLogger("shop.billing").warning("order %d is large", x)
    return {"x": x}


@worker_task("tracked", threads=2, poll_interval=20)
def tracked(x: int, crash: bool = False, hold: str = "") -> dict:
    if crash:
        os.kill(os.getpid(), signal.SIGSEGV)
    get_task_context().attach(message=f"row {x} done", rows=x)
    if x < 0:
        raise ValueError(f"negative row {x}")
    return {"x": x}


@worker_task("tracked_async", threads=2, poll_interval=20)
async def tracked_async(x: int, hold: str = "") -> dict:
    get_task_context().attach(rows=x)
    return {"x": x}


class HoldingHook:
    """A hook that blocks, after a task with a ``hold`` input ran, until that file exists."""

    def after_execute(self, task: Task, result: object) -> None:
        hold = task.input_data.get("hold")
        deadline = time.monotonic() + 60
        while hold and not os.path.exists(hold) and time.monotonic() < deadline:
            time.sleep(0.05)


@worker_task("held_back", paused=True)
def held_back() -> dict:
    return {}


@worker_task("scaled", threads=2, processes=(1, 3), poll_interval=20)
def scaled(i: int) -> dict:
    time.sleep(0.005)
    return {"i": i, "pid": os.getpid()}


def _wait_for(path: str) -> bool:
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return os.path.exists(path)


@worker_task("progressing", poll_interval=20)
def progressing(release: str, steps: int = 10000) -> dict:
    ctx = get_task_context()
    ctx.progress(log="starting")
    for i in range(steps):  # a tight loop: the updates are coalesced, the handler never waits
        ctx.progress(output={"done": i + 1})
    return {"released": _wait_for(release), "steps": steps}


@worker_task("progressing_async", poll_interval=20)
async def progressing_async(release: str, steps: int = 10000) -> dict:
    import asyncio

    ctx = get_task_context()
    ctx.progress(log="starting")
    for i in range(steps):
        ctx.progress(output={"done": i + 1})
    while not os.path.exists(release):
        await asyncio.sleep(0.02)
    return {"released": True, "steps": steps}


@worker_task("progressing_for", poll_interval=20)
def progressing_for(seconds: float) -> dict:
    """Reports progress in a loop for ``seconds`` (measured here), then returns."""
    ctx = get_task_context()
    started = time.monotonic()
    calls = 0
    while time.monotonic() - started < seconds:
        calls += 1
        ctx.progress(output={"calls": calls})
        time.sleep(0.002)
    return {"calls": calls, "elapsed": time.monotonic() - started}


@worker_task("steady", threads=4, poll_timeout=200, poll_interval=20)
def steady(seconds: float = 0.0) -> dict:
    time.sleep(seconds)
    return {"pid": os.getpid()}


@worker_task("manual", threads=2, poll_interval=20)
def manual(i: int) -> dict:
    time.sleep(0.005)
    return {"i": i, "pid": os.getpid()}


@worker_task("sleepy", threads=4, processes=2, poll_interval=20)
def sleepy(seconds: float) -> dict:
    """Sleeps in C with the GIL released, as a long native call does."""
    time.sleep(seconds)
    return {"slept": seconds}
