"""Runtime control of a running pool: pause, resume and scale a task type (docs/workers.md,
Runtime control).

Three ways in, one way to the processes:

- Python: ``handler.pause(type)``, ``handler.resume(type)``, ``handler.scale(type, processes=)``;
- HTTP: ``POST /workers/{type}/pause``, ``/resume``, ``/scale`` on the supervisor's endpoint
  (``_admin.py`` routes and authorises; :func:`answer` reads the body and calls the pool);
- the CLI: ``taskfleet pause|resume|scale TYPE`` (:func:`add_commands`), which posts to it.

Whatever thread asks, the change is queued (:class:`Requests`) and applied by the supervisor's
monitor thread, the only one that starts, stops and tracks processes; the caller waits for it.
"""

from __future__ import annotations

import argparse
import json
import queue
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._supervisor import TaskHandler

__all__ = ["ACTIONS", "Requests", "add_commands", "answer", "process_range"]

#: What ``POST /workers/{type}/<action>`` can ask for.
ACTIONS = ("pause", "resume", "scale")
#: Largest request body read, bytes (the bodies are a few dozen).
MAX_BODY = 4096
#: Seconds a caller waits for the monitor thread to apply its request.
APPLY_TIMEOUT = 10.0


class Requests:
    """Changes asked for on any thread, applied on the monitor thread by :meth:`apply`."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False

    def call(self, change: Callable[[], Any], timeout: float = APPLY_TIMEOUT) -> Any:
        """Queue ``change``, wait for the monitor to run it, return what it returned.

        Raises:
            RuntimeError: the pool is not running (or stopped before applying it).
            TimeoutError: the monitor did not get to it within ``timeout`` seconds.
        """
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the pool is not running")
            self._queue.put((change, future))
        return future.result(timeout)

    def apply(self) -> None:
        """Run every queued change (on the monitor thread)."""
        while True:
            try:
                change, future = self._queue.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(change())
            except Exception as exc:
                future.set_exception(exc)

    def close(self) -> None:
        """Refuse new changes and fail the queued ones: the pool stopped."""
        with self._lock:
            self._closed = True
        while True:
            try:
                _, future = self._queue.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(RuntimeError("the pool stopped"))


def process_range(processes: Any) -> tuple[int, int]:
    """``processes`` as (fewest, most): a number ``N`` is (N, N), a pair is a range.

    Raises:
        ValueError: not a whole number >= 1, nor a pair of them with min <= max.
    """
    if isinstance(processes, (list, tuple)) and len(processes) == 2:
        low, high = processes
    else:
        low = high = processes
    for n in (low, high):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(
                f"processes must be a whole number >= 1 or a [min, max] range, not {processes!r}"
                " (pause a type to stop its polling)"
            )
    if low > high:
        raise ValueError(f"processes range {processes!r}: min is above max")
    return low, high


# -- HTTP --------------------------------------------------------------------------------------


def answer(pool: TaskHandler, task_type: str, action: str, body: bytes) -> tuple[int, Any]:
    """(status, JSON answer) of ``POST /workers/{task_type}/{action}`` with ``body``; the
    caller has checked the path's shape and the token."""
    if action not in ACTIONS:
        return 404, {"error": f"unknown action {action!r}: one of {', '.join(ACTIONS)}"}
    if task_type not in {w.task_type for w in pool.workers}:
        return 404, {"error": f"unknown task type {task_type!r}"}
    try:
        fields = json.loads(body) if body.strip() else {}
    except ValueError as exc:
        return 400, {"error": f"the body is not JSON: {exc}"}
    if not isinstance(fields, dict):
        return 400, {"error": "the body must be a JSON object"}
    allowed = {"processes"} if action == "scale" else set()
    if "threads" in fields and action == "scale":
        return 400, {
            "error": "threads cannot change while a process runs: set the type's threads option"
            " and restart the pool (docs/workers.md, Runtime control)"
        }
    unknown = sorted(set(fields) - allowed)
    if unknown:
        return 400, {"error": f"unknown field(s) {', '.join(map(repr, unknown))} for {action}"}
    try:
        if action == "scale":
            if "processes" not in fields:
                return 400, {"error": 'scale needs {"processes": N} or {"processes": [min, max]}'}
            state = pool.scale(task_type, processes=fields["processes"])
        elif action == "pause":
            state = pool.pause(task_type)
        else:
            state = pool.resume(task_type)
    except ValueError as exc:
        return 400, {"error": str(exc)}
    except (RuntimeError, TimeoutError) as exc:
        return 409, {"error": str(exc) or "the pool did not apply the change in time"}
    return 200, {"task_type": task_type, **state}


# -- CLI ---------------------------------------------------------------------------------------


def _post(url: str, token: str, path: str, body: dict[str, Any], timeout: float) -> Any:
    from ._cli import EXIT_UNAVAILABLE, EXIT_USAGE, CliError

    target = url.rstrip("/") + path
    request = urllib.request.Request(
        target,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            said = str(json.loads(exc.read()).get("error", ""))
        except (ValueError, AttributeError, OSError):
            said = ""
        if exc.code in (400, 404):  # the type or the value given: the caller's to fix
            raise CliError(EXIT_USAGE, said or f"{target}: HTTP {exc.code}") from None
        hint = " (set TASKFLEET_METRICS_TOKEN or pass --token-file)" if exc.code == 401 else ""
        raise CliError(
            EXIT_UNAVAILABLE, f"{target}: HTTP {exc.code}{': ' + said if said else ''}{hint}"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(EXIT_UNAVAILABLE, f"cannot reach {target}: {reason}") from None
    except ValueError:
        raise CliError(EXIT_UNAVAILABLE, f"{target}: not a taskfleet pool (no JSON)") from None


def _parse_processes(text: str) -> tuple[int, int]:
    """``N`` or ``MIN-MAX`` (as ``TASKFLEET_WORKER_<TYPE>_PROCESSES``)."""
    from ._cli import _usage

    try:
        numbers = [int(p) for p in text.split("-")]
        if len(numbers) not in (1, 2):
            raise ValueError(text)
        return process_range(numbers if len(numbers) == 2 else numbers[0])
    except ValueError:
        raise _usage(f"--processes: expected a number >= 1 or MIN-MAX, not {text!r}") from None


def describe(state: dict[str, Any]) -> str:
    """One line about a task type after a change."""
    low, high = state.get("min"), state.get("max")
    processes = f"{state.get('processes', '?')} process(es)"
    if low != high:
        processes += f", autoscaling {low}-{high}"
    paused = "paused" if state.get("paused") else "polling"
    return f"{state.get('task_type', '?')}: {paused}; {processes}"


def cmd_control(args: argparse.Namespace) -> int:
    """Pause, resume or scale a task type of a running pool; print its state in one line."""
    from ._cli import EXIT_OK, _status_token, _usage, status_url
    from ._config import Configuration

    url = args.url or status_url(Configuration.from_env())
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise _usage(f"invalid URL {url!r}: expected http://host:port")
    body: dict[str, Any] = {}
    if args.command == "scale":
        low, high = _parse_processes(args.processes)
        body["processes"] = low if low == high else [low, high]
    path = f"/workers/{urllib.parse.quote(args.task_type, safe='')}/{args.command}"
    state = _post(url, _status_token(args), path, body, args.timeout)
    print(describe(state if isinstance(state, dict) else {}))
    return EXIT_OK


def add_commands(subs: Any, subparser: Callable[..., argparse.ArgumentParser]) -> None:
    """``pause``, ``resume`` and ``scale`` (``subparser`` is the CLI's sub-command factory)."""
    from ._cli import add_token_flags

    helps = {
        "pause": "stop a task type's polling in a running pool (running tasks finish)",
        "resume": "start a paused task type's polling again",
        "scale": "set how many processes a task type runs in a running pool",
    }
    for name, text in helps.items():
        p = subparser(subs, name, cmd_control, text)
        p.add_argument("task_type", metavar="TYPE", help="the task type")
        if name == "scale":
            p.add_argument(
                "--processes",
                required=True,
                metavar="N|MIN-MAX",
                help="a fixed number of processes (autoscaling off), or a range to autoscale in",
            )
        p.add_argument(
            "--url",
            metavar="URL",
            help="the pool's HTTP endpoint (default: from TASKFLEET_METRICS_ADDRESS,"
            " http://127.0.0.1:9464 when unset)",
        )
        add_token_flags(p, timeout=15.0)
