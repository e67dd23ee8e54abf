"""taskfleet: Conductor-style worker pools for Python.

The public API is what this module exports; implementation modules are private by convention.
"""

from .client import ResultTimeout, TaskClient, TaskOutcome
from .config import Configuration
from .context import TaskContext, add_log, get_task_context
from .handler import TaskHandler
from .task import (
    ConfigurationError,
    DecodeError,
    InputError,
    NonRetryableError,
    OutputError,
    SourceError,
    Task,
    TaskError,
    TaskfleetError,
    TaskInProgress,
    TaskLog,
    TaskResult,
    TaskStatus,
)
from .worker import Worker, WorkerInterface, WorkerOptions, worker_task

__version__ = "0.1.0"

__all__ = [
    # defining workers
    "Worker",
    "WorkerInterface",
    "WorkerOptions",
    "worker_task",
    # running workers
    "TaskHandler",
    # producing tasks (NATS)
    "ResultTimeout",
    "TaskClient",
    "TaskOutcome",
    # inside a handler
    "TaskContext",
    "add_log",
    "get_task_context",
    # the model
    "Task",
    "TaskInProgress",
    "TaskLog",
    "TaskResult",
    "TaskStatus",
    # configuration
    "Configuration",
    # errors
    "ConfigurationError",
    "DecodeError",
    "InputError",
    "NonRetryableError",
    "OutputError",
    "SourceError",
    "TaskError",
    "TaskfleetError",
]
