"""Workers for the NATS pool tests (module level: worker processes import them by name)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from taskfleet import worker_task

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
