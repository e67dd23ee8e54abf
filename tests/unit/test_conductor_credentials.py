"""Conductor credentials go to the configured server only: never after a redirect, and a warning
when they would cross the network as plain http."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from taskfleet._config import Configuration
from taskfleet._errors import SourceError
from taskfleet._sources import conductor
from taskfleet._sources.base import PollRequest

SECRET = "pl4nted-key-secret"


@contextlib.contextmanager
def _serving(answer: type[BaseHTTPRequestHandler]) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on loopback; yields its URL and what it received (one text per request)."""
    seen: list[str] = []

    class Handler(answer):  # type: ignore[valid-type, misc]
        def log_message(self, *args: object) -> None:
            pass

        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            seen.append(f"{self.command} {self.path}\n{self.headers}\n{body}")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


class _Elsewhere(BaseHTTPRequestHandler):
    """Where a redirect points: would hand out a token and tasks to anyone."""

    def _answer(self) -> None:
        self._record()  # type: ignore[attr-defined]
        body = json.dumps({"token": "t"} if self.path.endswith("/token") else []).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_credentials_never_follow_a_redirect(status):
    with _serving(_Elsewhere) as (elsewhere, received):

        class Redirect(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                self._record()  # type: ignore[attr-defined]
                self.send_response(status)
                self.send_header("Location", elsewhere + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _answer

        with _serving(Redirect) as (url, asked):
            config = Configuration.from_env(
                {},
                conductor_server_url=url + "/api",
                conductor_auth_key="key",
                conductor_auth_secret=SECRET,
            )

            async def poll() -> None:
                source = conductor.ConductorSource(config)
                await source.start()
                try:
                    await source.poll(PollRequest("resize", 1, 0.1, "w1"))
                finally:
                    await source.close()

            with pytest.raises(SourceError) as caught:
                asyncio.run(poll())
    assert asked, "the configured server was not asked at all"
    assert received == []  # nothing, the key secret least of all, went where Location pointed
    assert "redirect refused" in str(caught.value) and not caught.value.retryable


def test_credentials_over_plain_http_to_another_host_warn_once(caplog, monkeypatch):
    monkeypatch.setattr(conductor, "_warned_plain", set())
    caplog.set_level(logging.WARNING, "taskfleet.conductor")

    def source(url: str, key: str = "key") -> None:
        config = Configuration.from_env(
            {}, conductor_server_url=url, conductor_auth_key=key, conductor_auth_secret=key
        )
        conductor.ConductorSource(config)

    source("http://conductor.example.com/api")
    source("http://conductor.example.com/api")
    warnings = [r for r in caplog.records if "plain http" in r.getMessage()]
    assert len(warnings) == 1
    source("https://conductor.example.com/api")
    source("http://127.0.0.1:8080/api")
    source("http://localhost:8080/api")
    source("http://other.example.com/api", key="")  # no credentials to protect
    assert len([r for r in caplog.records if "plain http" in r.getMessage()]) == 1
