"""Connecting to NATS and provisioning the streams: shared by the source and the TaskClient.

nats-py's first ``connect()`` to a dead server retries for minutes whatever the options say, so
the first connection is bounded here with ``asyncio.wait_for``; once connected the client
reconnects forever (a worker outlives server restarts). Pings are frequent so a dead peer is
noticed in tens of seconds rather than nats-py's default four minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .._backoff import Backoff
from .._config import Configuration, redact_url
from .._errors import SourceError, describe_connection_error
from .wire import Subjects

__all__ = ["connect", "ensure_streams", "error_code", "not_ready_yet", "provisioning"]

T = TypeVar("T")

log = logging.getLogger("taskfleet.nats")

#: Seconds between pings; two missed pings mark the connection dead.
PING_INTERVAL = 10
#: Seconds between reconnect attempts once connected.
RECONNECT_WAIT = 1.0
#: JetStream's err_code for "no suitable peers for placement": a cluster whose nodes have not
#: all joined yet cannot place a replicated stream.
_NO_PEERS_YET = frozenset({10005})


def _tls_context(config: Configuration, servers: list[str]) -> ssl.SSLContext | None:
    wants_tls = any(url.startswith(("tls://", "wss://")) for url in servers)
    if not (wants_tls or config.nats_tls_ca or config.nats_tls_cert):
        return None
    context = ssl.create_default_context(cafile=config.nats_tls_ca or None)
    if config.nats_tls_cert:
        context.load_cert_chain(config.nats_tls_cert, config.nats_tls_key or None)
    return context


def connection_options(config: Configuration, servers: list[str], name: str) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect`` from the configuration (secrets included)."""
    options: dict[str, Any] = {
        "servers": servers,
        "name": name,
        "connect_timeout": max(1, int(config.nats_connect_timeout)),
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,  # forever, once the first connection succeeded
        "reconnect_time_wait": RECONNECT_WAIT,
        "ping_interval": PING_INTERVAL,
        "max_outstanding_pings": 2,
        "error_cb": _on_error,
        "reconnected_cb": _on_reconnected,
    }
    if config.nats_user:
        options["user"] = config.nats_user
        options["password"] = config.nats_password
    if config.nats_token:
        options["token"] = config.nats_token
    if config.nats_creds:
        options["user_credentials"] = config.nats_creds
    if config.nats_nkey_seed:
        options["nkeys_seed"] = config.nats_nkey_seed
    tls = _tls_context(config, servers)
    if tls is not None:
        options["tls"] = tls
    return options


async def connect(config: Configuration, servers: list[str], *, name: str = "taskfleet") -> Any:
    """Connect within ``config.nats_connect_timeout`` seconds; the client reconnects forever after.

    Returns:
        A connected ``nats.aio.client.Client``.

    Raises:
        SourceError: the first connection did not succeed in time; the message names the
            (redacted) URLs and the timeout.
    """
    import nats

    where = redact_url(",".join(servers))
    client = nats.NATS()

    async def on_disconnected() -> None:
        # Also called by close(); only an unexpected loss deserves a warning.
        if not (client.is_closed or client.is_draining):
            log.warning("disconnected from NATS at %s; reconnecting", where)

    errors: list[BaseException] = []

    async def on_error(exc: Exception) -> None:
        # While the first connection is tried, the attempts' errors say why it does not
        # come (refused, unknown host, TLS, authorization): the last one goes into the one
        # error raised below instead of a warning per attempt.
        if not connected:
            errors[:] = [exc]
            log.debug("NATS connection attempt failed: %s", describe_connection_error(exc))
            return
        await _on_error(exc)

    options = connection_options(config, servers, name)
    options["disconnected_cb"] = on_disconnected
    options["error_cb"] = on_error
    connected = False
    try:
        await asyncio.wait_for(
            client.connect(**options),
            config.nats_connect_timeout,
        )
        connected = True
    except Exception as exc:  # asyncio.TimeoutError included
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 1.0)
        if not isinstance(exc, asyncio.TimeoutError):
            detail = describe_connection_error(exc)
        else:  # the client retried until the time was up: say why its attempts failed
            detail = describe_connection_error(errors[-1]) if errors else "timed out"
        raise SourceError(
            f"cannot connect to NATS at {where} within {config.nats_connect_timeout:g} s:"
            f" {detail}; check NATS_URL and that the server is running"
        ) from None
    return client


async def ensure_streams(js: Any, config: Configuration) -> None:
    """Create or update the tasks and results streams (idempotent), trying again while
    JetStream cannot answer yet, up to ``nats_provision_timeout`` (see :func:`provisioning`).

    Raises:
        SourceError: JetStream refused (e.g. a stream of that name exists with another
            retention policy, which cannot be changed in place) or did not answer in time.
    """
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig

    subjects = Subjects(config.nats_prefix)
    wanted = [
        StreamConfig(
            name=subjects.tasks_stream,
            subjects=[f"{config.nats_prefix}.tasks.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=config.nats_replicas,
        ),
        StreamConfig(
            name=subjects.results_stream,
            subjects=[f"{config.nats_prefix}.results.>", f"{config.nats_prefix}.dead.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=config.nats_results_max_age,
            num_replicas=config.nats_replicas,
        ),
    ]
    deadline = time.monotonic() + config.nats_provision_timeout
    for stream in wanted:

        async def create(stream: StreamConfig = stream) -> None:
            try:
                await js.add_stream(stream)
            except Exception as exc:
                # 10058: exists with another configuration (e.g. a new max age): update it.
                if error_code(exc) != 10058:
                    raise
                await js.update_stream(stream)

        try:
            await provisioning(f"stream {stream.name}", create, deadline)
        except Exception as exc:
            raise SourceError(
                f"cannot provision stream {stream.name}: {describe_connection_error(exc)}"
                + _gave_up(exc, config),
                retryable=error_code(exc) is None,
            ) from None


def not_ready_yet(exc: BaseException) -> bool:
    """Whether a JetStream API failure can pass by itself: no answer in time, no responders,
    a 5xx (JetStream temporarily unavailable, no leader yet), or no peers to place a replica on
    (a cluster still forming). A refusal (a 4xx such as a stream of that name with another
    retention) is final."""
    if error_code(exc) is None:
        return True
    code = getattr(exc, "code", None)
    return (isinstance(code, int) and code >= 500) or error_code(exc) in _NO_PEERS_YET


async def provisioning(what: str, call: Callable[[], Awaitable[T]], deadline: float) -> T:
    """``call()``, tried again with backoff while JetStream is :func:`not_ready_yet`, until the
    monotonic ``deadline``; the last failure is raised."""
    backoff = Backoff(0.25, 2.0, jitter=0.5)
    while True:
        try:
            return await call()
        except Exception as exc:
            delay = backoff.next()
            if not not_ready_yet(exc) or time.monotonic() + delay > deadline:
                raise
            log.info(
                "provisioning %s: %s; trying again in %.1fs (JetStream not ready: a cluster may"
                " still be electing its leaders)",
                what,
                describe_connection_error(exc),
                delay,
            )
            await asyncio.sleep(delay)


def _gave_up(exc: BaseException, config: Configuration) -> str:
    if not not_ready_yet(exc):
        return ""
    return (
        f" (JetStream did not answer within TASKFLEET_NATS_PROVISION_TIMEOUT ="
        f" {config.nats_provision_timeout:g} s)"
    )


def error_code(exc: BaseException) -> int | None:
    """JetStream's ``err_code`` of an API error, None for transport errors."""
    code = getattr(exc, "err_code", None)
    return int(code) if isinstance(code, int) else None


async def _on_error(exc: Exception) -> None:
    log.warning("NATS connection error: %s", describe_connection_error(exc))


async def _on_reconnected() -> None:
    log.info("reconnected to NATS")
