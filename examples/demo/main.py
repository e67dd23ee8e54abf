"""The taskfleet demo: a supervised pool on an embedded NATS server, fed and checked end to end.

What it does:

1. starts a ``TaskHandler`` for five worker types — a plain function, an ``async def`` one, one
   that fails on bad input, and two backed by the C and C++ libraries in ``examples/native`` —
   on a real ``nats-server`` started on 127.0.0.1 (no ``NATS_URL`` needed);
2. submits a few thousand tasks with ``TaskClient`` and waits for every result;
3. checks each result (the native checksums against Python's ``zlib``), prints a table, the
   pool's ``/workers`` and a few lines of its aggregated ``/metrics``, and drains the pool.

Exit status 0 when every result is what it should be. Run it with ``scripts/demo``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import sys
import time
import urllib.request
import zlib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the example workers are imported as examples.<topic>.workers

from examples.native.workers import checksum_task, count_primes_worker  # noqa: E402
from examples.quickstart.workers import divide, fetch_length, greet  # noqa: E402
from taskfleet import Configuration, TaskClient, TaskHandler, TaskStatus  # noqa: E402


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the task counts")
    parser.add_argument("--processes", type=int, default=2, help="processes for the greet worker")
    parser.add_argument("--metrics-address", default="127.0.0.1:0", help="host:port, 0 = any")
    return parser.parse_args()


def _orders(scale: float, rng: random.Random) -> dict[str, list[dict]]:
    n = lambda base: max(1, int(base * scale))  # noqa: E731 - tiny local helper
    blobs = [rng.randbytes(rng.randint(1, 64 * 1024)) for _ in range(n(200))]
    return {
        "greet": [{"name": f"user-{i}"} for i in range(n(2000))],
        "fetch_length": [{"text": "x" * rng.randint(0, 500)} for _ in range(n(500))],
        # one in ten divides by zero: those fail terminally, with a reason
        "divide": [{"a": i, "b": 0 if i % 10 == 0 else 2} for i in range(n(100))],
        "native_count_primes": [{"n": 200_000 + 1000 * i} for i in range(n(40))],
        "native_checksum": [
            {"data": base64.b64encode(b).decode(), "algorithm": "crc32"} for b in blobs
        ],
    }


def _expected(task_type: str, order: dict) -> tuple[TaskStatus, object]:
    if task_type == "greet":
        return TaskStatus.COMPLETED, {"greeting": f"Hello, {order['name']}!"}
    if task_type == "fetch_length":
        return TaskStatus.COMPLETED, {"length": len(order["text"])}
    if task_type == "divide":
        if order["b"] == 0:
            return TaskStatus.FAILED_WITH_TERMINAL_ERROR, None
        return TaskStatus.COMPLETED, {"quotient": order["a"] / order["b"]}
    if task_type == "native_checksum":
        crc = zlib.crc32(base64.b64decode(order["data"]))
        return TaskStatus.COMPLETED, crc
    return TaskStatus.COMPLETED, None  # count_primes: checked for presence below


def _check(task_type: str, order: dict, outcome) -> bool:
    status, want = _expected(task_type, order)
    if outcome.status is not status:
        return False
    if task_type == "native_checksum":
        return int(outcome.output["checksum"], 16) == want
    if task_type == "native_count_primes":
        return isinstance(outcome.output.get("primes"), int) and outcome.output["primes"] > 0
    return want is None or dict(outcome.output) == want


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def main() -> int:
    args = _args()
    os.environ.setdefault("TASKFLEET_STATE_DIR", str(ROOT / ".state" / "demo"))
    config = Configuration.from_env(metrics_address=args.metrics_address)
    workers = [
        greet.with_options(processes=args.processes),
        fetch_length,
        divide,
        count_primes_worker,
        checksum_task,
    ]
    orders = _orders(args.scale, random.Random(7))
    total = sum(len(v) for v in orders.values())
    print(f"taskfleet demo: {len(workers)} worker types, {total} tasks, embedded NATS server")

    with TaskHandler(workers, config) as handler, TaskClient(config) as client:
        handler.start_processes()
        print(f"pool started; metrics at {handler.metrics_url}/metrics")
        started = time.monotonic()
        submitted = {t: client.submit_many(t, items) for t, items in orders.items()}
        print(f"submitted {total} tasks in {time.monotonic() - started:.2f}s; waiting for results")

        rows = []
        failures: list[str] = []
        wrong = 0
        for task_type, ids in submitted.items():
            statuses: Counter[str] = Counter()
            for order, task_id in zip(orders[task_type], ids, strict=True):
                outcome = client.result(task_id, timeout=300)
                statuses[outcome.status.value] += 1
                if not _check(task_type, order, outcome):
                    wrong += 1
                if outcome.status is not TaskStatus.COMPLETED and len(failures) < 2:
                    failures.append(f"{task_type} {task_id}: {outcome.reason}")
            rows.append((task_type, len(ids), statuses))
        elapsed = time.monotonic() - started

        print()
        print(f"{'task type':<22}{'tasks':>7}{'completed':>11}{'failed':>8}")
        for task_type, count, statuses in rows:
            failed = count - statuses["COMPLETED"]
            print(f"{task_type:<22}{count:>7}{statuses['COMPLETED']:>11}{failed:>8}")
        print(f"\n{total} results in {elapsed:.1f}s ({total / elapsed:.0f} tasks/s end to end)")
        for line in failures:
            print(f"expected failure -> {line}")

        base = handler.metrics_url
        if base:
            workers_json = json.loads(_get(base + "/workers"))["workers"]
            print(f"\n/workers: {len(workers_json)} processes")
            for w in workers_json:
                print(
                    f"  {w['name']:<26} pid {w['pid']!s:<8} {w['state']:<9}"
                    f" restarts {w['restarts']}"
                )
            print("\n/metrics (task_execute_time_seconds_count, summed over processes):")
            for line in _get(base + "/metrics").splitlines():
                if line.startswith("task_execute_time_seconds_count{"):
                    print("  " + line)
        print("\ndraining the pool ...")

    if wrong:
        print(f"\nFAILED: {wrong} result(s) were not what they should be")
        return 1
    print("every result checked: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
