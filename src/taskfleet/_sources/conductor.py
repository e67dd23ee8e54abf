"""The Conductor task source: the handful of task-API calls a worker makes, over keep-alive HTTP.

The wire contract is ``docs/conductor-protocol.md``. Each call is one attempt: retries and backoff
belong to the runner. The only repeats made here are the protocol's own: one token refresh on
``EXPIRED_TOKEN`` / ``INVALID_TOKEN``, and the one-time fallback from ``update-v2`` to
``POST /tasks`` on servers that lack it (remembered per server URL for the process).

HTTP is ``http.client`` on persistent connections, one per thread (``_http.py``: TLS, proxies,
timeouts, resolved once). Calls block, so the source offers them twice: as coroutines, which run
the call in a small thread pool owned by the source, and as plain methods
(:meth:`ConductorSource.poll_blocking`, :meth:`ConductorSource.report_blocking`) for a thread
that runs tasks itself and would otherwise hand every call to another thread and back
(``_runner.py``). Every failure leaves this module as :class:`~taskfleet._errors.SourceError`;
messages carry the redacted URL and the exception class, never credentials or tokens.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from .. import _json
from .._config import Configuration, is_loopback, redact_url
from .._errors import SourceError, describe_connection_error
from .._task import Task, TaskLog, TaskResult, TaskStatus
from .._threads import LoopThreads
from ._http import Answer, Connection, Endpoint, TransportError
from .base import Backlog, PollRequest, TaskSource, WorkerBinding

__all__ = ["ConductorSource", "task_from_wire"]

log = logging.getLogger("taskfleet.conductor")

#: The protocol's ceiling for the long-poll wait, milliseconds (above it the server answers 400).
MAX_POLL_TIMEOUT_MS = 5000
#: 401 bodies whose ``error`` means "get a new token and try once more".
_REFRESHABLE = frozenset({"EXPIRED_TOKEN", "INVALID_TOKEN"})

T = TypeVar("T")


def task_from_wire(data: Mapping[str, Any], task_type: str = "") -> Task:
    """Map a Conductor Task JSON object to :class:`~taskfleet._task.Task`.

    Unknown fields are ignored (kept in ``raw``). Raises ValueError when ``taskId`` is missing or
    a counter is not a number.
    """
    task_id = data.get("taskId")
    if not task_id or not isinstance(task_id, str):
        raise ValueError("task without a taskId")
    retry_count = int(data.get("retryCount") or 0)
    input_data = data.get("inputData")
    return Task(
        task_id=task_id,
        # The type polled for wins over the one the answer names: metric labels and the
        # handler chosen come from the pool's configured types, never from message content.
        task_type=task_type or str(data.get("taskDefName") or data.get("taskType") or ""),
        input_data=input_data if isinstance(input_data, dict) else {},
        workflow_instance_id=str(data.get("workflowInstanceId") or ""),
        correlation_id=str(data.get("correlationId") or ""),
        attempt=retry_count + 1,
        poll_count=int(data.get("pollCount") or 0),
        retry_count=retry_count,
        response_timeout_seconds=float(data.get("responseTimeoutSeconds") or 0),
        callback_after_seconds=float(data.get("callbackAfterSeconds") or 0),
        domain=str(data.get("domain") or ""),
        workflow_type=str(data.get("workflowType") or ""),
        reference_task_name=str(data.get("referenceTaskName") or ""),
        created_time=int(data.get("scheduledTime") or 0),
        headers=_trace_headers(input_data) if isinstance(input_data, dict) else {},
        # A dict fresh from the JSON decoder is the source's own: no copy needed.
        raw=data if type(data) is dict else dict(data),
    )


def _trace_headers(input_data: Mapping[str, Any]) -> dict[str, str]:
    """The W3C trace context a task's input carries by convention (docs/tracing.md), as the
    task's headers: the in-flight ledger keeps headers, not input, so the pool's span for a task
    whose process died continues the same trace."""
    traceparent = input_data.get("traceparent")
    if not isinstance(traceparent, str):
        return {}
    tracestate = input_data.get("tracestate")
    if isinstance(tracestate, str):
        return {"traceparent": traceparent, "tracestate": tracestate}
    return {"traceparent": traceparent}


class ConductorSource(TaskSource):
    """Tasks from a Conductor server (OSS or Orkes) over HTTP.

    Args:
        config: ``conductor_server_url`` (with ``/api``), optional ``conductor_auth_key`` /
            ``conductor_auth_secret``, and the ``http_connect_timeout`` / ``http_read_timeout``.
        max_workers: threads (and so concurrent HTTP calls) of this source's coroutines; a long
            poll holds one for up to five seconds, so keep at least two.

    Raises from every call: :class:`~taskfleet._errors.SourceError`; ``retryable`` is True for
    connection failures, timeouts, 429 and 5xx, False for other answers (4xx and redirects, a
    server that needs credentials that were not configured, a closed source).
    """

    name = "conductor"
    #: poll_blocking / report_blocking may be called from any thread
    blocking = True

    def __init__(self, config: Configuration, *, max_workers: int = 4) -> None:
        if not config.conductor_server_url:
            raise SourceError("CONDUCTOR_SERVER_URL is not set", retryable=False)
        self._base = config.conductor_server_url.rstrip("/")
        self._shown_base = redact_url(self._base)
        self._spool_key = "conductor " + redact_url(config.conductor_server_url)
        warn_plain_http(self._base, bool(config.conductor_auth_key))
        self._endpoint = Endpoint(
            self._base,
            connect_timeout=config.http_connect_timeout,
            read_timeout=config.http_read_timeout,
        )
        self._prefix = self._endpoint.target_prefix
        self._json_headers = {**self._endpoint.headers, "Content-Type": "application/json"}
        self._key = config.conductor_auth_key
        self._secret = config.conductor_auth_secret
        self._max_workers = max(1, max_workers)
        self._threads: LoopThreads | None = None
        self._closed = False
        self._local = threading.local()
        self._lock = threading.Lock()
        # Held while fetching a token, so concurrent calls wait for one fetch instead of each
        # making their own.
        self._token_lock = threading.Lock()
        self._token: str | None = None
        # None: not asked yet; False: the server answered 404 on /token (no auth there).
        self._auth_enabled: bool | None = None if self._key else False
        #: the server lacks ``update-v2`` (learnt from a successful fallback, kept for good)
        self._no_update_v2 = False
        #: poll request line per PollRequest (the same few repeat for the process's life)
        self._poll_targets: dict[PollRequest, str] = {}

    # -- lifetime --------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the thread pool. No request is made: the first call fetches a token if needed."""
        self._ensure_threads()

    async def prepare(self, workers: Sequence[WorkerBinding]) -> None:
        """Make sure the server answers before any worker process starts (docs/sources.md,
        "Start-up"): the token when credentials are set, else a queue-size read, which takes no
        task. Any HTTP answer but a gateway's 502/503/504 counts as "the server is there".

        Raises:
            SourceError: no answer (refused, unknown host, TLS, timeout), a gateway error, or
                credentials the server rejects; one line naming the URL and the setting.
        """
        if workers:
            await self._run(functools.partial(self._check_server, workers[0].task_type))

    def _check_server(self, task_type: str) -> None:
        where = f"the Conductor server at {self._shown_base}"
        setting = "check CONDUCTOR_SERVER_URL and that the server is running"
        try:
            if self._key:
                self._current_token()
                return
            target = "/tasks/queue/sizes?" + urllib.parse.urlencode({"taskType": task_type})
            answer = self._send("GET", target, body=None, wait=0.0, token=None)
        except SourceError as exc:
            if exc.status in (401, 403):
                raise SourceError(
                    f"{where} rejected the credentials (HTTP {exc.status}):"
                    " check CONDUCTOR_AUTH_KEY and CONDUCTOR_AUTH_SECRET",
                    retryable=False,
                ) from None
            # A failed connection is raised "from None" for short logs; its context keeps why.
            failed = exc.__context__
            if isinstance(failed, TransportError) and failed.cause is not None:
                why = describe_connection_error(failed.cause)
            else:
                why = str(exc)
            raise SourceError(f"cannot reach {where}: {why}; {setting}") from None
        if answer.status == 401:
            raise self._http_error("GET", "/tasks/queue/sizes", answer)  # names what to set
        if answer.status in (502, 503, 504):
            raise SourceError(
                f"cannot reach {where}: HTTP {answer.status} from a gateway (the server behind"
                f" it is down); {setting}"
            )

    def spool_key(self) -> str:
        """The server's redacted URL."""
        return self._spool_key

    async def close(self) -> None:
        """Stop the thread pool and close every connection. Safe to call twice."""
        with self._lock:
            self._closed = True
            threads, self._threads = self._threads, None
        if threads is not None:
            # A long poll may still be waiting: do not block the event loop on it.
            threads.shutdown()
        self._endpoint.close()

    def _ensure_threads(self) -> LoopThreads:
        with self._lock:
            if self._closed:
                raise SourceError("the Conductor source is closed", retryable=False)
            if self._threads is None:
                self._threads = LoopThreads(self._max_workers, "taskfleet-conductor")
            return self._threads

    async def _run(self, fn: Callable[[], T]) -> T:
        threads = self._ensure_threads()
        try:
            future = threads.run(fn)
        except RuntimeError:  # close() shut the pool down between the check and the submit
            raise SourceError("the Conductor source is closed", retryable=False) from None
        return await future

    # -- the task API ------------------------------------------------------------------------

    async def poll(self, request: PollRequest) -> list[Task]:
        """Batch poll: ``GET /tasks/poll/batch/{type}``, long-polling up to 5 s.

        Returns the tasks the server handed out (possibly fewer than asked, or none). Entries the
        server sent without a ``taskId`` are logged and skipped.
        """
        if request.count <= 0:
            return []
        return await self._run(functools.partial(self.poll_blocking, request))

    def poll_blocking(self, request: PollRequest) -> list[Task]:
        """:meth:`poll`, in the calling thread."""
        if request.count <= 0:
            return []
        timeout_ms = min(MAX_POLL_TIMEOUT_MS, max(0, round(request.timeout * 1000)))
        target = self._poll_targets.get(request)
        if target is None:
            params = {"workerid": request.worker_id, "count": request.count, "timeout": timeout_ms}
            if request.domain:
                params["domain"] = request.domain
            target = f"/tasks/poll/batch/{_segment(request.task_type)}?" + urllib.parse.urlencode(
                params
            )
            if len(self._poll_targets) > 256:
                self._poll_targets.clear()
            self._poll_targets[request] = target
        path = target.partition("?")[0]
        answer = self._request("GET", target, wait=timeout_ms / 1000)
        if answer.status == 204 or not answer.body:
            return []
        try:
            data = self._json(answer, "GET", path)
        except RecursionError:  # one task's input nested too deeply: that task only
            data = _json.loads_array_items(answer.body)
        if not isinstance(data, list):
            raise SourceError(f"GET {self._shown(path)}: expected a JSON array", status=200)
        tasks = []
        for item in data:
            if isinstance(item, _json.TooDeep):
                self._fail_too_deep(item, request.task_type)
                continue
            try:
                tasks.append(task_from_wire(item, request.task_type))
            except (ValueError, TypeError, AttributeError) as exc:
                log.warning("skipping a malformed task from %s: %s", self._shown(path), exc)
        return tasks

    def _fail_too_deep(self, item: _json.TooDeep, task_type: str) -> None:
        """Fail a polled task whose JSON is nested too deeply to decode (in the poll's thread);
        if that fails too, the server's response timeout retries it."""
        try:
            task = task_from_wire(item.fields, task_type)
        except (ValueError, TypeError) as exc:
            log.warning("skipping a malformed task nested too deeply to decode: %s", exc)
            return
        reason = "task JSON is nested too deeply to decode (deeper than the parser's stack)"
        result = task.result(TaskStatus.FAILED_WITH_TERMINAL_ERROR, reason=reason)
        try:
            self._request("POST", "/tasks", body=self._result_body(task, result))
        except SourceError as exc:
            log.warning("could not fail task %s (%s): %s", task.task_id, reason, exc)
        else:
            log.warning("failed task %s: %s", task.task_id, reason)

    async def report(self, task: Task, result: TaskResult, *, chain: bool = False) -> Task | None:
        """Deliver a result: ``update-v2`` when ``chain`` (the answer may be the next task),
        else ``POST /tasks``, which never hands out a task the caller has no slot for.

        Returns the chained task, or None. Re-sending a result for a terminal task is safe.
        """
        return await self._run(functools.partial(self.report_blocking, task, result, chain=chain))

    def report_blocking(
        self, task: Task, result: TaskResult, *, chain: bool = False
    ) -> Task | None:
        """:meth:`report`, in the calling thread."""
        body = self._result_body(task, result)
        if chain and not self._no_update_v2:
            answer = self._request("POST", "/tasks/update-v2", body=body, ok=(404, 405))
            if answer.status not in (404, 405):
                if answer.status == 204 or not answer.body:
                    return None
                try:
                    data = self._json(answer, "POST", "/tasks/update-v2")
                    return task_from_wire(data, task.task_type) if data else None
                except (SourceError, ValueError, TypeError, AttributeError) as exc:
                    # The result was delivered; raising would make the caller send it again.
                    # An unreadable next task is left to the server's response timeout.
                    log.warning("ignoring an unreadable chained task: %s", exc)
                    return None
            # 404 also means "unknown task": only a successful POST /tasks proves the
            # server merely lacks update-v2, so only then is the fallback remembered.
            self._request("POST", "/tasks", body=body)
            self._no_update_v2 = True  # learnt once; a process has one source per server
            log.info("%s has no update-v2; using POST /tasks from now on", self._shown_base)
            return None
        self._request("POST", "/tasks", body=body)
        return None

    async def extend(self, tasks: Sequence[Task]) -> None:
        """Extend the lease of each task (``POST /tasks`` with ``extendLease``), resetting its
        response-timeout clock on the server.

        Every task is tried; the first failure is raised afterwards as SourceError.
        """
        outcomes = await asyncio.gather(
            *(self._run(functools.partial(self._extend_one, t)) for t in tasks),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def backlog(self, workers: Sequence[WorkerBinding]) -> dict[str, Backlog]:
        """Scheduled tasks per type, one ``GET /tasks/queue/sizes`` for all of them (a domain's
        queue is named ``domain:type`` there). Polled tasks are not counted: ``held`` is 0."""
        queues = {(f"{w.domain}:" if w.domain else "") + w.task_type: w.task_type for w in workers}
        path = "/tasks/queue/sizes"
        target = path + "?" + urllib.parse.urlencode({"taskType": list(queues)}, doseq=True)

        def call() -> dict[str, Backlog]:
            data = self._json(self._request("GET", target), "GET", path)
            sizes = data if isinstance(data, dict) else {}
            return {
                queues[q]: Backlog(n) for q, n in sizes.items() if q in queues and type(n) is int
            }

        return await self._run(call)

    async def progress(
        self, task: Task, output: Mapping[str, Any] | None, logs: Sequence[TaskLog]
    ) -> None:
        """``POST /tasks`` with ``IN_PROGRESS``, the partial output and the new log lines. The
        server applies them, restarts the task's response-timeout clock, and re-queues the task
        after ``callbackAfterSeconds``: the task's response timeout (an hour when it has none),
        so it is polled again only if no progress or result follows within it."""
        result = task.result(TaskStatus.IN_PROGRESS, output)
        result.logs = list(logs)
        result.callback_after_seconds = task.response_timeout_seconds or 3600
        body = self._result_body(task, result)
        await self._run(functools.partial(self._request, "POST", "/tasks", body=body))

    def _extend_one(self, task: Task) -> None:
        body = {
            "workflowInstanceId": task.workflow_instance_id,
            "taskId": task.task_id,
            "status": TaskStatus.IN_PROGRESS.value,
            "extendLease": True,
        }
        worker_id = task.raw.get("workerId") if task.raw else None
        if worker_id:
            body["workerId"] = worker_id
        self._request("POST", "/tasks", body=_json.dumps(body))

    @staticmethod
    def _result_body(task: Task, result: TaskResult) -> bytes:
        """The TaskResult JSON, encoded here with taskfleet's encoder (dates, UUIDs, sets and
        dataclasses in the output are fine) and the output spliced in as already encoded
        (delivery made sure it encodes).
        """
        output = result.output_json()
        body = result.to_wire()
        del body["outputData"]
        # The server rejects an empty workflowInstanceId (400); the task always knows it.
        if not body["workflowInstanceId"]:
            body["workflowInstanceId"] = task.workflow_instance_id
        if not body["workerId"] and task.raw.get("workerId"):
            body["workerId"] = task.raw["workerId"]
        return _json.dumps(body)[:-1] + b',"outputData":' + output + b"}"

    # -- HTTP ---------------------------------------------------------------------------------

    def _connection(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            try:
                conn = self._local.conn = self._endpoint.connection()
            except TransportError:
                raise SourceError("the Conductor source is closed", retryable=False) from None
        return conn

    def _shown(self, path: str) -> str:
        return self._shown_base + path

    def _request(
        self,
        method: str,
        target: str,
        *,
        body: bytes | None = None,
        wait: float = 0.0,
        ok: tuple[int, ...] = (),
    ) -> Answer:
        """One call, with the protocol's single token refresh. Returns a 2xx answer (or one
        whose status is in ``ok``); raises SourceError for anything else.

        ``target``: the API path, with its query. ``body``: JSON, already encoded.
        """
        token = self._current_token()
        answer = self._send(method, target, body=body, wait=wait, token=token)
        if answer.status == 401 and token is not None and _error_code(answer) in _REFRESHABLE:
            token = self._refresh_token(stale=token)
            answer = self._send(method, target, body=body, wait=wait, token=token)
        if answer.status < 300 or answer.status in ok:
            return answer
        raise self._http_error(method, target.partition("?")[0], answer)

    def _send(
        self, method: str, target: str, *, body: bytes | None, wait: float, token: str | None
    ) -> Answer:
        headers = self._json_headers if body is not None else self._endpoint.headers
        if token:
            headers = {**headers, "X-Authorization": token}
        try:
            # The long-poll wait is the server's to spend; the read timeout comes on top.
            answer = self._connection().request(method, self._prefix + target, body, headers, wait)
        except TransportError as exc:
            if exc.kind == "closed":
                raise SourceError("the Conductor source is closed", retryable=False) from None
            path = self._shown(target.partition("?")[0])
            what = "timed out" if exc.timed_out else "connection failed"
            raise SourceError(f"{method} {path}: {what} ({exc.kind})") from None
        refuse_redirect(answer.status, f"{method} {self._shown(target.partition('?')[0])}")
        return answer

    def _http_error(self, method: str, path: str, answer: Answer) -> SourceError:
        status = answer.status
        detail = _error_message(answer)
        message = f"{method} {self._shown(path)}: HTTP {status}" + (f" {detail}" if detail else "")
        if status == 401 and not self._key:
            message += (
                " (the server requires auth: set CONDUCTOR_AUTH_KEY and CONDUCTOR_AUTH_SECRET)"
            )
        return SourceError(
            message,
            retryable=status >= 500 or status == 429,
            status=status,
            # A 4xx that is not auth, an unknown task or rate limiting refuses the result itself.
            rejects_result=400 <= status < 500 and status not in (401, 403, 404, 408, 429),
        )

    def _json(self, answer: Answer, method: str, path: str) -> Any:
        try:
            return _json.loads(answer.body)
        except ValueError:
            # A proxy's HTML error page during an outage looks like this; it may pass.
            raise SourceError(
                f"{method} {self._shown(path)}: answer is not JSON", status=answer.status
            ) from None

    # -- auth ----------------------------------------------------------------------------------

    def _current_token(self) -> str | None:
        if self._auth_enabled is False:
            return None
        with self._lock:
            token = self._token
        return token if token is not None else self._refresh_token(stale=None)

    def _refresh_token(self, stale: str | None) -> str | None:
        """Fetch a token unless another thread already replaced ``stale``. One request."""
        with self._token_lock:
            with self._lock:
                if self._token is not None and self._token != stale:
                    return self._token
            if self._auth_enabled is False:
                return None
            credentials = _json.dumps({"keyId": self._key, "keySecret": self._secret})
            answer = self._send("POST", "/token", body=credentials, wait=0.0, token=None)
            if answer.status == 404:
                self._auth_enabled = False  # an OSS server: no auth, proceed without a token
                return None
            if answer.status >= 300:
                raise self._http_error("POST", "/token", answer)
            token = _error_body(answer).get("token")
            if not token or not isinstance(token, str):
                raise SourceError(
                    f"POST {self._shown('/token')}: no token in the answer", status=answer.status
                )
            with self._lock:
                self._token = token
                self._auth_enabled = True
            return token


def refuse_redirect(status: int, call: str) -> None:
    """Credentials never follow a redirect: a 3xx answer is an error, never a second request.

    Every call carries ``X-Authorization`` (and ``POST /token`` the key secret in its body); an
    HTTP client that follows a redirect sends them wherever the ``Location`` points. Requests are
    made with redirects off, and this turns the answer into a non-retryable error naming the fix.
    """
    if 300 <= status < 400:
        raise SourceError(
            f"{call}: HTTP {status} redirect refused (credentials are never sent after a"
            " redirect); set CONDUCTOR_SERVER_URL to the server's final URL",
            retryable=False,
            status=status,
        )


_warned_plain: set[str] = set()


def warn_plain_http(base: str, credentials: bool) -> None:
    """Warn once per server when credentials would cross the network unencrypted."""
    parsed = urllib.parse.urlsplit(base)
    host = parsed.hostname or ""
    if not credentials or parsed.scheme != "http" or is_loopback(host) or base in _warned_plain:
        return
    _warned_plain.add(base)
    log.warning(
        "CONDUCTOR_SERVER_URL %s is plain http:// to another host: the auth key secret and"
        " tokens cross the network unencrypted; use https://",
        redact_url(base),
    )


def _segment(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _error_body(answer: Answer) -> Mapping[str, Any]:
    """The answer's JSON object (an error body, or the token answer), or ``{}``."""
    try:
        data = _json.loads(answer.body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _error_code(answer: Answer) -> str:
    return str(_error_body(answer).get("error") or "")


def _error_message(answer: Answer) -> str:
    body = _error_body(answer)
    text = body.get("message") or body.get("error") or ""
    return str(text)[:200]
