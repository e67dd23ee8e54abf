"""One embedded nats-server per machine and state directory, shared by every process using it.

When no ``NATS_URL`` is configured, the ``TaskHandler`` and any ``TaskClient`` on the machine must
talk to the *same* server, or tasks submitted by a script would never reach the workers. The
decision, in files under ``<state_dir>/nats/``:

- ``server.json`` — the discovery file: ``{"url", "pid", "store_dir"}`` of the running server,
  written atomically by the process that started it.
- ``start.lock`` — an exclusive ``flock`` held while a process checks, starts or stops the server,
  so two processes starting at once end up with one server, not two fighting over one store.
- ``users.lock`` — every process using the server holds a *shared* ``flock`` on it for as long as
  it does. The kernel drops the lock when a process dies, even by SIGKILL, so the count is never
  stale.
- ``credentials.json`` — the user and password every client must present, made once per state
  directory (random) and readable by its owner only; the server gets them in its own owner-only
  ``nats-server.conf``. A client without them is refused, so other local users can neither read
  nor inject tasks (``docs/deployment.md``, Security).
- ``jetstream/`` and ``nats-server.log`` — the server's file store and its log (rotated by size).

Lifetime: whoever comes first starts the server (in its own session, so a Ctrl-C meant for the
foreground job does not kill it while workers drain); the *last* user to release it stops it —
"last one out turns the lights off". A server left by a process killed with SIGKILL is found
through the discovery file and reused by the next process, and stopped when that one is done.
Tasks outlive the server either way: the store is on disk, and the next server opens it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import time
import urllib.parse
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

from .._private import private_dir, private_file
from .server import NatsServer, NatsServerError

if TYPE_CHECKING:
    from .._config import Configuration

__all__ = ["EmbeddedNats", "servers_for"]


def servers_for(config: Configuration) -> tuple[list[str], EmbeddedNats | None]:
    """The NATS servers to connect to: ``NATS_URL``, or — when none is configured — the machine's
    shared embedded server, joined or started here: the one place taskfleet acquires it. The
    lease comes back with the URL; release it when done with the server.

    Raises:
        NatsServerError: the embedded server cannot start.
    """
    if config.nats_urls:
        return config.nats_urls, None
    lease = EmbeddedNats(config.state_path)
    return [lease.acquire()], lease


class EmbeddedNats:
    """A lease on the machine's shared embedded server under ``state_path``.

    ``acquire()`` returns the server's URL with the state directory's credentials in it
    (``nats://user:password@127.0.0.1:port``: log it only through ``redact_url``), starting the server when none runs; ``release()``
    gives the lease back and stops the server when no other process holds one. Also a context
    manager (``with EmbeddedNats(path) as url:``).

    Raises (from ``acquire``):
        NatsServerError: the binary is missing or the server did not become ready in time.
    """

    def __init__(self, state_path: str | os.PathLike[str], *, ready_timeout: float = 10.0) -> None:
        self.dir = Path(state_path).expanduser().absolute() / "nats"
        self.ready_timeout = ready_timeout
        self.url: str | None = None
        self._users: IO[bytes] | None = None
        self._server: NatsServer | None = None  # set when this process started it

    @property
    def started(self) -> bool:
        """True when this process started the server (none was running when it acquired)."""
        return self._server is not None

    @property
    def discovery_file(self) -> Path:
        return self.dir / "server.json"

    def acquire(self) -> str:
        """Join (or start) the shared server and return its URL with credentials. Idempotent."""
        if self.url is not None:
            return self.url
        private_dir(self.dir.parent)  # the state directory
        private_dir(self.dir)
        with self._start_lock():
            users = open(private_file(self.dir / "users.lock"), "a+b")  # noqa: SIM115 - held for the lease
            fcntl.flock(users, fcntl.LOCK_SH)
            try:
                user, password = self._credentials()
                url = self._running_url()
                if url is None:
                    self._server = self._start_server(user, password)
                    url = self._server.url
                    self._write_discovery(url, self._server.pid or 0)
            except BaseException:
                users.close()
                raise
            parsed = urllib.parse.urlsplit(url)
            url = urllib.parse.urlunsplit(
                parsed._replace(netloc=f"{user}:{password}@{parsed.netloc}")
            )
            self._users, self.url = users, url
        return url

    def release(self) -> None:
        """Give the lease back; stop the server when this was the last one. Idempotent."""
        if self._users is None:
            return
        with self._start_lock():
            self._users.close()
            self._users, self.url = None, None
            with open(private_file(self.dir / "users.lock"), "a+b") as probe:
                try:
                    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return  # someone else still uses the server
                self._stop_server()

    def __enter__(self) -> str:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    # -- internals --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _start_lock(self) -> Any:
        with open(private_file(self.dir / "start.lock"), "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _credentials(self) -> tuple[str, str]:
        """This state directory's user and password, made on first use (URL-safe characters)."""
        path = self.dir / "credentials.json"
        try:
            data = json.loads(path.read_text())
            return str(data["user"]), str(data["password"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        user, password = "taskfleet", secrets.token_hex(24)
        tmp = private_file(path.with_suffix(".tmp"))
        tmp.write_text(json.dumps({"user": user, "password": password}))
        os.replace(tmp, path)
        return user, password

    def _start_server(self, user: str, password: str) -> NatsServer:
        """Start the server on the port this state directory's server had before, so the URL
        (and with it where spooled results belong) survives a restart; a port some other
        program took meanwhile costs a new one."""
        port_file = self.dir / "port"
        try:
            port = int(port_file.read_text().strip())
        except (OSError, ValueError):
            port = -1

        def start(port: int) -> NatsServer:
            return NatsServer(
                self.dir, port=port, user=user, password=password, ready_timeout=self.ready_timeout
            ).start()

        try:
            server = start(port)
        except NatsServerError:
            if port == -1:
                raise
            server = start(-1)
        if server.port != port:
            private_file(port_file).write_text(f"{server.port}\n")
        return server

    def _read_discovery(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.discovery_file.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _write_discovery(self, url: str, pid: int) -> None:
        tmp = private_file(self.discovery_file.with_suffix(".tmp"))
        tmp.write_text(json.dumps({"url": url, "pid": pid, "store_dir": str(self.dir)}))
        os.replace(tmp, self.discovery_file)  # atomic: readers never see half a file

    def _running_url(self) -> str | None:
        data = self._read_discovery()
        if not data or not _is_our_server(int(data.get("pid", 0)), self.dir):
            return None
        url = str(data.get("url", ""))
        parsed = urllib.parse.urlsplit(url)
        try:
            with socket.create_connection((parsed.hostname, parsed.port or 4222), timeout=1.0):
                return url
        except OSError:
            return None

    def _stop_server(self) -> None:
        data = self._read_discovery() or {}
        listed = int(data.get("pid", 0))
        if self._server is not None:
            stopped = self._server.pid or 0
            self._server.stop()
            self._server = None
            if listed and listed != stopped:
                # The file describes a server another process started after ours died: it is
                # still in use, so its discovery file stays.
                return
        elif _is_our_server(listed, self.dir):
            _terminate(listed)
        with contextlib.suppress(FileNotFoundError):
            self.discovery_file.unlink()


def _is_our_server(pid: int, store_dir: Path) -> bool:
    """Whether ``pid`` is a live nats-server on this store (guards against pid reuse)."""
    if pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    if stat.rpartition(")")[2].split()[:1] == ["Z"]:
        return False
    return any(arg.endswith(b"nats-server") for arg in cmdline[:1]) and (
        str(store_dir).encode() in cmdline
    )


def _terminate(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM a server we did not start, then SIGKILL if it outlives ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _is_alive(pid):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _is_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]
