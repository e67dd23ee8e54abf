"""taskfleet: Conductor-style worker pools for Python.

The public API is what this module exports; implementation modules are private by convention.
"""

from typing import TYPE_CHECKING

from ._config import AuthenticationSettings, Configuration, MetricsSettings
from ._context import TaskContext, add_log, get_task_context
from ._errors import (
    AddressInUseError,
    ConfigurationError,
    DecodeError,
    InputError,
    NonRetryableError,
    OutputError,
    SourceError,
    TaskError,
    TaskfleetError,
)
from ._options import WorkerOptions
from ._supervisor import TaskHandler
from ._task import Task, TaskInProgress, TaskLog, TaskResult, TaskStatus
from ._worker import Worker, WorkerInterface, worker_task

# The NATS client pulls in nats-py and protobuf (about 150 ms): loaded on first use, so workers
# and Conductor-only programs do not pay for it at import.
_LAZY = {"ResultTimeout": "._client", "TaskClient": "._client", "TaskOutcome": "._client"}


def __getattr__(name: str) -> object:
    if name == "__version__":
        value: object = _version()
    else:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def _version() -> str:
    """The version of the installed distribution, which setup.cfg defines; read from setup.cfg
    itself when running from a source tree that is not installed. (On first use: reading package
    metadata costs tens of milliseconds that ``import taskfleet`` need not pay.)"""
    from importlib import metadata

    try:
        return metadata.version("taskfleet")
    except metadata.PackageNotFoundError:
        import configparser
        from pathlib import Path

        setup = configparser.ConfigParser()
        setup.read(Path(__file__).resolve().parents[2] / "setup.cfg")
        return setup.get("metadata", "version", fallback="0+unknown")


if TYPE_CHECKING:
    from ._client import ResultTimeout, TaskClient, TaskOutcome

    __version__: str

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
    "AuthenticationSettings",
    "Configuration",
    "MetricsSettings",
    # errors
    "AddressInUseError",
    "ConfigurationError",
    "DecodeError",
    "InputError",
    "NonRetryableError",
    "OutputError",
    "SourceError",
    "TaskError",
    "TaskfleetError",
]
