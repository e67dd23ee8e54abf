"""Logging for the ``taskfleet`` logger tree: text or JSON lines, task ids, secrets redacted.

:func:`configure_logging` installs one handler on the ``taskfleet`` logger with two filters:

* :class:`TaskContextFilter` adds ``task_id``, ``task_type``, ``workflow_id`` and ``correlation_id``
  to every record
  emitted while a task runs (read from :func:`taskfleet._context.current_task_context`, which
  follows the task into its executor thread and ``async`` code).
* :class:`RedactingFilter` masks configured secret strings, URL passwords (``nats://u:p@h`` becomes
  ``nats://***@h``) and token-looking values (``X-Authorization: ...``, ``token=...``, JWTs) in the
  message, its arguments, the exception text and string ``extra`` fields.

The filters sit on the *handler*, not the logger, because logger filters do not see records
propagated from child loggers (``taskfleet.runner`` and friends). Your own loggers get the same
treatment by attaching the filters to your handler::

    handler.addFilter(TaskContextFilter())
    handler.addFilter(RedactingFilter(secrets_of(config)))
    handler.setFormatter(JsonFormatter())   # or TextFormatter()

The same rule applies to what leaves a process other than log lines: :func:`redact` and
:func:`redact_result` mask failure reasons, task log lines and the errors ``/workers`` shows, with
the secrets :func:`configure_logging` (or :func:`use_secrets`) last gave this process.

Each process configures its own logging (worker processes are started fresh, not forked with the
supervisor's handlers), so the supervisor passes level, format and secrets to every child. A worker
process also gives the root logger the same handler (``configure_logging(root=True)``), so a
handler's own ``logging.getLogger(__name__)`` lines come out in the pool's format, at its level,
with the task's ids, unless the application configured the root logger itself
(docs/workers.md, "Logging from a handler").
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
import urllib.parse
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING, Any

from . import _tracing
from ._context import current_task_context
from ._errors import ConfigurationError

if TYPE_CHECKING:
    from ._config import Configuration
    from ._task import TaskResult

__all__ = [
    "JsonFormatter",
    "RedactingFilter",
    "TaskContextFilter",
    "TextFormatter",
    "configure_logging",
    "redact",
    "redact_result",
    "secrets_of",
    "use_secrets",
]

ROOT_LOGGER = "taskfleet"
FORMATS = ("text", "json")
MASK = "***"

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "task_id",
    "task_type",
    "workflow_id",
    "correlation_id",
}

# scheme://user:password@host -> scheme://***@host (also user-only userinfo: tokens go there).
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")
# key: value / key=value / "key": "value" for header and parameter names that carry credentials.
# An optional scheme word (Bearer, Basic, Token) is kept so the line still says what it was.
_KEYED_SECRET = re.compile(
    r"(?i)(?P<key>\b(?:x-authorization|authorization|proxy-authorization|"
    r"(?:access_|auth_|api_|refresh_)?token|api[-_]?key|password|passwd|secret|client_secret)"
    r"[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token)\s+)?)"
    r"(?P<value>[^\s\"',;&)}\]]+)"
)
# A JSON Web Token anywhere: header.payload.signature, the header always starts with eyJ ({").
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")


class RedactingFilter(logging.Filter):
    """Masks secrets in a record before any handler formats it.

    The message is rendered (``msg % args``) and redacted as a whole, then stored back with no
    args: redacting args one by one would miss secrets split across them or hidden in a repr.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Longest first, so a secret that contains another is masked whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """``text`` with every known secret, URL password and token-looking value masked."""
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        text = _URL_USERINFO.sub(lambda m: m["scheme"] + MASK + "@", text)
        text = _KEYED_SECRET.sub(lambda m: m["key"] + MASK, text)
        return _JWT.sub(MASK, text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record: keep it verbatim
            message = f"{record.msg!r} {record.args!r}"
        record.msg = self.redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text when it is set, so the traceback is formatted once here.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, key, self.redact(value))
        return True


#: The rule of :func:`redact` in this process (its secrets set by :func:`use_secrets`).
_process_filter = RedactingFilter()


def use_secrets(secrets: Iterable[str]) -> None:
    """Make :func:`redact` mask these secrets (besides URL passwords and token-like values)."""
    global _process_filter
    _process_filter = RedactingFilter(secrets)


def redact(text: str) -> str:
    """``text`` masked with the rule of this process's logs."""
    return _process_filter.redact(text)


def redact_result(result: TaskResult) -> None:
    """Mask secrets in what a result carries beyond the process: its reason and its log lines."""
    if result.reason_for_incompletion:
        result.reason_for_incompletion = redact(result.reason_for_incompletion)
    for i, entry in enumerate(result.logs):
        masked = redact(entry.log)
        if masked != entry.log:
            result.logs[i] = dataclasses.replace(entry, log=masked)


class TaskContextFilter(logging.Filter):
    """Adds ``task_id``, ``task_type``, ``workflow_id`` and ``correlation_id`` to records (None
    outside a task, and the latter two when the task has none).

    Filters run on the thread that logs, so the context read here is the logging task's own.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = current_task_context()
        record.task_id = ctx.task_id if ctx else None
        record.task_type = ctx.task_type if ctx else None
        record.workflow_id = (ctx.workflow_instance_id or None) if ctx else None
        record.correlation_id = (ctx.correlation_id or None) if ctx else None
        if _tracing.ACTIVE:
            _tracing.stamp(record)  # trace_id, span_id
        return True


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """``time level logger [pid] [taskType/taskId] message``; ``[-]`` outside a task, and
    ``[taskType/taskId correlationId]`` for a task that has a correlation id."""

    def format(self, record: logging.LogRecord) -> str:
        task_id = getattr(record, "task_id", None)
        where = f"{getattr(record, 'task_type', None)}/{task_id}" if task_id else "-"
        correlation = getattr(record, "correlation_id", None)
        if correlation and task_id:
            where += f" {correlation}"
        line = (
            f"{_timestamp(record)} {record.levelname} {record.name} [{record.process}] [{where}] "
            f"{record.getMessage()}"
        )
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, pid, message, the task's ids while a task
    runs, ``exc_info`` for exceptions, and any ``extra=`` fields (non-JSON values as ``str``)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for key in ("task_id", "task_type", "workflow_id", "correlation_id"):
            value = getattr(record, key, None)
            if value:
                entry[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = record.stack_info
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key not in entry:
                entry[key] = value
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(
    level: str | int = "info",
    fmt: str = "text",
    *,
    secrets: Iterable[str] = (),
    stream: IO[str] | None = None,
    root: bool = False,
) -> logging.Handler:
    """Send the ``taskfleet`` logger tree to ``stream`` (default stderr) as text or JSON lines.

    Idempotent: a second call replaces the handler a previous call installed instead of adding
    another, so settings can change without doubling every line. The ``taskfleet`` logger stops
    propagating to the root logger, so a root handler the application set up does not print each
    line a second time, unformatted and unredacted.

    Args:
        level: a level name (``"debug"``, ``"info"``, ...) or number.
        fmt: ``"text"`` or ``"json"``.
        secrets: strings masked wherever they appear (see :func:`secrets_of`).
        stream: where lines go.
        root: give the root logger the same handler and level too, so every logger of the
            process (a task handler's own) logs the same way; what worker processes do when the
            application left the root logger unconfigured.

    Returns:
        The installed handler (e.g. to attach it to your own loggers too).

    Raises:
        ConfigurationError: naming ``TASKFLEET_LOG_LEVEL`` or ``TASKFLEET_LOG_FORMAT``.
    """
    numeric = _level(level)
    if fmt not in FORMATS:
        raise ConfigurationError("TASKFLEET_LOG_FORMAT", f"expected text | json, got {fmt!r}")
    secrets = list(secrets)
    use_secrets(secrets)
    logger = logging.getLogger(ROOT_LOGGER)
    for owner in (logger, logging.getLogger()):
        for old in [h for h in owner.handlers if getattr(h, "_taskfleet", False)]:
            owner.removeHandler(old)
            old.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler._taskfleet = True  # type: ignore[attr-defined]  # marks ours for the next call
    # Context first, so the redactor also sees the task fields; redaction before formatting.
    handler.addFilter(TaskContextFilter())
    handler.addFilter(RedactingFilter(secrets))
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(numeric)
    logger.propagate = False
    if root:
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(numeric)
    return handler


def root_configured() -> bool:
    """Whether the application gave the root logger a handler of its own (then taskfleet leaves
    the root logger alone)."""
    return any(not getattr(h, "_taskfleet", False) for h in logging.getLogger().handlers)


def _level(level: str | int) -> int:
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    numeric = logging.getLevelName(str(level).strip().upper())
    if not isinstance(numeric, int):
        raise ConfigurationError(
            "TASKFLEET_LOG_LEVEL",
            f"expected debug | info | warning | error | critical, got {level!r}",
        )
    return numeric


def secrets_of(config: Configuration) -> list[str]:
    """The secret strings of a configuration: its secret settings and passwords in its URLs."""
    found: list[str] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not isinstance(value, str) or not value:
            continue
        if f.metadata.get("secret"):
            found.append(value)
        elif "://" in value:
            for part in value.split(","):
                parsed = urllib.parse.urlsplit(part.strip())
                # nats://TOKEN@host carries a token where the user name would be.
                secret = parsed.password if parsed.password else parsed.username
                if secret:
                    found.append(urllib.parse.unquote(secret))
    return found
