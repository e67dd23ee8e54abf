"""Keep-alive HTTP/1.1 for the Conductor source: standard-library ``http.client``, one connection
per thread, settings resolved once.

A worker makes two kinds of calls per task (poll, result) to one server, so what matters is the
cost per call, not features: no session layers, no environment read per request, no redirects
followed, no retries (the runner owns those). ``http.client`` writes the requests and parses the
answers; this module only decides where a connection goes and keeps it open.

What is resolved from the environment, once, when the :class:`Endpoint` is built
(``docs/sources.md`` lists the differences from ``requests``):

- **TLS**: certificates are verified against ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` (a file
  or a directory) when set, else the system's trust store, which OpenSSL also takes from
  ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``.
- **Proxies**: ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``ALL_PROXY`` (either case) and ``NO_PROXY``, as
  ``urllib.request`` reads them. A plain ``http://`` proxy is supported (``https`` servers are
  reached through a ``CONNECT`` tunnel); a proxy spoken to over TLS or SOCKS is a configuration
  error at start-up.
- **Credentials** in the server URL (``https://user:pass@host/api``) become a Basic
  ``Authorization`` header; a redirect answer is returned as it is, never followed, so no header
  ever goes to another address.
"""

from __future__ import annotations

import base64
import http.client
import os
import select
import socket
import ssl
import threading
import urllib.parse
import urllib.request

from .._errors import ConfigurationError

__all__ = ["Answer", "Endpoint", "TransportError"]


class TransportError(Exception):
    """No answer: the connection failed, or the answer did not come in time (``timed_out``)."""

    def __init__(self, kind: str, *, timed_out: bool, cause: BaseException | None = None) -> None:
        super().__init__(kind)
        self.kind = kind
        self.timed_out = timed_out
        #: the exception that ended the call, for words an operator can act on
        self.cause = cause


class Answer:
    """An HTTP answer, read whole."""

    __slots__ = ("body", "status")

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body


def _basic(userinfo: str) -> str:
    user, _, password = userinfo.partition(":")
    pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def _ca_locations() -> tuple[str | None, str | None]:
    """(cafile, capath) named by REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE, or (None, None)."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        value = os.environ.get(name)
        if value:
            return (None, value) if os.path.isdir(value) else (value, None)
    return None, None


class Endpoint:
    """One server: where its connections go (directly or through a proxy) and how (TLS,
    timeouts). Connections are made per thread by :meth:`connection`.

    Raises:
        ConfigurationError: for a URL or proxy this module cannot use.
    """

    def __init__(self, base_url: str, *, connect_timeout: float, read_timeout: float) -> None:
        url = urllib.parse.urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigurationError(
                "CONDUCTOR_SERVER_URL", f"must be an http:// or https:// URL, got {url.scheme!r}"
            )
        self.scheme = url.scheme
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        #: the path before every API path (``/api``)
        self.prefix = url.path.rstrip("/")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        #: headers every request carries (credentials of the URL, a plain proxy's credentials)
        self.headers: dict[str, str] = {}
        if "@" in url.netloc:
            self.headers["Authorization"] = _basic(url.netloc.rpartition("@")[0])
        self.tls: ssl.SSLContext | None = None
        if url.scheme == "https":
            cafile, capath = _ca_locations()
            self.tls = ssl.create_default_context(cafile=cafile, capath=capath)
        self.proxy: urllib.parse.SplitResult | None = None
        self._proxy_headers: dict[str, str] = {}
        proxies = urllib.request.getproxies_environment()
        proxy = proxies.get(url.scheme) or proxies.get("all")
        bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
        if proxy and not bypass(self.host, proxies):
            self._use_proxy(proxy)
        #: what precedes an API path in the request line: the path, or through a plain-HTTP
        #: proxy the absolute URL (http.client then takes ``Host`` from it)
        self.target_prefix = self.prefix
        if self.proxy is not None and self.tls is None:
            self.target_prefix = f"http://{url.netloc.rpartition('@')[2]}{self.prefix}"
            self.headers.update(self._proxy_headers)
        self._lock = threading.Lock()
        self._open: set[Connection] = set()
        self._closed = False

    def _use_proxy(self, proxy: str) -> None:
        if "://" not in proxy:
            proxy = "http://" + proxy
        split = urllib.parse.urlsplit(proxy)
        if split.scheme != "http" or not split.hostname:
            shown = f"{split.scheme}://{split.hostname or ''}"
            raise ConfigurationError(
                f"{self.scheme.upper()}_PROXY",
                f"{shown} is not supported for CONDUCTOR_SERVER_URL (only http:// proxies are)",
            )
        self.proxy = split
        if "@" in split.netloc:
            self._proxy_headers["Proxy-Authorization"] = _basic(split.netloc.rpartition("@")[0])

    def _new(self) -> http.client.HTTPConnection:
        if self.proxy is None:
            host, port = self.host, self.port
        else:
            host, port = self.proxy.hostname or "", self.proxy.port or 80
        conn: http.client.HTTPConnection
        if self.tls is not None:
            conn = http.client.HTTPSConnection(
                host, port, timeout=self.connect_timeout, context=self.tls
            )
            if self.proxy is not None:
                conn.set_tunnel(self.host, self.port, headers=self._proxy_headers or None)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.connect_timeout)
        return conn

    def connection(self) -> Connection:
        """A new keep-alive connection (opened on first use) for one thread at a time."""
        with self._lock:
            if self._closed:
                raise TransportError("closed", timed_out=False)
            conn = Connection(self)
            self._open.add(conn)
        return conn

    def _forget(self, conn: Connection) -> None:
        with self._lock:
            self._open.discard(conn)

    def close(self) -> None:
        """Close every connection; later calls on them fail. Safe to call twice."""
        with self._lock:
            self._closed = True
            conns, self._open = self._open, set()
        for conn in conns:
            conn.close()


class Connection:
    """A keep-alive connection of an :class:`Endpoint`; not thread-safe (one per thread)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._conn: http.client.HTTPConnection | None = None
        self.closed = False

    def request(
        self, method: str, target: str, body: bytes | None, headers: dict[str, str], wait: float
    ) -> Answer:
        """Send one request (``target``: path and query after the prefix) and read the whole
        answer. ``wait``: seconds the server may hold the answer (a long poll), added to the
        read timeout.

        Raises:
            TransportError: the request failed or timed out (the connection is closed then).
        """
        if self.closed:
            raise TransportError("closed", timed_out=False)
        endpoint = self._endpoint
        conn = self._conn
        if conn is not None and _dropped(conn.sock):
            conn.close()  # the server closed it while idle: do not send into a dead socket
            conn = None
        try:
            if conn is None:
                conn = self._conn = endpoint._new()
                conn.connect()
            conn.sock.settimeout(endpoint.read_timeout + wait)
            conn.request(method, target, body, headers)
            resp = conn.getresponse()
            data = resp.read()
        except TimeoutError as exc:
            self._reset()
            raise TransportError(type(exc).__name__, timed_out=True, cause=exc) from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self._reset()
            raise TransportError(type(exc).__name__, timed_out=False, cause=exc) from None
        if resp.will_close:
            self._reset()
        return Answer(resp.status, data)

    def _reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        self.closed = True
        self._reset()
        self._endpoint._forget(self)


def _dropped(sock: socket.socket | None) -> bool:
    """True when an idle keep-alive socket is closed or has something to read (it should not)."""
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
