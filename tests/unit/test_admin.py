"""The HTTP endpoint stays answerable: idle clients time out, connections are capped, and an
error while answering is a 500 on that request only."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
from collections.abc import Iterator
from typing import Any

from taskfleet import _admin
from taskfleet import _metrics as metrics
from taskfleet._config import Configuration
from taskfleet._errors import AddressInUseError


class _Pool:
    def alive(self) -> bool:
        return True

    def ready(self) -> tuple[bool, str]:
        return True, "ready"

    def workers_status(self) -> list[dict[str, Any]]:
        return []

    def queues_status(self) -> dict[str, Any]:
        return {}


@contextlib.contextmanager
def _serving(**settings: Any) -> Iterator[_admin.AdminServer]:
    config = Configuration.from_env({}, metrics_address="127.0.0.1:0", **settings)
    server = _admin.AdminServer(_Pool(), config)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _address(server: _admin.AdminServer) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _get(server: _admin.AdminServer, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(*_address(server), timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_a_silent_connection_is_closed_by_the_server(monkeypatch):
    monkeypatch.setattr(_admin, "REQUEST_TIMEOUT", 0.3, raising=False)
    with _serving() as server, socket.create_connection(_address(server), timeout=30) as idle:
        # Sends nothing: the server gives up on it and closes (recv sees the end, b"").
        assert idle.recv(100) == b""


def test_connections_beyond_the_cap_get_503_and_a_freed_slot_serves_again(monkeypatch):
    monkeypatch.setattr(_admin, "MAX_CONNECTIONS", 3, raising=False)
    with _serving() as server:
        idle = [socket.create_connection(_address(server), timeout=30) for _ in range(3)]
        assert _get(server, "/healthz") == (503, b"busy\n")
        idle.pop().close()
        # The freed slot is released once its thread sees the close: bounded retries.
        for _ in range(200):
            status, body = _get(server, "/healthz")
            if status == 200:
                break
        assert (status, body) == (200, b"ok\n")
        for sock in idle:
            sock.close()


def test_an_error_while_rendering_metrics_is_a_500_and_the_endpoint_keeps_serving(
    tmp_path, monkeypatch
):
    (tmp_path / "counter_123.db").write_bytes(b"not a metrics file")
    monkeypatch.setattr(metrics, "multiproc_dir", lambda: str(tmp_path))
    with _serving() as server:
        assert _get(server, "/metrics") == (500, b"internal error\n")
        assert _get(server, "/healthz") == (200, b"ok\n")


def test_with_a_token_metrics_and_workers_need_it_and_the_probes_do_not():
    with _serving(metrics_token="s3cret") as server:
        assert _get(server, "/metrics")[0] == 401
        assert _get(server, "/workers")[0] == 401
        assert _get(server, "/healthz") == (200, b"ok\n")
        assert _get(server, "/readyz") == (200, b"ready\n")


@contextlib.contextmanager
def _taken(port: int = 0) -> Iterator[str]:
    """Hold ``127.0.0.1:port`` (0: any free port); yields the address. A port some other
    program already holds is taken all the same, which is all a test needs."""
    sock = socket.socket()
    try:
        with contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port))
            sock.listen()
        yield f"127.0.0.1:{port or sock.getsockname()[1]}"
    finally:
        sock.close()


def test_an_address_that_was_set_and_is_taken_fails_naming_the_setting():
    with _taken() as address:
        config = Configuration.from_env({}, metrics_address=address)
        try:
            _admin.AdminServer(_Pool(), config)  # type: ignore[arg-type]
        except AddressInUseError as exc:
            assert exc.setting == "TASKFLEET_METRICS_ADDRESS"
            assert f"{address} is in use" in str(exc)
        else:
            raise AssertionError("a taken address was accepted")


def test_the_default_address_taken_falls_back_to_a_free_port_and_says_so(monkeypatch, caplog):
    monkeypatch.delenv("TASKFLEET_METRICS_ADDRESS", raising=False)
    config = Configuration.from_env({})
    assert config.metrics_address == "127.0.0.1:9464"
    with _taken(9464):
        server = _admin.AdminServer(_Pool(), config)  # type: ignore[arg-type]
        server.start()
        try:
            assert not server.url.endswith(":9464")
            assert _get(server, "/healthz")[0] == 200
        finally:
            server.stop()
    assert "the default metrics address 127.0.0.1:9464 is in use" in caplog.text


def test_an_endpoint_bound_but_never_started_stops_at_once():
    # A start-up that fails after the address was bound stops it without serving first.
    config = Configuration.from_env({}, metrics_address="127.0.0.1:0")
    _admin.AdminServer(_Pool(), config).stop()  # type: ignore[arg-type]


def test_the_metrics_textfile_is_written_without_following_a_planted_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    textfile = tmp_path / "pool.prom"
    # Whoever can write the textfile's directory plants links where a temporary file might go.
    for pid in range(os.getpid() - 5, os.getpid() + 5):
        os.symlink(victim, f"{textfile}.{pid}.tmp")
    _admin.Textfile(str(textfile), 15.0).write()
    assert victim.read_text() == "precious\n"
    assert textfile.is_file() and not textfile.is_symlink()
    assert b"# HELP" in textfile.read_bytes()


class _Controlled(_Pool):
    """A pool that records the changes it is asked for."""

    def __init__(self) -> None:
        self.workers = [type("W", (), {"task_type": "resize"})()]
        self.calls: list[tuple[str, str]] = []

    def pause(self, task_type: str) -> dict[str, Any]:
        self.calls.append(("pause", task_type))
        return {"paused": True}


def _post(server: _admin.AdminServer, path: str, body: bytes = b"", **headers: str) -> int:
    conn = http.client.HTTPConnection(*_address(server), timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


@contextlib.contextmanager
def _controlled(**settings: Any) -> Iterator[tuple[_admin.AdminServer, _Controlled]]:
    config = Configuration.from_env({}, metrics_address="127.0.0.1:0", **settings)
    pool = _Controlled()
    server = _admin.AdminServer(pool, config)  # type: ignore[arg-type]
    server.start()
    try:
        yield server, pool
    finally:
        server.stop()


def test_without_a_token_post_is_served_on_loopback_only():
    with _controlled() as (server, pool):
        assert _post(server, "/workers/resize/pause") == 200
        # The same endpoint as if it listened on a routable address: refused, nothing changed.
        server._server.loopback = False
        assert _post(server, "/workers/resize/pause") == 403
        assert _get(server, "/healthz")[0] == 200  # GET answers as before
    assert pool.calls == [("pause", "resize")]


def test_with_a_token_every_post_needs_it_and_oversized_bodies_are_refused():
    with _controlled(metrics_token="s3cret") as (server, pool):
        assert _post(server, "/workers/resize/pause") == 401
        assert _post(server, "/workers/resize/pause", Authorization="Bearer nope") == 401
        assert _post(server, "/workers/nosuch/pause") == 401  # nothing told before the token
        ok = {"Authorization": "Bearer s3cret"}
        assert _post(server, "/workers/resize/pause", b"x" * 5000, **ok) == 413
        assert _post(server, "/workers/resize/pause", **ok) == 200
    assert pool.calls == [("pause", "resize")]
