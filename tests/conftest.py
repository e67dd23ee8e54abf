"""Shared fixtures. Slow tests (real processes, real servers) are marked `slow`."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class NativeLibs:
    """Paths of the example libraries built by ``scripts/build-native``."""

    checksum: Path
    imagekernel: Path


def build_native_libs() -> NativeLibs:
    """Build the example libraries (only what is stale) and return their paths.

    Raises:
        RuntimeError: with the compiler's output when the build fails.
    """
    done = subprocess.run(
        [str(ROOT / "scripts" / "build-native")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"scripts/build-native failed:\n{done.stdout}{done.stderr}")
    build = ROOT / "examples" / "native" / "build"
    return NativeLibs(build / "libchecksum.so", build / "libimagekernel.so")


@pytest.fixture(scope="session")
def native_libs() -> NativeLibs:
    """The example native libraries, compiled once per test run."""
    return build_native_libs()
