"""Worker definitions: which task type, which handler, and how to run it.

Two ways to define a worker:

* ``@worker_task("resize_image", threads=4)`` on a function (``def`` or ``async def``). The task's
  input is bound to the function's parameters by name and converted to their annotations; the
  return value becomes the output data.
* a :class:`WorkerInterface` subclass whose ``execute(task)`` returns a :class:`TaskResult`, for
  those coming from the Conductor SDK.

How a worker runs (threads, processes, time limit...) is a :class:`~taskfleet._options.WorkerOptions`.
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
from ._options import WorkerOptions, options_of, set_option_defaults, takes_options
from ._task import Task, TaskInProgress, TaskResult, TaskStatus

__all__ = [
    "Worker",
    "WorkerInterface",
    "as_worker",
    "worker_task",
]

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

    # Every worker option is a class attribute holding its default (set below, from
    # WorkerOptions): override it in a subclass or per instance.

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
        return getattr(self, "worker_id", None) or socket.gethostname()

    def options(self) -> WorkerOptions:
        return options_of(self)


set_option_defaults(WorkerInterface)


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


@takes_options
def worker_task(task_type: str, **options: Any) -> Callable[[Callable[..., Any]], Worker]:
    """Declare a function (``def`` or ``async def``) as the handler of ``task_type``.

    The keyword arguments are the fields of :class:`WorkerOptions` (docs/workers.md#options);
    ``poll_interval`` and ``poll_timeout`` are in milliseconds, ``time_limit`` in seconds.

    Raises:
        ConfigurationError: when an argument is invalid (at decoration time).
    """
    worker_options = WorkerOptions(**options)

    def decorate(func: Callable[..., Any]) -> Worker:
        return Worker(task_type, func, worker_options)

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
