"""The Conductor test server of ``scripts/bench`` in a process of its own (not part of the package).

The in-process ``ConductorTestServer`` shares the bench driver's GIL; in its own process it has a
core's worth of Python to itself, so it does not cap the rates of the pools it serves.
``python -c "import bench_server; bench_server.main()"`` (with ``src`` and ``scripts`` on
``PYTHONPATH``) prints one JSON line ``{"url": ..., "pid": ...}``, then answers one JSON line per
command read from stdin, until stdin closes:

- ``{"op": "run", "type": T, "n": N}``: enqueue N empty tasks of type T, wait until every one is
  terminal; answers ``{"start": ..., "end": ...}`` (``time.monotonic()``, the same clock in every
  process of the machine).
- ``{"op": "count", "prefix": P}``: requests answered so far whose path starts with P.
"""

from __future__ import annotations

import json
import os
import sys
import time

from taskfleet.testing import ConductorTestServer

TERMINAL = ("COMPLETED", "FAILED", "FAILED_WITH_TERMINAL_ERROR")


def run(server: ConductorTestServer, task_type: str, n: int, timeout: float = 600) -> dict:
    start = time.monotonic()
    ids = server.enqueue_many(task_type, [{}] * n)
    deadline = start + timeout
    i = 0
    while i < len(ids):
        if server.job(ids[i]).status in TERMINAL:
            i += 1
            continue
        if time.monotonic() > deadline:
            return {"error": f"{len(ids) - i} tasks not done"}
        time.sleep(0.005)
    return {"start": start, "end": time.monotonic()}


def main() -> int:
    with ConductorTestServer() as server:
        print(json.dumps({"url": server.url, "pid": os.getpid()}), flush=True)
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["op"] == "run":
                answer = run(server, cmd["type"], int(cmd["n"]))
            elif cmd["op"] == "count":
                answer = {"count": server.request_count(cmd["prefix"])}
            else:
                answer = {"error": f"unknown op {cmd['op']!r}"}
            print(json.dumps(answer), flush=True)
    return 0
