"""Event hooks: user code called around poll, execute and report, without touching the runner.

A hooks object has any of six methods, in ``before_``/``after_`` pairs::

    before_poll(task_type)              after_poll(task_type, tasks)
    before_execute(task)                after_execute(task, result)
    before_report(task, result)         after_report(task, result, error)

Subclass :class:`HookBase` to get no-op defaults and override only what you need; any object with
some of these methods works too (missing methods are skipped).

Rules, the same for every hook (they are :func:`call_hooks`'s promise):

* **Order.** Before-hooks run in the order the hooks objects were given, after-hooks in reverse,
  so a pair nests like ``with`` blocks: the first hooks object sees an event first and last.
* **Never fatal.** An exception raised by a hook is logged (logger ``taskfleet.hooks``, with its
  traceback) and the remaining hooks still run; the task goes on as if the hook had returned.
  Hooks cannot change results or veto work: that keeps a buggy reporter from failing tasks.
* **Where they run.** In the worker process, off its event loop (``_hookrun.py``): a task's
  hooks on a hook thread with the task's context set (so :func:`taskfleet.get_task_context`
  works there), awaited by that task's slot alone, so a slow hook delays only its own task;
  poll hooks in order on a thread of their own, not awaited; while 1,000 poll events wait for
  it, a poll's ``before_poll`` and ``after_poll`` are dropped together (and counted). Hooks
  objects are pickled into each worker process, so build network clients lazily in the
  process, not in ``__init__``.
* **Every started task ends.** Outcomes the supervisor reports instead of a worker process
  (crash, hard time limit, hand-back at the end of a drain) and dead letters a source decides
  alone reach ``after_execute``, ``before_report`` and ``after_report`` in the supervisor's
  process, with a task that has no input (``result.exception``: ``WorkerLost``,
  ``TimeLimitExceeded``, ``DeadLetter``).
* **Closing.** A hooks object's optional ``close()`` is called once when its process stops,
  after every event reached the hooks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from ._task import Task, TaskResult

__all__ = ["HOOK_NAMES", "HookBase", "call_hooks"]

logger = logging.getLogger("taskfleet.hooks")

#: Every hook the runner calls, in the order of a task's life.
HOOK_NAMES = (
    "before_poll",
    "after_poll",
    "before_execute",
    "after_execute",
    "before_report",
    "after_report",
)


class HookBase:
    """Hooks that do nothing: subclass and override the events you care about."""

    def before_poll(self, task_type: str) -> None:
        """Called before a poll (or pull) request for ``task_type``."""

    def after_poll(self, task_type: str, tasks: Sequence[Task]) -> None:
        """Called after a poll with the tasks it returned (possibly none)."""

    def before_execute(self, task: Task) -> None:
        """Called on the execution slot just before the handler runs ``task``."""

    def after_execute(self, task: Task, result: TaskResult) -> None:
        """Called after the handler with its result; a raised exception arrives here as a
        failed ``result`` (``result.status.is_failure``, ``result.exception`` names the class)."""

    def before_report(self, task: Task, result: TaskResult) -> None:
        """Called before ``result`` is delivered to the server."""

    def after_report(self, task: Task, result: TaskResult, error: BaseException | None) -> None:
        """Called after delivery: ``error`` is None when the server accepted the result, else
        the exception that made delivery fail (the result then goes to the spool and is retried)."""


def call_hooks(hooks: Iterable[object], name: str, *args: Any) -> None:
    """Call method ``name`` with ``args`` on every hooks object that has it.

    Before-hooks run in the given order, after-hooks in reverse. An ``Exception`` raised by a hook
    is logged and swallowed; the other hooks still run. (``KeyboardInterrupt`` and ``SystemExit``
    pass through: they are the process being stopped, not a buggy hook.)

    Raises:
        ValueError: when ``name`` is not one of :data:`HOOK_NAMES` (a typo in the caller, which
            would otherwise silently call nothing).
    """
    if name not in HOOK_NAMES:
        raise ValueError(f"unknown hook {name!r}; expected one of {', '.join(HOOK_NAMES)}")
    ordered = list(hooks)
    if name.startswith("after_"):
        ordered.reverse()
    for hook in ordered:
        method = getattr(hook, name, None)
        if method is None:
            continue
        try:
            method(*args)
        except Exception:
            logger.exception("hook %s.%s failed; continuing", type(hook).__name__, name)
