#!/usr/bin/env python3
"""taskfleet side by side with conductor-python 2.0.0 and a raw nats-py loop.

Every measurement runs both sides in the same invocation, alternating, and reports the median of
``--runs`` and the ratio; the machine is shared, so ratios mean more than absolute numbers.

    scripts/bench                          # everything (~14 min on 2 cores)
    scripts/bench --quick                  # smaller N, 2 runs (~6 min)
    scripts/bench --only conductor latency --runs 5 --tasks 20000

Measurements (``--only`` names): conductor, latency, nats, scaling, memory, overhead. The
Conductor measurement runs taskfleet with a ``def`` and with an ``async def`` no-op against the
same runs of conductor-python and of the floor (``scripts/bench_floor.py``, a raw keep-alive
``http.client`` loop), on a test server in its own process (``scripts/bench_server.py``), then
measures idle pools. The NATS measurement runs taskfleet with a ``def`` and with an ``async def``
no-op against the same raw runs (the raw loop handles its no-op inline on the event loop, as
``async def`` does). Worker pools run in their own process (``scripts/bench_workers.py``); client
CPU is read from ``/proc/<pid>/stat`` of the worker processes, RSS from ``/proc/<pid>/status``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
sys.path[:0] = [str(ROOT / "src"), str(SCRIPTS)]

from taskfleet.testing import ConductorTestServer  # noqa: E402 - after the path set-up above

CLK_TCK = os.sysconf("SC_CLK_TCK")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(SCRIPTS)])}
ENV.setdefault("TASKFLEET_LOG_LEVEL", "WARNING")
ALL = ["conductor", "latency", "nats", "scaling", "memory", "overhead"]


# -- /proc ------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """user + sys CPU seconds of a live process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


# -- pools in their own processes ---------------------------------------------------------------


@dataclass
class Pool:
    proc: subprocess.Popen[str]
    supervisor: int
    workers: list[int]

    def worker_cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self.workers)

    def all_cpu(self) -> float:
        """Supervisor, workers and helpers (forkserver, logger process)."""
        pids = [self.supervisor, *descendants(self.supervisor)]
        return sum(cpu_seconds(p) for p in pids)


@contextlib.contextmanager
def pool(*args: str, module_call: str = "main", module: str = "bench_workers") -> Iterator[Pool]:
    code = f"import sys, {module}; sys.exit({module}.{module_call}())"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=ENV,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"pool did not start: {' '.join(args)}")
        info = json.loads(line)
        yield Pool(proc, info["supervisor"], info["workers"])
    finally:
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        # Children the SDK left behind (a peer's logger process, a forkserver) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, 9)


def sdk_pool(
    sdk: str, url: str, task_type: str, *extra: str
) -> contextlib.AbstractContextManager[Pool]:
    return pool("--sdk", sdk, "--url", url, "--task-type", task_type, *extra)


def wait_terminal(server: ConductorTestServer, ids: list[str], timeout: float = 600) -> float:
    """Wait until every task is terminal; returns time.monotonic() when the last was seen."""
    deadline = time.monotonic() + timeout
    i = 0
    while i < len(ids):
        if server.job(ids[i]).status in ("COMPLETED", "FAILED", "FAILED_WITH_TERMINAL_ERROR"):
            i += 1
            continue
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(ids) - i} tasks not done")
        time.sleep(0.005)
    return time.monotonic()


# -- results ------------------------------------------------------------------------------------


@dataclass
class Row:
    measurement: str
    setting: str
    unit: str
    ours: float
    theirs: float | None
    ratio: float | None
    target: str
    met: bool | None
    note: str = ""


def med(values: list[float]) -> float:
    return statistics.median(values)


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def print_table(rows: list[Row]) -> None:
    head = ["measurement", "setting", "unit", "taskfleet", "peer/raw", "ratio", "target", "met"]
    body = [
        [
            r.measurement,
            r.setting,
            r.unit,
            fmt(r.ours),
            fmt(r.theirs),
            "-" if r.ratio is None else f"{r.ratio:.2f}x",
            r.target,
            {True: "yes", False: "NO", None: "-"}[r.met],
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=False)]
    line = " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
    print("\n" + line)
    print("-+-".join("-" * w for w in widths))
    for b in body:
        print(" | ".join(str(x).ljust(w) for x, w in zip(b, widths, strict=True)))
    for r in rows:
        if r.note:
            print(f"  {r.measurement} {r.setting}: {r.note}")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- 1. Conductor path throughput and CPU ----------------------------------------------------------


class RemoteServer:
    """``scripts/bench_server.py``: the Conductor test server in a process of its own."""

    def __init__(self) -> None:
        code = "import sys, bench_server; sys.exit(bench_server.main())"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=ENV,
            text=True,
        )
        info = self._read()
        self.url: str = info["url"]
        self.pid: int = info["pid"]

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the bench server process died")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def call(self, **cmd: object) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def run(self, task_type: str, n: int) -> tuple[float, float]:
        """Enqueue n no-op tasks and wait for all; (start, end) on the monotonic clock."""
        answer = self.call(op="run", type=task_type, n=n)
        return answer["start"], answer["end"]

    def polls(self) -> int:
        return int(self.call(op="count", prefix="/tasks/poll")["count"])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> RemoteServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: The Conductor programs compared: taskfleet with a def and an async def no-op, the peer (its
#: workers are plain functions), and the floor.
PROGRAMS = ("taskfleet def", "taskfleet async def", "peer", "floor")


@contextlib.contextmanager
def conductor_program(
    program: str, url: str, task_type: str, procs: int, threads: int
) -> Iterator[list[Pool]]:
    shape = ("--processes", str(procs), "--threads", str(threads))
    with contextlib.ExitStack() as stack:
        if program == "floor":
            pools = [
                stack.enter_context(pool(url, task_type, str(threads), module="bench_floor"))
                for _ in range(procs)
            ]
        else:
            sdk, handler = {
                "taskfleet def": ("taskfleet", "noop"),
                "taskfleet async def": ("taskfleet", "anoop"),
                "peer": ("peer", "noop"),
            }[program]
            pools = [
                stack.enter_context(sdk_pool(sdk, url, task_type, "--handler", handler, *shape))
            ]
        yield pools


@dataclass
class ConductorRun:
    rate: float  # tasks/s
    worker_cpu: float  # CPU s per 1000 tasks, worker processes
    all_cpu: float  # CPU s per 1000 tasks, every client process
    server_cpu: float  # CPU s per 1000 tasks, the test server


def conductor_run(program: str, procs: int, threads: int, n: int) -> ConductorRun:
    with (
        RemoteServer() as server,
        conductor_program(program, server.url, "noop", procs, threads) as pools,
    ):
        server.run("noop", 50)  # warm up: connections, imports, first polls
        cpu0 = sum(p.worker_cpu() for p in pools)
        all0 = sum(p.all_cpu() for p in pools)
        srv0 = cpu_seconds(server.pid)
        start, end = server.run("noop", n)
        cpu1 = sum(p.worker_cpu() for p in pools)
        all1 = sum(p.all_cpu() for p in pools)
        srv1 = cpu_seconds(server.pid)
    k = 1000 / n
    return ConductorRun(n / (end - start), (cpu1 - cpu0) * k, (all1 - all0) * k, (srv1 - srv0) * k)


def bench_conductor(args: argparse.Namespace) -> list[Row]:
    rows = []
    for procs, threads in ((1, 4), (2, 4)):
        res: dict[str, list[ConductorRun]] = {p: [] for p in PROGRAMS}
        for run in range(args.runs):
            # Interleaved, and each run starts with a different program.
            shift = run % len(PROGRAMS)
            for program in PROGRAMS[shift:] + PROGRAMS[:shift]:
                r = conductor_run(program, procs, threads, args.tasks)
                res[program].append(r)
                log(
                    f"conductor {procs}x{threads} {program}: {r.rate:.0f} tasks/s, CPU s per 1000:"
                    f" workers {r.worker_cpu:.3f}, all {r.all_cpu:.3f}, server {r.server_cpu:.3f}"
                )
        medians = {
            p: ConductorRun(
                med([r.rate for r in runs]),
                med([r.worker_cpu for r in runs]),
                med([r.all_cpu for r in runs]),
                med([r.server_cpu for r in runs]),
            )
            for p, runs in res.items()
        }
        peer, floor = medians["peer"], medians["floor"]
        setting = f"{procs} proc x {threads} thr, N={args.tasks}"
        rows.append(
            Row(
                "conductor",
                f"{setting}, floor",
                "tasks/s",
                floor.rate,
                peer.rate,
                floor.rate / peer.rate,
                "(info)",
                None,
            )
        )
        rows.append(
            Row(
                "conductor",
                f"{setting}, floor",
                "worker CPU s/1000",
                floor.worker_cpu,
                peer.worker_cpu,
                floor.worker_cpu / peer.worker_cpu,
                "(info)",
                None,
            )
        )
        for style in ("def", "async def"):
            ours = medians[f"taskfleet {style}"]
            label = f"{setting}, {style}"
            rows += [
                Row(
                    "conductor",
                    label,
                    "tasks/s",
                    ours.rate,
                    peer.rate,
                    ours.rate / peer.rate,
                    ">= 2x",
                    ours.rate / peer.rate >= 2,
                ),
                Row(
                    "conductor",
                    label,
                    "worker CPU s/1000",
                    ours.worker_cpu,
                    peer.worker_cpu,
                    ours.worker_cpu / peer.worker_cpu,
                    "<= 0.5x",
                    ours.worker_cpu / peer.worker_cpu <= 0.5,
                ),
                Row(
                    "conductor",
                    label,
                    "worker CPU vs floor",
                    ours.worker_cpu,
                    floor.worker_cpu,
                    ours.worker_cpu / floor.worker_cpu,
                    "<= 2x",
                    ours.worker_cpu / floor.worker_cpu <= 2,
                ),
                Row(
                    "conductor",
                    label,
                    "all-proc CPU s/1000",
                    ours.all_cpu,
                    peer.all_cpu,
                    ours.all_cpu / peer.all_cpu,
                    "(info)",
                    None,
                ),
            ]
        rows.append(
            Row(
                "conductor",
                f"{setting}, test server",
                "server CPU s/1000",
                medians["taskfleet def"].server_cpu,
                peer.server_cpu,
                medians["taskfleet def"].server_cpu / peer.server_cpu,
                "(info)",
                None,
                note="taskfleet column: the def runs; the server runs in its own process",
            )
        )
    return rows + bench_idle(args)


def tree_rss(p: Pool) -> float:
    return sum(rss_mib(pid) for pid in [p.supervisor, *descendants(p.supervisor)])


def idle_run(program: str, seconds: float) -> tuple[float, float, float, float]:
    """(CPU s per second of every client process, polls per second, RSS MiB of the supervisor
    and one worker process, RSS MiB of the whole process tree) of an idle 1 x 4 pool."""
    with (
        RemoteServer() as server,
        conductor_program(program, server.url, "noop", 1, 4) as pools,
    ):
        server.run("noop", 20)
        time.sleep(1.0)  # back to idle polling
        (p,) = pools
        cpu0, polls0, t0 = p.all_cpu(), server.polls(), time.monotonic()
        time.sleep(seconds)
        cpu1, polls1, t1 = p.all_cpu(), server.polls(), time.monotonic()
        pair = rss_mib(p.supervisor) + (
            rss_mib(p.workers[0]) if p.workers[0] != p.supervisor else 0.0
        )
        return (cpu1 - cpu0) / (t1 - t0), (polls1 - polls0) / (t1 - t0), pair, tree_rss(p)


def bench_idle(args: argparse.Namespace) -> list[Row]:
    res: dict[str, list[tuple[float, float, float, float]]] = {"taskfleet def": [], "peer": []}
    for _ in range(max(1, args.runs // 2)):
        for program, found in res.items():
            r = idle_run(program, args.idle_seconds)
            found.append(r)
            log(
                f"idle {program}: CPU {r[0] * 1000:.1f} ms/s, {r[1]:.1f} polls/s,"
                f" RSS supervisor+worker {r[2]:.1f} MiB, tree {r[3]:.1f} MiB"
            )
    ours = [med([r[i] for r in res["taskfleet def"]]) for i in range(4)]
    theirs = [med([r[i] for r in res["peer"]]) for i in range(4)]
    setting = f"idle 1 proc x 4 thr, {args.idle_seconds:g} s"
    return [
        Row(
            "idle",
            setting,
            "CPU ms per s",
            ours[0] * 1000,
            theirs[0] * 1000,
            ours[0] / theirs[0],
            "<= 1x",
            ours[0] <= theirs[0],
        ),
        Row(
            "idle",
            setting,
            "polls per s",
            ours[1],
            theirs[1],
            ours[1] / theirs[1],
            "<= 1x",
            ours[1] <= theirs[1],
        ),
        Row(
            "idle",
            "RSS supervisor + 1 worker",
            "MiB",
            ours[2],
            theirs[2],
            ours[2] / theirs[2],
            "(report)",
            None,
        ),
        Row(
            "idle",
            "RSS whole process tree",
            "MiB",
            ours[3],
            theirs[3],
            ours[3] / theirs[3],
            "(report)",
            None,
        ),
    ]


# -- 2. pickup latency ----------------------------------------------------------------------------


def latency_run(sdk: str, n: int, poll: tuple[int, int] | None) -> list[float]:
    extra = ["--handler", "stamp", "--threads", "1"]
    if poll:
        extra += ["--poll-interval", str(poll[0]), "--poll-timeout", str(poll[1])]
    out = []
    with ConductorTestServer() as server, sdk_pool(sdk, server.url, "stamp", *extra):
        wait_terminal(server, server.enqueue_many("stamp", [{}] * 5), 60)
        rnd = random.Random(8)
        for _ in range(n):
            time.sleep(rnd.uniform(0.02, 0.15))  # idle: the workers are back to waiting
            enqueued = time.time()
            task_id = server.enqueue("stamp", {})
            wait_terminal(server, [task_id], 30)
            out.append((server.job(task_id).output["started"] - enqueued) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_latency(args: argparse.Namespace) -> list[Row]:
    n = args.latency_tasks
    equal = (100, 100)  # conductor-python's defaults: poll_interval 100 ms, poll_timeout 100 ms
    tf_default = latency_run("taskfleet", n, None)
    peer_default = latency_run("peer", n, None)
    tf_equal = latency_run("taskfleet", n, equal)
    rows = []
    for label, ours, theirs in (
        ("defaults", tf_default, peer_default),
        ("equal: interval 100, timeout 100 ms", tf_equal, peer_default),
    ):
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            a, b = pct(ours, q), pct(theirs, q)
            limit = 5 if q == 0.5 else 10
            rows.append(
                Row(
                    "latency",
                    f"{label}, N={n}",
                    f"ms {name}",
                    a,
                    b,
                    a / b,
                    f"{name} <= {limit} ms",
                    a <= limit,
                )
            )
    return rows


# -- 3. NATS path vs a raw nats-py loop ----------------------------------------------------------


def bench_nats(args: argparse.Namespace) -> list[Row]:
    from taskfleet import Configuration
    from taskfleet._client import TaskClient
    from taskfleet._nats.server import NatsServer
    from taskfleet._sources.base import WorkerBinding
    from taskfleet._sources.nats import NatsSource

    rows = []
    threads = 4
    with tempfile.TemporaryDirectory(prefix="tf-bench-nats-") as tmp:
        server = NatsServer(Path(tmp) / "js").start()
        try:
            config = Configuration(source="nats", nats_url=server.url, state_dir=tmp + "/state")
            client = TaskClient(config)

            def prepare(task_type: str, procs: int) -> None:
                async def go() -> None:
                    src = NatsSource(config)
                    await src.start()
                    try:
                        await src.prepare([WorkerBinding(task_type, procs, threads)])
                    finally:
                        await src.close()

                asyncio.run(go())

            def drain(task_type: str, n: int, pools: list[Pool]) -> tuple[float, float]:
                """(tasks/s, worker CPU s per 1000 tasks) of n no-op tasks."""
                cpu0 = sum(p.worker_cpu() for p in pools)
                start = time.monotonic()
                client.submit_many(task_type, [{}] * n)
                deadline = start + 600
                while client.depth(task_type) > 0:
                    if time.monotonic() > deadline:
                        raise TimeoutError(task_type)
                    time.sleep(0.01)
                rate = n / (time.monotonic() - start)
                return rate, (sum(p.worker_cpu() for p in pools) - cpu0) * 1000 / n

            # Every program drains WARM_UP tasks before it is measured: connections, consumers
            # and caches are warm, and a def handler has had its 256 calls to prove it cheap
            # (docs/workers.md, "Plain def handlers"): the rows are steady-state rates.
            WARM_UP = 300

            def run_tf(task_type: str, procs: int, n: int, handler: str) -> tuple[float, float]:
                with pool(
                    "--sdk",
                    "taskfleet",
                    "--nats-url",
                    server.url,
                    "--task-type",
                    task_type,
                    "--handler",
                    handler,
                    "--processes",
                    str(procs),
                    "--threads",
                    str(threads),
                ) as tf:
                    drain(task_type, WARM_UP, [tf])
                    return drain(task_type, n, [tf])

            def run_raw(task_type: str, procs: int, n: int, _: str) -> tuple[float, float]:
                prepare(task_type, procs)
                with contextlib.ExitStack() as stack:
                    raws = [
                        stack.enter_context(
                            pool(server.url, task_type, str(threads), module_call="raw_main")
                        )
                        for _ in range(procs)
                    ]
                    drain(task_type, WARM_UP, raws)
                    return drain(task_type, n, raws)

            # The raw loop runs its no-op inline on the event loop: taskfleet's like-for-like is
            # an ``async def`` no-op; a plain ``def`` one adds the hand-off to a slot's thread.
            styles = {"def": "noop", "async def": "anoop"}
            try:
                for procs in (1, 2):
                    rates: dict[str, list[float]] = {"raw": [], **{s: [] for s in styles}}
                    cpus: dict[str, list[float]] = {"raw": [], **{s: [] for s in styles}}
                    for run in range(args.runs):
                        order = [("raw", "", run_raw)] + [
                            (style, handler, run_tf) for style, handler in styles.items()
                        ]
                        for name, handler, fn in order[run % 3 :] + order[: run % 3]:
                            kind = handler or "raw"
                            rate, cpu = fn(
                                f"nats_{kind}_{procs}_{run}", procs, args.nats_tasks, handler
                            )
                            rates[name].append(rate)
                            cpus[name].append(cpu)
                            log(
                                f"nats {procs} proc {name}: {rate:.0f} tasks/s,"
                                f" worker CPU s per 1000 {cpu:.3f}"
                            )
                    raw, raw_cpu = med(rates["raw"]), med(cpus["raw"])
                    for style in styles:
                        a, cpu = med(rates[style]), med(cpus[style])
                        # The def no-op's target with one process is the higher one.
                        target = 0.85 if style == "def" and procs == 1 else 0.8
                        label = (
                            f"{procs} proc x {threads} slots, {style} no-op, N={args.nats_tasks}"
                        )
                        rows += [
                            Row(
                                "nats",
                                label,
                                "tasks/s",
                                a,
                                raw,
                                a / raw,
                                f">= {target}x",
                                a / raw >= target,
                            ),
                            Row(
                                "nats",
                                label,
                                "worker CPU s/1000",
                                cpu,
                                raw_cpu,
                                cpu / raw_cpu,
                                "(info)",
                                None,
                            ),
                        ]
            finally:
                client.close()
        finally:
            server.stop()
    return rows


# -- 4. CPU-bound scaling -------------------------------------------------------------------------


def scaling_rate(handler: str, n_arg: int, tasks: int, procs: int, threads: int) -> float:
    shape = ("--processes", str(procs), "--threads", str(threads))
    with (
        ConductorTestServer() as server,
        sdk_pool("taskfleet", server.url, handler, "--handler", handler, *shape),
    ):
        warm = server.enqueue_many(handler, [{"n": 1000}] * (procs * threads))
        wait_terminal(server, warm, 60)
        start = time.monotonic()
        ids = server.enqueue_many(handler, [{"n": n_arg}] * tasks)
        end = wait_terminal(server, ids)
    return tasks / (end - start)


def bench_scaling(args: argparse.Namespace) -> list[Row]:
    k = args.processes
    rows = []
    cases = [
        ("python, processes", "py_primes", 20_000, lambda m: (m, 1)),
        ("native, threads", "native_primes", 400_000, lambda m: (1, m)),
    ]
    subprocess.run([str(SCRIPTS / "build-native")], check=True, stdout=subprocess.DEVNULL)
    for label, handler, n_arg, shape in cases:
        ratios, one, many = [], [], []
        for _ in range(args.runs):
            a = scaling_rate(handler, n_arg, args.cpu_tasks, *shape(1))
            b = scaling_rate(handler, n_arg, args.cpu_tasks, *shape(k))
            one.append(a)
            many.append(b)
            ratios.append(b / a)
            log(f"scaling {label}: 1 -> {a:.1f}/s, {k} -> {b:.1f}/s ({b / a:.2f}x)")
        ratio = med(ratios)
        rows.append(
            Row(
                "scaling",
                f"{label} {k} vs 1, {args.cpu_tasks} tasks",
                "tasks/s",
                med(many),
                med(one),
                ratio,
                f">= {0.9 * k:.1f}x",
                ratio >= 0.9 * k,
                note="peer/raw column = the 1-process/1-thread rate",
            )
        )
    return rows


# -- 5. memory ------------------------------------------------------------------------------------


def bench_memory(args: argparse.Namespace) -> list[Row]:
    found: dict[str, tuple[float, float]] = {}
    for sdk in ("taskfleet", "peer"):
        sups, wrks = [], []
        for _ in range(max(1, args.runs // 2)):
            with ConductorTestServer() as server, sdk_pool(sdk, server.url, "noop") as p:
                wait_terminal(server, server.enqueue_many("noop", [{}] * 20), 60)
                time.sleep(1.0)
                sups.append(rss_mib(p.supervisor))
                wrks.append(rss_mib(p.workers[0]))
        found[sdk] = (med(sups), med(wrks))
        log(f"memory {sdk}: supervisor {found[sdk][0]:.1f} MiB, worker {found[sdk][1]:.1f} MiB")
    rows = []
    for i, what in enumerate(("supervisor", "idle worker process")):
        a, b = found["taskfleet"][i], found["peer"][i]
        rows.append(Row("memory", what, "RSS MiB", a, b, a / b, "(report)", None))
    return rows


# -- 6. runner overhead ---------------------------------------------------------------------------


def overhead_run(n: int, style: str, threads: int, mode: str = "") -> float:
    code = "import sys, bench_workers; sys.exit(bench_workers.overhead_main())"
    out = subprocess.run(
        [sys.executable, "-c", code, str(n), style, str(threads), *([mode] if mode else [])],
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(json.loads(out.strip().splitlines()[-1])["us_per_task"])


def bench_overhead(args: argparse.Namespace) -> list[Row]:
    rows = []
    # "traced": every task in an execute span, OpenTelemetry SDK, spans dropped by the exporter
    for style, threads, mode in (
        ("sync", 1, ""),
        ("sync", 4, ""),
        ("async", 4, ""),
        ("sync", 4, "traced"),
        ("async", 4, "traced"),
    ):
        values = [overhead_run(args.overhead_tasks, style, threads, mode) for _ in range(args.runs)]
        what = f"{style} x{threads}{' traced' if mode else ''}"
        log(f"overhead {what}: " + ", ".join(f"{v:.0f}" for v in values) + " us/task")
        rows.append(
            Row(
                "overhead",
                f"{style} handler, threads={threads}, MemorySource{', traced' if mode else ''}",
                "us/task",
                med(values),
                None,
                None,
                "(track)",
                None,
            )
        )
    return rows


BENCHES: dict[str, Callable[[argparse.Namespace], list[Row]]] = {
    "conductor": bench_conductor,
    "latency": bench_latency,
    "nats": bench_nats,
    "scaling": bench_scaling,
    "memory": bench_memory,
    "overhead": bench_overhead,
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=ALL,
        default=ALL,
        metavar="NAME",
        help=f"measurements to run: {', '.join(ALL)}",
    )
    parser.add_argument("--runs", type=int, help="runs per measurement, medians reported (3)")
    parser.add_argument("--tasks", type=int, help="no-op tasks per Conductor run (5000)")
    parser.add_argument("--nats-tasks", type=int, help="no-op tasks per NATS run (5000)")
    parser.add_argument("--latency-tasks", type=int, help="tasks timed one at a time (300)")
    parser.add_argument("--cpu-tasks", type=int, help="CPU-bound tasks per scaling run (40)")
    parser.add_argument("--overhead-tasks", type=int, help="tasks per runner-overhead run (5000)")
    parser.add_argument(
        "--idle-seconds", type=float, default=10.0, help="idle pools: seconds measured (10)"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=2,
        help="scaling: processes (Python) and threads (native) compared with 1",
    )
    parser.add_argument("--quick", action="store_true", help="smaller N and 2 runs (~4 min)")
    args = parser.parse_args()
    defaults = (
        {
            "runs": 2,
            "tasks": 2000,
            "nats_tasks": 2000,
            "latency_tasks": 100,
            "cpu_tasks": 24,
            "overhead_tasks": 2000,
        }
        if args.quick
        else {
            "runs": 3,
            "tasks": 5000,
            "nats_tasks": 5000,
            "latency_tasks": 300,
            "cpu_tasks": 40,
            "overhead_tasks": 5000,
        }
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    log(
        f"CPUs: {len(os.sched_getaffinity(0))} (nproc), Python {sys.version.split()[0]},"
        f" load average {os.getloadavg()[0]:.2f}"
    )
    started = time.monotonic()
    rows: list[Row] = []
    for name in ALL:
        if name in args.only:
            t = time.monotonic()
            rows += BENCHES[name](args)
            log(f"{name}: {time.monotonic() - t:.0f} s")
    print_table(rows)
    print(
        f"\n{time.monotonic() - started:.0f} s; CPUs {len(os.sched_getaffinity(0))};"
        f" Python {sys.version.split()[0]}; load average now {os.getloadavg()[0]:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
