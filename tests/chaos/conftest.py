"""Chaos suite: real processes broken on purpose. Every test here is slow; figures are printed
as `CHAOS ...` lines (run with `-s` to see them) and recorded in docs/reliability.md."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # This hook sees every collected item, not only this folder's: mark only the chaos tests.
    here = Path(__file__).resolve().parent
    for item in items:
        if item.path.resolve().is_relative_to(here):
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.chaos)
