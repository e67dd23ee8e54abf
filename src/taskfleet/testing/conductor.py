"""An in-memory Conductor server speaking the task API over real HTTP on 127.0.0.1.

For taskfleet's own tests and for users testing their workers without a Conductor deployment::

    with ConductorTestServer() as server:
        task_id = server.enqueue("resize_image", {"path": "a.png", "width": 64})
        config = Configuration(conductor_server_url=server.url, source="conductor")
        ...  # run the worker against config
        assert server.wait_all_terminal([task_id], timeout=10)
        assert server.job(task_id).status == "COMPLETED"

It speaks the wire contract of ``docs/conductor-protocol.md`` (batch poll with long-poll,
``update-v2`` with chaining, ``POST /tasks`` with lease extension, logs, queue sizes, Orkes-style
``POST /token`` auth) and adds fault injection: refused connections, 5xx answers, injected
errors, delays and expired tokens. The task lifecycle lives in :mod:`._conductor_store`.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import sys
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from ._conductor_store import RESULT_STATUSES, Job, Outcome, TaskDef, TaskStore, UnknownTask

__all__ = ["ConductorTestServer", "Job", "Outcome", "RequestRecord", "TaskDef"]

API_PREFIX = "/api"
#: The protocol's ceiling for the long-poll ``timeout`` parameter, milliseconds.
MAX_POLL_TIMEOUT_MS = 5000
#: Most tasks one batch poll may ask for.
MAX_POLL_COUNT = 1000
#: Requests remembered for inspection (oldest forgotten first).
MAX_REQUEST_LOG = 100_000
#: Largest request body accepted, bytes.
MAX_BODY = 16 * 1024 * 1024

DownMode = Literal["refuse", "500", "503"]


@dataclass(frozen=True)
class RequestRecord:
    """One request the server answered. ``path`` is relative to the API base (``/tasks/...``);
    ``at`` is ``time.monotonic()`` when the answer was sent."""

    method: str
    path: str
    query: str
    status: int
    at: float


class _Reply(Exception):
    """Raised inside a route to answer with ``status`` and a JSON (or text) body."""

    def __init__(self, status: int, body: Any = None, *, text: str | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.text = text


def _error(status: int, message: str, *, code: str | None = None, **extra: Any) -> _Reply:
    """An error in the server's JSON shape: ``{"status", "code", "message", "retryable"}``."""
    body = {
        "status": status,
        "code": code or _CODES.get(status, "ERROR"),
        "message": message,
        "retryable": status >= 500 or status == 429,
        **extra,
    }
    return _Reply(status, body)


_CODES = {
    400: "INVALID_INPUT",
    401: "UNAUTHORIZED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    429: "TOO_MANY_REQUESTS",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
}


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # A long poll may be waiting in a handler thread; closing must not wait for it.
    block_on_close = False

    def __init__(self, address: tuple[str, int], owner: ConductorTestServer) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        self.accepted = 0
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients vanishing mid-request (and connections cut by go_down) are part of the tests.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def drop_connections(self) -> None:
        """Cut every open (keep-alive) connection, so clients see the server gone."""
        with self.connections_lock:
            conns = list(self.connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so clients' sessions reuse connections
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle plus the client's
    # delayed ACK adds ~40 ms to every answer.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)
            self.server.accepted += 1

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests inspect ConductorTestServer.requests instead of stderr noise

    def do_GET(self) -> None:
        self.server.owner._handle(self)

    do_POST = do_PUT = do_DELETE = do_GET


class ConductorTestServer:
    """An in-memory Conductor API on ``127.0.0.1``, in background threads.

    Args:
        port: TCP port; 0 picks a free one (kept across :meth:`go_down` / :meth:`go_up`).
        auth: ``(key_id, key_secret)`` to require Orkes-style tokens; None: no auth, and
            ``POST /token`` answers 404 as an OSS server does.
        token_ttl: seconds a token stays valid; past it requests answer 401 ``EXPIRED_TOKEN``.
        legacy_update: behave like a server older than 3.21.12: ``update-v2`` answers 404, so
            clients must fall back to ``POST /tasks``.
        empty_poll_status: 204 (older servers) or 200 (``[]``, servers >= 3.21.20) for a batch
            poll that found nothing.

    ``start()`` and ``stop()`` are idempotent; the object is also a context manager.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        auth: tuple[str, str] | None = None,
        token_ttl: float = 3600.0,
        legacy_update: bool = False,
        empty_poll_status: int = 204,
    ) -> None:
        if empty_poll_status not in (200, 204):
            raise ValueError("empty_poll_status must be 200 or 204")
        self._store = TaskStore()
        self._port = port
        self._auth = auth
        self._token_ttl = token_ttl
        self._legacy_update = legacy_update
        self._empty_poll_status = empty_poll_status
        self._lock = self._store.cond  # one lock for the whole server
        self._tokens: dict[str, float] = {}  # token -> monotonic expiry
        self._requests: deque[RequestRecord] = deque(maxlen=MAX_REQUEST_LOG)
        self._down: DownMode | None = None
        self._injected: deque[tuple[int, str | None]] = deque()
        self._delay = 0.0
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._started = False

    # -- lifetime --------------------------------------------------------------------------

    def __enter__(self) -> ConductorTestServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> ConductorTestServer:
        """Bind and serve in a daemon thread. Returns self. A second call does nothing."""
        with self._lock:
            if self._started:
                return self
            self._started = True
            self._down = None
        self._store.start_reaper()
        self._bind()
        return self

    def stop(self) -> None:
        """Stop serving, cut open connections, end long polls. Safe to call twice."""
        with self._lock:
            if not self._started:
                return
            self._started = False
        self._unbind()
        self._store.stop_reaper()

    def _bind(self) -> None:
        httpd = _HTTPServer(("127.0.0.1", self._port), self)
        self._port = httpd.server_address[1]
        thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},  # also how long stop() waits for the loop
            name=f"conductor-test-server:{self._port}",
            daemon=True,
        )
        with self._lock:
            self._httpd, self._thread = httpd, thread
        thread.start()

    def _unbind(self) -> None:
        with self._lock:
            httpd, thread = self._httpd, self._thread
            self._httpd = self._thread = None
            self._lock.notify_all()  # long polls check whether their server is still up
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        httpd.drop_connections()
        if thread is not None:
            thread.join(timeout=5)

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """The API base, as ``CONDUCTOR_SERVER_URL`` expects it: ``http://127.0.0.1:PORT/api``."""
        return f"http://127.0.0.1:{self._port}{API_PREFIX}"

    # -- producing tasks ---------------------------------------------------------------------

    def register_task_def(
        self,
        name: str,
        *,
        response_timeout_seconds: float = 3600.0,
        retry_count: int = 3,
        retry_delay_seconds: float = 0.0,
        timeout_seconds: float = 0.0,
    ) -> None:
        """Define how tasks of ``name`` time out and retry (unregistered types use the defaults)."""
        self._store.register(
            TaskDef(
                name, response_timeout_seconds, retry_count, retry_delay_seconds, timeout_seconds
            )
        )

    def enqueue(
        self,
        task_type: str,
        input: Mapping[str, Any] | None = None,
        *,
        domain: str | None = None,
        workflow_id: str | None = None,
        correlation_id: str | None = None,
    ) -> str:
        """Schedule one task; returns its id. Wakes long polls waiting for this type."""
        return self._store.enqueue(
            task_type,
            input,
            domain=domain,
            workflow_id=workflow_id,
            correlation_id=correlation_id,
        )

    def enqueue_many(self, task_type: str, inputs: Iterable[Mapping[str, Any] | None]) -> list[str]:
        return [self.enqueue(task_type, item) for item in inputs]

    # -- inspection --------------------------------------------------------------------------

    def job(self, task_id: str) -> Job:
        """A snapshot of one task. Raises KeyError for an unknown id."""
        return self._store.job(task_id)

    def tasks(self, task_type: str | None = None, status: str | None = None) -> list[Job]:
        """Snapshots of matching tasks, in the order they were enqueued."""
        return self._store.jobs(task_type, status)

    def counts(self) -> dict[str, int]:
        """How many tasks are in each status."""
        return self._store.counts()

    def wait_for(
        self, predicate_or_ids: Callable[[], bool] | Iterable[str], timeout: float
    ) -> bool:
        """Wait until the predicate is true, or until every task id given is terminal.

        Returns False when ``timeout`` seconds pass first. The predicate is re-checked on every
        state change of the server and at least every 50 ms; it may call :meth:`job`,
        :meth:`counts` and the other inspection methods.
        """
        if callable(predicate_or_ids):
            return self._store.wait_for(predicate_or_ids, timeout)
        ids = list(predicate_or_ids)
        return self._store.wait_for(lambda: self._store.all_terminal(ids), timeout)

    def wait_all_terminal(self, task_ids: Iterable[str], timeout: float) -> bool:
        return self.wait_for(list(task_ids), timeout)

    @property
    def waiting_polls(self) -> int:
        """Long polls parked right now, waiting for a task to appear."""
        with self._lock:
            return self._store.waiting_polls

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted since the last bind (keep-alive clients reuse theirs)."""
        with self._lock:
            httpd = self._httpd
        if httpd is None:
            return 0
        with httpd.connections_lock:
            return httpd.accepted

    @property
    def requests(self) -> list[RequestRecord]:
        """Requests answered so far (the latest :data:`MAX_REQUEST_LOG`), oldest first."""
        with self._lock:
            return list(self._requests)

    def request_count(self, path_prefix: str | None = None) -> int:
        """How many answered requests had a path (relative to ``/api``) starting with this."""
        with self._lock:
            return sum(
                1 for r in self._requests if path_prefix is None or r.path.startswith(path_prefix)
            )

    # -- fault injection ---------------------------------------------------------------------

    def go_down(self, mode: DownMode = "refuse") -> None:
        """Make the server unavailable until :meth:`go_up`.

        ``"refuse"`` closes the listening socket and cuts open connections (connections are
        refused); ``"500"`` / ``"503"`` answer every request with that status.
        """
        if mode not in ("refuse", "500", "503"):
            raise ValueError(f"unknown mode {mode!r}: expected 'refuse', '500' or '503'")
        with self._lock:
            self._down = mode
            self._lock.notify_all()
        if mode == "refuse":
            self._unbind()

    def go_up(self) -> None:
        """Serve normally again; after ``"refuse"`` the same port is bound again."""
        with self._lock:
            was, self._down = self._down, None
            rebind = self._started and self._httpd is None
        if was == "refuse" and rebind:
            self._bind()

    def inject_errors(self, n: int, status: int = 500, path_prefix: str | None = None) -> None:
        """The next ``n`` requests whose path starts with ``path_prefix`` answer ``status``."""
        with self._lock:
            self._injected.extend([(status, path_prefix)] * n)

    def set_delay(self, seconds: float) -> None:
        """Hold every request this long before handling it (0 to stop)."""
        with self._lock:
            self._delay = max(0.0, seconds)

    def expire_tokens(self) -> None:
        """Every token issued so far now answers 401 ``EXPIRED_TOKEN``."""
        with self._lock:
            for token in self._tokens:
                self._tokens[token] = 0.0

    # -- request handling ---------------------------------------------------------------------

    def _handle(self, handler: _Handler) -> None:
        split = urllib.parse.urlsplit(handler.path)
        path = split.path
        if path.startswith(API_PREFIX + "/"):
            path = path[len(API_PREFIX) :]
        query = urllib.parse.parse_qs(split.query)
        try:
            length = int(handler.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            handler.close_connection = True
            self._send(
                handler, handler.command, path, split.query, _error(400, "bad Content-Length")
            )
            return
        body = handler.rfile.read(length) if length else b""
        with self._lock:
            delay = self._delay
        if delay:
            time.sleep(delay)  # an injected delay: the sleep is the point
        try:
            self._check_faults(path)
            reply = self._route(handler, path, query, body)
        except _Reply as r:
            reply = r
        except Exception as exc:  # a bug here must show up as a 500, not a hung client
            reply = _error(500, f"test server error: {type(exc).__name__}: {exc}")
        if self._down == "refuse" or not self._started:
            handler.close_connection = True  # the server "went away" while this was in flight
            return
        self._send(handler, handler.command, path, split.query, reply)

    def _send(self, handler: _Handler, method: str, path: str, query: str, reply: _Reply) -> None:
        if reply.text is not None:
            payload, ctype = reply.text.encode(), "text/plain"
        elif reply.body is not None:
            payload, ctype = json.dumps(reply.body).encode(), "application/json"
        else:
            payload, ctype = b"", ""
        with self._lock:
            self._requests.append(
                RequestRecord(method, path, query, reply.status, time.monotonic())
            )
        try:
            handler.send_response(reply.status)
            if ctype:
                handler.send_header("Content-Type", ctype)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            if payload:
                handler.wfile.write(payload)
        except OSError:
            handler.close_connection = True  # the client went away; nothing to tell it

    def _check_faults(self, path: str) -> None:
        with self._lock:
            if self._down in ("500", "503"):
                raise _error(int(self._down), f"server is down ({self._down})")
            for i, (status, prefix) in enumerate(self._injected):
                if prefix is None or path.startswith(prefix):
                    del self._injected[i]
                    raise _error(status, "injected error")

    def _check_auth(self, handler: _Handler) -> None:
        if self._auth is None:
            return
        token = handler.headers.get("X-Authorization")
        with self._lock:
            expiry = self._tokens.get(token) if token else None
        if expiry is None:
            raise _error(401, "invalid or missing X-Authorization token", error="INVALID_TOKEN")
        if expiry <= time.monotonic():
            raise _error(401, "token expired", error="EXPIRED_TOKEN")

    def _route(
        self, handler: _Handler, path: str, query: dict[str, list[str]], body: bytes
    ) -> _Reply:
        method = handler.command
        if path == "/token" and method == "POST":
            return self._token(body)
        self._check_auth(handler)
        if method == "GET" and (m := re.fullmatch(r"/tasks/poll/batch/([^/]+)", path)):
            return self._poll(urllib.parse.unquote(m.group(1)), query, batch=True)
        if method == "GET" and (m := re.fullmatch(r"/tasks/poll/([^/]+)", path)):
            return self._poll(urllib.parse.unquote(m.group(1)), query, batch=False)
        if method == "POST" and path == "/tasks/update-v2":
            if self._legacy_update:
                raise _error(404, "No static resource tasks/update-v2.", error="Not Found")
            return self._update(body, v2=True)
        if method == "POST" and path == "/tasks":
            return self._update(body, v2=False)
        if method == "POST" and (m := re.fullmatch(r"/tasks/([^/]+)/log", path)):
            return self._log(urllib.parse.unquote(m.group(1)), body)
        if method == "GET" and path == "/tasks/queue/sizes":
            return _Reply(200, self._store.queue_sizes(query.get("taskType", [])))
        if method == "GET" and (m := re.fullmatch(r"/tasks/([^/]+)", path)):
            try:
                return _Reply(200, self._store.wire(urllib.parse.unquote(m.group(1))))
            except UnknownTask:
                raise _error(404, f"task {m.group(1)} not found") from None
        if method in ("PUT", "POST") and path == "/metadata/taskdefs":
            return self._taskdefs(body)
        raise _error(404, f"no route for {method} {path}")

    # -- routes ------------------------------------------------------------------------------

    def _token(self, body: bytes) -> _Reply:
        if self._auth is None:
            raise _error(404, "no auth on this server")
        data = _json_object(body)
        if (data.get("keyId"), data.get("keySecret")) != self._auth:
            raise _error(401, "invalid key id or secret", error="INVALID_CREDENTIALS")
        token = secrets.token_urlsafe(24)
        with self._lock:
            now = time.monotonic()
            # Forget expired tokens so a long test that refreshes often stays bounded.
            self._tokens = {t: e for t, e in self._tokens.items() if e > now}
            self._tokens[token] = now + self._token_ttl
        return _Reply(200, {"token": token})

    def _poll(self, task_type: str, query: dict[str, list[str]], *, batch: bool) -> _Reply:
        try:
            count = int(_param(query, "count", "1")) if batch else 1
            timeout_ms = int(_param(query, "timeout", "100"))
        except ValueError:
            raise _error(400, "count and timeout must be integers") from None
        if not 1 <= count <= MAX_POLL_COUNT:
            raise _error(400, f"count must be between 1 and {MAX_POLL_COUNT}")
        if not 0 <= timeout_ms <= MAX_POLL_TIMEOUT_MS:
            raise _error(
                400, f"Long Poll Timeout value cannot be more than {MAX_POLL_TIMEOUT_MS}ms"
            )
        worker_id = _param(query, "workerid", "")
        domain = _param(query, "domain", "") or None
        polled = self._store.poll(
            task_type,
            worker_id,
            count,
            timeout_ms / 1000,
            domain,
            abort=lambda: self._down is not None or not self._started,
        )
        if batch:
            if polled or self._empty_poll_status == 200:
                return _Reply(200, polled)
            return _Reply(204)
        return _Reply(200, polled[0]) if polled else _Reply(204)

    def _update(self, body: bytes, *, v2: bool) -> _Reply:
        result = _json_object(body)
        task_id = result.get("taskId")
        if not task_id or not isinstance(task_id, str):
            raise _error(400, "taskId cannot be empty")
        if not result.get("workflowInstanceId"):
            raise _error(400, "workflowInstanceId cannot be empty")
        if not result.get("extendLease") and result.get("status") not in RESULT_STATUSES:
            raise _error(400, f"invalid status {result.get('status')!r}")
        try:
            self._store.update(result)
        except UnknownTask:
            raise _error(404, f"task {task_id} not found") from None
        if not v2:
            return _Reply(200, text=task_id)
        worker_id = str(result.get("workerId") or "")
        chained = self._store.next_for(task_id, worker_id)
        return _Reply(200, chained) if chained else _Reply(204)

    def _log(self, task_id: str, body: bytes) -> _Reply:
        text = body.decode("utf-8", "replace")
        # Clients send the string either raw or as a JSON string; accept both.
        if text.startswith('"'):
            try:
                text = str(json.loads(text))
            except ValueError:
                pass
        try:
            self._store.add_log(task_id, text)
        except UnknownTask:
            raise _error(404, f"task {task_id} not found") from None
        return _Reply(200)

    def _taskdefs(self, body: bytes) -> _Reply:
        try:
            data = json.loads(body or b"[]")
        except ValueError:
            raise _error(400, "body is not JSON") from None
        for item in data if isinstance(data, list) else [data]:
            if not isinstance(item, dict) or not item.get("name"):
                raise _error(400, "a task definition needs a name")
            try:
                self.register_task_def(
                    str(item["name"]),
                    response_timeout_seconds=float(item.get("responseTimeoutSeconds", 3600)),
                    retry_count=int(item.get("retryCount", 3)),
                    retry_delay_seconds=float(item.get("retryDelaySeconds", 0)),
                    timeout_seconds=float(item.get("timeoutSeconds", 0)),
                )
            except (TypeError, ValueError):
                raise _error(400, f"invalid task definition {item['name']!r}") from None
        return _Reply(200)


def _param(query: dict[str, list[str]], name: str, default: str) -> str:
    values = query.get(name)
    return values[0] if values else default


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise _error(400, "body is not JSON") from None
    if not isinstance(data, dict):
        raise _error(400, "body must be a JSON object")
    return data
