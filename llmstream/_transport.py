"""HTTP for llmstream: send one streaming request, read its body as it arrives.

Strategy:
  * One ``requests.Session`` per client, so connections are reused. The
    library's own session's requests are prepared here as ``Session.request``
    prepares them and sent with its mounted adapter (``Transport._send``); a
    caller's session (``Client(session=...)``) goes through ``Session.request``.
  * The body is read with ``resp.raw.read1(n, decode_content=True)``: it
    returns as soon as the socket has *any* bytes; ``n`` adapts (2 to 64 KiB,
    :func:`next_read_size`) so a slow stream does not hold 64 KiB per read. A chunked body (the usual
    case) is read one level lower, from http.client's buffered reader with
    ``read1``, and de-chunked by ``_dechunk.Dechunker``: urllib3's ``read1``
    returns one chunk per call, which costs a read and a hand-over per token
    when a server writes one event per chunk. ``iter_content(N)`` waits to
    fill N bytes and ``iter_lines`` mis-splits CR LF across reads, and both
    hold tokens back on unchunked bodies.
  * Before each read the socket timeout is set to the time left before the
    caller's deadline (first token, idle or total), so a stalled server is
    noticed at the socket, not by a watchdog thread.
  * Every socket an attempt opens or reuses is tracked by its
    :class:`~llmstream._connection.AttemptSockets` (see ``_connection.py``):
    ``shutdown()`` from any thread ends the attempt in every phase —
    connecting, waiting for headers, reading — and the read timeout is set on
    that socket whatever the framing (http.client drops its own reference for
    ``Connection: close`` and HTTP/1.0 bodies).
  * Redirects are never followed: a 3xx is an ``APIStatusError`` naming the
    ``Location``. Following one would send the key and the whole conversation
    to another URL (requests strips only ``Authorization``, not ``x-api-key``).
  * Every message built from the server's text passes the stream's
    :class:`~llmstream._redact.Redactor` before it is shortened.

This module is the ONLY place that catches ``requests`` and ``urllib3``
exceptions: :func:`translate` maps them to llmstream's tree, the most
specific class first, and checks the cancelled flag *before* mapping, because a
``shutdown()`` surfaces as ``ProtocolError("Connection broken")``.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import os
import socket
import threading
import time
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3
from requests.cookies import extract_cookies_to_jar
from requests.structures import CaseInsensitiveDict
from requests.utils import check_header_validity, get_auth_from_url

from ._exceptions import (
    APIConnectionError,
    IncompleteStreamError,
    MalformedStreamError,
    ProviderError,
    StreamError,
    StreamTimeoutError,
    status_error_class,
)
from ._connection import TRACKED_POOLS, AttemptSockets, Cancelled, TrackingAdapter, current_attempt, track_proxy_pools
from ._dechunk import Dechunker
from ._redact import Redactor
from ._providers._base import Provider, RequestSpec, encoded_body

__all__ = ["Transport", "TransportOptions", "Session", "OpenResponse", "AttemptSockets", "Cancelled", "parse_retry_after", "redact_url"]

logger = logging.getLogger("llmstream")

#: The most bytes asked of the socket per read: large enough that a fast
#: stream needs few reads, and ``read1`` never waits to fill it.
READ_SIZE = 65536
#: The fewest, and the size a body's first read asks for. ``read1(n)``
#: allocates ``n`` bytes before it waits in ``recv``: with hundreds of slow
#: streams, each waiting for a 100-byte token, asking for 64 KiB held 64 KiB
#: per stream (heap fragmentation: ~30 KiB RSS per stream measured), and
#: 2 KiB still ~4 KiB more per streaming stream than 512 (300 streams,
#: bench/memory_per_stream.py). A token's event (200-400 bytes) fits; a larger
#: one fills the read, and the next asks for four times as much. Under 479: the
#: bytes object (33 bytes of header) then fits pymalloc's 512-byte blocks; at
#: 512 every read was a glibc malloc, and hundreds of threads' reads grew the
#: per-thread malloc arenas by ~8 KiB RSS per streaming stream (issue 17).
MIN_READ_SIZE = 448


def next_read_size(size: int, got: int) -> int:
    """The size of the next read after one of ``size`` bytes brought ``got``.

    Adaptive, as Netty's receive buffer: a read that filled its buffer means
    more is waiting, so the next asks for four times as much (2 KiB to 64 KiB
    in three reads); one that brought under an eighth halves it.
    """
    if got >= size:
        return min(size << 2, READ_SIZE)
    if got < size >> 3 and size > MIN_READ_SIZE:
        return max(size >> 1, MIN_READ_SIZE)
    return size


#: URLs whose prepared form a transport keeps (see ``Transport._target``).
_MAX_TARGETS = 64
#: How much of an error body is kept for the exception (bodies can be HTML pages).
MAX_ERROR_BODY = 65536

#: Media types accepted on a 2xx streaming answer, per framing. An HTML page
#: from a proxy or captive portal with status 200 must not be parsed as a stream.
_ACCEPTED_TYPES = {
    "sse": ("text/event-stream",),
    "sse+json": ("text/event-stream",),
    "jsonl": ("application/x-ndjson", "application/jsonl", "application/json", "text/plain", "application/ndjson"),
}
_ACCEPT_HEADER = {"sse": "text/event-stream", "sse+json": "text/event-stream", "jsonl": "application/x-ndjson"}


def redact_url(url: str) -> str:
    """Drop the query and any userinfo: some servers take keys in either."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def parse_retry_after(headers: Mapping[str, str], now: Optional[float] = None) -> Optional[float]:
    """Seconds the server asked to wait, from ``retry-after-ms`` or ``Retry-After``.

    ``retry-after-ms`` (OpenAI, Anthropic) wins because it is more precise;
    ``Retry-After`` may be seconds or an HTTP date (RFC 9110 section 10.2.3).
    Returns ``None`` when absent or unparseable; negative values become 0.
    """
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    # An HTTP date is wall-clock by definition, so only here is wall time right.
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _root_reason(exc: BaseException) -> str:
    """The innermost cause's message, e.g. '[Errno 111] Connection refused'."""
    seen = exc
    while True:
        nxt = seen.__cause__ or seen.__context__
        if nxt is None or nxt is seen:
            break
        seen = nxt
    reason = getattr(seen, "reason", None)
    text = str(reason if isinstance(reason, BaseException) else seen)
    # urllib3 prefixes reasons with the connection object's repr.
    text = text.split(": ", 1)[1] if text.startswith("<") and ": " in text else text
    return text.strip()  # http.client's BadStatusLine keeps the line's CR LF


#: What :func:`translate` maps: everything requests, urllib3 and the socket raise.
FOREIGN_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)


def translate(exc: BaseException, url: str, *, cancelled: Callable[[], bool], phase: str,
              timeout_kind: str) -> Exception:
    """The llmstream error for a requests/urllib3/socket exception (the one place that maps them).

    The caller raises it ``from exc``. A plain ``try/except FOREIGN_ERRORS``
    around the call, not a context manager: the body read is the hot path.

    Args:
        exc: the foreign exception.
        url: for messages; redacted before use.
        cancelled: the worker's cancelled flag, checked first (a shut socket
            looks like a broken connection).
        phase: ``"connect"`` (no response yet) or ``"body"`` (reading the stream).
        timeout_kind: the ``StreamTimeoutError.kind`` a read timeout means here.
    """
    if cancelled():
        return Cancelled()
    where = redact_url(url)
    if isinstance(exc, (requests.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError)):
        return StreamTimeoutError(f"timed out connecting to {where}", kind="connect")
    if isinstance(exc, (requests.ReadTimeout, urllib3.exceptions.ReadTimeoutError, TimeoutError)):
        return StreamTimeoutError(f"{timeout_kind} timeout waiting for {where}", kind=timeout_kind)
    if isinstance(exc, (requests.exceptions.ContentDecodingError, urllib3.exceptions.DecodeError)):
        return MalformedStreamError(f"could not decode the body from {where}: {_root_reason(exc)}")
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema)):
        return ValueError(f"invalid URL {where!r}: {_root_reason(exc)}")
    if phase == "body":
        return IncompleteStreamError(f"connection to {where} broke mid-stream: {_root_reason(exc)}")
    return APIConnectionError(f"could not connect to {where}: {_root_reason(exc)}")


#: How far a socket timeout may differ from the exact time left (seconds).
TIMEOUT_SLACK = 0.005
#: Taken only to mark a response closed (a flag: nothing allocated under it):
#: one lock for every response, not one each (issue 17).
_CLOSE_LOCK = threading.Lock()


class OpenResponse:
    """A streaming response, read and closed by one thread at a time.

    Another thread ends a blocked read through the attempt's
    :class:`~llmstream._connection.AttemptSockets`, never through this object.
    """

    # Slotted: one per attempt, hundreds at once (issue 17).
    __slots__ = ("_response", "_raw", "_url", "_cancelled", "_sockets", "_closed", "_timeout_set",
                 "_read_size", "_dechunk", "_reader", "_recv", "_direct_recv")

    def __init__(self, response: requests.Response, url: str, cancelled: Callable[[], bool],
                 sockets: AttemptSockets) -> None:
        self._response = response
        self._raw: urllib3.HTTPResponse = response.raw
        self._url = url
        self._cancelled = cancelled
        self._sockets = sockets
        self._closed = False
        self._timeout_set: Optional[float] = -1.0
        self._read_size = MIN_READ_SIZE
        # Chunked and not compressed (we ask for identity): read http.client's
        # buffered reader ourselves, everything received at once (see Dechunker).
        original = getattr(self._raw, "_original_response", None)
        reader = getattr(original, "fp", None)
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        self._dechunk: Optional[Dechunker] = None
        self._reader: Any = None
        # The socket's own recv, once http.client's buffer is known to be empty
        # (see _read_dechunked): a socket.socket under the reader (plain, TLS,
        # or PySocks' for a SOCKS proxy), not urllib3's TLS-in-TLS transport.
        self._recv: Optional[Callable[[int], bytes]] = None
        self._direct_recv: Optional[Callable[[int], bytes]] = None
        if self._raw.chunked and reader is not None and hasattr(reader, "read1") and encoding == "identity":
            self._dechunk, self._reader = Dechunker(), reader
            raw_io = getattr(reader, "raw", None)
            sock = getattr(raw_io, "_sock", None)
            if type(raw_io) is socket.SocketIO and isinstance(sock, socket.socket):
                self._direct_recv = sock.recv

    @property
    def headers(self) -> Mapping[str, str]:
        """The response headers (case-insensitive)."""
        return self._response.headers

    def read(self, timeout: Optional[float], kind: str, now: Optional[float] = None) -> bytes:
        """Return the next bytes (b"" at the end), waiting at most ``timeout`` seconds.

        Everything already received is returned at once, so one hand-over to
        the caller carries it (see :class:`Dechunker` for chunked bodies).
        ``now`` is ``time.monotonic()`` as the caller just read it (saves a clock read).

        Raises ``StreamTimeoutError(kind=kind)`` if nothing arrives in time.
        """
        current = self._timeout_set
        # Setting the timeout is a system call's worth of work per read. In a
        # slow stream the time left is "idle" minus microseconds at every read,
        # so the timeout set at the previous read is kept when it is within
        # TIMEOUT_SLACK of the exact one: it fires at most that much off.
        # A wait shorter than the slack (the last poll once a deadline passed)
        # is always set exactly: a kept longer one let keep-alives arriving
        # every few ms answer poll after poll, stretching the deadline for ever.
        if timeout is None or current is None:
            stale = timeout is not current
        else:
            stale = timeout < TIMEOUT_SLACK or not -TIMEOUT_SLACK <= timeout - current <= TIMEOUT_SLACK
        if stale:
            self._set_timeout(timeout)
        try:
            if self._dechunk is not None:
                data = self._read_dechunked(self._dechunk, timeout, kind, now)
            else:
                size = self._read_size
                data = self._raw.read1(size, decode_content=True)
                self._read_size = next_read_size(size, len(data))
        except FOREIGN_ERRORS as exc:
            raise translate(exc, self._url, cancelled=self._cancelled, phase="body", timeout_kind=kind) from exc
        if not data and self._cancelled():
            raise Cancelled()
        return data

    def _set_timeout(self, timeout: Optional[float]) -> None:
        sock = self._sockets.sock
        if sock is None:
            # A connection llmstream does not track (through a SOCKS proxy):
            # urllib3's own reference, which http.client keeps for a
            # chunked or sized body.
            connection = self._raw.connection
            sock = getattr(connection, "sock", None) if connection is not None else None
        if sock is not None:
            sock.settimeout(timeout)
            self._timeout_set = timeout

    def _read_dechunked(self, dechunk: Dechunker, timeout: Optional[float], kind: str, now: Optional[float]) -> bytes:
        """The payload of everything received so far (at least one byte), b"" after the last chunk.

        Reads that bring only framing (size lines, trailers) share the one
        ``timeout``, counted from ``now``: a server dripping framing bytes
        cannot stretch the wait.
        """
        if dechunk.failed:
            dechunk.feed(b"")  # raises the fault met after the payload last returned
        started = time.monotonic() if now is None else now
        first = True
        while not dechunk.done:
            if not first and timeout is not None:
                left = started + timeout - time.monotonic()
                if left <= 0:
                    raise StreamTimeoutError(f"{kind} timeout waiting for {redact_url(self._url)}", kind=kind)
                self._set_timeout(left)
            first = False
            size = self._read_size
            recv = self._recv
            raw: bytes = recv(size) if recv is not None else self._reader.read1(size)
            got = len(raw)
            if got < size and recv is None:
                # read1 returns less than asked only once http.client's buffer
                # (body bytes read with the headers) is empty, and it never
                # refills it: from now on the socket is read directly, without
                # the buffered reader's and SocketIO's Python layers (issue 17).
                self._recv = self._direct_recv
            if got >= size or got < size >> 3:  # else the size stays (next_read_size's rule)
                self._read_size = next_read_size(size, got)
            if not raw:
                raise IncompleteStreamError(
                    f"connection to {redact_url(self._url)} closed before the chunked body's last chunk"
                )
            data = dechunk.feed(raw)
            if dechunk.done:
                # The body ended exactly at its end: give the connection back to
                # the pool, as urllib3 does when it reads a body to its end.
                self._raw._original_response.close()
                self._raw.release_conn()
            if data:
                return data
        return b""

    def close(self) -> None:
        """Close the response and its connection (idempotent)."""
        with _CLOSE_LOCK:
            if self._closed:
                return
            self._closed = True
        self._response.close()

    def __enter__(self) -> "OpenResponse":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


#: The session type a caller may give (``Client(session=...)``): requests' own.
Session = requests.Session


class TransportOptions:
    """The caller's transport settings (``Client(proxies=, verify=, cert=, session=)``)."""

    __slots__ = ("proxies", "verify", "cert", "session")

    def __init__(self, proxies: Optional[Mapping[str, str]] = None, verify: Union[bool, str, None] = None,
                 cert: Union[str, Tuple[str, str], None] = None, session: Optional[requests.Session] = None) -> None:
        self.proxies = proxies
        self.verify = verify
        self.cert = cert
        self.session = session

    @classmethod
    def coerce(cls, *, proxies: Union[Mapping[str, str], str, None], verify: Union[bool, str, None],
               cert: Union[str, Tuple[str, str], None], session: Optional[requests.Session]) -> "TransportOptions":
        """Validate the options; a proxy given as one URL serves both schemes."""
        if isinstance(proxies, str):
            proxies = {"http": proxies, "https": proxies}
        elif proxies is not None and not isinstance(proxies, Mapping):
            raise TypeError(f"proxies must be a dict like {{'https': 'http://proxy:3128'}} or a URL, "
                            f"not {type(proxies).__name__}")
        if verify is not None and not isinstance(verify, (bool, str, os.PathLike)):
            raise TypeError(f"verify must be True, False or a CA bundle's path, not {type(verify).__name__}")
        if cert is not None and not isinstance(cert, (str, tuple, os.PathLike)):
            raise TypeError(f"cert must be a path or a (cert, key) tuple of paths, not {type(cert).__name__}")
        if session is not None and not isinstance(session, requests.Session):
            raise TypeError(f"session must be a requests.Session, not {type(session).__name__}")
        return cls(dict(proxies) if proxies is not None else None,
                   os.fspath(verify) if isinstance(verify, os.PathLike) else verify,
                   os.fspath(cert) if isinstance(cert, os.PathLike) else cert, session)


def _track_sockets(session: requests.Session) -> None:
    """Make a caller's session's adapters make tracked connections (``close()`` ends any phase).

    Its adapters are kept (their pool settings, SSL context, retries...): only
    the connection classes of their pools change, which behave as urllib3's
    outside an llmstream attempt. Pools made before are dropped (their idle
    connections closed), so every later connection is tracked.
    """
    for adapter in set(session.adapters.values()):
        if isinstance(adapter, TrackingAdapter) or not isinstance(adapter, requests.adapters.HTTPAdapter):
            continue
        manager = adapter.poolmanager
        if manager.pool_classes_by_scheme is not TRACKED_POOLS:
            manager.clear()
            manager.pool_classes_by_scheme = TRACKED_POOLS
        for proxy, proxy_manager in adapter.proxy_manager.items():
            if not proxy.lower().startswith("socks") and proxy_manager.pool_classes_by_scheme is not TRACKED_POOLS:
                proxy_manager.clear()
                proxy_manager.pool_classes_by_scheme = TRACKED_POOLS
        if not getattr(adapter, "_llmstream_tracked", False):
            track_proxy_pools(adapter)


class Transport:
    """Sends requests on one ``requests.Session`` (connection reuse)."""

    def __init__(self, pool_size: int, options: Optional[TransportOptions] = None) -> None:
        self.options = options or TransportOptions()
        self._own_session = self.options.session is None
        if self.options.session is not None:
            # The caller's: its settings apply as requests applies them (trust_env
            # included); llmstream only adds its socket tracking.
            self.session = self.options.session
            _track_sockets(self.session)
        else:
            self.session = requests.Session()
            # Many streams of one client run at once; a pool smaller than that makes
            # urllib3 discard connections instead of reusing them.
            adapter = TrackingAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
            self.session.mount("http://", adapter)
            self.session.mount("https://", adapter)
            # requests re-reads the proxy variables (scanning the whole environment)
            # and ~/.netrc on every request when trust_env is on: a third of the cost
            # of starting a short stream. The environment's proxies and CA bundle are
            # looked up here instead, once per origin (_environment); ~/.netrc is not
            # read at all: llmstream sends the provider's own credentials, which a
            # netrc entry would silently replace.
            self.session.trust_env = False
        self._environments: Dict[str, Tuple[Dict[str, str], Union[bool, str, None]]] = {}
        #: The headers this client's streams keep, one dict per distinct set (see ``PackedSpec.pack``).
        self.shared_headers: Dict[Any, Any] = {}
        # Each URL as requests prepares it (own session only; see _send).
        self._targets: Dict[str, str] = {}

    def _environment(self, url: str) -> Tuple[Dict[str, str], Union[bool, str, None]]:
        """The proxies and the CA bundle for ``url``: the caller's options over the environment's, as requests does.

        Looked up once per origin: a change to ``HTTPS_PROXY``, ``NO_PROXY`` or
        ``REQUESTS_CA_BUNDLE`` after a client's first request there is not seen.
        With the caller's session, requests itself reads the environment and the
        session's settings: only explicit options are passed.
        """
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        found = self._environments.get(origin)
        if found is None:
            options = self.options
            proxies: Dict[str, str] = {}
            verify: Union[bool, str, None] = options.verify
            if self._own_session:
                proxies = requests.utils.get_environ_proxies(url, no_proxy=None)
                if verify is None or verify is True:
                    # As requests: an explicit CA bundle or False wins over the environment's.
                    verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
            if options.proxies is not None:
                proxies = {**proxies, **options.proxies}  # explicit proxies win, scheme by scheme
            found = self._environments[origin] = (proxies, verify)
        return found

    def open(
        self,
        spec: RequestSpec,
        provider: Provider,
        *,
        connect_timeout: Optional[float],
        response_timeout: Optional[float],
        response_timeout_kind: str = "first_token",
        cancelled: Callable[[], bool],
        sockets: AttemptSockets,
        redact: Redactor,
    ) -> OpenResponse:
        """Send ``spec`` and return the open streaming response, checked.

        ``sockets`` receives every socket the request opens or reuses, as soon
        as it exists, so ``sockets.shutdown()`` from another thread ends the
        attempt in any phase (:class:`Cancelled` is then raised here).

        Raises:
            APIStatusError: a non-2xx status (the subclass for the status).
            MalformedStreamError: a 2xx answer that is not a stream (wrong content type).
            APIConnectionError / StreamTimeoutError: as mapped by :func:`translate`.
        """
        headers = dict(spec.headers)
        if not any(name.lower() == "accept" for name in headers):  # a caller's extra_headers may set it
            headers["Accept"] = _ACCEPT_HEADER[provider.framing]
        # Compression would make the decoder wait for whole compressed blocks.
        headers["Accept-Encoding"] = "identity"
        body = encoded_body(spec)  # a PackedSpec's own bytes: one copy, shared with the request sent
        if body is not None:
            headers.setdefault("Content-Type", "application/json")
        current_attempt(sockets)
        try:
            proxies, verify = self._environment(spec.url)
            try:
                response = self._send(spec.method, spec.url, body, headers, (connect_timeout, response_timeout),
                                      proxies, verify)
            except FOREIGN_ERRORS as exc:
                raise translate(exc, spec.url, cancelled=cancelled, phase="connect",
                                timeout_kind=response_timeout_kind) from exc
        finally:
            current_attempt(None)
        opened = OpenResponse(response, spec.url, cancelled, sockets)
        try:
            if not 200 <= response.status_code < 300:
                raise self._status_error(opened, response, provider, response_timeout, response_timeout_kind, redact)
            _check_content_type(response, provider.framing, spec.url)
        except BaseException:
            opened.close()
            raise
        return opened

    def _send(self, method: str, url: str, body: Optional[bytes], headers: Dict[str, Union[str, bytes]],
              timeout: Tuple[Optional[float], Optional[float]], proxies: Dict[str, str],
              verify: Union[bool, str, None]) -> requests.Response:
        """Send one request, redirects never followed; return the response, its body unread.

        A caller's session goes through ``Session.request`` (its auth, hooks,
        mounts, cookies and environment apply as requests applies them). The
        library's own session has none of those, so its request is prepared
        here as ``Session.request`` would prepare it and handed to the mounted
        adapter: the same headers (the session's defaults under the request's,
        each checked as requests checks them), ``Content-Length``, the
        session's cookies sent and stored; the URL parsed, IDNA-encoded and
        requoted once per URL, not per request. ``Session.request`` also
        built a Request, merged seven settings, made a cookie jar per request
        and prepared the next request of a redirect it would not follow:
        ~170 us of a short stream's ~1 ms (issue 17, stream setup).
        """
        session = self.session
        prepared_url = ""
        if self._own_session and _untouched(session):
            found = self._targets.get(url)
            prepared_url = self._target(url) if found is None else found
        if not prepared_url:
            return session.request(method, url, data=body, headers=headers, stream=True, timeout=timeout,
                                   allow_redirects=False, proxies=proxies, verify=verify, cert=self.options.cert)
        adapter: Any = session.get_adapter(prepared_url)  # each time: a mount made since is seen, as in requests
        request = requests.PreparedRequest()
        request.method = method.upper()
        request.url = prepared_url
        merged: Any = CaseInsensitiveDict(session.headers)
        request.headers = merged
        header: Any
        for header in headers.items():
            check_header_validity(header)
            merged[header[0]] = header[1]
        jar = session.cookies
        if len(jar):
            request.prepare_cookies(jar)  # a Cookie header the caller set wins, as in requests
        if body is not None:
            merged["Content-Length"] = str(len(body))
        elif request.method not in ("GET", "HEAD") and merged.get("Content-Length") is None:
            merged["Content-Length"] = "0"
        request.body = body
        response: requests.Response = adapter.send(request, stream=True, timeout=timeout, verify=verify,
                                                   cert=self.options.cert, proxies=proxies)
        if "set-cookie" in response.headers or "set-cookie2" in response.headers:
            keep_cookies: Any = extract_cookies_to_jar  # untyped in requests' stubs
            keep_cookies(jar, request, response.raw)
        return response

    def _target(self, url: str) -> str:
        """``url`` as requests prepares it ("": a URL with credentials, which requests turns into Basic auth).

        Raises what requests raises for a URL it cannot send (translated by
        the caller); a URL no adapter is mounted for is refused here too.
        """
        probe = requests.PreparedRequest()
        probe.prepare_url(url, None)
        prepared = str(probe.url)
        self.session.get_adapter(prepared)
        if any(get_auth_from_url(prepared)):
            prepared = ""  # left to requests: its auth rule, as for a caller's session
        if len(self._targets) >= _MAX_TARGETS:
            self._targets.clear()  # a query per request (extra_query ids, resume cursors) must not grow it for ever
        self._targets[url] = prepared
        return prepared

    @staticmethod
    def _status_error(
        opened: OpenResponse, response: requests.Response, provider: Provider, timeout: Optional[float],
        timeout_kind: str, redact: Redactor,
    ) -> Exception:
        chunks = []
        size = 0
        # The status is the error; a body that cannot be read in full only
        # makes the message shorter, so read failures here are not reported.
        with contextlib.suppress(StreamError, Cancelled):
            while size < MAX_ERROR_BODY:
                data = opened.read(timeout, timeout_kind)
                if not data:
                    break
                chunks.append(data)
                size += len(data)
        # Redacted first, before anything below shortens it (design: one redaction step).
        body = redact(b"".join(chunks)[:MAX_ERROR_BODY].decode("utf-8", "replace"))
        detail: Optional[ProviderError] = provider.error_from_body(body)
        status = response.status_code
        reason = redact(response.reason or "")
        message = f"HTTP {status} {reason}".rstrip()
        if 300 <= status < 400:
            location = redact(redact_url(response.headers.get("location", "")))
            message = (f"{message}: redirect to {location or '(no Location)'} not followed "
                       "(llmstream never sends a key or a prompt to another URL; fix the base URL)")
        elif detail is not None:
            message = f"{message}: {detail.message}"
        elif body.strip() and not body.lstrip().startswith("<"):
            message = f"{message}: {body.strip()[:200]}"
        cls = status_error_class(status)
        return cls(
            message,
            status_code=status,
            body=body,
            retry_after=parse_retry_after(response.headers),
            should_retry=_should_retry_header(response.headers),
        )

    def close(self) -> None:
        """Close the session and its pooled connections (a caller's session is left open: it is theirs)."""
        if self._own_session:
            self.session.close()


def _untouched(session: requests.Session) -> bool:
    """True while the library's own session has none of the settings only ``Session.request`` applies.

    Nothing outside llmstream holds that session, but llmstream's own tools
    may reach it (``llmstream debug`` records the requests with a response hook).
    """
    return (not any(session.hooks.values()) and session.auth is None and not session.params
            and not session.proxies and session.cert is None and not session.trust_env)


def _should_retry_header(headers: Mapping[str, str]) -> Optional[bool]:
    """``x-should-retry: true|false`` (OpenAI, Anthropic) overrides the status rule."""
    value = headers.get("x-should-retry")
    if value == "true":
        return True
    if value == "false":
        return False
    return None


def _check_content_type(response: requests.Response, framing: str, url: str) -> None:
    raw = response.headers.get("content-type")
    if raw is None:
        return  # Some minimal servers send none; the decoder judges the bytes.
    media_type = raw.split(";", 1)[0].strip().lower()
    if media_type not in _ACCEPTED_TYPES[framing]:
        raise MalformedStreamError(
            f"expected a {_ACCEPTED_TYPES[framing][0]} stream from {redact_url(url)}, got content type {raw!r}"
        )
