"""Forward task status to an HTTP endpoint from event hooks: started, completed, failed.

Each event is one ``POST`` of a JSON object keyed by the task's correlation id, so an external
system (a job tracker, a CRM, a status page) can follow a piece of work without knowing
taskfleet::

    {"event": "completed", "correlationId": "order-1234", "taskId": "...", "taskType": "resize",
     "workflowInstanceId": "...", "attempt": 1, "time": 1718000000000, "status": "COMPLETED",
     "data": {...your fields...}}

The reporter never fails a task: every request has a short timeout, and any error (connection
refused, timeout, HTTP 5xx, a bug in your ``data`` function) is logged and forgotten. Status
reporting is best effort; the task's result still goes to the task server as usual.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import requests

from taskfleet import Task, TaskResult, TaskStatus
from taskfleet.hooks import HookBase

logger = logging.getLogger("taskfleet.examples.reporter")


def _without_credentials(url: str) -> str:
    """``url`` as logs may show it: any ``user:password@`` left out."""
    parts = urllib.parse.urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


#: Builds the custom ``data`` of an event from the task and, after execution, its result.
DataFunction = Callable[[Task, "TaskResult | None"], Mapping[str, Any]]


class HttpStatusReporter(HookBase):
    """Posts ``started`` before a task runs and ``completed``/``failed`` after it.

    Args:
        url: the endpoint receiving the posts.
        timeout: seconds per request (connect and read); keep it short, since the post runs on
            the task's execution slot.
        data: optional function returning extra fields for the event's ``data`` object; it must
            be a module-level function (hooks are pickled into each worker process).
        headers: extra request headers, e.g. an ``Authorization`` header for the endpoint.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 2.0,
        data: DataFunction | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.data = data
        self.headers = dict(headers or {})

    def before_execute(self, task: Task) -> None:
        self._report("started", task, None)

    def after_execute(self, task: Task, result: TaskResult) -> None:
        if result.status.is_failure:
            event = "failed"
        elif result.status is TaskStatus.IN_PROGRESS:
            event = "in_progress"  # the task comes back later; not done yet
        else:
            event = "completed"
        self._report(event, task, result)

    @staticmethod
    def key(task: Task) -> str:
        """The correlation id; tasks without one are keyed by their task id."""
        return task.correlation_id or task.task_id

    def event(self, event: str, task: Task, result: TaskResult | None) -> dict[str, Any]:
        """The JSON object posted for ``event``."""
        body: dict[str, Any] = {
            "event": event,
            "correlationId": self.key(task),
            "taskId": task.task_id,
            "taskType": task.task_type,
            "workflowInstanceId": task.workflow_instance_id,
            "attempt": task.attempt,
            "time": int(time.time() * 1000),
        }
        if result is not None:
            body["status"] = result.status.value
            if result.status.is_failure:
                body["reason"] = result.reason_for_incompletion
                body["exception"] = result.exception
        body["data"] = dict(self.data(task, result)) if self.data else {}
        return body

    def _report(self, event: str, task: Task, result: TaskResult | None) -> None:
        # Catch everything: a reporter outage must not become a task failure, and the runner's
        # own hook guard is a last resort, not the plan.
        try:
            # A new connection per post: hooks run on several execution slots at once, and a
            # requests.Session shared between threads is not guaranteed to be safe.
            response = requests.post(
                self.url,
                json=self.event(event, task, result),
                headers=self.headers,
                timeout=self.timeout,
            )
            if response.status_code >= 400:
                logger.warning(
                    "status endpoint %s answered %d to %s of task %s",
                    _without_credentials(self.url),
                    response.status_code,
                    event,
                    task.task_id,
                )
        except Exception as exc:
            # The class name only: messages of connection errors repeat the URL, which may hold
            # credentials. The traceback is there at debug level for whoever needs it.
            logger.warning(
                "could not post %s of task %s to %s: %s",
                event,
                task.task_id,
                _without_credentials(self.url),
                type(exc).__name__,
            )
            logger.debug("status post failed", exc_info=True)
