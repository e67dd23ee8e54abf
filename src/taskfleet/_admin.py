"""The supervisor's HTTP endpoint: ``/metrics``, ``/healthz``, ``/readyz``, ``/workers``.

``/metrics`` aggregates every process of the pool (Prometheus multiprocess mode), in the text
format, or OpenMetrics when the scraper asks for it. ``/healthz`` is liveness (the supervisor's
loop turns and every task type still tries to poll); ``/readyz`` is readiness (every worker type
has a process whose last poll succeeded recently), so a server outage makes the pool not-ready
without making it not-alive. ``/workers`` is JSON about each process and the result spool. With
``TASKFLEET_METRICS_TOKEN`` set, ``/metrics`` and ``/workers`` require
``Authorization: Bearer <token>``; the probes ``/healthz`` and ``/readyz`` stay open (they tell
whether the pool is alive and ready, and which task type is not, nothing else), so orchestrators
need no secret.

``POST /workers/{type}/pause``, ``/resume`` and ``/scale`` change a running pool (``_operate.py``).
Every POST needs the token; without one configured, POST is refused unless the endpoint listens
on loopback only, where nobody from another host can reach it.

The endpoint is bounded: a connection that sends nothing for :data:`REQUEST_TIMEOUT` seconds is
closed, at most :data:`MAX_CONNECTIONS` are served at once (more are answered 503 and closed), and
an error while answering is a 500, never a dead thread (``docs/deployment.md``, Security).
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import json
import logging
import os
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from . import _metrics as metrics
from ._config import Configuration, is_loopback
from ._errors import AddressInUseError, ConfigurationError

if TYPE_CHECKING:
    from ._supervisor import TaskHandler

__all__ = ["AdminServer", "Textfile", "render_metrics"]

log = logging.getLogger("taskfleet.admin")

#: Seconds a connection may stay silent (or a client take to read an answer) before it is closed.
REQUEST_TIMEOUT = 10.0
#: Connections served at once; one more is answered 503 and closed, so idle clients cannot pin
#: the supervisor's threads.
MAX_CONNECTIONS = 16

#: Paths served without the token: liveness and readiness probes.
_OPEN_PATHS = frozenset({"/healthz", "/readyz"})

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
    b"Connection: close\r\n\r\nbusy\n"
)
#: ``/healthz`` fails when a task type has not tried a poll for this many seconds (the longest
#: wait between two polls is the 10 s error backoff plus a long poll).
STALL_AFTER = 60.0


def render_metrics(accept: str = "") -> tuple[bytes, str]:
    """The pool's metrics as (body, content type), aggregated over every process."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.multiprocess import MultiProcessCollector

    directory = metrics.multiproc_dir()
    if directory:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)
        for gauge in metrics.POOL_GAUGES.values():
            registry.register(gauge)
    else:
        registry = metrics.get().registry
    encoder, content_type = choose_encoder(accept)
    with metrics.files_lock():  # not while a dead process's files are folded
        return encoder(registry), content_type


def health(pool: TaskHandler, now: float | None = None) -> tuple[bool, str]:
    """Liveness: the supervisor's loop turns, and no task type has stopped polling.

    A type has stopped polling when it has running processes and none of them polled (well or
    not: an outage only makes the pool not *ready*) within ``STALL_AFTER`` seconds, while it had
    free slots, was not paused and had been up that long.
    """
    if not pool.alive():
        return False, "not alive"
    now = time.time() if now is None else now
    stalled = stalled_types(pool.workers_status(), now)
    if stalled:
        return False, "; ".join(f"{t} has not polled for {s:.0f}s" for t, s in stalled.items())
    return True, "ok"


def stalled_types(workers: list[dict[str, Any]], now: float) -> dict[str, float]:
    """Task types none of whose running processes polled recently: type -> seconds since."""
    fine: set[str] = set()
    since: dict[str, float] = {}
    for w in workers:
        task_type = str(w.get("task_type", ""))
        if w.get("state") != "running":
            continue
        up = float(w.get("up_seconds") or 0.0)
        last = float(w.get("last_poll") or 0.0)
        quiet = now - last if last else up
        busy = int(w.get("in_flight") or 0) >= int(w.get("threads") or 1)
        if busy or w.get("paused") or quiet < STALL_AFTER or up < STALL_AFTER:
            fine.add(task_type)
        else:
            since[task_type] = min(quiet, since.get(task_type, quiet))
    return {t: s for t, s in sorted(since.items()) if t not in fine}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.request_timeout)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj, indent=1).encode(), "application/json")

    def _authorised(self) -> bool:
        token = self.server.token
        if not token:
            return True
        given = self.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self._guarded(self._answer)

    def do_POST(self) -> None:
        self._guarded(self._answer_post)

    def _guarded(self, answer: Any) -> None:
        try:
            answer()
        except OSError:  # the client went away or stopped reading: nothing left to answer
            self.close_connection = True
        except Exception:
            log.exception("HTTP endpoint: %s failed", self.path.split("?", 1)[0])
            self.close_connection = True
            self._send(500, b"internal error\n", "text/plain")

    def _answer_post(self) -> None:
        """``POST /workers/{type}/{action}``: the token first, then the body, then the pool."""
        from ._operate import MAX_BODY, answer

        if self.server.token:
            if not self._authorised():
                self.close_connection = True
                self._json(401, {"error": "unauthorized: Authorization: Bearer <token> needed"})
                return
        elif not self.server.loopback:
            self.close_connection = True
            self._json(
                403,
                {
                    "error": "POST needs TASKFLEET_METRICS_TOKEN when the endpoint is reachable"
                    " from other hosts (docs/deployment.md, Security)"
                },
            )
            return
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        if len(parts) != 3 or parts[0] != "workers":
            self.close_connection = True
            self._json(404, {"error": "POST /workers/{type}/pause, /resume or /scale"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if self.headers.get("Transfer-Encoding"):
            length = -1  # a chunked body: the few bytes asked for come with a length
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            self._json(413 if length > MAX_BODY else 400, {"error": "bad Content-Length"})
            return
        body = self.rfile.read(length) if length else b""
        task_type = urllib.parse.unquote(parts[1])
        status, obj = answer(self.server.pool, task_type, parts[2], body)
        self._json(status, obj)

    def _answer(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if path not in _OPEN_PATHS and not self._authorised():
            self._send(401, b"unauthorized\n", "text/plain")
            return
        pool = self.server.pool
        if path == "/metrics":
            body, content_type = render_metrics(self.headers.get("Accept", ""))
            self._send(200, body, content_type)
        elif path == "/healthz":
            ok, why = health(pool)
            self._send(200 if ok else 503, (why + "\n").encode(), "text/plain")
        elif path == "/readyz":
            ready, why = pool.ready()
            self._send(200 if ready else 503, (why + "\n").encode(), "text/plain")
        elif path == "/workers":
            try:
                spool = pool.spool_status()
            except Exception as exc:  # the spool's trouble must not hide the workers
                spool = {"error": f"{type(exc).__name__}: {exc}"}
            self._json(
                200,
                {
                    "pid": os.getpid(),
                    "workers": pool.workers_status(),
                    "queues": pool.queues_status(),
                    "spool": spool,
                },
            )
        elif path == "/":
            self._send(200, b"taskfleet: /metrics /healthz /readyz /workers\n", "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    pool: TaskHandler
    token: str
    #: listening on loopback only: POST without a token is allowed
    loopback: bool

    def __init__(self, address: tuple[str, int], max_connections: int, timeout: float) -> None:
        super().__init__(address, _Handler)
        self.request_timeout = timeout
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # the thread did not start: its slot is not taken
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def _listen(config: Configuration) -> _Server:
    """Bind the endpoint's socket (nothing is served until ``AdminServer.start``).

    The default address taken (a second pool on the host, most often) falls back to a free
    port, with a warning naming it; an address that was set is used as given or start-up fails
    with one line, because a scrape configuration points at it.

    Raises:
        AddressInUseError: the configured address is taken.
        ConfigurationError: it cannot be listened on for another reason (no such address).
    """
    bind = config.metrics_bind
    assert bind is not None
    address = f"{bind[0]}:{bind[1]}"
    try:
        return _Server(bind, MAX_CONNECTIONS, REQUEST_TIMEOUT)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise ConfigurationError(
                "TASKFLEET_METRICS_ADDRESS", f"cannot listen on {address}: {exc.strerror}"
            ) from None
        if not _is_default_address(config):
            raise AddressInUseError(
                "TASKFLEET_METRICS_ADDRESS",
                f"{address} is in use (another pool?): set it (or --metrics-address) to a free"
                " host:port, or to off",
            ) from None
    server = _Server((bind[0], 0), MAX_CONNECTIONS, REQUEST_TIMEOUT)
    log.warning(
        "the default metrics address %s is in use (another pool?): serving on port %d instead;"
        " set TASKFLEET_METRICS_ADDRESS to choose one",
        address,
        server.server_address[1],
    )
    return server


def _is_default_address(config: Configuration) -> bool:
    default = Configuration.__dataclass_fields__["metrics_address"].default
    return config.metrics_address == default and not os.environ.get("TASKFLEET_METRICS_ADDRESS")


class AdminServer:
    """Serves the endpoint on a daemon thread."""

    def __init__(self, pool: TaskHandler, config: Configuration) -> None:
        self._server = _listen(config)
        self._server.pool = pool
        self._server.token = config.metrics_token
        self._server.loopback = is_loopback(str(self._server.server_address[0]))
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="taskfleet-http", daemon=True
        )
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()
        log.info("metrics and health on %s/metrics", self.url)
        host = self._server.server_address[0]
        if not self._server.token and not is_loopback(str(host)):
            log.warning(
                "the HTTP endpoint on %s is reachable from other hosts and has no token:"
                " set TASKFLEET_METRICS_TOKEN (docs/deployment.md, Security)",
                self.url,
            )

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() would wait forever for a loop never started
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()


class Textfile:
    """The pool's metrics rewritten every ``interval`` seconds at ``path``, for node-exporter's
    textfile collector, whether or not the HTTP endpoint is on (docs/deployment.md)."""

    def __init__(self, path: str, interval: float) -> None:
        self.path = path
        self.interval = interval
        self._next = 0.0

    def periodic(self, now: float) -> None:
        if now >= self._next:
            self._next = now + self.interval
            self.write()

    def write(self) -> None:
        """Write the metrics atomically, via rename.

        The temporary file has an unpredictable name and is created exclusively, so a link
        planted beside the textfile cannot redirect the write; the rename replaces a link at the
        textfile's own path instead of following it.
        """
        body, _ = render_metrics()
        directory, name = os.path.split(os.path.abspath(self.path))
        tmp = ""
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
            with open(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o644)  # read by node-exporter, usually another user
                f.write(body)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot write metrics textfile %s: %s", self.path, exc)
            if tmp:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
