"""Worker options: each declared once, as a field of :class:`WorkerOptions`.

A declaration names the option, its type and default, its meaning, its form (how it is
validated, parsed from text and named in errors) and the ``<PROPERTY>`` of the environment
variables that override it, in every spelling the Conductor Python SDK reads (:data:`TYPE_FORMS`,
then :data:`ALL_FORMS`): ``CONDUCTOR_WORKER_<TASK_TYPE>_<PROPERTY>``,
``conductor.worker.<task_type>.<property>``, ..., ``CONDUCTOR_WORKER_ALL_<PROPERTY>``.
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
    "ALL_FORMS",
    "OPTIONS",
    "Option",
    "TYPE_FORMS",
    "WorkerOptions",
    "env_variables",
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
        "a ``def`` handler whose calls prove short (50 us on average, none of its last 256 at"
        " 20 ms or more) runs on the process's event loop, without the hand-off to a slot"
        " thread, until they no longer are; ``false`` keeps every call in a slot thread (the"
        " default of ``native_worker``; docs/workers.md).",
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

#: Properties the SDK's documentation names but its code does not read: property to use.
SDK_UNREAD_PROPERTIES = {"POLL_INTERVAL_MILLIS": "POLL_INTERVAL"}

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


#: The spellings of a worker variable for one task type, in the order the Conductor Python SDK
#: reads them (2.x; 1.x reads ``conductor_worker_{t}_{p}`` and ``CONDUCTOR_WORKER_{t}_{P}``):
#: ``{t}`` is the task type as written (case matters), ``{T}`` the task type upper-cased (or with
#: characters other than letters, digits and ``_`` as ``_``), ``{p}``/``{P}`` the property in
#: lower/upper case.
TYPE_FORMS = (
    "conductor.worker.{t}.{p}",
    "conductor_worker_{t}_{p}",
    "CONDUCTOR_WORKER_{T}_{P}",
    "CONDUCTOR_WORKER_{t}_{P}",
)
#: The spellings for every task type, read after all of :data:`TYPE_FORMS`, in the SDK's order
#: (1.x reads ``conductor_worker_{p}`` and ``CONDUCTOR_WORKER_{P}``).
ALL_FORMS = (
    "conductor.worker.all.{p}",
    "CONDUCTOR_WORKER_ALL_{P}",
    "conductor_worker_{p}",
    "CONDUCTOR_WORKER_{P}",
)
_PREFIX = "CONDUCTOR_WORKER_"


def env_variables(task_type: str, prop: str) -> list[str]:
    """Every variable that sets the property ``prop`` (upper-case) for ``task_type``, the one
    that wins first: each form of :data:`TYPE_FORMS`, then of :data:`ALL_FORMS`; in a form,
    ``prop`` before the SDK's aliases of it (:data:`ENV_ALIASES`)."""
    spellings = [prop, *(alias for alias, p in ENV_ALIASES.items() if p == prop)]
    names = [
        form.format(t=task_type, T=upper, p=spelling.lower(), P=spelling)
        for form in (*TYPE_FORMS, *ALL_FORMS)
        for upper in _env_names(task_type)
        for spelling in spellings
    ]
    return list(dict.fromkeys(names))


def options_from_env(
    task_type: str, options: WorkerOptions, env: Mapping[str, str]
) -> WorkerOptions:
    """Apply the environment's overrides: for each property, the first variable set of
    :func:`env_variables` (``CONDUCTOR_WORKER_<TASK_TYPE>_<PROP>``, ``conductor.worker.<task_type>
    .<prop>``, ... before ``CONDUCTOR_WORKER_ALL_<PROP>``, ``conductor.worker.all.<prop>``, ...).

    Raises:
        ConfigurationError: naming the variable when a value does not parse.
    """
    changes: dict[str, Any] = {}
    for option in OPTIONS:
        if option.env is None:
            continue
        for var in env_variables(task_type, option.env):
            if var in env:
                changes[option.name] = option.form.read(var, env[var])
                break
    return dataclasses.replace(options, **changes) if changes else options


def unread_worker_variables(env: Mapping[str, str], task_types: Iterable[str]) -> list[str]:
    """A warning for each worker variable (``CONDUCTOR_WORKER_*``, ``conductor.worker.*``,
    ``conductor_worker_*``, in any case) no worker of the pool reads: an unknown property, a
    name that is no worker type of ``task_types``, an SDK property taskfleet has no use for, or
    a spelling or property the Conductor SDK does not read either (naming the one to use)."""
    task_types = sorted(task_types)
    properties = {option.env for option in OPTIONS if option.env} | set(ENV_ALIASES)
    read = {var for t in task_types for prop in properties for var in env_variables(t, prop)}
    others = set(SDK_ONLY_PROPERTIES) | set(SDK_UNREAD_PROPERTIES)
    by_length = sorted(properties | others, key=len, reverse=True)
    types = {_env_names(task_type)[-1] for task_type in task_types}
    warnings = []
    for var in sorted(env):
        folded = var.upper().replace(".", "_")
        rest = folded.removeprefix(_PREFIX)
        if rest == folded or var in read:
            continue
        upper = var.startswith(_PREFIX)
        prop = next((p for p in by_length if rest == p or rest.endswith("_" + p)), None)
        if prop is None:
            known = sorted(p if upper else p.lower() for p in properties)
            warnings.append(
                f"{var}: unknown worker property, ignored; the properties are " + ", ".join(known)
            )
            continue
        if prop in SDK_ONLY_PROPERTIES:
            warnings.append(f"{var}: ignored: {SDK_ONLY_PROPERTIES[prop]}")
            continue
        name = rest[: -len(prop) - 1] if rest != prop else ""
        key = "".join(c if c.isalnum() else "_" for c in name)
        what = "property" if prop in SDK_UNREAD_PROPERTIES else "spelling"
        prop = SDK_UNREAD_PROPERTIES.get(prop, prop)
        if name in ("", "ALL"):
            use = f"{_PREFIX}ALL_{prop}"
        elif key in types:
            use = f"{_PREFIX}{key}_{prop}"
        else:
            shown = var[len(_PREFIX) :][: len(name)] if len(var) == len(folded) else name
            warnings.append(
                f"{var}: ignored: {shown!r} is no worker type of this pool"
                f" ({_PREFIX}<TYPE>_{prop} for {', '.join(task_types)})"
            )
            continue
        warnings.append(f"{var}: ignored: the Conductor SDK does not read this {what}; use {use}")
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
