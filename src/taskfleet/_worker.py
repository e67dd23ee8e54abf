"""Worker definitions: which task type, which handler, and how to run it.

Two ways to define a worker:

* ``@worker_task("resize_image", threads=4)`` on a function (``def`` or ``async def``). The task's
  input is bound to the function's parameters by name and converted to their annotations; the
  return value becomes the output data.
* a :class:`WorkerInterface` subclass whose ``execute(task)`` returns a :class:`TaskResult`, for
  those coming from the Conductor SDK.

Per-worker settings can be overridden by environment variables compatible with the Conductor SDK:
``CONDUCTOR_WORKER_<TASK_TYPE>_<PROPERTY>`` first, then ``CONDUCTOR_WORKER_ALL_<PROPERTY>``.
"""

from __future__ import annotations

import abc
import base64
import collections.abc
import dataclasses
import enum
import importlib
import inspect
import socket
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from ._errors import ConfigurationError, InputError, OutputError, TaskError
from ._task import Task, TaskInProgress, TaskResult, TaskStatus

__all__ = [
    "Worker",
    "WorkerInterface",
    "WorkerOptions",
    "as_worker",
    "worker_task",
]

#: Default pause between polls when the queue is idle, in milliseconds (as the Conductor SDK).
DEFAULT_POLL_INTERVAL_MS = 100
#: Default long-poll wait, in milliseconds; sent to Conductor as ``timeout`` (server max 5000).
DEFAULT_POLL_TIMEOUT_MS = 1000
MAX_CONDUCTOR_POLL_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker type runs. Times in milliseconds where the Conductor SDK uses them.

    Attributes:
        threads: execution slots per process (concurrent tasks; for ``async def`` handlers, the
            number of concurrent coroutines).
        processes: worker processes for this task type.
        poll_interval: ms; upper bound of the pause between polls while the queue is idle.
        poll_timeout: ms; long-poll wait per poll request (Conductor ``timeout``, NATS fetch).
        domain: Conductor task domain.
        worker_id: identity reported to the server (default: the host name).
        lease_extend: keep long tasks' leases alive: True (automatic interval), a number of
            seconds between extensions, or False.
        time_limit: seconds; a task running longer gets its process killed and is reported as
            timed out (retryable). None: no limit.
        paused: do not poll (the process stays up).
        output_subject: NATS pipelines: publish the output as a task on this subject.
        max_attempts: NATS: deliveries before a failing task is dead-lettered (0: the source's
            default).
        max_tasks_per_child: replace the process gracefully after this many tasks (0: never).
        max_memory_per_child: MiB of resident memory after which the process is replaced
            gracefully, checked after each task (0: never).
    """

    threads: int = 1
    processes: int = 1
    poll_interval: int = DEFAULT_POLL_INTERVAL_MS
    poll_timeout: int = DEFAULT_POLL_TIMEOUT_MS
    domain: str | None = None
    worker_id: str | None = None
    lease_extend: bool | float = True
    time_limit: float | None = None
    paused: bool = False
    output_subject: str | None = None
    max_attempts: int = 0
    max_tasks_per_child: int = 0
    max_memory_per_child: int = 0

    def validate(self, task_type: str) -> WorkerOptions:
        """Check every value; raise ConfigurationError naming the offending argument."""

        def need(ok: bool, name: str, expected: str, value: Any) -> None:
            if not ok:
                raise ConfigurationError(
                    f"{task_type}.{name}", f"expected {expected}, got {value!r}"
                )

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        need(is_int(self.threads) and self.threads >= 1, "threads", "an integer >= 1", self.threads)
        need(
            is_int(self.processes) and self.processes >= 1,
            "processes",
            "an integer >= 1",
            self.processes,
        )
        need(
            is_num(self.poll_interval) and self.poll_interval >= 0,
            "poll_interval",
            "milliseconds >= 0",
            self.poll_interval,
        )
        need(
            is_num(self.poll_timeout) and self.poll_timeout >= 0,
            "poll_timeout",
            "milliseconds >= 0",
            self.poll_timeout,
        )
        need(
            self.time_limit is None or (is_num(self.time_limit) and self.time_limit > 0),
            "time_limit",
            "seconds > 0 or None",
            self.time_limit,
        )
        need(
            isinstance(self.lease_extend, bool)
            or (is_num(self.lease_extend) and self.lease_extend > 0),
            "lease_extend",
            "True, False or seconds > 0",
            self.lease_extend,
        )
        for name in ("max_attempts", "max_tasks_per_child", "max_memory_per_child"):
            value = getattr(self, name)
            need(is_int(value) and value >= 0, name, "an integer >= 0", value)
        return self

    @property
    def identity(self) -> str:
        return self.worker_id or socket.gethostname()


# --------------------------------------------------------------------------------------------
# Environment overrides (Conductor SDK compatible)
# --------------------------------------------------------------------------------------------


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError("expected true/false, 1/0, yes/no or on/off")


def _parse_positive_int(text: str) -> int:
    value = int(text.strip())
    if value < 1:
        raise ValueError("expected an integer >= 1")
    return value


def _parse_ms(text: str) -> int:
    value = int(float(text.strip()))
    if value < 0:
        raise ValueError("expected milliseconds >= 0")
    return value


def _parse_seconds_or_none(text: str) -> float | None:
    stripped = text.strip().lower()
    if stripped in ("", "none", "0"):
        return None
    value = float(stripped)
    if value <= 0:
        raise ValueError("expected seconds > 0")
    return value


def _parse_lease(text: str) -> bool | float:
    try:
        return _parse_bool(text)
    except ValueError:
        value = float(text)
        if value <= 0:
            raise ValueError("expected true/false or seconds > 0") from None
        return value


def _parse_nonneg_int(text: str) -> int:
    value = int(text.strip())
    if value < 0:
        raise ValueError("expected an integer >= 0")
    return value


#: env property -> (WorkerOptions field, parser, expected form for messages)
ENV_PROPERTIES: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "POLL_INTERVAL": ("poll_interval", _parse_ms, "milliseconds >= 0"),
    "POLL_TIMEOUT": ("poll_timeout", _parse_ms, "milliseconds >= 0"),
    "THREAD_COUNT": ("threads", _parse_positive_int, "an integer >= 1"),
    "PROCESSES": ("processes", _parse_positive_int, "an integer >= 1"),
    "DOMAIN": ("domain", lambda s: s.strip() or None, "a domain name"),
    "WORKER_ID": ("worker_id", lambda s: s.strip() or None, "a worker id"),
    "PAUSED": ("paused", _parse_bool, "true/false"),
    "TIME_LIMIT": ("time_limit", _parse_seconds_or_none, "seconds > 0, or none"),
    "LEASE_EXTEND": ("lease_extend", _parse_lease, "true/false or seconds > 0"),
    "MAX_TASKS_PER_CHILD": ("max_tasks_per_child", _parse_nonneg_int, "an integer >= 0"),
    "MAX_MEMORY_PER_CHILD": ("max_memory_per_child", _parse_nonneg_int, "MiB, an integer >= 0"),
    "MAX_ATTEMPTS": ("max_attempts", _parse_nonneg_int, "an integer >= 0"),
}


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
    for prop, (attr, parse, expected) in ENV_PROPERTIES.items():
        candidates = [f"CONDUCTOR_WORKER_{name}_{prop}" for name in _env_names(task_type)]
        candidates.append(f"CONDUCTOR_WORKER_ALL_{prop}")
        for var in candidates:
            if var in env:
                try:
                    changes[attr] = parse(env[var])
                except ValueError:
                    raise ConfigurationError(
                        var, f"expected {expected}, got {env[var]!r}"
                    ) from None
                break
    return dataclasses.replace(options, **changes) if changes else options


# --------------------------------------------------------------------------------------------
# Input binding
# --------------------------------------------------------------------------------------------

Converter = Callable[[Any, str], Any]
_NONE_TYPE = type(None)
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _fail(path: str, expected: str, value: Any) -> InputError:
    parameter = path.split(".", 1)[0].split("[", 1)[0]
    return InputError(
        f"input {path!r} expects {expected}, got {_describe(value)}", parameter=parameter
    )


def _conv_any(value: Any, path: str) -> Any:
    return value


def _conv_str(value: Any, path: str) -> str:
    if isinstance(value, str):
        return value
    raise _fail(path, "a string", value)


def _conv_int(value: Any, path: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _fail(path, "an integer", value)


def _conv_float(value: Any, path: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise _fail(path, "a number", value)


def _conv_bool(value: Any, path: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise _fail(path, "a boolean", value)


def _conv_bytes(value: Any, path: str) -> bytes:
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            pass
    raise _fail(path, "base64-encoded bytes", value)


def _converter_for(tp: Any) -> Converter:
    """Build a converter for an annotation (resolved once, at worker definition)."""
    if tp is Any or tp is inspect.Parameter.empty or tp is object:
        return _conv_any
    simple: dict[Any, Converter] = {
        str: _conv_str,
        int: _conv_int,
        float: _conv_float,
        bool: _conv_bool,
        bytes: _conv_bytes,
    }
    if tp in simple:
        return simple[tp]
    if tp is _NONE_TYPE or tp is None:

        def conv_none(value: Any, path: str) -> None:
            if value is None:
                return
            raise _fail(path, "null", value)

        return conv_none

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _converter_for(args[0])
    if origin is Union or origin is types.UnionType:
        members = [_converter_for(a) for a in args]
        allows_none = _NONE_TYPE in args
        names = " or ".join(getattr(a, "__name__", str(a)) for a in args)

        def conv_union(value: Any, path: str) -> Any:
            if value is None and allows_none:
                return None
            for member in members:
                try:
                    return member(value, path)
                except InputError:
                    continue
            raise _fail(path, names, value)

        return conv_union
    if origin is typing.Literal:
        allowed = args

        def conv_literal(value: Any, path: str) -> Any:
            if value in allowed:
                return value
            raise _fail(path, f"one of {list(allowed)!r}", value)

        return conv_literal
    # typing.Sequence[int] and collections.abc.Sequence[int] both have the abc class as origin.
    sequences = (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Iterable)
    if origin in sequences or tp in (list, tuple, set):
        container = origin or tp
        if container not in (list, tuple, set, frozenset):
            container = list
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            item = _converter_for(args[0])
        elif origin is tuple and args:
            fixed = [_converter_for(a) for a in args]

            def conv_fixed_tuple(value: Any, path: str) -> tuple[Any, ...]:
                if not isinstance(value, (list, tuple)) or len(value) != len(fixed):
                    raise _fail(path, f"a list of {len(fixed)} items", value)
                return tuple(
                    c(v, f"{path}[{i}]") for i, (c, v) in enumerate(zip(fixed, value, strict=True))
                )

            return conv_fixed_tuple
        else:
            item = _converter_for(args[0]) if args else _conv_any
        build: Callable[[Any], Any] = (
            container if container in (list, tuple, set, frozenset) else list
        )

        def conv_seq(value: Any, path: str) -> Any:
            if not isinstance(value, (list, tuple)):
                raise _fail(path, "a list", value)
            return build(item(v, f"{path}[{i}]") for i, v in enumerate(value))

        return conv_seq
    if origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping) or tp is dict:
        key_conv = _converter_for(args[0]) if args else _conv_any
        val_conv = _converter_for(args[1]) if len(args) > 1 else _conv_any

        def conv_dict(value: Any, path: str) -> dict[Any, Any]:
            if not isinstance(value, dict):
                raise _fail(path, "an object", value)
            return {
                key_conv(k, f"{path}.{k}"): val_conv(v, f"{path}.{k}") for k, v in value.items()
            }

        return conv_dict
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        enum_type = tp

        def conv_enum(value: Any, path: str) -> Any:
            try:
                return enum_type(value)
            except ValueError:
                pass
            if isinstance(value, str) and value in enum_type.__members__:
                return enum_type.__members__[value]
            allowed = [m.value for m in enum_type]
            raise _fail(path, f"one of {allowed!r}", value)

        return conv_enum
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass_converter(tp)
    if isinstance(tp, type):
        target = tp

        def conv_instance(value: Any, path: str) -> Any:
            if isinstance(value, target):
                return value
            raise _fail(path, target.__name__, value)

        return conv_instance
    return _conv_any


def _dataclass_converter(cls: type) -> Converter:
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception:  # unresolved forward references: accept values as they are
        hints = {}
    fields = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        fields.append((f.name, _converter_for(hints.get(f.name, Any)), required))

    def conv_dataclass(value: Any, path: str) -> Any:
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise _fail(path, f"an object for {cls.__name__}", value)
        kwargs = {}
        for name, conv, required in fields:
            if name in value:
                kwargs[name] = conv(value[name], f"{path}.{name}")
            elif required:
                raise InputError(
                    f"input {path!r} is missing field {name!r} of {cls.__name__}",
                    parameter=path.split(".", 1)[0],
                )
        return cls(**kwargs)

    return conv_dataclass


@dataclass(frozen=True)
class _Param:
    name: str
    kind: str  # "value" | "task" | "var_keyword"
    convert: Converter
    required: bool


class _Binder:
    """Maps a task's input onto a function's parameters, converting to their annotations."""

    def __init__(self, func: Callable[..., Any]) -> None:
        signature = inspect.signature(func)
        try:
            hints = typing.get_type_hints(func, include_extras=True)
        except Exception:
            hints = {}
        self.params: list[_Param] = []
        self.var_keyword = False
        for p in signature.parameters.values():
            if p.kind is inspect.Parameter.VAR_POSITIONAL:
                continue
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                self.var_keyword = True
                continue
            hint = hints.get(p.name, p.annotation)
            if hint is Task or (isinstance(hint, str) and hint in ("Task", "taskfleet.Task")):
                self.params.append(_Param(p.name, "task", _conv_any, False))
                continue
            self.params.append(
                _Param(p.name, "value", _converter_for(hint), p.default is inspect.Parameter.empty)
            )
        self.names = {p.name for p in self.params}

    def bind(self, task: Task) -> dict[str, Any]:
        data = task.input_data
        if not isinstance(data, Mapping):
            raise InputError(f"task input must be a JSON object, got {_describe(data)}")
        kwargs: dict[str, Any] = {}
        for p in self.params:
            if p.kind == "task":
                kwargs[p.name] = task
            elif p.name in data:
                kwargs[p.name] = p.convert(data[p.name], p.name)
            elif p.required:
                raise InputError(
                    f"input is missing required parameter {p.name!r}", parameter=p.name
                )
        if self.var_keyword:
            for key, value in data.items():
                if key not in self.names and isinstance(key, str) and key.isidentifier():
                    kwargs[key] = value
        return kwargs


# --------------------------------------------------------------------------------------------
# Output normalisation
# --------------------------------------------------------------------------------------------


def normalise_output(value: Any) -> dict[str, Any]:
    """Turn a handler's return value into output data.

    A dict is the output; a dataclass becomes its fields; None is empty output; anything else
    goes under ``{"result": value}``.
    """
    if value is None:
        return {}
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise OutputError(
                f"output keys must be strings, got {type(bad[0]).__name__} {bad[0]!r}"
            )
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return {"result": value}


def result_from_exception(task: Task, exc: BaseException, worker_id: str) -> TaskResult:
    """The result that reports a handler's exception (class name only in ``exception``)."""
    if isinstance(exc, TaskError):
        status = TaskStatus.FAILED_WITH_TERMINAL_ERROR if exc.non_retryable else TaskStatus.FAILED
        reason = exc.message or type(exc).__name__
        output = exc.output
        retry_after = exc.retry_after
    else:
        status = TaskStatus.FAILED
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        output = {}
        retry_after = None
    result = task.result(status, output, reason=reason[:4000], worker_id=worker_id)
    result.retry_after = retry_after
    result.exception = type(exc).__name__
    return result


def to_result(task: Task, value: Any, worker_id: str) -> TaskResult:
    """Turn a handler's return value into a TaskResult, validating that it is JSON."""
    if isinstance(value, TaskResult):
        result = value
        if not result.worker_id:
            result.worker_id = worker_id
    elif isinstance(value, TaskInProgress):
        result = task.result(TaskStatus.IN_PROGRESS, dict(value.output), worker_id=worker_id)
        result.callback_after_seconds = value.callback_after_seconds
    else:
        result = task.result(TaskStatus.COMPLETED, normalise_output(value), worker_id=worker_id)
    result.output_json()  # raises OutputError naming the offending value; kept for the wire
    return result


# --------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------


class WorkerInterface(abc.ABC):
    """Base class for class workers: ``execute(task)`` returns a :class:`TaskResult`.

    Instances are sent to worker processes by pickling, so their attributes must be picklable
    and the class importable. ``execute`` may be ``async def``.
    """

    #: default options; override in a subclass or per instance
    threads: int = 1
    processes: int = 1
    poll_interval: int = DEFAULT_POLL_INTERVAL_MS
    poll_timeout: int = DEFAULT_POLL_TIMEOUT_MS
    domain: str | None = None
    worker_id: str | None = None
    time_limit: float | None = None
    lease_extend: bool | float = True
    paused: bool = False
    max_attempts: int = 0
    max_tasks_per_child: int = 0
    max_memory_per_child: int = 0

    def __init__(self, task_definition_name: str) -> None:
        self.task_definition_name = task_definition_name

    @abc.abstractmethod
    def execute(self, task: Task) -> TaskResult:
        """Run the task and return its result (build it with :meth:`result_for`)."""

    def result_for(self, task: Task, status: TaskStatus = TaskStatus.COMPLETED) -> TaskResult:
        """A result for ``task`` carrying this worker's identity."""
        return task.result(status, worker_id=self.identity)

    @property
    def identity(self) -> str:
        return self.worker_id or socket.gethostname()

    def options(self) -> WorkerOptions:
        return WorkerOptions(
            threads=self.threads,
            processes=self.processes,
            poll_interval=self.poll_interval,
            poll_timeout=self.poll_timeout,
            domain=self.domain,
            worker_id=self.worker_id,
            lease_extend=self.lease_extend,
            time_limit=self.time_limit,
            paused=self.paused,
            max_attempts=self.max_attempts,
            max_tasks_per_child=self.max_tasks_per_child,
            max_memory_per_child=self.max_memory_per_child,
        )


@dataclass(eq=False)
class Worker:
    """A task type bound to a handler and its options.

    Calling the worker calls the handler, so decorated functions stay testable as plain
    functions. Workers defined at module level are sent to child processes by reference.
    """

    task_type: str
    handler: Callable[..., Any]
    options: WorkerOptions = field(default_factory=WorkerOptions)
    #: "function": input bound to parameters; "task": handler(task) -> TaskResult
    style: str = "function"

    def __post_init__(self) -> None:
        if not isinstance(self.task_type, str) or not self.task_type.strip():
            raise ConfigurationError(
                "task_type", f"expected a non-empty name, got {self.task_type!r}"
            )
        if not callable(self.handler):
            raise ConfigurationError(self.task_type, "handler is not callable")
        self.options.validate(self.task_type)
        self.is_async = inspect.iscoroutinefunction(self.handler) or inspect.iscoroutinefunction(
            getattr(self.handler, "__call__", None)  # noqa: B004 - callable objects with async __call__
        )
        self._binder = _Binder(self.handler) if self.style == "function" else None
        for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
            if hasattr(self.handler, attr) and self.style == "function":
                object.__setattr__(self, attr, getattr(self.handler, attr))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.handler(*args, **kwargs)

    def __repr__(self) -> str:
        return (
            f"Worker({self.task_type!r}, {getattr(self.handler, '__qualname__', self.handler)!r})"
        )

    # pickling: by reference when the module attribute resolves to this very object
    def __reduce__(self) -> tuple[Any, ...]:
        module = getattr(self, "__module__", None)
        qualname = getattr(self, "__qualname__", None)
        target = _resolve(module, qualname) if module and qualname else None
        if target is self:
            return (_load_worker, (module, qualname))
        if isinstance(target, Worker) and target.handler is self.handler:
            # A variant of a module-level worker (with_options): the same handler, by reference.
            return (_load_variant, (module, qualname, self.task_type, self.options, self.style))
        return (_rebuild_worker, (self.task_type, self.handler, self.options, self.style))

    def bind(self, task: Task) -> dict[str, Any]:
        """Handler keyword arguments for ``task``. Raises InputError naming the parameter."""
        assert self._binder is not None
        return self._binder.bind(task)

    def with_options(self, **changes: Any) -> Worker:
        return Worker(
            self.task_type, self.handler, dataclasses.replace(self.options, **changes), self.style
        )


def _resolve(module: str, qualname: str) -> Any:
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj
    except Exception:
        return None


def _load_worker(module: str, qualname: str) -> Worker:
    obj = _resolve(module, qualname)
    if not isinstance(obj, Worker):
        raise ImportError(f"taskfleet worker {module}.{qualname} not found in the worker process")
    return obj


def _load_variant(
    module: str, qualname: str, task_type: str, options: WorkerOptions, style: str
) -> Worker:
    return Worker(task_type, _load_worker(module, qualname).handler, options, style)


def _rebuild_worker(
    task_type: str, handler: Callable[..., Any], options: WorkerOptions, style: str
) -> Worker:
    return Worker(task_type, handler, options, style)


def worker_task(
    task_type: str,
    *,
    threads: int = 1,
    processes: int = 1,
    poll_interval: int = DEFAULT_POLL_INTERVAL_MS,
    poll_timeout: int = DEFAULT_POLL_TIMEOUT_MS,
    domain: str | None = None,
    worker_id: str | None = None,
    lease_extend: bool | float = True,
    time_limit: float | None = None,
    paused: bool = False,
    output_subject: str | None = None,
    max_attempts: int = 0,
    max_tasks_per_child: int = 0,
    max_memory_per_child: int = 0,
) -> Callable[[Callable[..., Any]], Worker]:
    """Declare a function (``def`` or ``async def``) as the handler of ``task_type``.

    See :class:`WorkerOptions` for the arguments; ``poll_interval`` and ``poll_timeout`` are in
    milliseconds, ``time_limit`` in seconds.

    Raises:
        ConfigurationError: when an argument is invalid (at decoration time).
    """
    options = WorkerOptions(
        threads=threads,
        processes=processes,
        poll_interval=poll_interval,
        poll_timeout=poll_timeout,
        domain=domain,
        worker_id=worker_id,
        lease_extend=lease_extend,
        time_limit=time_limit,
        paused=paused,
        output_subject=output_subject,
        max_attempts=max_attempts,
        max_tasks_per_child=max_tasks_per_child,
        max_memory_per_child=max_memory_per_child,
    )

    def decorate(func: Callable[..., Any]) -> Worker:
        return Worker(task_type, func, options)

    return decorate


def as_worker(obj: Any) -> Worker:
    """Accept a Worker, a WorkerInterface instance, or a decorated function."""
    if isinstance(obj, Worker):
        return obj
    if isinstance(obj, WorkerInterface):
        return Worker(obj.task_definition_name, obj.execute, obj.options(), style="task")
    raise ConfigurationError(
        "workers",
        f"expected @worker_task functions, Worker or WorkerInterface objects, got {obj!r}",
    )
