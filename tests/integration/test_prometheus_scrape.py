"""A real Prometheus server scrapes the pool's endpoint and answers a query over its HTTP API."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
from pool_workers import square

from taskfleet import Configuration, TaskHandler
from taskfleet.testing import ConductorTestServer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        shutil.which("prometheus") is None,
        reason="prometheus is not installed (Debian package `prometheus`; .ci/run installs it)",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _query(base: str, promql: str) -> float | None:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            data = json.loads(r.read())
    except OSError:
        return None
    result = data.get("data", {}).get("result", [])
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_the_pool_and_sums_every_process(tmp_path):
    with ConductorTestServer() as server:
        ids = server.enqueue_many("square", [{"x": i} for i in range(100)])
        config = Configuration.from_env(
            {},
            source="conductor",
            conductor_server_url=server.url,
            state_dir=str(tmp_path / "state"),
            metrics_address="127.0.0.1:0",
        ).validate()
        with TaskHandler([square], config, install_signal_handlers=False) as handler:
            handler.start_processes()
            assert server.wait_for(ids, timeout=60)
            target = handler.metrics_url.removeprefix("http://")
            port = _free_port()
            (tmp_path / "prometheus.yml").write_text(
                "global:\n  scrape_interval: 1s\n"
                "scrape_configs:\n  - job_name: taskfleet\n"
                f"    static_configs:\n      - targets: ['{target}']\n"
            )
            prom = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            try:
                base = f"http://127.0.0.1:{port}"
                promql = 'sum(task_execute_time_seconds_count{taskType="square"})'
                deadline = time.monotonic() + 60
                value = None
                while time.monotonic() < deadline and value != 100:
                    value = _query(base, promql)
                    time.sleep(0.5)
                up = _query(base, 'up{job="taskfleet"}')
            finally:
                prom.terminate()
                try:
                    prom.wait(10)
                except subprocess.TimeoutExpired:
                    prom.kill()
    assert up == 1
    assert value == 100
