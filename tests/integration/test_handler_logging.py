"""A handler's own loggers in worker processes: the pool's format, level and task ids, unless the
application configured logging itself. Real pools in processes of their own, real stderr."""

from __future__ import annotations

import json
import signal

import pytest
from helpers import conductor_settings, pool_process

from taskfleet.testing import ConductorTestServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture
def server():
    with ConductorTestServer() as s:
        yield s


def run_pool(server, tmp_path, module: str = "pool_workers", **settings) -> tuple[list[str], str]:
    """Two chatty tasks through a pool process; returns their ids and the pool's stderr."""
    ids = [
        server.enqueue("chatty", {"x": 7}, correlation_id="order-7"),
        server.enqueue("chatty", {"x": 8}),
    ]
    config = conductor_settings(server, tmp_path / "state", **settings)
    with pool_process(tmp_path, "chatty", module=module, **config) as proc:
        assert server.wait_for(ids, timeout=60)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return ids, err


def test_a_handlers_logger_writes_the_pools_text_lines_with_task_and_correlation_ids(
    server, tmp_path
):
    (first, second), err = run_pool(server, tmp_path, log_level="info")
    lines = [line for line in err.splitlines() if "shop.billing" in line]
    charging_7 = [line for line in lines if "charging order 7" in line]
    assert len(charging_7) == 1, err
    assert " INFO shop.billing [" in charging_7[0]
    assert f"[chatty/{first} order-7] charging order 7" in charging_7[0]
    assert any(f"[chatty/{second}] charging order 8" in line for line in lines), err
    assert len(lines) == 4  # two INFO, two WARNING lines: each once, none doubled


def test_the_pools_level_and_json_format_apply_to_a_handlers_logger(server, tmp_path):
    (first, _), err = run_pool(server, tmp_path, log_level="warning", log_format="json")
    entries = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    ours = [e for e in entries if e["logger"] == "shop.billing"]
    assert [e["level"] for e in ours] == ["WARNING", "WARNING"], "INFO is below the pool's level"
    seven = next(e for e in ours if e["message"] == "order 7 is large")
    assert (seven["task_id"], seven["task_type"], seven["correlation_id"]) == (
        first,
        "chatty",
        "order-7",
    )


def test_an_application_that_configures_logging_itself_keeps_its_own_format(server, tmp_path):
    _, err = run_pool(server, tmp_path, module="user_logging_workers", log_level="info")
    lines = [line for line in err.splitlines() if "shop.billing" in line]
    assert sorted(lines) == [
        "MINE shop.billing charging order 7",
        "MINE shop.billing charging order 8",
        "MINE shop.billing order 7 is large",
        "MINE shop.billing order 8 is large",
    ]
