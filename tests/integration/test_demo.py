"""The demo (the README's first command) runs end to end and checks its own results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_runs_every_worker_type_and_every_result_checks_out(tmp_path, native_libs):
    env = {**os.environ, "TASKFLEET_STATE_DIR": str(tmp_path / "state")}
    env.pop("NATS_URL", None)
    env.pop("CONDUCTOR_SERVER_URL", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo" / "main.py"), "--scale", "0.1"],
        check=False,
        capture_output=True,
        text=True,
        timeout=280,
        env=env,
        cwd=ROOT,
    )
    log = tmp_path / "state" / "pool.log"
    assert proc.returncode == 0, (
        proc.stdout + proc.stderr + (log.read_text() if log.exists() else "")
    )
    assert "every result checked: OK" in proc.stdout
    assert "native_checksum" in proc.stdout and "cannot divide by zero" in proc.stdout
    # The console tells the story; the pool's log lines (every process's) are in the file it names.
    assert f"the pool's log: {log}" in proc.stdout
    assert "results: " in proc.stdout
    assert " INFO " not in proc.stdout + proc.stderr, proc.stderr
    text = log.read_text()
    assert "worker process(es) for divide, fetch_length, greet" in text and "pool stopped" in text
