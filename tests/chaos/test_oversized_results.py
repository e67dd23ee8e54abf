"""Results the server will never accept, among normal tasks: they fail, nothing else stalls."""

from __future__ import annotations

import time

import pytest
from chaos_workers import chaos_big
from helpers import nats_pool, report

from taskfleet import TaskStatus

NORMAL, OVERSIZED, LATER, PAUSE = 300, 3, 100, 40.0


@pytest.mark.timeout(400)
def test_oversized_results_fail_with_a_reason_and_stall_nothing(tmp_path):
    with nats_pool(tmp_path, chaos_big) as (client, _):
        every = NORMAL // OVERSIZED
        inputs = [{"n": i, "big": i % every == every // 2} for i in range(NORMAL + OVERSIZED)]
        first = client.submit_many("chaos_big", inputs)
        outcomes = [client.result(i, timeout=180) for i in first]
        time.sleep(PAUSE)
        later = client.submit_many("chaos_big", [{"n": -i} for i in range(1, LATER + 1)])
        later_outcomes = [client.result(i, timeout=120) for i in later]
    big = [o for o, i in zip(outcomes, inputs, strict=True) if i["big"]]
    normal = [o for o, i in zip(outcomes, inputs, strict=True) if not i["big"]] + later_outcomes
    completed = sum(o.status is TaskStatus.COMPLETED for o in normal)
    reasons = sorted({o.reason or "" for o in big})
    report(
        f"oversized results: {len(big)} results of ~2 MB among {NORMAL} normal tasks,"
        f" {LATER} more {PAUSE:.0f}s later -> {completed} of {len(normal)} normal COMPLETED,"
        f" {sum(o.status.is_failure for o in big)} oversized FAILED ({'; '.join(reasons)})"
    )
    assert completed == len(normal) == NORMAL + LATER
    assert len(big) == OVERSIZED
    assert all(o.status.is_failure for o in big)
    assert all("2.0 MB" in (o.reason or "") and "1 MB" in (o.reason or "") for o in big)
    assert all(o.output in (None, {}) for o in big)
