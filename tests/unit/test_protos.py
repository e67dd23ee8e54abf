"""The committed generated protobuf code matches protos/ (a stale module fails the suite)."""

from __future__ import annotations

import filecmp
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "src" / "taskfleet" / "_proto"


def _relative_files(base: Path) -> set[str]:
    return {
        str(p.relative_to(base))
        for p in base.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.mark.skipif(
    importlib.util.find_spec("grpc_tools") is None,
    reason="grpcio-tools is not installed (it comes with the dev extra); cannot regenerate",
)
def test_committed_protobuf_code_is_what_gen_protos_produces(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run(
        [str(ROOT / "scripts" / "gen-protos"), str(tmp_path)],
        check=True,
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    fresh, committed = _relative_files(tmp_path), _relative_files(COMMITTED)
    assert fresh == committed, "run scripts/gen-protos: the set of generated files changed"
    stale = [
        name
        for name in sorted(fresh)
        if not filecmp.cmp(tmp_path / name, COMMITTED / name, shallow=False)
    ]
    assert not stale, f"run scripts/gen-protos and commit: stale generated files {stale}"


def test_generated_task_round_trips_with_optional_output_subject():
    from taskfleet._proto.taskfleet.v1 import task_pb2

    task = task_pb2.Task(id="t1", type="resize", input=b'{"w": 1}', attempt=1)
    task.headers["trace"] = "abc"
    decoded = task_pb2.Task.FromString(task.SerializeToString())
    assert decoded == task
    assert not decoded.HasField("output_subject")
    assert task_pb2.TaskResult.Status.Name(task_pb2.TaskResult.FAILED) == "FAILED"
