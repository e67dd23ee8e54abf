"""A worker whose module takes seconds to import, as one that loads a model at import time.

Worker processes import it by name; only the slow-start tests import it here.
"""

from __future__ import annotations

import time

from taskfleet import worker_task

IMPORT_SECONDS = 4.0

time.sleep(IMPORT_SECONDS)


@worker_task("slow_start", threads=1, poll_interval=20)
def slow_start(x: int) -> dict:
    return {"x": x}
