"""Integration fixtures: one real nats-server for the session, a fresh subject prefix per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, TypeVar

import pytest

from taskfleet._config import Configuration
from taskfleet._nats.server import NatsServer
from taskfleet.testing.nats import embedded_nats

T = TypeVar("T")
_prefixes = itertools.count(1)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with embedded_nats(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture
def nats_config(nats_server: NatsServer, tmp_path: Any) -> Configuration:
    """Settings pointing at the session's server, under a prefix no other test uses."""
    return Configuration.from_env(
        {},
        nats_url=nats_server.url,
        nats_prefix=f"t{next(_prefixes)}",
        nats_ack_wait=30.0,
        nats_connect_timeout=5.0,
        state_dir=str(tmp_path / "state"),
    )
