"""Helpers shared by the integration and chaos tests: bounded runs, waiting on conditions,
configurations for the Conductor test server (built over an empty environment, so a developer's
shell variables stay out), scraping the pool's endpoint, and the chaos killer.

Importable as ``helpers`` from every test folder (``tests/`` is on ``sys.path`` through its
``conftest.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from taskfleet import Configuration

T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = 60.0) -> T:
    """Run a coroutine from a sync test, bounded so a hang fails instead of blocking CI."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def eventually(
    condition: Callable[[], Awaitable[Any]], timeout: float = 10.0, what: str = "condition"
) -> Any:
    """Await ``condition()`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Sync twin of :func:`eventually` for tests of the blocking TaskClient."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def conductor_settings(server: Any, state: Path, **changes: Any) -> dict[str, Any]:
    """``Configuration`` keywords for a pool on a ``ConductorTestServer``, state under
    ``state``, no HTTP endpoint unless ``metrics_address`` is given (for :func:`pool_process`,
    which takes keywords)."""
    return {
        "source": "conductor",
        "conductor_server_url": server.url,
        "state_dir": str(state),
        "metrics_address": "off",
        **changes,
    }


def conductor_config(server: Any, state: Path, **changes: Any) -> Configuration:
    """The :func:`conductor_settings` as a validated ``Configuration``."""
    return Configuration.from_env({}, **conductor_settings(server, state, **changes))


def http_get(url: str) -> tuple[int, str]:
    """(status, body) of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric_total(body: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` in a text exposition whose labels include ``labels``."""
    total = 0.0
    for line in body.splitlines():
        if not line.startswith((name + "{", name + " ")):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


_POOL_SCRIPT = """
import sys
sys.path.insert(0, {workers_dir!r})
from {module} import *  # noqa: F403
from taskfleet import Configuration, TaskHandler

if __name__ == "__main__":
    with TaskHandler([{worker}], Configuration.from_env({{}}, **{config!r})) as handler:
        handler.start_processes()
        handler.join_processes()
    print("drained", flush=True)
"""


@contextmanager
def pool_process(
    directory: Path,
    worker: str,
    *,
    module: str = "pool_workers",
    session: bool = False,
    **config: Any,
) -> Iterator[subprocess.Popen[str]]:
    """A pool in a process of its own (real signals, its own stderr), running ``worker`` (an
    expression over ``tests/integration/{module}.py``) with ``config`` over an empty
    environment; with ``session``, in a session (and process group) of its own, whose id is
    its pid. Killed on the way out if it is still running (with ``session``, every process of
    the session)."""
    script = directory / "pool_main.py"
    workers_dir = str(Path(__file__).resolve().parent / "integration")
    script.write_text(
        _POOL_SCRIPT.format(workers_dir=workers_dir, worker=worker, config=config, module=module)
    )
    with running_script(script, session=session) as proc:
        yield proc


@contextmanager
def running_script(
    script: Path, *, env: dict[str, str] | None = None, session: bool = False
) -> Iterator[subprocess.Popen[str]]:
    """``python script`` with its output piped (``env``: its whole environment; None: this
    one's); with ``session``, in a session (and process group) of its own. Killed on the way out
    if it is still running (with ``session``, every process of the session)."""
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=session,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pid in session_pids(proc.pid) if session else ():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _stat(pid: str) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state, ppid, pgrp, session...);
    empty when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def session_pids(sid: int) -> list[int]:
    """Live processes (not zombies) of session ``sid``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(entry)
            if len(fields) > 3 and fields[3] == str(sid) and fields[0] != "Z":
                out.append(int(entry))
    return out


def helper_pids(marker: bytes) -> list[int]:
    """Children of this process whose command line contains ``marker`` (the multiprocessing
    fork server: ``b"forkserver import main"``, its resource tracker:
    ``b"resource_tracker import main"``)."""
    me = str(os.getpid())
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat(entry)
        if len(fields) < 2 or fields[1] != me or fields[0] == "Z":
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker in f.read():
                    out.append(int(entry))
        except OSError:
            pass
    return out


# -- chaos -------------------------------------------------------------------------------------


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


def live_pids(handler: Any) -> list[int]:
    return [w["pid"] for w in handler.workers_status() if w["pid"] and w["state"] == "running"]


def report(line: str) -> None:
    """Print a ``CHAOS`` figure line (and append it to ``$TASKFLEET_CHAOS_REPORT``)."""
    print(f"\nCHAOS {line}", flush=True)
    path = os.environ.get("TASKFLEET_CHAOS_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d')} {line}\n")


@contextmanager
def nats_pool(tmp_path: Path, *workers: Any, **settings: Any) -> Iterator[tuple[Any, Any]]:
    """A nats-server of its own, a started pool of ``workers`` on it and a TaskClient:
    yields (client, handler); everything stops on exit."""
    from taskfleet import TaskClient, TaskHandler
    from taskfleet._nats.server import NatsServer

    with NatsServer(tmp_path / "nats") as server:
        config = Configuration.from_env(
            {},
            nats_url=server.url,
            state_dir=str(tmp_path / "state"),
            metrics_address="off",
            **settings,
        )
        with (
            TaskClient(config) as client,
            TaskHandler(list(workers), config, install_signal_handlers=False) as handler,
        ):
            handler.start_processes()
            yield client, handler
