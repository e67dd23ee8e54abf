"""Worker options: each declared once, as a field of :class:`WorkerOptions`.

A declaration names the option, its type and default, its meaning, its form (how it is
validated, parsed from text and named in errors) and the ``<PROPERTY>`` of the environment
variables that override it, compatible with the Conductor SDK:
``CONDUCTOR_WORKER_<TASK_TYPE>_<PROPERTY>`` first, then ``CONDUCTOR_WORKER_ALL_<PROPERTY>``.
Validation, the environment overrides, the class attributes of ``WorkerInterface``, the keyword
arguments of ``worker_task`` and docs/configuration.md are all derived from these fields
(docs/workers.md#options).
"""

from __future__ import annotations

import dataclasses
import inspect
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Concatenate, NamedTuple, ParamSpec, TypeVar

from . import _parsers as parsers
from ._errors import ConfigurationError

__all__ = [
    "OPTIONS",
    "Option",
    "WorkerOptions",
    "from_sdk_arguments",
    "options_from_env",
    "options_of",
    "set_option_defaults",
    "takes_options",
    "unread_worker_variables",
]

P = ParamSpec("P")
R = TypeVar("R")


def _option(default: Any, form: parsers.Form, env: str | None, help: str) -> Any:
    return field(default=default, metadata={"form": form, "env": env, "help": help})


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker type runs. Times in milliseconds where the Conductor SDK uses them.

    Each field declares its meaning (``help``), its form and its environment property; see
    :data:`OPTIONS` and docs/workers.md#options.
    """

    threads: int = _option(
        1,
        parsers.integer(1),
        "THREAD_COUNT",
        "execution slots per process (concurrent tasks; for ``async def`` handlers, the number"
        " of concurrent coroutines).",
    )
    processes: int | tuple[int, int] = _option(
        1,
        parsers.PROCESSES,
        "PROCESSES",
        "worker processes for this task type; a range ``(min, max)`` (``MIN-MAX`` in text)"
        " autoscales between them on the backlog (docs/scaling.md).",
    )
    poll_interval: int = _option(
        100,  # as the Conductor SDK
        parsers.MILLISECONDS,
        "POLL_INTERVAL",
        "ms; upper bound of the pause between polls while the queue is idle.",
    )
    poll_timeout: int = _option(
        1000,  # sent to Conductor as ``timeout`` (the server's maximum is 5000)
        parsers.MILLISECONDS,
        "POLL_TIMEOUT",
        "ms; long-poll wait per poll request (Conductor ``timeout``, NATS fetch).",
    )
    domain: str | None = _option(
        None, parsers.optional_text("a domain name"), "DOMAIN", "Conductor task domain."
    )
    worker_id: str | None = _option(
        None,
        parsers.optional_text("a worker id"),
        "WORKER_ID",
        "identity reported to the server (default: the host name).",
    )
    lease_extend: bool | float = _option(
        True,
        parsers.LEASE,
        "LEASE_EXTEND",
        "keep long tasks' leases alive: True (automatic interval), a number of seconds between"
        " extensions, or False.",
    )
    time_limit: float | None = _option(
        None,
        parsers.SECONDS_OR_NONE,
        "TIME_LIMIT",
        "seconds; a task running longer gets its process killed and is reported as timed out"
        " (retryable). None: no limit.",
    )
    paused: bool = _option(False, parsers.BOOLEAN, "PAUSED", "do not poll (the process stays up).")
    output_subject: str | None = _option(
        None,
        parsers.optional_text("a subject"),
        None,
        "NATS pipelines: publish the output as a task on this subject.",
    )
    max_attempts: int = _option(
        0,
        parsers.integer(0),
        "MAX_ATTEMPTS",
        "NATS: deliveries before a failing task is dead-lettered (0: the source's default).",
    )
    max_tasks_per_child: int = _option(
        0,
        parsers.integer(0),
        "MAX_TASKS_PER_CHILD",
        "replace the process gracefully after this many tasks (0: never).",
    )
    max_memory_per_child: int = _option(
        0,
        parsers.integer(0, "MiB, an integer >= 0"),
        "MAX_MEMORY_PER_CHILD",
        "MiB of resident memory after which the process is replaced gracefully, checked after"
        " each task (0: never).",
    )
    cheap_on_loop: bool = _option(
        True,
        parsers.BOOLEAN,
        "CHEAP_ON_LOOP",
        "a ``def`` handler whose calls prove short (each of its last 256 under 0.5 ms) runs on"
        " the process's event loop, without the hand-off to a slot thread, until a call takes"
        " over 2 ms; ``false`` keeps every call in a slot thread (docs/workers.md).",
    )

    def validate(self, task_type: str) -> WorkerOptions:
        """Check every value; raise ConfigurationError naming ``<task_type>.<option>``."""
        for option in OPTIONS:
            option.form.check(f"{task_type}.{option.name}", getattr(self, option.name))
        return self

    @property
    def process_range(self) -> tuple[int, int]:
        """(fewest, most) processes: the same number twice unless ``processes`` is a range."""
        p = self.processes
        return (p, p) if isinstance(p, int) else (p[0], p[1])

    @property
    def identity(self) -> str:
        return self.worker_id or socket.gethostname()


class Option(NamedTuple):
    """One worker option as declared on :class:`WorkerOptions`."""

    name: str
    default: Any
    form: parsers.Form
    #: ``<PROPERTY>`` of its environment variables; None: set in code only.
    env: str | None
    help: str


#: Every worker option, in declaration order.
OPTIONS: tuple[Option, ...] = tuple(
    Option(f.name, f.default, f.metadata["form"], f.metadata["env"], f.metadata["help"])
    for f in dataclasses.fields(WorkerOptions)
)


#: Environment properties as the Conductor Python SDK also spells them: alias -> property.
ENV_ALIASES = {"LEASE_EXTEND_ENABLED": "LEASE_EXTEND", "POLLING_INTERVAL": "POLL_INTERVAL"}

#: Properties of the SDK's that taskfleet has no use for: why.
SDK_ONLY_PROPERTIES = dict.fromkeys(
    ("REGISTER_TASK_DEF", "OVERWRITE_TASK_DEF", "STRICT_SCHEMA", "REGISTER_SCHEMA"),
    "taskfleet registers no task definitions or schemas",
)

#: Keyword arguments and class-worker attributes as the SDK names them: alias -> option.
SDK_OPTION_NAMES = {
    "thread_count": "threads",
    "lease_extend_enabled": "lease_extend",
    "poll_interval_millis": "poll_interval",
}

#: SDK arguments about registering task definitions: ignored when false, refused when set.
_REGISTRATION_ARGUMENTS = (
    "register_task_def",
    "task_def",
    "register_schema",
    "overwrite_task_def",
    "strict_schema",
)


def from_sdk_arguments(task_type: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Worker options from keyword arguments that may use the Conductor SDK's names.

    Raises:
        ConfigurationError: naming ``<task_type>.<argument>`` and what to do instead.
    """
    options = dict(arguments)
    for alias, name in SDK_OPTION_NAMES.items():
        if alias in options:
            if name in options:
                raise ConfigurationError(
                    f"{task_type}.{alias}", f"give {name}= or {alias}=, not both"
                )
            options[name] = options.pop(alias)
    if "poll_interval_seconds" in options:
        seconds = options.pop("poll_interval_seconds")
        if seconds:
            options.setdefault("poll_interval", round(float(seconds) * 1000))
    for name in _REGISTRATION_ARGUMENTS:
        if name not in options:
            continue
        value = options.pop(name)
        if value and name not in ("overwrite_task_def", "strict_schema"):
            raise ConfigurationError(
                f"{task_type}.{name}",
                "taskfleet registers no task definitions: register them with your deployment"
                " tooling (Conductor's API or UI) and remove this argument",
            )
    unknown = sorted(set(options) - {option.name for option in OPTIONS})
    if unknown:
        raise ConfigurationError(
            f"{task_type}.{unknown[0]}",
            "is not a worker option; the options are " + ", ".join(o.name for o in OPTIONS),
        )
    return options


def _env_names(task_type: str) -> list[str]:
    upper = task_type.upper()
    safe = "".join(c if c.isalnum() else "_" for c in upper)
    return [upper] if safe == upper else [upper, safe]


def options_from_env(
    task_type: str, options: WorkerOptions, env: Mapping[str, str]
) -> WorkerOptions:
    """Apply ``CONDUCTOR_WORKER_<TASK_TYPE>_<PROP>`` over ``CONDUCTOR_WORKER_ALL_<PROP>`` overrides.

    Raises:
        ConfigurationError: naming the variable when a value does not parse.
    """
    changes: dict[str, Any] = {}
    names = _env_names(task_type)
    for option in OPTIONS:
        if option.env is None:
            continue
        properties = [option.env, *(a for a, p in ENV_ALIASES.items() if p == option.env)]
        candidates = [
            f"CONDUCTOR_WORKER_{name}_{prop}" for name in [*names, "ALL"] for prop in properties
        ]
        for var in candidates:
            if var in env:
                changes[option.name] = option.form.read(var, env[var])
                break
    return dataclasses.replace(options, **changes) if changes else options


def unread_worker_variables(env: Mapping[str, str], task_types: Iterable[str]) -> list[str]:
    """A warning for each ``CONDUCTOR_WORKER_*`` variable no worker of the pool reads: an
    unknown property, or a name that is no worker type of ``task_types``."""
    task_types = sorted(task_types)
    names = {name for task_type in task_types for name in _env_names(task_type)}
    properties = {option.env for option in OPTIONS if option.env} | set(ENV_ALIASES)
    by_length = sorted(properties | set(SDK_ONLY_PROPERTIES), key=len, reverse=True)
    warnings = []
    for var in sorted(env):
        rest = var.removeprefix("CONDUCTOR_WORKER_")
        if rest == var:
            continue
        prop = next((p for p in by_length if rest == p or rest.endswith("_" + p)), None)
        name = rest[: -len(prop) - 1] if prop else ""
        if prop is None:
            warnings.append(
                f"{var}: unknown worker property, ignored; the properties are "
                + ", ".join(sorted(properties))
            )
        elif prop in SDK_ONLY_PROPERTIES:
            warnings.append(f"{var}: ignored: {SDK_ONLY_PROPERTIES[prop]}")
        elif not name:
            warnings.append(
                f"{var}: ignored; for every worker type use CONDUCTOR_WORKER_ALL_{prop}"
            )
        elif name != "ALL" and name not in names:
            warnings.append(
                f"{var}: ignored: {name!r} is no worker type of this pool"
                f" (CONDUCTOR_WORKER_<TYPE>_{prop} for {', '.join(task_types)})"
            )
    return warnings


def options_of(obj: object) -> WorkerOptions:
    """The options set as attributes of ``obj`` (a ``WorkerInterface``)."""
    return WorkerOptions(**{option.name: getattr(obj, option.name) for option in OPTIONS})


def set_option_defaults(cls: type) -> None:
    """Give ``cls`` every option as a class attribute holding its default."""
    for option in OPTIONS:
        setattr(cls, option.name, option.default)


def _keyword_options(
    spec: Callable[P, Any],
) -> Callable[[Callable[..., R]], Callable[Concatenate[str, P], R]]:
    def apply(func: Callable[..., R]) -> Callable[Concatenate[str, P], R]:
        signature = inspect.signature(func)
        named = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        named += [
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type
            )
            for f in dataclasses.fields(WorkerOptions)
        ]
        func.__signature__ = signature.replace(parameters=named)  # type: ignore[attr-defined]
        return func

    return apply


#: Decorates ``f(name, **options)``: type checkers and ``help()`` see the options as keyword
#: arguments, with their types and defaults.
takes_options = _keyword_options(WorkerOptions)
