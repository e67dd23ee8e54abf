"""Workers for the chaos suite (module level: worker processes import them by name)."""

from __future__ import annotations

import os
import time

from taskfleet import worker_task


def _record(n: int, directory: str) -> None:
    # Every execution is appended to a per-process file, so the suite can count re-runs. (The
    # directory travels in the input: forkserver children do not see the test's later env.)
    if directory:
        with open(os.path.join(directory, f"{os.getpid()}.txt"), "a") as f:
            f.write(f"{n}\n")


@worker_task("chaos_work", threads=4, processes=3, poll_interval=20)
def chaos_work(n: int, runs: str = "") -> dict:
    time.sleep(0.02)  # long enough that kills land mid-task
    _record(n, runs)
    return {"n": n}


@worker_task("chaos_native", threads=1, processes=2, poll_interval=20)
def chaos_native(n: int, crash: bool = False, runs: str = "") -> dict:
    """Counts primes in C; ``crash`` segfaults inside the library instead."""
    from examples.native.workers import count_primes, segfault

    if crash:
        if runs:  # when it crashed, to measure how soon the failure is reported
            with open(os.path.join(runs, f"crash-{n}"), "w") as f:
                f.write(repr(time.time()))
        segfault()
    return {"primes": count_primes(n)}


@worker_task("chaos_slow", threads=10, processes=2, poll_interval=20)
def chaos_slow(seconds: float) -> dict:
    time.sleep(seconds)
    return {"slept": seconds}


@worker_task("hostile", threads=4, processes=2, poll_interval=20)
def hostile(x: int) -> dict:
    return {"x": x}


@worker_task("chaos_big", threads=4, processes=2, poll_interval=20)
def chaos_big(n: int, big: bool = False) -> dict:
    """``big`` returns about 2 MB: more than nats-server's default max payload (1 MB)."""
    if big:
        return {"n": n, "blob": "x" * 2_100_000}
    return {"n": n}
