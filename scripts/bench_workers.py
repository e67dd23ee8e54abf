"""Handlers and the pool host of ``scripts/bench`` (not part of the taskfleet package).

The handlers are module-level functions so that both SDKs can send them to their worker processes
by reference. The same function objects serve taskfleet (``@worker_task``-style binding) and
conductor-python 2.0.0 (``Worker(execute_function=...)``): neither SDK gets a cheaper handler.

``python -m bench_workers --sdk taskfleet|peer ...`` (with ``scripts`` on ``PYTHONPATH``) starts
one pool, prints one JSON line ``{"supervisor": pid, "workers": [pid, ...]}`` once every worker
process is up, and stops the pool when its stdin closes. The bench driver measures it from outside
(``/proc``), so the host process is the "supervisor" of either SDK.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NATIVE_LIB = ROOT / "examples" / "native" / "build" / "libchecksum.so"

_count_primes: Any = None


def noop() -> dict[str, Any]:
    """Does nothing: the cost measured is the SDK's."""
    return {}


async def anoop() -> dict[str, Any]:
    """Does nothing, as ``async def``: runs on the worker's loop, as the raw NATS loop's does."""
    return {}


def stamp() -> dict[str, Any]:
    """Records when the handler started (epoch seconds), for pickup latency."""
    return {"started": time.time()}


def py_primes(n: int = 20_000) -> dict[str, Any]:
    """CPU-bound pure Python (holds the GIL): trial division, as tf_count_primes in C."""
    count = 0
    for candidate in range(2, n + 1):
        d = 2
        while d * d <= candidate:
            if candidate % d == 0:
                break
            d += 1
        else:
            count += 1
    return {"primes": count}


def native_primes(n: int = 400_000) -> dict[str, Any]:
    """CPU-bound native code through taskfleet.native (releases the GIL during the call)."""
    global _count_primes
    if _count_primes is None:
        from taskfleet.native import NativeLibrary

        _count_primes = NativeLibrary(NATIVE_LIB).function("tf_count_primes", ["uint64"], "uint64")
    return {"primes": int(_count_primes(n))}


HANDLERS = {
    "noop": noop,
    "anoop": anoop,
    "stamp": stamp,
    "py_primes": py_primes,
    "native_primes": native_primes,
}


def _taskfleet_pool(args: argparse.Namespace) -> tuple[Any, list[int]]:
    from taskfleet import Configuration, TaskHandler, worker_task

    common: dict[str, Any] = {"state_dir": args.state_dir, "metrics_address": "127.0.0.1:0"}
    if args.nats_url:
        config = Configuration(source="nats", nats_url=args.nats_url, **common)
    else:
        config = Configuration(source="conductor", conductor_server_url=args.url, **common)
    options: dict[str, Any] = {"threads": args.threads, "processes": args.processes}
    if args.poll_interval is not None:
        options["poll_interval"] = args.poll_interval
    if args.poll_timeout is not None:
        options["poll_timeout"] = args.poll_timeout
    worker = worker_task(args.task_type, **options)(HANDLERS[args.handler])
    handler = TaskHandler([worker], config, install_signal_handlers=False)
    handler.start_processes()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = handler.workers_status()
        pids = [w["pid"] for w in status if w["pid"] and w["state"] == "running"]
        if len(pids) == args.processes:
            return handler, pids
        time.sleep(0.02)
    raise SystemExit("taskfleet workers did not start within 30 s")


def _peer_pool(args: argparse.Namespace) -> tuple[Any, list[int]]:
    from conductor.client.automator.task_handler import TaskHandler  # type: ignore[import-untyped]
    from conductor.client.configuration.configuration import (  # type: ignore[import-untyped]
        Configuration,
    )
    from conductor.client.worker.worker import Worker  # type: ignore[import-untyped]

    options: dict[str, Any] = {"thread_count": args.threads}
    if args.poll_interval is not None:
        options["poll_interval"] = args.poll_interval
    if args.poll_timeout is not None:
        options["poll_timeout"] = args.poll_timeout
    # conductor-python runs one process per Worker object: N processes = N workers of one type.
    workers = [
        Worker(args.task_type, HANDLERS[args.handler], **options) for _ in range(args.processes)
    ]
    handler = TaskHandler(
        workers,
        Configuration(server_api_url=args.url),
        scan_for_annotated_workers=False,
    )
    handler.start_processes()
    pids = [p.pid for p in handler.task_runner_processes]
    return handler, pids


async def _raw_loop(url: str, task_type: str, batch: int) -> None:
    import asyncio

    import nats

    from taskfleet._nats.wire import Subjects, consumer_name
    from taskfleet._proto.taskfleet.v1 import task_pb2

    subjects = Subjects("taskfleet")
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe_bind(consumer_name(task_type), stream=subjects.tasks_stream)
    result_subject = subjects.result(task_type)

    async def handle(msg: Any) -> None:
        task = task_pb2.Task.FromString(msg.data)
        output = json.dumps(noop()).encode()
        result = task_pb2.TaskResult(
            task_id=task.id,
            task_type=task.type,
            status=task_pb2.TaskResult.COMPLETED,
            output=output,
            attempt=task.attempt or 1,
        )
        headers = {"Nats-Msg-Id": f"{task.id}:{task.attempt or 1}"}
        await js.publish(result_subject, result.SerializeToString(), headers=headers)
        await msg.ack()

    print(json.dumps({"supervisor": os.getpid(), "workers": [os.getpid()]}), flush=True)
    while True:
        try:
            msgs = await sub.fetch(batch=batch, timeout=1.0)
        except asyncio.TimeoutError:
            continue
        await asyncio.gather(*(handle(m) for m in msgs))


def raw_main() -> int:
    """A raw nats-py worker loop: fetch -> publish result -> await PubAck -> ack (batch in
    parallel, as many as taskfleet's slots). Runs until killed."""
    import asyncio

    url, task_type, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    asyncio.run(_raw_loop(url, task_type, batch))
    return 0


def overhead_main() -> int:
    """Runner overhead: N no-op tasks through Runner + MemorySource in this process.

    argv: N style(sync|async) threads [profile|traced]. Prints JSON {"us_per_task": ...}.
    ``traced``: an OpenTelemetry SDK provider with a batching processor whose exporter drops
    the spans, so every task runs in its execute span (docs/tracing.md).
    """
    from taskfleet import worker_task
    from taskfleet._runner import Runner
    from taskfleet._sources.memory import MemorySource

    n, style, threads = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    mode = sys.argv[4] if len(sys.argv) > 4 else ""
    profile, traced = mode == "profile", mode == "traced"
    if traced:
        _set_up_tracing()

    async def anoop() -> dict[str, Any]:
        return {}

    worker = worker_task("overhead", threads=threads)(anoop if style == "async" else noop)

    class TimedSource(MemorySource):
        """Remembers when the last result came: the runner's stop after max_tasks waits for
        the long poll of its idle slots, which is not per-task cost."""

        last = 0.0

        async def report(self, task: Any, result: Any, *, chain: bool = False) -> Any:
            self.last = time.perf_counter()
            return await super().report(task, result, chain=chain)

    def once(count: int) -> float:
        source = TimedSource()
        for _ in range(count):
            source.add("overhead", {})
        started = time.perf_counter()
        runner = Runner(worker, source, max_tasks=count)  # as run_inline does
        if traced:
            from taskfleet import _tracing

            _tracing.instrument(runner)
        asyncio.run(runner.run())
        assert len(source.results) == count, len(source.results)
        return source.last - started

    once(200)  # warm up imports and metrics
    if profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        once(n)
        prof.disable()
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
        return 0
    print(json.dumps({"us_per_task": once(n) / n * 1e6}), flush=True)
    return 0


def _set_up_tracing() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from taskfleet import Configuration, _tracing

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)
    assert _tracing.configure(Configuration.from_env({}))


def main() -> int:
    parser = argparse.ArgumentParser(description="host one worker pool for scripts/bench")
    parser.add_argument("--sdk", choices=["taskfleet", "peer"], required=True)
    parser.add_argument("--url", default="", help="Conductor API base URL")
    parser.add_argument("--nats-url", default="", help="NATS URL (taskfleet only)")
    parser.add_argument("--task-type", required=True)
    parser.add_argument("--handler", choices=sorted(HANDLERS), default="noop")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--poll-interval", type=int, default=None, help="ms (default: SDK's)")
    parser.add_argument("--poll-timeout", type=int, default=None, help="ms (default: SDK's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tf-bench-state-") as args.state_dir:
        pool, pids = _taskfleet_pool(args) if args.sdk == "taskfleet" else _peer_pool(args)
        try:
            print(json.dumps({"supervisor": os.getpid(), "workers": pids}), flush=True)
            sys.stdin.read()  # the driver closes stdin to stop the pool
        finally:
            pool.stop_processes()
    return 0


if __name__ == "__main__":
    sys.exit(main())
