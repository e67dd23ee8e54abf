"""Task sources: one module per transport behind the interface in :mod:`.base`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._errors import ConfigurationError
from .base import PollRequest, TaskSource, WorkerBinding

if TYPE_CHECKING:
    from .._config import Configuration

__all__ = ["PollRequest", "TaskSource", "WorkerBinding", "create_source"]


def create_source(config: Configuration) -> TaskSource:
    """The source ``config`` selects, not yet started (transports are imported only when used).

    Raises:
        ConfigurationError: for the memory source, which cannot serve a pool of processes.
    """
    kind = config.resolved_source
    if kind == "conductor":
        from .conductor import ConductorSource

        return ConductorSource(config)
    if kind == "nats":
        from .nats import NatsSource

        return NatsSource(config)
    raise ConfigurationError(
        "TASKFLEET_SOURCE",
        f"{kind!r} runs in one process only (use `taskfleet local`), not in a worker pool",
    )
