"""Scratch directories of pools killed with -9 are removed by the next pool; live ones never."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskfleet._scratch import LOCK_NAME, MIN_ORPHAN_AGE, ScratchDir

HOLDER = textwrap.dedent(
    """
    import sys, time
    from taskfleet._scratch import ScratchDir
    d = ScratchDir("unit", sys.argv[1])
    print(d.path, flush=True)
    time.sleep(60)
    """
)


@pytest.fixture
def holder(tmp_path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """A real process holding a scratch directory under tmp_path."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    path = Path(proc.stdout.readline().strip())
    try:
        yield proc, path
    finally:
        proc.kill()
        proc.wait()


def age(path: Path, seconds: float = MIN_ORPHAN_AGE + 50) -> None:
    then = time.time() - seconds
    os.utime(path / LOCK_NAME, (then, then))


def test_the_directory_of_a_pool_killed_with_sigkill_is_removed_by_the_next(tmp_path, holder):
    proc, orphan = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    age(orphan)
    new = ScratchDir("unit", str(tmp_path))
    try:
        assert not orphan.exists()
        assert Path(new.path).is_dir()
    finally:
        new.remove()
    assert not Path(new.path).exists()


def test_a_live_pools_directory_is_kept_however_old(tmp_path, holder):
    _, alive = holder
    age(alive)
    new = ScratchDir("unit", str(tmp_path))
    new.remove()
    new.remove()  # twice is fine
    assert (alive / LOCK_NAME).exists()


def test_new_lock_files_other_kinds_and_unlocked_directories_are_left_alone(tmp_path, holder):
    proc, young = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()  # dead, but its lock file is seconds old: it may be a pool still starting
    legacy = tmp_path / "taskfleet-unit-legacy"  # no lock file (an older taskfleet)
    legacy.mkdir()
    other = ScratchDir("other", str(tmp_path))
    os.close(other._fd or -1)  # its owner "dies"
    other._fd = None
    age(Path(other.path))
    new = ScratchDir("unit", str(tmp_path))
    new.remove()
    assert young.exists() and legacy.exists() and Path(other.path).exists()
