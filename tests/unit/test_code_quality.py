"""The code stays ruff- and mypy-clean: a lint or type error fails the suite, not just a reviewer."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(
    shutil.which("ruff") is None and not Path(sys.prefix, "bin", "ruff").exists(),
    reason="ruff is not installed (it comes with the dev extra)",
)
def test_ruff_finds_nothing_and_the_code_is_formatted():
    ruff = shutil.which("ruff") or str(Path(sys.prefix, "bin", "ruff"))
    targets = [d for d in ("src", "tests", "scripts", "examples") if (ROOT / d).exists()]
    result = _run(ruff, "check", *targets)
    assert result.returncode == 0, result.stdout + result.stderr
    formatted = _run(ruff, "format", "--check", *targets)
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr


@pytest.mark.slow
def test_mypy_finds_nothing():
    result = _run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr
