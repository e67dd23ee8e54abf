"""The exception tree: one root, :class:`TaskfleetError`; retry semantics live on the exception.

What a handler raises decides how its task fails (docs/workers.md#errors-and-retries); the rest
are raised by taskfleet itself: bad settings at start-up, server calls that failed, bytes that
are not a task.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
import traceback
from collections.abc import Mapping
from types import TracebackType
from typing import Any


class TaskfleetError(Exception):
    """Root of every exception taskfleet raises."""


class ConfigurationError(TaskfleetError, ValueError):
    """A setting is invalid. Raised at start-up; the message names the setting.

    Attributes:
        setting: the name users set it by (an env var such as ``CONDUCTOR_SERVER_URL``, or an
            argument such as ``threads``).
    """

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        _one_line_if_uncaught()


def user_frame(tb: TracebackType | None) -> str:
    """``file:line: `` of the innermost frame of ``tb`` outside taskfleet (the user's line that
    declared or started what is wrong), or ``""``."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    where = ""
    for frame in traceback.extract_tb(tb):
        if frame.filename.startswith("<"):
            continue  # the import machinery
        path = os.path.abspath(frame.filename)
        if not path.startswith(package):
            where = f"{os.path.relpath(path)}:{frame.lineno}: "
    return where


def _one_line_if_uncaught() -> None:
    """Make a ConfigurationError that no one catches end the program with one line naming the
    setting (and the user's line), not a traceback through import machinery and taskfleet's
    internals. Armed by the first ConfigurationError created; other exceptions, and every
    exception when ``TASKFLEET_LOG_LEVEL`` is ``DEBUG``, go to the hook that was there before.
    """
    previous = sys.excepthook
    if getattr(previous, "_taskfleet", False):
        return

    def excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        debug = os.environ.get("TASKFLEET_LOG_LEVEL", "").upper() == "DEBUG"
        if isinstance(exc, ConfigurationError) and not debug:
            print(f"taskfleet: {user_frame(tb)}{exc}", file=sys.stderr)
        else:
            previous(kind, exc, tb)

    excepthook._taskfleet = True  # type: ignore[attr-defined]
    sys.excepthook = excepthook


class AddressInUseError(ConfigurationError):
    """An address the pool must listen on is taken (another pool, or another program)."""


class TaskError(TaskfleetError):
    """Raised by a handler to fail its task with explicit retry semantics.

    Args:
        message: the reason, sent to the server as ``reasonForIncompletion``.
        non_retryable: fail terminally (``FAILED_WITH_TERMINAL_ERROR``; NATS: ``term``).
        retry_after: seconds before the task may run again (NATS: the nak delay; Conductor:
            the server's task definition decides, so this is advisory there).
        output: output data to report with the failure.
    """

    def __init__(
        self,
        message: str,
        *,
        non_retryable: bool = False,
        retry_after: float | None = None,
        output: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.non_retryable = non_retryable
        self.retry_after = retry_after
        self.output = dict(output) if output else {}

    def __str__(self) -> str:
        return self.message


class NonRetryableError(TaskError):
    """Fail the task terminally: retrying cannot help (bad input, a permanent refusal)."""

    def __init__(self, message: str, *, output: Mapping[str, Any] | None = None) -> None:
        super().__init__(message, non_retryable=True, output=output)


class InputError(NonRetryableError):
    """The task's input does not fit the handler (missing parameter, wrong type).

    Attributes:
        parameter: the handler parameter that could not be bound, when one is to blame.
    """

    def __init__(self, message: str, *, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


class OutputError(NonRetryableError):
    """The handler's return value cannot be serialised as JSON output data."""


class DecodeError(NonRetryableError):
    """A message could not be decoded into a task.

    Attributes:
        data: the bytes that failed (possibly truncated by the caller for logging).
        error: the underlying decoder exception, if any.
    """

    def __init__(self, message: str, data: bytes = b"", error: BaseException | None = None) -> None:
        super().__init__(message)
        self.data = data
        self.error = error


class SourceError(TaskfleetError):
    """A task source (server) call failed. Raised instead of transport exceptions.

    Attributes:
        retryable: whether the same call may succeed later (timeouts, 5xx, refused connections);
            False for answers that will not change (400 on a malformed request).
        status: the HTTP status or transport-specific code when there was one.
        rejects_result: the server refused the result itself (too large, malformed) and always
            will: the task is then reported failed without its output, with this message as
            the reason (``docs/reliability.md``, promise 2).
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = True,
        status: int | None = None,
        rejects_result: bool = False,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable and not rejects_result
        self.status = status
        self.rejects_result = rejects_result


def describe_connection_error(exc: BaseException) -> str:
    """Why a connection to a server failed, in the words an operator looks for first."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    text = str(exc) or type(exc).__name__
    return text if text.startswith("nats") else f"{type(exc).__name__}: {text}"
