"""Workers for the chaos suite (module level: worker processes import them by name)."""

from __future__ import annotations

import time

from taskfleet import worker_task


@worker_task("chaos_work", threads=4, processes=3, poll_interval=20)
def chaos_work(n: int) -> dict:
    time.sleep(0.02)  # long enough that kills land mid-task
    return {"n": n}
