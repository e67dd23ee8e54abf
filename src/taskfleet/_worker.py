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
import dataclasses
import importlib
import inspect
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ._convert import Binder
from ._errors import ConfigurationError
from ._options import (
    SDK_OPTION_NAMES,
    WorkerOptions,
    from_sdk_arguments,
    options_of,
    set_option_defaults,
    takes_options,
)
from ._task import Task, TaskResult, TaskStatus

__all__ = [
    "Worker",
    "WorkerInterface",
    "as_worker",
    "declared_workers",
    "worker_task",
]


class WorkerInterface(abc.ABC):
    """Base class for class workers: ``execute(task)`` returns a :class:`TaskResult`.

    Instances are sent to worker processes by pickling, so their attributes must be picklable
    and the class importable. ``execute`` may be ``async def``.
    """

    # Every worker option is a class attribute holding its default (set below, from
    # WorkerOptions): override it in a subclass or per instance. The annotations are for type
    # checkers; a test holds them equal to WorkerOptions' fields.
    threads: int
    processes: int | tuple[int, int]
    poll_interval: int
    poll_timeout: int
    domain: str | None
    worker_id: str | None
    lease_extend: bool | float
    time_limit: float | None
    paused: bool
    output_subject: str | None
    max_attempts: int
    max_tasks_per_child: int
    max_memory_per_child: int
    cheap_on_loop: bool

    def __init__(self, task_definition_name: str) -> None:
        self.task_definition_name = task_definition_name

    @abc.abstractmethod
    def execute(self, task: Task) -> TaskResult:
        """Run the task and return its result (build it with :meth:`result_for`)."""

    def result_for(self, task: Task, status: TaskStatus = TaskStatus.COMPLETED) -> TaskResult:
        """A result for ``task`` carrying this worker's identity."""
        return task.result(status, worker_id=self.get_identity())

    @property
    def identity(self) -> str:
        return self.worker_id or socket.gethostname()

    def options(self) -> WorkerOptions:
        """The options of this worker: its attributes, the Conductor SDK's names and methods
        included (docs/migrating-from-conductor-python.md).

        Raises:
            ConfigurationError: naming the attribute (``register_task_def = True``).
        """
        name = self.task_definition_name
        changes = from_sdk_arguments(
            name, {"register_task_def": getattr(self, "register_task_def", False)}
        )
        for alias, option in SDK_OPTION_NAMES.items():
            # An alias set as a class attribute replaces the property below: it wins.
            if hasattr(self, alias) and getattr(self, alias) != getattr(self, option):
                changes[option] = getattr(self, alias)
        if _overrides(self, "get_polling_interval_in_seconds"):
            changes["poll_interval"] = round(float(self.get_polling_interval_in_seconds()) * 1000)
        if _overrides(self, "get_domain"):
            changes["domain"] = self.get_domain()
        if _overrides(self, "get_identity"):
            changes["worker_id"] = self.get_identity()
        if callable(self.paused):  # the SDK's paused() method
            changes["paused"] = bool(self.paused())
        return dataclasses.replace(options_of(self), **changes)

    # -- the Conductor SDK's names -------------------------------------------------------------

    @property
    def thread_count(self) -> int:
        """The SDK's name of :attr:`threads`."""
        return self.threads

    @thread_count.setter
    def thread_count(self, value: int) -> None:
        self.threads = value

    @property
    def lease_extend_enabled(self) -> bool | float:
        """The SDK's name of :attr:`lease_extend`."""
        return self.lease_extend

    @lease_extend_enabled.setter
    def lease_extend_enabled(self, value: bool | float) -> None:
        self.lease_extend = value

    def get_task_result_from_task(self, task: Task) -> TaskResult:
        """The SDK's name of :meth:`result_for`."""
        return self.result_for(task)

    def get_identity(self) -> str:
        """The identity reported with results; override it to choose another."""
        return self.identity

    def get_polling_interval_in_seconds(self) -> float:
        """Upper bound of the pause between idle polls; override it to choose another."""
        return self.poll_interval / 1000

    def get_domain(self) -> str | None:
        """The Conductor task domain polled; override it to choose another."""
        return self.domain

    def get_task_definition_name(self) -> str:
        return self.task_definition_name


def _overrides(worker: WorkerInterface, method: str) -> bool:
    return getattr(type(worker), method) is not getattr(WorkerInterface, method)


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
        self._binder = Binder(self.handler) if self.style == "function" else None
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


#: Every worker declared with ``@worker_task`` in this process, in order: what
#: ``TaskHandler(scan_for_annotated_workers=True)`` runs.
DECLARED: list[Worker] = []


@takes_options
def worker_task(
    task_type: str | None = None, **options: Any
) -> Callable[[Callable[..., Any]], Worker]:
    """Declare a function (``def`` or ``async def``) as the handler of ``task_type``.

    The keyword arguments are the fields of :class:`WorkerOptions` (docs/workers.md#options);
    ``poll_interval`` and ``poll_timeout`` are in milliseconds, ``time_limit`` in seconds. The
    Conductor SDK's names work too: ``task_definition_name=``, ``thread_count=``,
    ``lease_extend_enabled=``, ``poll_interval_millis=``.

    Raises:
        ConfigurationError: when an argument is invalid (at decoration time).
    """
    sdk_name = options.pop("task_definition_name", None)
    if (task_type is None) == (sdk_name is None):
        raise ConfigurationError(
            "worker_task", "give the task type once: worker_task('name') or task_definition_name="
        )
    name: str = task_type if task_type is not None else sdk_name
    worker_options = WorkerOptions(**from_sdk_arguments(name, options))

    def decorate(func: Callable[..., Any]) -> Worker:
        worker = Worker(name, func, worker_options)
        DECLARED.append(worker)
        return worker

    return decorate


def declared_workers(import_modules: Iterable[str] = ()) -> list[Worker]:
    """The ``@worker_task`` workers declared in this process, after importing ``import_modules``.

    Raises:
        ConfigurationError: naming a module that cannot be imported.
    """
    for module in import_modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigurationError("import_modules", f"cannot import {module!r}: {exc}") from None
    return list(DECLARED)


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
