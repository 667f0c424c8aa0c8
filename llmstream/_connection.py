"""The sockets of one attempt, reachable from another thread in every phase.

Why this module exists: ``close()`` must end an attempt at any moment —
connecting, waiting for the response headers, reading the body — and the idle
limit must hold whatever the framing. Neither is possible through the objects
requests hands back:

  * while ``session.request()`` connects or waits for the headers there is no
    response object yet, so nothing to shut down from another thread;
  * for ``Connection: close``, HTTP/1.0 and read-to-close bodies http.client
    drops ``connection.sock`` when the headers arrive (the body is read through
    its ``makefile``), so a per-read timeout cannot be set through it.

Strategy: the session's pools make :class:`TrackedHTTPConnection` /
:class:`TrackedHTTPSConnection`, which report every socket they create (before
``connect()``) or reuse (before sending) to the :class:`AttemptSockets` of the
attempt running in the current thread (a thread-local the transport sets around
``session.request``). ``AttemptSockets.shutdown()`` works from any thread:

  * a socket connecting (``SYN_SENT``) is woken by ``shutdown()`` on Linux (the
    kernel disconnects it and wakes the poll in ``connect``);
  * a socket waiting for headers or body bytes is woken by ``shutdown()``;
  * a socket created after ``shutdown()`` was asked for is refused at once
    (:class:`Cancelled` is raised in the worker).

Invariant: a socket is tracked only while its attempt owns the connection.
When urllib3 puts a connection back in its pool, the pool first forgets the
socket (under the same lock ``shutdown`` holds while it shuts the socket), so
closing a finished stream can never shut a socket that another stream is now
using.

Not tracked: connections through a SOCKS proxy (urllib3.contrib.socks has its
own connection classes); for those, ``close()`` ends a read but not a connect
or a wait for headers, and timeouts use urllib3's own socket reference.
TLS inside TLS (HTTPS through an HTTPS proxy) is tracked by its outer socket.

Name resolution (``getaddrinfo``) cannot be interrupted; it is bounded by the
resolver's own timeout. IO shell: only ``_transport.py`` uses this module.
"""

from __future__ import annotations

import http.client
import os
import socket
import sys
import threading
from typing import Any, Dict, Optional, Tuple

import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool, port_by_scheme
from urllib3.exceptions import ConnectTimeoutError, LocationParseError, NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family
from urllib3.util.timeout import _DEFAULT_TIMEOUT

__all__ = ["AttemptSockets", "Cancelled", "TrackingAdapter", "TRACKED_POOLS", "current_attempt", "track_proxy_pools"]


class Cancelled(Exception):
    """Internal: the stream was closed by the caller; not an error to report.

    Raised in the worker when a socket is opened for an attempt already shut
    down, and by the transport when a shut socket ends a read.
    """


# The attempt each thread is opening a request for, by thread id. A dict, not a
# threading.local: an entry lives only while its request is sent (a local's
# per-thread dict, ~270 bytes, would stay with every thread that ever sent one).
_attempts: Dict[int, "AttemptSockets"] = {}
if hasattr(os, "register_at_fork"):
    # A fork copies the dict, not the threads: a sending thread's entry would
    # stay in the child for ever, for a new thread given its id to find (a
    # threading.local's dicts go with their threads at a fork).
    os.register_at_fork(after_in_child=_attempts.clear)


def current_attempt(attempt: Optional["AttemptSockets"]) -> None:
    """Make ``attempt`` receive the sockets this thread opens or reuses (None: stop)."""
    if attempt is None:
        _attempts.pop(threading.get_ident(), None)
    else:
        _attempts[threading.get_ident()] = attempt


def _attempt_of_this_thread() -> Optional["AttemptSockets"]:
    return _attempts.get(threading.get_ident())


class AttemptSockets:
    """The socket one attempt is using; :meth:`shutdown` may come from any thread."""

    __slots__ = ("_lock", "_sock", "_shut")

    def __init__(self, lock: Optional["threading.RLock"] = None) -> None:
        # Reentrant: a finalizer (a dropped stream) may shut it down in the thread holding it.
        # The attempt's own lock may be given (one lock per stream, not two: issue 17):
        # neither holds it while it calls the other.
        self._lock = lock if lock is not None else threading.RLock()
        self._sock: Optional[socket.socket] = None
        self._shut = False

    @property
    def sock(self) -> Optional[socket.socket]:
        """The socket in use now (for its timeout), or None."""
        return self._sock

    def track(self, sock: Any) -> None:
        """Record ``sock`` as this attempt's; refuse it if the attempt was shut down."""
        # TLS inside TLS (HTTPS through an HTTPS proxy) is urllib3's
        # SSLTransport, which cannot be shut down: its socket can.
        inner = getattr(sock, "socket", None)
        if not isinstance(sock, socket.socket) and isinstance(inner, socket.socket):
            sock = inner
        with self._lock:
            if self._shut:
                raise Cancelled()
            self._sock = sock

    def forget(self, sock: Optional[socket.socket]) -> None:
        """Stop tracking ``sock`` (its connection goes back to the pool or is closed)."""
        with self._lock:
            if sock is None or self._sock is sock:
                self._sock = None

    def shutdown(self) -> None:
        """End the attempt: wake whatever blocks on its socket, refuse new ones (idempotent)."""
        # Under the lock: a connection given back to the pool (forget()) in
        # the meantime must not have its socket shut under its next user.
        # shutdown() does not block, and the lock is reentrant.
        with self._lock:
            self._shut = True
            sock, self._sock = self._sock, None
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    # Not connected yet on a platform that does not abort a
                    # connect this way, or already closed: nothing is blocked on it.
                    pass


class _Tracking:
    """Mixin for urllib3 connections: report sockets to the current attempt."""

    sock: Optional[socket.socket]
    _llmstream_attempt: Optional[AttemptSockets] = None

    def _claim(self, sock: Optional[socket.socket]) -> None:
        attempt = _attempt_of_this_thread()
        self._llmstream_attempt = attempt
        if attempt is not None and sock is not None:
            attempt.track(sock)

    def release_from_attempt(self) -> None:
        """Called by the pool before it takes the connection back."""
        attempt, self._llmstream_attempt = self._llmstream_attempt, None
        if attempt is not None:
            attempt.forget(self.sock)


def _create_tracked_connection(conn: Any) -> socket.socket:
    """``urllib3.util.connection.create_connection``, with the socket tracked before it connects."""
    host, port = conn._dns_host, conn.port
    if host.startswith("["):
        host = host.strip("[]")
    try:
        host.encode("idna")  # as urllib3 checks: a label too long is a bad URL, not a codec error
    except UnicodeError:
        raise LocationParseError(f"'{host}', label empty or too long") from None
    err: Optional[OSError] = None
    for family, socktype, proto, _, address in socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM):
        sock = socket.socket(family, socktype, proto)
        try:
            conn._claim(sock)
            for option in conn.socket_options or ():
                sock.setsockopt(*option)
            if conn.timeout is not _DEFAULT_TIMEOUT:
                sock.settimeout(conn.timeout)
            if conn.source_address:
                sock.bind(conn.source_address)
            sock.connect(address)
            return sock
        except OSError as exc:
            err = exc
            sock.close()
        except BaseException:
            sock.close()
            raise
    if err is not None:
        raise err
    raise OSError(f"getaddrinfo returned no address for {host!r}")


class _LastLine:
    """A reader's stand-in that remembers the last line read (only while a response head is parsed)."""

    __slots__ = ("_fp", "last")

    def __init__(self, fp: Any) -> None:
        self._fp = fp
        self.last = b"\n"

    def readline(self, limit: int = -1) -> bytes:
        line: bytes = self._fp.readline(limit)
        self.last = line
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fp, name)


#: The buffer of the reader a response's head is read through (http.client's
#: ``sock.makefile("rb")``: 8 KiB by default). It holds the head and the body
#: bytes that came with it; the body is then read from the socket directly
#: (``_transport.OpenResponse``), and a read larger than the buffer bypasses
#: it. 8 KiB is a glibc malloc of its own per stream, two pages touched by the
#: head and the first bytes: 512 bytes come from pymalloc (issue 17: ~5 KiB
#: RSS less per stream, hundreds at once). A larger head costs a few more
#: ``recv`` calls, once per request.
HEAD_BUFFER = 512


class _SmallBufferSocket:
    """What http.client's response is made with: the socket, whose ``makefile`` gets a small buffer."""

    __slots__ = ("_sock",)

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def makefile(self, mode: str) -> Any:
        return self._sock.makefile(mode, buffering=HEAD_BUFFER)


class _HeadCheckedResponse(http.client.HTTPResponse):
    """http.client's response, refusing a head cut off before its blank line.

    http.client ends the header section at end of input as if it were the
    blank line, so a connection closed inside the head looks like a complete
    response with an empty body. It is a connection that broke before any
    response (design.md: ``APIConnectionError``), not a stream cut short.

    Its reader's buffer is :data:`HEAD_BUFFER` bytes, not 8 KiB.
    """

    def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
        # http.client's __init__ only calls sock.makefile("rb") (it keeps no
        # reference to the socket): the wrapper makes that reader's buffer small.
        super().__init__(_SmallBufferSocket(sock), *args, **kwargs)  # type: ignore[arg-type]

    def begin(self) -> None:
        fp = self.fp
        spy = _LastLine(fp)
        self.fp = spy  # type: ignore[assignment]
        try:
            super().begin()
        finally:
            current: Any = self.fp
            if current is spy:  # http.client sets it to None when it closes the connection
                self.fp = fp
        if spy.last == b"":
            raise http.client.RemoteDisconnected("connection closed inside the response head")


class TrackedHTTPConnection(_Tracking, HTTPConnection):
    """An urllib3 HTTP connection whose socket the current attempt can shut down."""

    response_class = _HeadCheckedResponse

    def _new_conn(self) -> socket.socket:
        # The same errors urllib3's own _new_conn raises, so requests maps them as usual.
        try:
            sock = _create_tracked_connection(self)
        except socket.gaierror as e:
            raise NameResolutionError(self.host, self, e) from e
        except TimeoutError as e:
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})") from e
        except OSError as e:
            raise NewConnectionError(self, f"Failed to establish a new connection: {e}") from e
        sys.audit("http.client.connect", self, self.host, self.port)
        return sock

    def connect(self) -> None:
        super().connect()
        self._claim(self.sock)  # TLS replaces the socket object; track the one in use

    def request(self, *args: Any, **kwargs: Any) -> None:
        if self.sock is not None:
            self._claim(self.sock)  # a pooled connection, reused: no connect() will report it
        super().request(*args, **kwargs)


class TrackedHTTPSConnection(TrackedHTTPConnection, HTTPSConnection):
    """The HTTPS twin of :class:`TrackedHTTPConnection` (``connect`` wraps the tracked socket)."""


class _TrackedPoolMixin:
    def _put_conn(self, conn: Any) -> None:
        if isinstance(conn, _Tracking):
            conn.release_from_attempt()
        super()._put_conn(conn)  # type: ignore[misc]


class _TrackedHTTPPool(_TrackedPoolMixin, HTTPConnectionPool):
    ConnectionCls = TrackedHTTPConnection


class _TrackedHTTPSPool(_TrackedPoolMixin, HTTPSConnectionPool):
    ConnectionCls = TrackedHTTPSConnection


#: The pool classes that make tracked connections, by scheme.
TRACKED_POOLS = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}


def track_proxy_pools(adapter: HTTPAdapter) -> None:
    """Make the proxy managers ``adapter`` creates from now on use tracked pools (a caller's adapter)."""
    original = adapter.proxy_manager_for

    def proxy_manager_for(proxy: str, **proxy_kwargs: Any) -> urllib3.PoolManager:
        manager: urllib3.PoolManager = original(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = TRACKED_POOLS
        return manager

    adapter.proxy_manager_for = proxy_manager_for  # type: ignore[method-assign]
    adapter._llmstream_tracked = True  # type: ignore[attr-defined]


#: URLs whose pool key and request path an adapter keeps (see TrackingAdapter).
_MAX_KEPT = 64


class TrackingAdapter(HTTPAdapter):
    """requests adapter whose pools (direct and through proxies) make tracked connections.

    Mounted on llmstream's own sessions only. Without a proxy, a URL's pool
    key and request path are worked out once, not per request: requests
    parses the URL three times, asks the file system whether a CA bundle is a
    directory and urllib3 builds its 30-field pool key (~20 us of a stream's
    setup, issue 17). The pool itself is still asked of the pool manager by
    that key each time (its LRU order, a pool it dropped made again).
    """

    _keys: Dict[Tuple[Any, ...], Tuple[Any, Dict[str, Any]]]
    _paths: Dict[str, str]

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = TRACKED_POOLS
        # Here, not in __init__: requests calls this again when an adapter is unpickled.
        self._keys = {}
        self._paths = {}

    def get_connection_with_tls_context(self, request: Any, verify: Any, proxies: Any = None,
                                        cert: Any = None) -> Any:
        if proxies:
            return super().get_connection_with_tls_context(request, verify, proxies=proxies, cert=cert)
        kept = self._keys.get((request.url, verify, cert))
        if kept is not None:
            # A copy: urllib3 takes keys out of the context when it makes a pool.
            return self.poolmanager.connection_from_pool_key(kept[0], request_context=dict(kept[1]))
        pool = super().get_connection_with_tls_context(request, verify, proxies=proxies, cert=cert)
        self._keep_key(request, verify, cert, pool)
        return pool

    def _keep_key(self, request: Any, verify: Any, cert: Any, pool: Any) -> None:
        """Keep the pool key urllib3 made ``pool`` under, as ``PoolManager.connection_from_host`` makes it."""
        host_params, pool_kwargs = self.build_connection_pool_key_attributes(request, verify, cert)
        manager = self.poolmanager
        context = {**manager.connection_pool_kw, **pool_kwargs}
        for name in [name for name, value in pool_kwargs.items() if value is None]:
            del context[name]
        scheme = context["scheme"] = host_params["scheme"] or "http"
        context["port"] = host_params["port"] or port_by_scheme.get(scheme.lower(), 80)
        context["host"] = host_params["host"]
        key_fn = manager.key_fn_by_scheme.get(scheme.lower())
        if key_fn is None:
            return
        key = key_fn(dict(context))
        # Kept only if it is the key urllib3 itself used: another urllib3 may make them otherwise.
        if manager.pools.get(key) is pool:
            if len(self._keys) >= _MAX_KEPT:
                self._keys.clear()
            self._keys[(request.url, verify, cert)] = (key, context)

    def request_url(self, request: Any, proxies: Any) -> str:
        if proxies:
            return super().request_url(request, proxies)
        url: str = request.url
        path = self._paths.get(url)
        if path is None:
            path = super().request_url(request, proxies)
            if len(self._paths) >= _MAX_KEPT:
                self._paths.clear()
            self._paths[url] = path
        return path

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> urllib3.PoolManager:
        manager: urllib3.PoolManager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            # SOCKS proxies have connection classes of their own (urllib3.contrib.socks);
            # theirs are not tracked: close() then ends a read, not a connect or header wait.
            manager.pool_classes_by_scheme = TRACKED_POOLS
        return manager
