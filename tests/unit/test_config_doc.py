"""docs/configuration.md lists every setting and is what scripts/gen-config-doc generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from taskfleet._config import SETTINGS
from taskfleet._options import OPTIONS

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "configuration.md"
GENERATOR = ROOT / "scripts" / "gen-config-doc"


def test_every_setting_is_on_the_configuration_page():
    page = PAGE.read_text()
    missing = [env for _, env, _, _ in SETTINGS if f"`{env}`" not in page]
    assert not missing, f"not in docs/configuration.md: {missing}; run scripts/gen-config-doc"


def test_every_per_worker_property_is_on_the_configuration_page():
    page = PAGE.read_text()
    assert "CONDUCTOR_WORKER_<TASK_TYPE>_<PROPERTY>" in page
    assert "CONDUCTOR_WORKER_ALL_<PROPERTY>" in page
    missing = [o.env for o in OPTIONS if o.env and f"| `{o.env}` | `{o.name}` |" not in page]
    assert not missing, f"not in docs/configuration.md: {missing}; run scripts/gen-config-doc"


def test_the_configuration_page_is_what_the_generator_writes():
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_generator_notices_a_stale_page(tmp_path):
    # Run a copy of the generator against a copy of the page with one setting removed.
    (tmp_path / "scripts").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "src").symlink_to(ROOT / "src")
    copy = tmp_path / "scripts" / "gen-config-doc"
    copy.write_text(GENERATOR.read_text())
    stale = "\n".join(
        line for line in PAGE.read_text().splitlines() if "`TASKFLEET_DRAIN_TIMEOUT`" not in line
    )
    (tmp_path / "docs" / "configuration.md").write_text(stale + "\n")
    result = subprocess.run(
        [sys.executable, str(copy), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "stale" in result.stderr
