"""Event hooks run off the event loop: a slow or blocking hook holds only its own task.

:class:`HookRunner` is how the runner and the supervisor call :mod:`taskfleet.hooks`:

* **Task events** (``before_execute`` … ``after_report``) run on a small thread pool with the
  task's context set (:func:`taskfleet.get_task_context` works in a hook). The task's slot awaits
  its own event before going on, so a task's events come in order and a hook that blocks delays
  that one task; the event loop keeps polling, heart-beating and running the other slots.
* **Poll events** run in order on a thread of their own and are not awaited: polling never waits
  for a hook.
* **Outcomes a source or the supervisor reports** (a crashed task, a hand-back, a dead letter)
  are task events that nothing awaits (:meth:`HookRunner.outcome`).

:meth:`HookRunner.close` waits for every event given so far, then calls each hooks object's
optional ``close()`` (a reporter flushes what it still holds), once per process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ._context import TaskContext, task_context
from ._task import Task, TaskResult
from .hooks import call_hooks

__all__ = ["HookRunner"]

log = logging.getLogger("taskfleet.hooks")


class HookRunner:
    """Calls ``hooks`` off the caller's event loop (see the module docstring).

    Args:
        hooks: the hooks objects, in the order given by the user.
        threads: threads for task events (the number of slots that may await one at once).
        name: prefix of the threads' names.
        worker_id: the ``worker_id`` of the task contexts hooks see.
    """

    def __init__(self, hooks: Sequence[Any], threads: int, name: str, worker_id: str = "") -> None:
        self.hooks = list(hooks)
        self.worker_id = worker_id
        self._tasks = ThreadPoolExecutor(max(1, threads), thread_name_prefix=f"{name}-hooks")
        self._polls = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-poll-hooks")
        self._closed = False

    def __bool__(self) -> bool:
        return bool(self.hooks)

    async def task_event(self, name: str, task: Task, *args: Any) -> None:
        """Run hook ``name`` for ``task`` on a hook thread; returns when every hook returned."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._tasks, self._call, name, task, args)

    def poll_event(self, name: str, *args: Any) -> None:
        """Run poll hook ``name`` on the poll hooks' thread, in order, without waiting."""
        if not self._closed:
            self._polls.submit(call_hooks, self.hooks, name, *args)

    def outcome(
        self, task: Task, result: TaskResult, error: BaseException | None = None
    ) -> Future[None] | None:
        """A final outcome reported without a handler's return (a crash, a time limit, a drain's
        hand-back, a dead letter): ``after_execute``, ``before_report`` and ``after_report``,
        in that order, on a hook thread; nothing waits for them."""
        if self._closed:
            return None
        return self._tasks.submit(self._outcome, task, result, error)

    def _outcome(self, task: Task, result: TaskResult, error: BaseException | None) -> None:
        self._call("after_execute", task, (result,))
        self._call("before_report", task, (result,))
        self._call("after_report", task, (result, error))

    def _call(self, name: str, task: Task, args: tuple[Any, ...]) -> None:
        with task_context(TaskContext(task, self.worker_id)):
            call_hooks(self.hooks, name, task, *args)

    def close(self) -> None:
        """Wait for every event given so far, then call the hooks objects' ``close()``.

        Blocking: call it from a thread that may wait (the runner uses an executor).
        """
        if self._closed:
            return
        self._closed = True
        self._polls.shutdown(wait=True)
        self._tasks.shutdown(wait=True)
        for hook in self.hooks:
            close = getattr(hook, "close", None)
            if close is None:
                continue
            try:
                close()
            except Exception:
                log.exception("hook %s.close failed", type(hook).__name__)
