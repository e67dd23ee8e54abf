"""How long to wait before trying again: one exponential backoff for the whole runtime.

Attempt ``n`` (counted from 1) waits up to ``base * 2**(n-1)``, never more than ``cap``; with
jitter the wait is drawn from ``[ceiling * (1 - jitter), ceiling]`` so that processes failing
together do not retry together. Its users, each with its own numbers:

- the runner's poll loop: empty polls (1 ms up to ``poll_interval``, little jitter) and poll
  errors (0.1 s up to 2 s, 10 s once an outage is older than a minute), :meth:`Backoff.next`;
- the supervisor's restarts of a process that keeps crashing (:func:`restart_delay`);
- NATS naks of a failed task, by its attempt (``NatsSource(retry_base=, retry_cap=)``);
- result delivery, whose retry loop is tenacity's: a :class:`Backoff` is a tenacity wait
  strategy.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

from tenacity.wait import wait_base

if TYPE_CHECKING:
    from tenacity import RetryCallState

__all__ = ["RESTART_BASE", "Backoff", "restart_delay"]

#: Seconds before the second restart in a row of a crashing process; doubled per crash.
RESTART_BASE = 0.25


class Backoff(wait_base):
    """Exponential backoff from ``base`` seconds up to ``cap``, with ``jitter`` (0: none, 1: full).

    Stateless use: :meth:`delay` for a given attempt, or as a tenacity ``wait=`` strategy.
    Stateful use (one series of failures): :meth:`next`, :meth:`reset`, :attr:`elapsed`. The cap
    may change while backing off (the runner lengthens it once an outage is long).
    """

    def __init__(self, base: float, cap: float, jitter: float = 0.0) -> None:
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self.failures = 0
        self.since: float | None = None

    def ceiling(self, attempt: int) -> float:
        """The longest wait after failed attempt ``attempt`` (1 or less: ``base``)."""
        return min(self.cap, self.base * 2 ** min(max(attempt - 1, 0), 60))

    def delay(self, attempt: int) -> float:
        """The wait after failed attempt ``attempt``, jittered."""
        ceiling = self.ceiling(attempt)
        if not self.jitter:
            return ceiling
        return random.uniform(ceiling * (1.0 - self.jitter), ceiling)

    def __call__(self, retry_state: RetryCallState) -> float:
        return self.delay(retry_state.attempt_number)

    def next(self) -> float:
        """The wait after one more failure in the current series."""
        if self.since is None:
            self.since = time.monotonic()
        self.failures += 1
        return self.delay(self.failures)

    def reset(self) -> None:
        """The series ended (an attempt worked)."""
        self.failures = 0
        self.since = None

    @property
    def elapsed(self) -> float:
        """Seconds since the first failure of the current series (0: none)."""
        return 0.0 if self.since is None else time.monotonic() - self.since


def restart_delay(crashes_in_a_row: int, cap: float) -> float:
    """Seconds before restarting a process after its ``crashes_in_a_row``-th crash in a row:
    the first restart is immediate, then ``RESTART_BASE`` doubling up to ``cap``."""
    if crashes_in_a_row <= 1:
        return 0.0
    return Backoff(RESTART_BASE, cap).delay(crashes_in_a_row - 1)
