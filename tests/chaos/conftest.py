"""Chaos suite: real processes broken on purpose. Every test here is slow; figures are printed
as `CHAOS ...` lines (run with `-s` to see them) and recorded in docs/reliability.md."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # This hook sees every collected item, not only this folder's: mark only the chaos tests.
    here = Path(__file__).resolve().parent
    for item in items:
        if item.path.resolve().is_relative_to(here):
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.chaos)


@contextmanager
def killer(pids: Callable[[], list[int]], every: float, seed: int = 1) -> Iterator[list[int]]:
    """Kill -9 a random live worker process every ``every`` seconds until the block ends.

    Yields the list of pids killed (filled in as it goes).
    """
    killed: list[int] = []
    stop = threading.Event()
    rng = random.Random(seed)

    def run() -> None:
        while not stop.wait(every):
            live = pids()
            if not live:
                continue
            pid = rng.choice(live)
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass

    thread = threading.Thread(target=run, name="chaos-killer", daemon=True)
    thread.start()
    try:
        yield killed
    finally:
        stop.set()
        thread.join(5)


def live_pids(handler) -> list[int]:
    return [w["pid"] for w in handler.workers_status() if w["pid"] and w["state"] == "running"]


def report(line: str) -> None:
    print(f"\nCHAOS {line}", flush=True)
    path = os.environ.get("TASKFLEET_CHAOS_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d')} {line}\n")
