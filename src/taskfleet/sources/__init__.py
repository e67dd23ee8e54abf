"""Task sources: one module per transport behind the interface in :mod:`.base`."""

from .base import PollRequest, TaskSource, WorkerBinding

__all__ = ["PollRequest", "TaskSource", "WorkerBinding"]
