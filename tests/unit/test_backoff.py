"""The one backoff: its sequence, its jitter, and each of its users' numbers."""

from __future__ import annotations

import asyncio

import pytest
from tenacity import AsyncRetrying, stop_after_attempt

from taskfleet._backoff import Backoff, restart_delay


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap():
    b = Backoff(0.1, 2.0, jitter=0.5)
    delays = [b.next() for _ in range(8)]
    assert 0.05 <= delays[0] <= 0.1
    assert 0.1 <= delays[2] <= 0.4
    assert all(d <= 2.0 for d in delays) and delays[-1] >= 1.0
    b.reset()
    assert b.failures == 0 and b.elapsed == 0.0
    assert b.next() <= 0.1


def test_without_jitter_the_delay_is_the_ceiling_and_huge_attempts_stay_at_the_cap():
    b = Backoff(1.0, 60.0)
    assert [b.delay(n) for n in (0, 1, 2, 3, 7, 10_000)] == [1.0, 1.0, 2.0, 4.0, 60.0, 60.0]


def test_full_jitter_draws_between_zero_and_the_ceiling():
    b = Backoff(0.1, 5.0, jitter=1.0)
    draws = [b.delay(3) for _ in range(200)]
    assert all(0.0 <= d <= 0.4 for d in draws)
    assert min(draws) < 0.2 < max(draws)  # spread over the range, not a constant


def test_a_cap_lowered_while_backing_off_applies_to_the_next_delay():
    b = Backoff(1.0, 100.0)
    for _ in range(5):
        b.next()
    b.cap = 2.0
    assert b.next() == 2.0


@pytest.mark.parametrize(
    ("crashes", "expected"),
    [(0, 0.0), (1, 0.0), (2, 0.25), (3, 0.5), (4, 1.0), (8, 16.0), (9, 30.0), (500, 30.0)],
)
def test_restarts_are_immediate_once_then_double_from_a_quarter_second(crashes, expected):
    assert restart_delay(crashes, cap=30.0) == expected


def test_a_backoff_is_a_tenacity_wait_strategy():
    waits: list[float] = []
    attempts = 0

    async def main() -> None:
        nonlocal attempts
        retrying = AsyncRetrying(
            stop=stop_after_attempt(4),
            wait=Backoff(0.001, 0.004),
            sleep=_record(waits),
            reraise=True,
        )
        with pytest.raises(ValueError):
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    raise ValueError("down")

    asyncio.run(main())
    assert attempts == 4
    assert waits == [0.001, 0.002, 0.004]


def _record(waits: list[float]):
    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    return sleep
