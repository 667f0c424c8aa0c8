"""A scripted raw-socket HTTP server on 127.0.0.1 for hostile-network tests.

Strategy: each request the server reads is answered by the next script in the
list it was given (the last one repeats). A script is a list of steps:
:class:`Send` bytes, :class:`Wait` (a time, an Event, or until the client
closes), :class:`Signal` an Event, :class:`Close` (FIN), :class:`Reset` (RST),
:class:`ShutdownWrite`. A script that does not close the connection leaves it
open for the next request (keep-alive).

The server records what it received (:class:`Request`: request line, headers
as raw bytes and as a lower-cased dict, body) and, per connection, WHEN the
client closed it (:attr:`Connection.closed` Event + :attr:`Connection.closed_at`
on ``time.monotonic()``), noticed by ``select`` at once, never by polling late.

Every wait is bounded (``MAX_WAIT``); ``stop()`` ends every thread.

The response builders at the bottom make the bytes of each HTTP framing
(chunked with extensions and trailers, Content-Length, close-delimited,
HTTP/1.0) and of OpenAI chat / Anthropic SSE events.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

__all__ = [
    "Send", "Wait", "Signal", "Close", "Reset", "ShutdownWrite", "Step",
    "Request", "Connection", "HostileServer",
    "FRAMINGS", "response", "head", "chunked", "openai_event", "openai_done", "openai_finish",
    "openai_transcript", "anthropic_transcript", "Outcome", "consume", "socket_fds", "leaks",
]

#: No wait in this module lasts longer than this (seconds).
MAX_WAIT = 10.0
_SLICE = 0.02


@dataclass(frozen=True)
class Send:
    """Write these bytes (all of them)."""

    data: bytes


@dataclass(frozen=True)
class Wait:
    """Wait for ``seconds``, or until ``event`` is set, or (always) until the client closes.

    With neither, waits until the client closes (bounded by MAX_WAIT).
    """

    seconds: Optional[float] = None
    event: Optional[threading.Event] = None


@dataclass(frozen=True)
class Signal:
    """Set this Event (tell the test the script reached this point)."""

    event: threading.Event


@dataclass(frozen=True)
class Close:
    """Close the connection (FIN)."""


@dataclass(frozen=True)
class Reset:
    """Close the connection with a TCP RST (SO_LINGER 0)."""


@dataclass(frozen=True)
class ShutdownWrite:
    """Half-close: no more bytes from the server; keep reading."""


Step = Union[Send, Wait, Signal, Close, Reset, ShutdownWrite]


class Connection:
    """One accepted connection, and when the client closed it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closed = threading.Event()
        self.closed_at: Optional[float] = None
        self.done = threading.Event()  # the server's side is closed too
        self._pending = b""

    def mark_closed(self) -> None:
        if not self.closed.is_set():
            self.closed_at = time.monotonic()
            self.closed.set()


@dataclass
class Request:
    """What the server read for one request."""

    request_line: bytes
    raw_headers: List[tuple]
    body: bytes
    connection: Connection
    received_at: float = field(default_factory=time.monotonic)

    @property
    def headers(self) -> Dict[str, bytes]:
        """Header values as raw bytes, by lower-cased name (the last one wins)."""
        return {name.decode("latin-1").lower(): value for name, value in self.raw_headers}

    @property
    def path(self) -> str:
        return self.request_line.split(b" ")[1].decode("latin-1")

    def json(self) -> object:
        return json.loads(self.body)


class HostileServer:
    """The scripted server. Use as a context manager.

    Args:
        scripts: one script per request, in order; the last one repeats.
    """

    def __init__(self, scripts: Sequence[Sequence[Step]]) -> None:
        self.scripts = [list(s) for s in scripts]
        self.requests: List[Request] = []
        self.connections: List[Connection] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(_SLICE)
        self.port: int = self._listener.getsockname()[1]
        self._threads: List[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, name="hostile-accept", daemon=True)

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> "HostileServer":
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop accepting, close every connection, join every thread (bounded)."""
        self._stop.set()
        self._acceptor.join(2)
        for thread in list(self._threads):
            thread.join(2)
        self._listener.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_requests(self, count: int, timeout: float = 2.0) -> bool:
        """Wait (bounded) until ``count`` requests were read."""
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        return len(self.requests) >= count

    def wait_all_closed(self, timeout: float = 2.0) -> bool:
        """Wait (bounded) until the server closed its side of every connection."""
        deadline = time.monotonic() + timeout
        for conn in list(self.connections):
            if not conn.done.wait(max(0.0, deadline - time.monotonic())):
                return False
        return True

    # -- threads -----------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn = Connection(sock)
            with self._lock:
                self.connections.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), name="hostile-conn", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: Connection) -> None:
        try:
            while not self._stop.is_set():
                request = self._read_request(conn)
                if request is None:
                    return
                with self._lock:
                    index = len(self.requests)
                    self.requests.append(request)
                script = self.scripts[min(index, len(self.scripts) - 1)]
                if not self._run(conn, script):
                    return
        finally:
            try:
                conn.sock.close()
            finally:
                conn.done.set()

    def _recv(self, conn: Connection, timeout: float) -> Optional[bytes]:
        """Bytes from the client, b"" when it closed, None when nothing came in time."""
        try:
            ready, _, _ = select.select([conn.sock], [], [], timeout)
            if not ready:
                return None
            data = conn.sock.recv(65536)
        except (ConnectionError, OSError):
            data = b""
        if not data:
            conn.mark_closed()
        return data

    def _read_request(self, conn: Connection) -> Optional[Request]:
        deadline = time.monotonic() + MAX_WAIT
        buf = conn._pending
        while b"\r\n\r\n" not in buf:
            if self._stop.is_set() or time.monotonic() > deadline:
                return None
            data = self._recv(conn, _SLICE)
            if data == b"":
                return None
            buf += data or b""
        head_bytes, rest = buf.split(b"\r\n\r\n", 1)
        lines = head_bytes.split(b"\r\n")
        headers = [tuple(p.strip() for p in line.split(b":", 1)) for line in lines[1:] if b":" in line]
        length = 0
        for name, value in headers:
            if name.lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            if self._stop.is_set() or time.monotonic() > deadline:
                return None
            data = self._recv(conn, _SLICE)
            if data == b"":
                return None
            rest += data or b""
        conn._pending = rest[length:]
        return Request(lines[0], headers, rest[:length], conn)

    def _wait(self, conn: Connection, step: Wait) -> bool:
        """Run a Wait step; False when the client closed (the script ends)."""
        limit = MAX_WAIT if step.seconds is None else step.seconds
        deadline = time.monotonic() + limit
        while not self._stop.is_set():
            if step.event is not None and step.event.is_set():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            data = self._recv(conn, min(_SLICE, left))
            if data == b"":
                return False
            if data:
                conn._pending += data
        return False

    def _run(self, conn: Connection, script: Sequence[Step]) -> bool:
        """Run one script; True when the connection stays open for another request."""
        for step in script:
            if isinstance(step, Send):
                try:
                    conn.sock.sendall(step.data)
                except OSError:
                    conn.mark_closed()
                    return False
            elif isinstance(step, Wait):
                if not self._wait(conn, step):
                    return False
            elif isinstance(step, Signal):
                step.event.set()
            elif isinstance(step, Close):
                return False
            elif isinstance(step, Reset):
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return False
            elif isinstance(step, ShutdownWrite):
                try:
                    conn.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    return False
        return not self._stop.is_set()


# -- response builders ------------------------------------------------------------

#: The HTTP framings of a response body.
FRAMINGS = ("chunked", "length", "close", "http10")

_REASONS = {200: b"OK", 301: b"Moved Permanently", 302: b"Found", 303: b"See Other",
            307: b"Temporary Redirect", 308: b"Permanent Redirect", 401: b"Unauthorized",
            500: b"Internal Server Error"}


def head(status: int = 200, headers: Sequence[tuple] = (), *, framing: str = "chunked",
         length: Optional[int] = None, content_type: Optional[bytes] = b"text/event-stream") -> bytes:
    """The status line and headers (with the blank line) for ``framing``."""
    version = b"HTTP/1.0" if framing == "http10" else b"HTTP/1.1"
    lines = [b"%s %d %s" % (version, status, _REASONS.get(status, b"Status"))]
    if content_type is not None:
        lines.append(b"Content-Type: " + content_type)
    if framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
    elif framing == "length":
        lines.append(b"Content-Length: %d" % (length or 0))
    elif framing == "close":
        lines.append(b"Connection: close")
    lines.extend(name + b": " + value for name, value in headers)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def chunked(pieces: Sequence[bytes], *, ext: bytes = b"", trailers: Sequence[bytes] = (),
            last: bool = True) -> bytes:
    """Chunked body: one chunk per non-empty piece (``ext`` after each size), then the last chunk."""
    out = [b"%x%s\r\n%s\r\n" % (len(p), ext, p) for p in pieces if p]
    if last:
        out.append(b"0\r\n" + b"".join(t + b"\r\n" for t in trailers) + b"\r\n")
    return b"".join(out)


def response(body: bytes, framing: str, *, status: int = 200, headers: Sequence[tuple] = (),
             content_type: Optional[bytes] = b"text/event-stream", pieces: Optional[Sequence[bytes]] = None) -> bytes:
    """A whole response: ``body`` framed as ``framing`` (chunked: one chunk per piece, default one)."""
    if framing == "chunked":
        return head(status, headers, framing=framing, content_type=content_type) + chunked(pieces or [body])
    return head(status, headers, framing=framing, length=len(body), content_type=content_type) + body


def openai_event(text: str, *, event_id: Optional[str] = None) -> bytes:
    """One OpenAI chat SSE event carrying ``text``."""
    data = json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}, separators=(",", ":"))
    prefix = b"" if event_id is None else b"id: " + event_id.encode("utf-8") + b"\n"
    return prefix + b"data: " + data.encode("utf-8") + b"\n\n"


def openai_finish(reason: str = "stop") -> bytes:
    """The chunk with ``finish_reason``."""
    data = json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}, separators=(",", ":"))
    return b"data: " + data.encode() + b"\n\n"


def openai_done() -> bytes:
    """The end marker."""
    return b"data: [DONE]\n\n"


def openai_transcript(texts: Sequence[str], *, done: bool = True) -> List[bytes]:
    """One SSE event per text, then ``[DONE]``."""
    return [openai_event(t) for t in texts] + ([openai_done()] if done else [])


def _anthropic(kind: str, payload: dict) -> bytes:
    payload = {"type": kind, **payload}
    return b"event: " + kind.encode() + b"\ndata: " + json.dumps(payload).encode() + b"\n\n"


def anthropic_transcript(texts: Sequence[str], *, stop: bool = True) -> List[bytes]:
    """An Anthropic Messages stream: message_start, one text block, message_stop."""
    out = [
        _anthropic("message_start", {"message": {"id": "msg_1", "type": "message", "role": "assistant",
                                                 "content": [], "model": "m", "usage": {"input_tokens": 1,
                                                                                        "output_tokens": 0}}}),
        _anthropic("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
    ]
    out += [_anthropic("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": t}}) for t in texts]
    if stop:
        out += [
            _anthropic("content_block_stop", {"index": 0}),
            _anthropic("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}),
            _anthropic("message_stop", {}),
        ]
    return out


# -- client-side helpers (what the tests observe) ----------------------------------


@dataclass
class Outcome:
    """What one stream did, kept as plain values so nothing holds the stream alive."""

    text: Optional[str] = None  # the whole text, on success
    error: Optional[type] = None
    partial: Optional[str] = None
    message: str = ""
    rep: str = ""
    attrs: Dict[str, object] = field(default_factory=dict)
    event_reprs: List[str] = field(default_factory=list)
    pieces: List[str] = field(default_factory=list)
    elapsed: float = 0.0
    #: The printed tracebacks, chained causes included, of the error and of every Retrying cause.
    traces: List[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.error is None:
            return f"success text={self.text!r}"
        return f"{self.error.__name__}(partial={self.partial!r}, attrs={self.attrs}, message={self.message[:200]!r})"


def consume(client: object, *, use_events: bool = False, **kwargs: object) -> "tuple[Outcome, object]":
    """Run one stream to its end; return its :class:`Outcome` and a weakref to the stream.

    Foreign exceptions (a bare RecursionError, UnicodeEncodeError...) are
    recorded too, so a test reports them as the wrong outcome instead of crashing.
    """
    import weakref

    import llmstream

    out = Outcome()
    started = time.monotonic()
    stream = client.stream("hi", model="m", **kwargs)  # type: ignore[attr-defined]
    ref = weakref.ref(stream)
    try:
        if use_events:
            for event in stream.events():
                out.event_reprs.append(repr(event))
                cause = getattr(event, "cause", None)
                if cause is not None:
                    out.event_reprs.append(str(cause))
                    out.event_reprs.append(repr(getattr(cause, "body", "")))
                    out.traces.append("".join(traceback.format_exception(cause)))
        else:
            for piece in stream:
                out.pieces.append(piece)
        out.text = stream.text
    except llmstream.StreamError as exc:
        out.error, out.partial, out.message, out.rep = type(exc), exc.partial_text, str(exc), repr(exc)
        out.traces.append("".join(traceback.format_exception(exc)))
        for name in ("status_code", "body", "kind", "attempts", "type"):
            if hasattr(exc, name):
                out.attrs[name] = getattr(exc, name)
    except Exception as exc:  # a foreign error is a wrong outcome, reported as such
        out.error, out.message, out.rep = type(exc), str(exc), repr(exc)
    out.elapsed = time.monotonic() - started
    del stream
    return out, ref


def socket_fds() -> int:
    """How many of this process's file descriptors are sockets."""
    import os

    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                count += 1
        except OSError:
            continue
    return count


def leaks(ref: object, client: object, servers: Sequence[HostileServer], sockets_before: int) -> List[str]:
    """What outlived a finished stream: worker threads, the stream itself, sockets."""
    import gc

    problems = []
    deadline = time.monotonic() + 1.0
    alive = [t for t in threading.enumerate() if t.name.startswith("llmstream-worker")]
    while alive and time.monotonic() < deadline:
        alive[0].join(max(0.0, deadline - time.monotonic()))
        alive = [t for t in threading.enumerate() if t.name.startswith("llmstream-worker")]
    if alive:
        problems.append(f"worker threads alive: {[t.name for t in alive]}")
    gc.collect()
    if ref() is not None:  # type: ignore[operator]
        problems.append("the TokenStream is still reachable after del + gc.collect()")
    client.close()  # type: ignore[attr-defined]  # pooled keep-alive connections are not leaks
    for server in servers:
        if not server.wait_all_closed(1.0):
            problems.append("a connection was never closed by the client")
    gc.collect()
    after = socket_fds()
    if after > sockets_before:
        problems.append(f"{after - sockets_before} socket fd(s) left open")
    return problems
