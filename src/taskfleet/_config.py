"""Settings from arguments and environment variables, validated at start-up.

Every setting is one field of :class:`Configuration`, declaring its environment variable, its
default and its meaning, so ``docs/configuration.md`` can be checked against the code. Bad values
raise :class:`~taskfleet._errors.ConfigurationError` naming the variable and the expected form.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _parsers as parsers
from ._errors import ConfigurationError

__all__ = ["SETTINGS", "AuthenticationSettings", "Configuration", "MetricsSettings"]


def _state_home() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "taskfleet")


def _setting(
    env: str,
    default: Any,
    help: str,
    form: parsers.Form | None = None,
    *,
    secret: bool = False,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    metadata = {"env": env, "help": help, "form": form, "secret": secret}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata, repr=not secret)
    return field(default=default, metadata=metadata, repr=not secret)


_POSITIVE_NUMBER = parsers.number(0, inclusive=False)
_NONNEG_NUMBER = parsers.number(0, inclusive=True)
_POSITIVE_INT = parsers.integer(1)


@dataclass(frozen=True)
class AuthenticationSettings:
    """A Conductor key id and secret, as the Conductor Python SDK passes them to its
    ``Configuration(authentication_settings=...)`` (docs/migrating-from-conductor-python.md)."""

    key_id: str
    key_secret: str = field(repr=False)


@dataclass(frozen=True)
class MetricsSettings:
    """The Conductor Python SDK's metrics file settings, for ``TaskHandler(metrics_settings=)``:
    the pool's metrics are rewritten every ``update_interval`` seconds at
    ``directory/file_name`` (``TASKFLEET_METRICS_TEXTFILE`` and
    ``TASKFLEET_METRICS_TEXTFILE_INTERVAL``; docs/migrating-from-conductor-python.md). The
    directory defaults to the state directory. With ``http_port`` the metrics are served on
    ``127.0.0.1:<http_port>`` instead."""

    directory: str | None = None
    file_name: str = "metrics.log"
    update_interval: float = 0.1
    #: as the SDK's: the metrics served over HTTP on this port (of 127.0.0.1), no file
    http_port: int | None = None

    def apply(self, config: Configuration) -> Configuration:
        """``config`` with these settings as its textfile settings."""
        if self.http_port is not None:
            return config.replace(metrics_address=f"127.0.0.1:{self.http_port}")
        directory = self.directory or str(config.state_path)
        os.makedirs(directory, exist_ok=True)
        return config.replace(
            metrics_textfile=os.path.join(directory, self.file_name),
            metrics_textfile_interval=self.update_interval,
        )


#: Arguments of the Conductor Python SDK's ``Configuration`` that taskfleet has no use for:
#: what to do instead.
_SDK_ARGUMENTS = {
    "auth_token_ttl_min": "tokens are renewed when the server reports them expired; remove it",
    "proxy": "use HTTPS_PROXY (or HTTP_PROXY) in the pool's environment",
    "proxy_headers": "not supported; HTTPS_PROXY may carry user:password@ for the proxy",
    "polling_interval": "use poll_interval per worker or CONDUCTOR_WORKER_ALL_POLL_INTERVAL",
    "polling_interval_seconds": (
        "use poll_interval (ms) per worker or CONDUCTOR_WORKER_ALL_POLL_INTERVAL"
    ),
    "domain": "use domain= per worker or CONDUCTOR_WORKER_ALL_DOMAIN",
    "register_schema": "taskfleet registers no schemas; register them with your deployment tooling",
}


@dataclass(frozen=True, init=False)
class Configuration:
    """Everything a pool needs to know that is not about one worker type.

    ``Configuration(**settings)`` reads every setting from the environment, as the Conductor
    Python SDK's does, and the keyword arguments win; :meth:`from_env` reads a given mapping
    instead. Besides the fields below, the SDK's own argument names are accepted:
    ``server_api_url`` (the URL with ``/api``), ``base_url`` (without), ``authentication_settings``
    (an object with ``key_id`` and ``key_secret``) and ``debug``
    (docs/migrating-from-conductor-python.md).

    Raises:
        ConfigurationError: naming the variable or argument when a value is invalid.
    """

    # -- where tasks come from ------------------------------------------------------------
    source: str = _setting(
        "TASKFLEET_SOURCE",
        "auto",
        "Task source: `auto` (Conductor if `CONDUCTOR_SERVER_URL` is set, else NATS at `NATS_URL`,"
        " else an embedded NATS server), `conductor`, `nats` or `memory`.",
        parsers.choice("auto", "conductor", "nats", "memory"),
    )
    conductor_server_url: str = _setting(
        "CONDUCTOR_SERVER_URL",
        "",
        "Conductor API base URL, including `/api` (e.g. `http://localhost:8080/api`).",
    )
    conductor_auth_key: str = _setting(
        "CONDUCTOR_AUTH_KEY", "", "Key id for `POST /token` (Orkes-style auth); empty: no auth."
    )
    conductor_auth_secret: str = _setting(
        "CONDUCTOR_AUTH_SECRET", "", "Key secret for `POST /token`. Never logged.", secret=True
    )
    http_connect_timeout: float = _setting(
        "TASKFLEET_HTTP_CONNECT_TIMEOUT",
        5.0,
        "Seconds to wait for a TCP connection to the Conductor server.",
        _POSITIVE_NUMBER,
    )
    http_read_timeout: float = _setting(
        "TASKFLEET_HTTP_READ_TIMEOUT",
        15.0,
        "Seconds to wait for a Conductor answer beyond the long-poll wait.",
        _POSITIVE_NUMBER,
    )
    nats_url: str = _setting(
        "NATS_URL",
        "",
        "NATS server URL(s), comma-separated (`nats://`, `tls://`); empty: embedded server.",
    )
    nats_user: str = _setting("NATS_USER", "", "NATS user name.")
    nats_password: str = _setting("NATS_PASSWORD", "", "NATS password. Never logged.", secret=True)
    nats_token: str = _setting("NATS_TOKEN", "", "NATS auth token. Never logged.", secret=True)
    nats_creds: str = _setting("NATS_CREDS", "", "Path of a NATS `.creds` file (JWT + NKey).")
    nats_nkey_seed: str = _setting("NATS_NKEY_SEED", "", "Path of an NKey seed file.")
    nats_tls_ca: str = _setting(
        "NATS_TLS_CA", "", "CA bundle to verify the NATS server's certificate."
    )
    nats_tls_cert: str = _setting("NATS_TLS_CERT", "", "Client certificate for NATS mutual TLS.")
    nats_tls_key: str = _setting("NATS_TLS_KEY", "", "Client key for NATS mutual TLS.")
    nats_prefix: str = _setting(
        "TASKFLEET_NATS_PREFIX",
        "taskfleet",
        "Subject and stream prefix: tasks on `<prefix>.tasks.<type>`, stream `<PREFIX>_TASKS`.",
    )
    nats_replicas: int = _setting(
        "TASKFLEET_NATS_REPLICAS", 1, "Stream replicas (3 on a NATS cluster).", _POSITIVE_INT
    )
    nats_max_deliver: int = _setting(
        "TASKFLEET_NATS_MAX_DELIVER",
        5,
        "Deliveries of a failing task before it is dead-lettered (per worker: `max_attempts`).",
        _POSITIVE_INT,
    )
    nats_ack_wait: float = _setting(
        "TASKFLEET_NATS_ACK_WAIT",
        30.0,
        "Seconds JetStream waits for an ack before redelivering (leases are extended meanwhile).",
        _POSITIVE_NUMBER,
    )
    nats_results_max_age: float = _setting(
        "TASKFLEET_NATS_RESULTS_MAX_AGE",
        86400.0,
        "Seconds results are kept in the results stream.",
        _POSITIVE_NUMBER,
    )
    nats_connect_timeout: float = _setting(
        "TASKFLEET_NATS_CONNECT_TIMEOUT",
        5.0,
        "Seconds the first NATS connection may take before start-up fails.",
        _POSITIVE_NUMBER,
    )
    nats_provision_timeout: float = _setting(
        "TASKFLEET_NATS_PROVISION_TIMEOUT",
        60.0,
        "Seconds start-up keeps trying to create streams and consumers while JetStream cannot"
        " answer yet (a cluster electing its leaders) before it fails.",
        _POSITIVE_NUMBER,
    )
    # -- the pool ---------------------------------------------------------------------------
    state_dir: str = _setting(
        "TASKFLEET_STATE_DIR",
        "",
        "Directory for the result spool and the embedded server's store"
        " (default `$XDG_STATE_HOME/taskfleet`, i.e. `~/.local/state/taskfleet`).",
    )
    drain_timeout: float = _setting(
        "TASKFLEET_DRAIN_TIMEOUT",
        30.0,
        "Seconds in-flight tasks may take to finish after SIGTERM before they are handed back.",
        _NONNEG_NUMBER,
    )
    kill_grace: float = _setting(
        "TASKFLEET_KILL_GRACE",
        2.0,
        "Seconds between SIGTERM and SIGKILL when a process is killed (time limit, wedged).",
        _NONNEG_NUMBER,
    )
    heartbeat_timeout: float = _setting(
        "TASKFLEET_HEARTBEAT_TIMEOUT",
        30.0,
        "Seconds without a heartbeat after which a worker process is treated as wedged.",
        _POSITIVE_NUMBER,
    )
    startup_timeout: float = _setting(
        "TASKFLEET_STARTUP_TIMEOUT",
        300.0,
        "Seconds a new worker process may take to send its first heartbeat (importing its module,"
        " loading a model, connecting) before it is killed; the heartbeat timeout applies after.",
        _POSITIVE_NUMBER,
    )
    progress_interval: float = _setting(
        "TASKFLEET_PROGRESS_INTERVAL",
        1.0,
        "Seconds between two progress updates of one running task (`ctx.progress`): the first"
        " goes at once, then at most one per interval, the latest values (docs/workers.md).",
        _POSITIVE_NUMBER,
    )
    restart_backoff_max: float = _setting(
        "TASKFLEET_RESTART_BACKOFF_MAX",
        30.0,
        "Upper bound, seconds, of the delay before restarting a process that keeps crashing.",
        _POSITIVE_NUMBER,
    )
    queue_depth_interval: float = _setting(
        "TASKFLEET_QUEUE_DEPTH_INTERVAL",
        5.0,
        "Seconds between the supervisor's questions to the server about how many tasks wait for"
        " each type (`taskfleet_queue_depth`, autoscaling); 0 turns them off.",
        _NONNEG_NUMBER,
    )
    scale_up_backlog: float = _setting(
        "TASKFLEET_SCALE_UP_BACKLOG",
        1.0,
        "Autoscaling (`processes=(min, max)`): tasks waiting per free execution slot above which"
        " a process is added.",
        _NONNEG_NUMBER,
    )
    scale_up_after: float = _setting(
        "TASKFLEET_SCALE_UP_AFTER",
        10.0,
        "Autoscaling: seconds the backlog must stay above `TASKFLEET_SCALE_UP_BACKLOG` before a"
        " process is added (and between two additions).",
        _NONNEG_NUMBER,
    )
    scale_down_after: float = _setting(
        "TASKFLEET_SCALE_DOWN_AFTER",
        60.0,
        "Autoscaling: seconds a type must stay idle (nothing waiting, one process fewer would do)"
        " before a process is drained and removed (and between two removals).",
        _NONNEG_NUMBER,
    )
    start_method: str = _setting(
        "TASKFLEET_START_METHOD",
        "",
        "`forkserver` (Linux default), `spawn` (default elsewhere) or `fork` (opt-in);"
        " `forkserver` is refused on Python 3.10.0-3.10.8 (CVE-2022-42919).",
        parsers.choice("", "forkserver", "spawn", "fork"),
    )
    # -- observability ----------------------------------------------------------------------
    metrics_address: str = _setting(
        "TASKFLEET_METRICS_ADDRESS",
        "127.0.0.1:9464",
        "host:port of the supervisor's HTTP endpoint (/metrics /healthz /readyz /workers);"
        " port 0 picks a free port; `off` disables it. Taken at start-up: the default falls back"
        " to a free port (a warning names it), an address you set fails start-up (exit 5).",
    )
    metrics_token: str = _setting(
        "TASKFLEET_METRICS_TOKEN",
        "",
        "When set, `/metrics` and `/workers` require `Authorization: Bearer <token>`"
        " (the probes `/healthz` and `/readyz` stay open).",
        secret=True,
    )
    metrics_textfile: str = _setting(
        "TASKFLEET_METRICS_TEXTFILE",
        "",
        "Path of a `.prom` file rewritten periodically for node-exporter's textfile collector,"
        " whether or not the HTTP endpoint is on.",
    )
    metrics_textfile_interval: float = _setting(
        "TASKFLEET_METRICS_TEXTFILE_INTERVAL",
        15.0,
        "Seconds between rewrites of `TASKFLEET_METRICS_TEXTFILE` (and once more at stop).",
        _POSITIVE_NUMBER,
    )
    log_level: str = _setting(
        "TASKFLEET_LOG_LEVEL",
        "info",
        "Log level.",
        parsers.choice("debug", "info", "warning", "error", "critical"),
    )
    log_format: str = _setting(
        "TASKFLEET_LOG_FORMAT",
        "text",
        "`text` or `json` (one JSON object per line).",
        parsers.choice("text", "json"),
    )
    tracing: str = _setting(
        "TASKFLEET_TRACING",
        "auto",
        "OpenTelemetry spans: `auto` (a span per task execution when the application set a"
        " tracer provider), `calls` (as `auto`, plus a client span per poll and per report) or"
        " `off`; docs/tracing.md.",
        parsers.choice("auto", "calls", "off"),
    )

    # ----------------------------------------------------------------------------------------

    def __init__(self, **settings: Any) -> None:
        self._fill(os.environ, settings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Configuration:
        """Read every setting from ``env`` (default ``os.environ``); ``overrides`` win.

        Raises:
            ConfigurationError: naming the variable when a value does not parse.
        """
        config = cls.__new__(cls)
        config._fill(os.environ if env is None else env, overrides)
        return config

    def _fill(self, env: Mapping[str, str], settings: dict[str, Any]) -> None:
        given = _settings_from_sdk_arguments(settings)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            var = f.metadata["env"]
            if f.name in given:
                values[f.name] = given[f.name]
            elif env.get(var, "") != "":
                values[f.name] = _parse(f, var, env[var])
            else:
                values[f.name] = f.default
        if values["source"] == "auto":
            # A URL given in code wins over the other source's URL in the environment.
            conductor, nats = bool(given.get("conductor_server_url")), bool(given.get("nats_url"))
            if conductor and not nats and values["nats_url"]:
                values["source"] = "conductor"
            elif nats and not conductor and values["conductor_server_url"]:
                values["source"] = "nats"
        for name, value in values.items():
            object.__setattr__(self, name, value)
        self.validate()

    def validate(self) -> Configuration:
        """Check relations between settings; return self."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                _parse(f, f.metadata["env"], str(value))
        if self.conductor_server_url:
            _check_url("CONDUCTOR_SERVER_URL", self.conductor_server_url, ("http", "https"))
        for url in self.nats_urls:
            _check_url("NATS_URL", url, ("nats", "tls", "ws", "wss"))
        if self.source == "auto" and self.conductor_server_url and self.nats_url:
            raise ConfigurationError(
                "TASKFLEET_SOURCE",
                "both CONDUCTOR_SERVER_URL and NATS_URL are set; choose one with"
                " TASKFLEET_SOURCE=conductor or TASKFLEET_SOURCE=nats",
            )
        if self.resolved_source == "conductor" and not self.conductor_server_url:
            raise ConfigurationError("CONDUCTOR_SERVER_URL", "is required for the conductor source")
        if bool(self.conductor_auth_key) != bool(self.conductor_auth_secret):
            missing = "CONDUCTOR_AUTH_SECRET" if self.conductor_auth_key else "CONDUCTOR_AUTH_KEY"
            raise ConfigurationError(missing, "is required when the other auth setting is set")
        self.metrics_bind  # noqa: B018 - parses and raises on a bad address
        if self.start_method == "forkserver" and not _forkserver_safe():
            raise ConfigurationError(
                "TASKFLEET_START_METHOD",
                f"forkserver is unsafe on Python {'.'.join(map(str, PYTHON_VERSION))}"
                " (CVE-2022-42919, local privilege escalation): upgrade to 3.10.9 or later,"
                " or use spawn",
            )
        return self

    def replace(self, **changes: Any) -> Configuration:
        return dataclasses.replace(self, **changes).validate()

    # -- derived values ---------------------------------------------------------------------

    @property
    def resolved_source(self) -> str:
        """The source actually used: conductor, nats (maybe embedded) or memory."""
        if self.source != "auto":
            return self.source
        return "conductor" if self.conductor_server_url else "nats"

    @property
    def resolved_start_method(self) -> str:
        """How worker processes start: the setting, else forkserver on Linux where it is safe,
        else spawn."""
        if self.start_method:
            return self.start_method
        linux = sys.platform.startswith("linux")
        return "forkserver" if linux and _forkserver_safe() else "spawn"

    @property
    def embedded_nats(self) -> bool:
        return self.resolved_source == "nats" and not self.nats_url

    @property
    def nats_urls(self) -> list[str]:
        return [u.strip() for u in self.nats_url.split(",") if u.strip()]

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir or _state_home())

    @property
    def metrics_bind(self) -> tuple[str, int] | None:
        """(host, port) of the HTTP endpoint, or None when disabled."""
        text = self.metrics_address.strip()
        if text.lower() in ("off", "none", "false", "0", ""):
            return None
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigurationError(
                "TASKFLEET_METRICS_ADDRESS", f"expected host:port or off, got {text!r}"
            )
        return (host.strip("[]") or "127.0.0.1", int(port))

    def __repr__(self) -> str:
        """Like a dataclass's, with secret settings left out and URL credentials redacted."""
        shown = self.describe()
        values = ", ".join(
            f"{f.name}={shown[f.name]!r}" for f in dataclasses.fields(self) if f.repr
        )
        return f"Configuration({values})"

    def describe(self) -> dict[str, Any]:
        """Settings as a dict with secrets redacted (for logs and `/workers`)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata["secret"] and value:
                value = "***"
            elif f.name in ("nats_url", "conductor_server_url") and value:
                value = redact_url(value)
            out[f.name] = value
        return out


#: The running interpreter's version (a name of its own so tests can pretend another one).
PYTHON_VERSION: tuple[int, int, int] = tuple(sys.version_info[:3])  # type: ignore[assignment]


def _forkserver_safe() -> bool:
    """False on Python 3.10.0-3.10.8, whose forkserver listens on an abstract socket any local
    user can connect to and have code run as the pool's user (CVE-2022-42919, fixed in 3.10.9)."""
    return not (3, 10, 0) <= PYTHON_VERSION < (3, 10, 9)


def _settings_from_sdk_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """Configuration fields from keyword arguments, the Conductor SDK's names translated.

    Raises:
        ConfigurationError: for a name that is neither a setting nor an SDK argument.
    """
    settings = dict(arguments)
    if "server_api_url" in settings or "base_url" in settings:
        api_url, base_url = settings.pop("server_api_url", None), settings.pop("base_url", None)
        if api_url is not None or base_url is not None:
            url = api_url if api_url is not None else str(base_url).rstrip("/") + "/api"
            settings.setdefault("conductor_server_url", url)
    auth = settings.pop("authentication_settings", None)
    if auth is not None:
        try:
            settings.setdefault("conductor_auth_key", auth.key_id)
            settings.setdefault("conductor_auth_secret", auth.key_secret)
        except AttributeError:
            raise ConfigurationError(
                "authentication_settings",
                "expected an object with key_id and key_secret (taskfleet.AuthenticationSettings)",
            ) from None
    if settings.pop("debug", False):
        settings.setdefault("log_level", "debug")
    level = settings.get("log_level")
    if isinstance(level, int) and not isinstance(level, bool):
        settings["log_level"] = logging.getLevelName(level).lower()
    elif isinstance(level, str):
        settings["log_level"] = level.lower()
    known = {f.name for f in dataclasses.fields(Configuration)}
    for name in sorted(settings):
        if name in known:
            continue
        if name in _SDK_ARGUMENTS:
            raise ConfigurationError(name, _SDK_ARGUMENTS[name])
        raise ConfigurationError(name, "is not a setting of Configuration")
    return settings


def _parse(f: dataclasses.Field[Any], var: str, text: str) -> Any:
    form = f.metadata["form"]
    return text if form is None else form.read(var, text)


def _check_url(var: str, url: str, schemes: tuple[str, ...]) -> None:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in schemes or not parsed.hostname:
        raise ConfigurationError(
            var, f"expected a URL like {schemes[0]}://host:port, got {redact_url(url)!r}"
        )
    try:
        parsed.port  # noqa: B018 - raises on a non-numeric port
    except ValueError:
        raise ConfigurationError(var, f"invalid port in {redact_url(url)!r}") from None


def redact_url(url: str) -> str:
    """The URL with any user:password part replaced by ``***``."""
    out = []
    for part in url.split(","):
        parsed = urllib.parse.urlsplit(part.strip())
        if parsed.username or parsed.password:
            netloc = "***@" + (parsed.hostname or "") + (f":{parsed.port}" if _port(parsed) else "")
            out.append(urllib.parse.urlunsplit(parsed._replace(netloc=netloc)))
        else:
            out.append(part.strip())
    return ",".join(out)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) names this machine's loopback."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _port(parsed: urllib.parse.SplitResult) -> int | None:
    try:
        return parsed.port
    except ValueError:
        return None


#: Every setting: (field name, env var, default, help). Used by docs checks and the CLI.
SETTINGS: list[tuple[str, str, Any, str]] = [
    (
        f.name,
        f.metadata["env"],
        f.default if f.default is not dataclasses.MISSING else None,
        f.metadata["help"],
    )
    for f in dataclasses.fields(Configuration)
]
