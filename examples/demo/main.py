"""The taskfleet demo: a supervised pool on an embedded NATS server, fed and checked end to end.

What it does:

1. starts a ``TaskHandler`` for five worker types — a plain function, an ``async def`` one, one
   that fails on bad input, and two backed by the C and C++ libraries in ``examples/native`` —
   on a real ``nats-server`` started on 127.0.0.1 (no ``NATS_URL`` needed);
2. submits a few thousand tasks with ``TaskClient`` and waits for every result;
3. checks each result (the native checksums against Python's ``zlib``), prints a table, the
   pool's ``/workers`` and a few lines of its aggregated ``/metrics``, and drains the pool.

The console tells the story; the pool's own log (every process's) goes to a file whose path is
printed first. Exit status 0 when every result is what it should be. Run it with ``scripts/demo``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import sys
import time
import traceback
import urllib.request
import zlib
from collections import Counter
from pathlib import Path
from typing import TextIO

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
    parser.add_argument(
        "--log-file",
        type=Path,
        help="where the pool's log goes (default: pool.log in the demo's state directory)",
    )
    return parser.parse_args()


def _log_to(path: Path) -> TextIO:
    """Send this process's stderr, and so every worker process's log, to ``path``; return the
    console's stderr, for the demo's own errors.

    Worker processes inherit file descriptor 2 when they start, so redirecting it before the
    pool starts moves the whole pool's log; the demo's own story stays on stdout.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    sys.stderr.flush()
    console = os.fdopen(os.dup(2), "w", buffering=1)
    os.dup2(fd, 2)
    os.close(fd)
    return console


class _Progress:
    """One line that counts results as they arrive (rewritten in place on a terminal)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self._tty = sys.stdout.isatty()
        self._shown = -1.0

    def step(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self.done == self.total or now - self._shown >= (0.2 if self._tty else 2.0):
            self._shown = now
            line = f"  results: {self.done}/{self.total}"
            print("\r" + line if self._tty else line, end="" if self._tty else "\n", flush=True)
            if self._tty and self.done == self.total:
                print()


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


def _execution_counts(base: str, total: int) -> list[str]:
    """The execution counters of ``/metrics``, once they add up to ``total``: worker processes
    write per-task metrics every 0.1 s, so the last few may be a moment late (at most 2 s here)."""
    deadline = time.monotonic() + 2.0
    while True:
        lines = [
            line
            for line in _get(base + "/metrics").splitlines()
            if line.startswith("task_execute_time_seconds_count{")
        ]
        if sum(float(line.rsplit(" ", 1)[1]) for line in lines) >= total:
            return lines
        if time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def main() -> int:
    args = _args()
    os.environ.setdefault("TASKFLEET_STATE_DIR", str(ROOT / ".state" / "demo"))
    config = Configuration.from_env(metrics_address=args.metrics_address)
    log_file = args.log_file or config.state_path / "pool.log"
    console = _log_to(log_file)
    try:
        return _run(args, config, log_file)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            print("\ninterrupted", file=console)
        else:
            traceback.print_exc(file=console)
        print(f"the pool's log: {log_file}", file=console)
        return 1


def _run(args: argparse.Namespace, config: Configuration, log_file: Path) -> int:
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
    print(f"the pool's log: {log_file}")

    with TaskHandler(workers, config) as handler, TaskClient(config) as client:
        handler.start_processes()
        print(f"pool started; metrics at {handler.metrics_url}/metrics")
        started = time.monotonic()
        submitted = {t: client.submit_many(t, items) for t, items in orders.items()}
        print(f"submitted {total} tasks in {time.monotonic() - started:.2f}s; waiting for results")

        progress = _Progress(total)
        rows = []
        failures: list[str] = []
        wrong = 0
        for task_type, ids in submitted.items():
            statuses: Counter[str] = Counter()
            for order, task_id in zip(orders[task_type], ids, strict=True):
                outcome = client.result(task_id, timeout=300)
                progress.step()
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
            for line in _execution_counts(base, total):
                print("  " + line)
        print("\ndraining the pool ...")

    print(f"pool stopped; its log is in {log_file}")
    if wrong:
        print(f"\nFAILED: {wrong} result(s) were not what they should be")
        return 1
    print("every result checked: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
