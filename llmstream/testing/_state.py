"""What the handler threads share: the request log, the script, counters, stop-aware waits.

Strategy: one lock guards the log, the script queue, the stored Responses
streams and the counters; a Condition on that lock wakes
``wait_for_requests``. Stopping is an Event plus a socket pair: ``stop()``
writes one byte that is never read, so every stalled handler blocked in a
selector wakes at once, however many there are.

Must never: be held while writing to a socket (a slow client would block
every other handler), or sleep with ``time.sleep``.
"""

from __future__ import annotations

import math
import selectors
import socket
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional, Tuple

from ._formats import StreamContext
from ._reply import Reply

__all__ = ["RecordedRequest", "ServerState"]

MAX_STORED_RESPONSES = 256  # Responses streams kept for GET resume (oldest dropped first)


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake server received, in arrival order.

    Attributes:
        method: ``"POST"``, ``"GET"``...
        path: the path without the query string (``"/v1/chat/completions"``).
        query: the query parameters (last value wins).
        headers: the request headers as sent (names keep their case; use
            :meth:`header` for a case-insensitive lookup).
        json: the parsed JSON body, or ``None`` (no body, or not JSON).
        received_at: ``time.monotonic()`` when the request was read.
        client_port: the client's TCP port: requests with the same port came
            over one reused connection.
    """

    method: str
    path: str
    query: Dict[str, str] = field(hash=False)
    headers: Dict[str, str] = field(hash=False, repr=False)
    json: Any = field(hash=False)
    received_at: float
    client_port: int = 0

    def header(self, name: str) -> Optional[str]:
        """Return the value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        found = None
        for key, value in self.headers.items():
            if key.lower() == wanted:
                found = value
        return found


class ServerState:
    """Shared, thread-safe state of one fake server."""

    def __init__(self, default_reply: Reply, max_concurrent: Optional[int] = None,
                 limit_retry_after: float = 1.0) -> None:
        self.max_concurrent = max_concurrent
        self.limit_retry_after = limit_retry_after
        self.rejected = 0
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.log: List[RecordedRequest] = []
        self.queue: Deque[Reply] = deque()
        self.default_reply = default_reply
        self.active = 0
        self.max_active = 0
        self.responses: "OrderedDict[str, Tuple[Reply, StreamContext]]" = OrderedDict()
        self.stopping = threading.Event()
        self._wake: Optional[Tuple[socket.socket, socket.socket]] = None

    def open(self) -> None:
        """Create the wake-up socket pair (on start, so an unstarted server holds no socket)."""
        self._wake = socket.socketpair()

    def record(self, request: RecordedRequest) -> int:
        """Log a request; return its 1-based arrival number."""
        with self.changed:
            self.log.append(request)
            self.changed.notify_all()
            return len(self.log)

    def next_reply(self) -> Reply:
        """Pop the next scripted reply, or return the default one."""
        with self.lock:
            return self.queue.popleft() if self.queue else self.default_reply

    def remember(self, response_id: str, reply: Reply, ctx: StreamContext) -> None:
        """Keep a Responses stream so ``GET /v1/responses/{id}`` can replay it."""
        with self.lock:
            self.responses[response_id] = (reply, ctx)
            while len(self.responses) > MAX_STORED_RESPONSES:
                self.responses.popitem(last=False)

    def recall(self, response_id: str) -> Optional[Tuple[Reply, StreamContext]]:
        """Return a remembered Responses stream, or None."""
        with self.lock:
            return self.responses.get(response_id)

    def stream_started(self) -> bool:
        """Count one more request being answered; False (not counted) when over ``max_concurrent``."""
        with self.lock:
            if self.max_concurrent is not None and self.active >= self.max_concurrent:
                self.rejected += 1
                return False
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            return True

    def stream_ended(self) -> None:
        """Count one request being answered fewer."""
        with self.lock:
            self.active -= 1

    def sleep(self, seconds: float) -> bool:
        """Wait precisely (pacing); return False if the server is stopping."""
        return not self.stopping.wait(seconds)

    def pause(self, seconds: float, conn: socket.socket) -> bool:
        """Stall up to ``seconds`` (``inf`` allowed); return False if the server stops or the client leaves."""
        if seconds <= 0:
            return not self.stopping.is_set()
        if self._wake is None:  # not serving: nothing to watch but the stop event
            return not self.stopping.wait(seconds if not math.isinf(seconds) else None)
        deadline = time.monotonic() + seconds
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake[0], selectors.EVENT_READ, None)
            selector.register(conn, selectors.EVENT_READ, conn)
            while not self.stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return True
                for key, _ in selector.select(None if math.isinf(remaining) else remaining):
                    if key.data is None or not _alive(conn):
                        return False
                    # The client sent bytes (a pipelined request): EOF can no
                    # longer be seen without reading them, so stop watching.
                    selector.unregister(conn)
        return False

    def stop(self) -> None:
        """Wake every waiting handler; idempotent."""
        if not self.stopping.is_set():
            self.stopping.set()
            if self._wake is not None:
                try:
                    self._wake[1].send(b"x")
                except OSError:
                    pass

    def close(self) -> None:
        """Release the wake-up sockets (after every handler thread ended)."""
        if self._wake is not None:
            for sock in self._wake:
                sock.close()
            self._wake = None


def _alive(conn: socket.socket) -> bool:
    # Readable with nothing to read means the peer closed its side.
    try:
        return conn.recv(1, socket.MSG_PEEK) != b""
    except OSError:
        return False
