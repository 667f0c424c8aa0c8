"""FakeLLMServer: a real HTTP/1.1 server on 127.0.0.1 that streams scripted LLM answers.

Strategy: ``socketserver.TCPServer`` accepts on an ephemeral port in one
thread; each connection gets its own named daemon thread running
:class:`~._handler.Handler`. The server tracks those threads and their
sockets, so ``stop()`` can end everything promptly: it sets the stop event
(waking stalled handlers), stops accepting, shuts down every open connection
(unblocking handlers stuck reading an idle keep-alive connection or writing to
a client that stopped reading), joins the threads, and closes the listening
socket.

Must never: import ``llmstream`` (this package is standalone), print
tracebacks for clients that went away, or leave a thread behind after
``stop()``.
"""

from __future__ import annotations

import itertools
import logging
import socket
import socketserver
import sys
import threading
import time
from typing import Any, List, Optional, Set, Tuple

from ._formats import PROVIDERS
from ._handler import Handler
from ._reply import Reply
from ._state import RecordedRequest, ServerState

__all__ = ["FakeHTTPServer", "FakeLLMServer"]

logger = logging.getLogger("llmstream.testing")

THREAD_PREFIX = "llmstream-fake-server"
STOP_TIMEOUT = 1.0  # seconds stop() waits for handler threads in total
POLL_INTERVAL = 0.05  # serve_forever's shutdown check; bounds how long stop() waits for the acceptor


class FakeHTTPServer(socketserver.TCPServer):
    """The listening socket plus bookkeeping of connection threads (one thread per connection)."""

    # A fixed --port must be reusable right after a restart; on Windows the
    # option means something else (port stealing), so keep it off there.
    allow_reuse_address = sys.platform != "win32"
    daemon_threads = True
    # socketserver's default listen backlog is 5: a burst of clients (50 streams started
    # at once) while the accepting thread waits for the CPU overflows it, and the kernel
    # drops their SYNs (a 1 s retransmit) or resets them. The kernel caps this at somaxconn.
    request_queue_size = socket.SOMAXCONN

    def __init__(self, address: Tuple[str, int], state: ServerState) -> None:
        self.state = state
        self._track = threading.Lock()
        self._threads: Set[threading.Thread] = set()
        self._connections: Set[socket.socket] = set()
        self._numbers = itertools.count(1)
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection in a named daemon thread."""
        try:
            # Small writes (drip, splits) must leave as they are written.
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        thread = threading.Thread(target=self._serve_connection, args=(request, client_address),
                                  name=f"{THREAD_PREFIX}-{next(self._numbers)}", daemon=True)
        with self._track:
            self._threads.add(thread)
            self._connections.add(request)
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            with self._track:
                self._connections.discard(request)
            self.shutdown_request(request)
            with self._track:
                self._threads.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log handler failures; a client that went away is routine, anything else is a bug."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)) or self.state.stopping.is_set():
            logger.debug("connection from %s ended: %r", client_address, exc)
        else:
            logger.error("fake LLM server handler failed for %s", client_address, exc_info=True)

    def hang_up_all(self) -> None:
        """Shut down every open connection (wakes handlers blocked in reads or writes)."""
        with self._track:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def join_threads(self, deadline: float) -> List[threading.Thread]:
        """Join connection threads until ``deadline`` (monotonic); return those still alive."""
        with self._track:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [thread for thread in threads if thread.is_alive()]


class FakeLLMServer:
    """A fake LLM API on 127.0.0.1 that streams scripted replies in each provider's wire format.

    Serves OpenAI chat completions, OpenAI Responses (and its GET resume),
    Anthropic Messages and Ollama chat on one port. Each streaming request
    consumes the next scripted :class:`Reply` (FIFO), or ``default_reply``
    when the script is empty. Every request is logged in arrival order.

    Args:
        host: the interface to listen on.
        port: the port; 0 picks a free ephemeral port.
        default_reply: the reply used when the script is empty (default ``Reply()``).
        max_concurrent: stream at most this many answers at once; a request
            beyond that gets ``429`` with ``Retry-After: limit_retry_after``
            (as a real API's concurrency limit). ``None``: no limit. A request
            counts until just before the last piece of its answer is sent, so a
            client that keeps to the same limit is never refused, however loaded
            the machine.
        limit_retry_after: the ``Retry-After`` seconds of those 429 answers.

    Usage::

        with FakeLLMServer() as server:
            server.script(Reply(text="Hi", close_after_tokens=1), Reply(text="Hi"))
            base_url = server.base_url("openai")       # http://127.0.0.1:PORT/v1
            ...
            [first, second] = server.wait_for_requests(2)

    After ``stop()`` (or leaving the ``with`` block) every connection is
    closed, every thread has ended and the port is released; a stopped server
    cannot be started again. ``requests`` stays readable.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, default_reply: Optional[Reply] = None,
                 max_concurrent: Optional[int] = None, limit_retry_after: float = 1.0) -> None:
        if max_concurrent is not None and (isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int)
                                           or max_concurrent < 1):
            raise ValueError(f"max_concurrent must be an int >= 1 or None, got {max_concurrent!r}")
        self._address = (host, port)
        self._state = ServerState(self._checked(default_reply or Reply()), max_concurrent, limit_retry_after)
        self._httpd: Optional[FakeHTTPServer] = None
        self._acceptor: Optional[threading.Thread] = None
        self._stopped = False
        self._lifecycle = threading.Lock()

    @staticmethod
    def _checked(reply: Any) -> Reply:
        if not isinstance(reply, Reply):
            raise TypeError(f"expected a llmstream.testing.Reply, got {type(reply).__name__}")
        return reply

    def start(self) -> "FakeLLMServer":
        """Start listening and serving (idempotent while running); return self.

        Raises:
            RuntimeError: the server was stopped; create a new one.
            OSError: the address could not be bound.
        """
        with self._lifecycle:
            if self._stopped:
                raise RuntimeError("this FakeLLMServer was stopped and cannot restart; create a new one")
            if self._httpd is None:
                httpd = FakeHTTPServer(self._address, self._state)
                self._state.open()
                self._acceptor = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": POLL_INTERVAL},
                                                  name=f"{THREAD_PREFIX}-accept", daemon=True)
                self._httpd = httpd
                self._acceptor.start()
        return self

    def stop(self) -> None:
        """Stop promptly (about a second at most, even with stalled streams); idempotent."""
        with self._lifecycle:
            httpd, self._stopped = self._httpd, True
            if httpd is None or self._acceptor is None:
                return
            deadline = time.monotonic() + STOP_TIMEOUT
            self._state.stop()
            httpd.shutdown()
            self._acceptor.join(max(0.0, deadline - time.monotonic()))
            httpd.hang_up_all()
            left = httpd.join_threads(deadline)
            httpd.server_close()
            if left:
                logger.warning("fake LLM server: %d handler thread(s) still running after stop()", len(left))
            else:
                self._state.close()
            self._acceptor = None

    def __enter__(self) -> "FakeLLMServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self._httpd is not None else "not started"
        return f"<FakeLLMServer {where}{' stopped' if self._stopped else ''}>"

    @property
    def port(self) -> int:
        """The port listened on (the ephemeral one chosen when ``port=0``)."""
        if self._httpd is None:
            raise RuntimeError("the FakeLLMServer is not started; use it in a with block or call start()")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://HOST:PORT``, without a trailing slash."""
        return f"http://{self._address[0]}:{self.port}"

    def base_url(self, provider: str = "openai") -> str:
        """The base URL a client of ``provider`` expects.

        ``openai`` and ``openai-responses`` include ``/v1`` (as the OpenAI SDK's
        base URL does); ``anthropic`` and ``ollama`` are the bare server URL.

        Raises:
            ValueError: unknown provider.
        """
        if provider not in PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}; expected one of {', '.join(PROVIDERS)}")
        return self.url + "/v1" if provider.startswith("openai") else self.url

    def script(self, *replies: Reply) -> None:
        """Queue replies; each streaming request consumes the next one (FIFO)."""
        checked = [self._checked(reply) for reply in replies]
        with self._state.lock:
            self._state.queue.extend(checked)

    @property
    def default_reply(self) -> Reply:
        """The reply used when the script is empty."""
        return self._state.default_reply

    @default_reply.setter
    def default_reply(self, reply: Reply) -> None:
        self._state.default_reply = self._checked(reply)

    @property
    def requests(self) -> List[RecordedRequest]:
        """A snapshot copy of every request received so far, in arrival order."""
        with self._state.lock:
            return list(self._state.log)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> List[RecordedRequest]:
        """Block until at least ``n`` requests arrived; return the snapshot.

        Raises:
            TimeoutError: fewer than ``n`` requests arrived within ``timeout`` seconds.
        """
        with self._state.changed:
            if not self._state.changed.wait_for(lambda: len(self._state.log) >= n, timeout):
                raise TimeoutError(f"expected {n} request(s) within {timeout}s, got {len(self._state.log)}")
            return list(self._state.log)

    @property
    def active_connections(self) -> int:
        """Streaming responses being written right now."""
        with self._state.lock:
            return self._state.active

    @property
    def rejected_over_limit(self) -> int:
        """Requests answered 429 because ``max_concurrent`` answers were streaming."""
        with self._state.lock:
            return self._state.rejected

    @property
    def max_active_connections(self) -> int:
        """The most streaming responses ever written at the same time."""
        with self._state.lock:
            return self._state.max_active
