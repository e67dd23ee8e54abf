"""Test kit for users' own worker tests: servers that stand in for real deployments.

Import-light on purpose: each helper is loaded on first access, so importing this package pulls in
neither ``http.server`` nor anything heavier until a helper is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._nats.server import NatsCluster, NatsServer
    from .conductor import ConductorTestServer, Job, Outcome, RequestRecord
    from .nats import embedded_nats, nats_cluster

__all__ = [
    "ConductorTestServer",
    "Job",
    "NatsCluster",
    "NatsServer",
    "Outcome",
    "RequestRecord",
    "embedded_nats",
    "nats_cluster",
]

_LAZY = {
    "ConductorTestServer": ".conductor",
    "Job": ".conductor",
    "Outcome": ".conductor",
    "RequestRecord": ".conductor",
    "NatsServer": ".._nats.server",
    "NatsCluster": ".._nats.server",
    "embedded_nats": ".nats",
    "nats_cluster": ".nats",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
