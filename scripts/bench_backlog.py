"""What asking the server for the backlog costs an idle pool.

For each transport and each ``TASKFLEET_QUEUE_DEPTH_INTERVAL`` (off, the default 5 s, 1 s), a
pool of ``--types`` idle task types (``--processes`` processes each, default poll settings) runs
in its own process with nothing to do. After a warm-up, the script measures over ``--seconds``:
the supervisor's CPU (user+sys from ``/proc``), its worker processes' CPU, and on Conductor the
requests per second the server answered (all, and ``/tasks/queue/sizes`` alone).

Usage: scripts/bench-backlog [--seconds 20] [--types 4] [--processes 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from taskfleet._nats.server import NatsServer  # noqa: E402
from taskfleet.testing import ConductorTestServer  # noqa: E402

POOL = """
import sys
sys.path.insert(0, {here!r})
from idle_workers import WORKERS
from taskfleet import Configuration, TaskHandler

if __name__ == "__main__":
    with TaskHandler(WORKERS, Configuration.from_env({{}}, **{config!r})) as handler:
        handler.start_processes()
        handler.join_processes()
"""

WORKERS = """
from taskfleet import worker_task

def _idle() -> dict:
    return {{}}

WORKERS = [
    worker_task(f"idle{{i}}", processes={processes})(_idle) for i in range({types})
]
"""

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def measure(config: dict[str, Any], args: argparse.Namespace, server: Any) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        here = Path(tmp)
        (here / "idle_workers.py").write_text(
            WORKERS.format(types=args.types, processes=args.processes)
        )
        (here / "pool.py").write_text(POOL.format(here=tmp, config=config))
        pool = subprocess.Popen([sys.executable, str(here / "pool.py")])
        try:
            url = "http://" + config["metrics_address"]
            deadline = time.monotonic() + 60
            while True:
                try:
                    workers = get_json(url + "/workers")["workers"]
                    if all(w["state"] == "running" for w in workers):
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the pool did not start")
                time.sleep(0.2)
            time.sleep(args.warmup)
            pids = [w["pid"] for w in workers]
            sup0, work0 = cpu_seconds(pool.pid), sum(cpu_seconds(p) for p in pids)
            req0 = len(server.requests) if isinstance(server, ConductorTestServer) else 0
            sizes0 = server.request_count("/tasks/queue/sizes") if req0 else 0
            start = time.monotonic()
            time.sleep(args.seconds)
            elapsed = time.monotonic() - start
            sup = cpu_seconds(pool.pid) - sup0
            work = sum(cpu_seconds(p) for p in pids) - work0
            out = {"supervisor": 100 * sup / elapsed, "workers": 100 * work / elapsed}
            if isinstance(server, ConductorTestServer):
                out["requests"] = (len(server.requests) - req0) / elapsed
                out["sizes"] = (server.request_count("/tasks/queue/sizes") - sizes0) / elapsed
            return out
        finally:
            pool.terminate()
            pool.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--types", type=int, default=4)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--only", choices=("conductor", "nats"))
    args = parser.parse_args()
    port = 19464
    rows = []
    with tempfile.TemporaryDirectory() as state:
        for transport in ("conductor", "nats"):
            if args.only and transport != args.only:
                continue
            for interval in (0.0, 5.0, 1.0):
                base = {
                    "state_dir": state,
                    "metrics_address": f"127.0.0.1:{port}",
                    "queue_depth_interval": interval,
                }
                if transport == "conductor":
                    with ConductorTestServer() as server:
                        config = {**base, "source": "conductor", "conductor_server_url": server.url}
                        result = measure(config, args, server)
                else:
                    with NatsServer(Path(state) / "nats") as nats:
                        config = {**base, "source": "nats", "nats_url": nats.url}
                        result = measure(config, args, nats)
                rows.append((transport, interval, result))
                shown = "off" if not interval else f"{interval:g} s"
                line = (
                    f"{transport:9} | {shown:5} | supervisor CPU {result['supervisor']:5.2f} %"
                    f" | workers CPU {result['workers']:5.2f} %"
                )
                if "requests" in result:
                    line += (
                        f" | requests/s {result['requests']:6.2f}"
                        f" (queue sizes {result['sizes']:.2f})"
                    )
                print(line, flush=True)


if __name__ == "__main__":
    main()
