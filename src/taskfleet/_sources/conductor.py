"""The Conductor task source: the handful of task-API calls a worker makes, over ``requests``.

The wire contract is ``docs/conductor-protocol.md``. Each call is one attempt: retries and backoff
belong to the runner. The only repeats made here are the protocol's own: one token refresh on
``EXPIRED_TOKEN`` / ``INVALID_TOKEN``, and the one-time fallback from ``update-v2`` to
``POST /tasks`` on servers that lack it (remembered per server URL for the process).

``requests`` blocks, so calls run in a small thread pool owned by the source, each thread with its
own pooled ``requests.Session`` (sessions are not documented as thread-safe). Every failure
leaves this module as :class:`~taskfleet._errors.SourceError`; messages carry the redacted URL and
the exception class, never credentials or tokens.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import requests
from requests.adapters import HTTPAdapter

from .. import _json
from .._config import Configuration, is_loopback, redact_url
from .._errors import SourceError
from .._task import Task, TaskResult, TaskStatus
from .._threads import LoopThreads
from .base import PollRequest, TaskSource

__all__ = ["ConductorSource", "task_from_wire"]

log = logging.getLogger("taskfleet.conductor")

#: The protocol's ceiling for the long-poll wait, milliseconds (above it the server answers 400).
MAX_POLL_TIMEOUT_MS = 5000
#: 401 bodies whose ``error`` means "get a new token and try once more".
_REFRESHABLE = frozenset({"EXPIRED_TOKEN", "INVALID_TOKEN"})
#: Server base URLs known to lack ``update-v2``: learnt once, kept for the process.
_LEGACY_SERVERS: set[str] = set()
_LEGACY_LOCK = threading.Lock()

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
        task_type=str(data.get("taskDefName") or data.get("taskType") or task_type),
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
        raw=dict(data),
    )


class ConductorSource(TaskSource):
    """Tasks from a Conductor server (OSS or Orkes) over HTTP.

    Args:
        config: ``conductor_server_url`` (with ``/api``), optional ``conductor_auth_key`` /
            ``conductor_auth_secret``, and the ``http_connect_timeout`` / ``http_read_timeout``.
        max_workers: threads (and so concurrent HTTP calls) of this source; a long poll holds
            one for up to five seconds, so keep at least two.

    Raises from every call: :class:`~taskfleet._errors.SourceError`; ``retryable`` is True for
    connection failures, timeouts, 429 and 5xx, False for other answers (4xx, a server that
    needs credentials that were not configured, a closed source).
    """

    name = "conductor"

    def __init__(self, config: Configuration, *, max_workers: int = 4) -> None:
        if not config.conductor_server_url:
            raise SourceError("CONDUCTOR_SERVER_URL is not set", retryable=False)
        self._base = config.conductor_server_url.rstrip("/")
        self._shown_base = redact_url(self._base)
        self._spool_key = "conductor " + redact_url(config.conductor_server_url)
        warn_plain_http(self._base, bool(config.conductor_auth_key))
        self._key = config.conductor_auth_key
        self._secret = config.conductor_auth_secret
        self._connect_timeout = config.http_connect_timeout
        self._read_timeout = config.http_read_timeout
        self._max_workers = max(1, max_workers)
        self._threads: LoopThreads | None = None
        self._closed = False
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        # Held while fetching a token, so concurrent calls wait for one fetch instead of each
        # making their own.
        self._token_lock = threading.Lock()
        self._token: str | None = None
        # None: not asked yet; False: the server answered 404 on /token (no auth there).
        self._auth_enabled: bool | None = None if self._key else False

    # -- lifetime --------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the thread pool. No request is made: the first call fetches a token if needed."""
        self._ensure_threads()

    def spool_key(self) -> str:
        """The server's redacted URL."""
        return self._spool_key

    async def close(self) -> None:
        """Stop the thread pool and close every session. Safe to call twice."""
        with self._lock:
            self._closed = True
            threads, self._threads = self._threads, None
            sessions, self._sessions = self._sessions, []
        if threads is not None:
            # A long poll may still be waiting: do not block the event loop on it.
            threads.shutdown()
        for session in sessions:
            session.close()

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
        timeout_ms = min(MAX_POLL_TIMEOUT_MS, max(0, round(request.timeout * 1000)))
        params = {"workerid": request.worker_id, "count": request.count, "timeout": timeout_ms}
        if request.domain:
            params["domain"] = request.domain
        path = f"/tasks/poll/batch/{_segment(request.task_type)}"

        def call() -> list[Task]:
            resp = self._request("GET", path, params=params, wait=timeout_ms / 1000)
            if resp.status_code == 204 or not resp.content:
                return []
            data = self._json(resp, path)
            if not isinstance(data, list):
                raise SourceError(f"GET {self._shown(path)}: expected a JSON array", status=200)
            tasks = []
            for item in data:
                try:
                    tasks.append(task_from_wire(item, request.task_type))
                except (ValueError, TypeError, AttributeError) as exc:
                    log.warning("skipping a malformed task from %s: %s", self._shown(path), exc)
            return tasks

        return await self._run(call)

    async def report(self, task: Task, result: TaskResult, *, chain: bool = False) -> Task | None:
        """Deliver a result: ``update-v2`` when ``chain`` (the answer may be the next task),
        else ``POST /tasks``, which never hands out a task the caller has no slot for.

        Returns the chained task, or None. Re-sending a result for a terminal task is safe.
        """
        body = self._result_body(task, result)

        def call() -> Task | None:
            if chain and self._base not in _LEGACY_SERVERS:
                resp = self._request("POST", "/tasks/update-v2", body=body, ok=(404, 405))
                if resp.status_code not in (404, 405):
                    if resp.status_code == 204 or not resp.content:
                        return None
                    try:
                        data = self._json(resp, "/tasks/update-v2")
                        return task_from_wire(data, task.task_type) if data else None
                    except (SourceError, ValueError, TypeError, AttributeError) as exc:
                        # The result was delivered; raising would make the caller send it again.
                        # An unreadable next task is left to the server's response timeout.
                        log.warning("ignoring an unreadable chained task: %s", exc)
                        return None
                # 404 also means "unknown task": only a successful POST /tasks proves the
                # server merely lacks update-v2, so only then is the fallback remembered.
                self._request("POST", "/tasks", body=body)
                with _LEGACY_LOCK:
                    _LEGACY_SERVERS.add(self._base)
                log.info("%s has no update-v2; using POST /tasks from now on", self._shown_base)
                return None
            self._request("POST", "/tasks", body=body)
            return None

        return await self._run(call)

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
        self._request("POST", "/tasks", json=body)

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

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            # Keep-alive pool per thread; no urllib3 retries: one attempt per call.
            adapter = HTTPAdapter(pool_connections=2, pool_maxsize=2, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            # Proxy and CA-bundle variables are read once here instead of on every request
            # (requests scans the whole environment per call when trust_env is on).
            env = session.merge_environment_settings(self._base, {}, None, None, None)
            session.trust_env = False
            session.proxies.update(env.get("proxies") or {})
            if env.get("verify") not in (None, True):
                session.verify = env["verify"]
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def _shown(self, path: str) -> str:
        return self._shown_base + path

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        body: bytes | None = None,
        wait: float = 0.0,
        ok: tuple[int, ...] = (),
    ) -> requests.Response:
        """One call, with the protocol's single token refresh. Returns a 2xx response (or one
        whose status is in ``ok``); raises SourceError for anything else.

        ``body``: a JSON body already encoded (sent as is, ``Content-Type: application/json``).
        """
        token = self._current_token()
        resp = self._send(method, path, params=params, json=json, body=body, wait=wait, token=token)
        if resp.status_code == 401 and token is not None and _error_code(resp) in _REFRESHABLE:
            token = self._refresh_token(stale=token)
            resp = self._send(
                method, path, params=params, json=json, body=body, wait=wait, token=token
            )
        if resp.status_code < 300 or resp.status_code in ok:
            return resp
        raise self._http_error(method, path, resp)

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None,
        json: Any,
        wait: float,
        token: str | None,
        body: bytes | None = None,
    ) -> requests.Response:
        headers = {"X-Authorization": token} if token else {}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            resp = self._session().request(
                method,
                self._base + path,
                params=params,
                json=json,
                data=body,
                headers=headers,
                # The long-poll wait is the server's to spend; the read timeout comes on top.
                timeout=(self._connect_timeout, self._read_timeout + wait),
                allow_redirects=False,  # see refuse_redirect
            )
        except requests.Timeout as exc:
            raise SourceError(
                f"{method} {self._shown(path)}: timed out ({type(exc).__name__})"
            ) from None
        except requests.RequestException as exc:
            raise SourceError(
                f"{method} {self._shown(path)}: connection failed ({type(exc).__name__})"
            ) from None
        refuse_redirect(resp.status_code, f"{method} {self._shown(path)}")
        return resp

    def _http_error(self, method: str, path: str, resp: requests.Response) -> SourceError:
        status = resp.status_code
        detail = _error_message(resp)
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

    def _json(self, resp: requests.Response, path: str) -> Any:
        try:
            return resp.json()
        except ValueError:
            # A proxy's HTML error page during an outage looks like this; it may pass.
            raise SourceError(
                f"{resp.request.method} {self._shown(path)}: answer is not JSON",
                status=resp.status_code,
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
            credentials = {"keyId": self._key, "keySecret": self._secret}
            resp = self._send("POST", "/token", params=None, json=credentials, wait=0.0, token=None)
            if resp.status_code == 404:
                self._auth_enabled = False  # an OSS server: no auth, proceed without a token
                return None
            if resp.status_code >= 300:
                raise self._http_error("POST", "/token", resp)
            token = _error_body(resp).get("token")
            if not token or not isinstance(token, str):
                raise SourceError(
                    f"POST {self._shown('/token')}: no token in the answer", status=resp.status_code
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


def _error_body(resp: requests.Response) -> Mapping[str, Any]:
    """The answer's JSON object (an error body, or the token answer), or ``{}``."""
    try:
        data = resp.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _error_code(resp: requests.Response) -> str:
    return str(_error_body(resp).get("error") or "")


def _error_message(resp: requests.Response) -> str:
    body = _error_body(resp)
    text = body.get("message") or body.get("error") or ""
    return str(text)[:200]
