"""AsyncTokenStream: a TokenStream for asyncio code, over the same worker and queue.

Strategy: no second transport. The stream is an ordinary ``TokenStream``
consumed by one *reader thread* (never the event loop's thread: a stream
iterated at once runs its request and its read steps in the consuming thread,
see ``_worker.py``, and those block). The reader hands each item over to the
loop through a small pipe (:class:`_Pipe`): a deque, and a future only while
the loop waits, resolved by the loop's one :class:`_Waker`, which wakes every
stream whose item came since its last drain with one ``call_soon_threadsafe``.

Backpressure: the pipe holds at most ``max_buffered`` items; past that the
reader blocks (on a bare-lock ``Signal``, woken by the loop's next pop),
stops pulling from the stream, the worker stops reading the socket, and TCP
flow control slows the server, as with a slow sync caller.

Cancellation: ``aclose()``, leaving ``async with``, cancelling the task that
awaits the next item, and dropping the stream all close the ``TokenStream``
(worker and socket) from a helper thread, so the loop never waits for a
worker's join.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import queue
import threading
import weakref
from typing import Any, AsyncIterator, Callable, Deque, Optional, Tuple

from ._events import Event, StreamResult
from ._exceptions import StreamBusyError, StreamClosedError
from ._queue import Signal
from ._stream import TokenStream

__all__ = ["AsyncTokenStream", "spawn"]

_reader_ids = itertools.count(1)


class _Launcher:
    """Starts threads for the event loop: ``Thread.start()`` waits until the new
    thread runs, which under a busy GIL took up to a second (measured: 200
    streams at once), so the loop only hands the start to this one thread."""

    def __init__(self) -> None:
        self._jobs: "queue.SimpleQueue[Tuple[Callable[..., None], Tuple[Any, ...], str]]" = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    def spawn(self, target: Callable[..., None], args: Tuple[Any, ...], name: str) -> None:
        self._jobs.put((target, args, name))  # never blocks
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="llmstream-launcher", daemon=True)
                self._thread.start()  # once per process

    def _serve(self) -> None:
        while True:
            target, args, name = self._jobs.get()
            threading.Thread(target=target, args=args, name=name, daemon=True).start()
            del target, args  # this frame waits for the next job: it must not hold the last one's stream


_launcher = _Launcher()


def spawn(target: Callable[..., None], args: Tuple[Any, ...], name: str) -> None:
    """Run ``target(*args)`` in a new daemon thread, started without blocking the caller (an event loop)."""
    _launcher.spawn(target, args, name)
#: Marks the end of the items in the pipe.
_END = object()


class _Waker:
    """Wakes an event loop's waiting async streams, many per loop wake-up: one per loop.

    A reader thread with an item for a waiting consumer hands its future here;
    the loop is asked to run :meth:`_drain` only when no drain is due yet
    (``call_soon_threadsafe`` writes to the loop's self-pipe: a system call).
    With hundreds of slow streams one drain wakes every stream whose token
    came meanwhile (issue 17).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weakly: the waker is the value of a weak-keyed table keyed by the loop.
        self._loop = weakref.ref(loop)
        self._due: Deque["asyncio.Future[None]"] = collections.deque()
        self._scheduled = False

    def wake(self, future: "asyncio.Future[None]") -> None:
        """Resolve ``future`` in the loop soon (any thread)."""
        self._due.append(future)
        if not self._scheduled:
            # Seen False: the running drain (if any) has stopped looking at the
            # deque's end, or will still pop this future; a second drain is harmless.
            self._scheduled = True
            loop = self._loop()
            if loop is None:
                return  # the loop is gone: nobody is left to wake
            try:
                loop.call_soon_threadsafe(self._drain)
            except RuntimeError:
                return  # the loop was closed: nobody is left to wake

    def _drain(self) -> None:
        self._scheduled = False  # first: a future added from now on schedules a drain, or is popped below
        due = self._due
        while due:
            future = due.popleft()
            if not future.done():  # its task may have been cancelled meanwhile
                future.set_result(None)


_wakers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Waker]" = weakref.WeakKeyDictionary()


def _waker_for(loop: asyncio.AbstractEventLoop) -> _Waker:
    waker = _wakers.get(loop)
    if waker is None:  # only the loop's own thread gets here, once
        waker = _wakers[loop] = _Waker(loop)
    return waker


class _Pipe:
    """Items from the reader thread to the event loop; shared by both, owned by neither.

    One producer (the reader thread) appends, one consumer (the loop) pops;
    each side sleeps only after saying so, and the other wakes it only then
    (as ``_queue.EventQueue``), so a consumer that keeps up costs no lock,
    semaphore or loop wake-up of its own per token.
    """

    def __init__(self, max_items: int) -> None:
        self.items: Deque[Any] = collections.deque()
        self.error: Optional[BaseException] = None
        self.max_items = max_items
        self.closing = False
        #: The future the loop awaits while the pipe is empty (None: not waiting).
        self.waiter: Optional["asyncio.Future[None]"] = None
        self.waker: Optional[_Waker] = None
        #: The reader waits for space (the loop lags): the loop's next pop wakes it.
        self.reader_waiting = False
        self.space = Signal()

    def push(self, item: Any) -> None:
        self.items.append(item)
        waiter = self.waiter  # set by the loop before it re-checks the deque: no missed wake-up
        if waiter is not None and self.waker is not None:
            self.waker.wake(waiter)

    def read(self, stream: TokenStream, text_only: bool) -> None:
        """The reader thread: pull items from the stream until its end, the consumer's close, or a failure."""
        items, limit = self.items, self.max_items
        try:
            for item in (iter(stream) if text_only else stream.events()):
                while len(items) >= limit and not self.closing:  # the loop lags: backpressure
                    self.reader_waiting = True
                    if len(items) >= limit and not self.closing:
                        self.space.wait(None)
                    self.reader_waiting = False
                if self.closing:
                    break
                self.push(item)
        except BaseException as exc:  # handed to the consumer, raised there
            self.error = exc
        finally:
            self.push(_END)

    def took(self) -> None:
        """The loop took an item: wake a reader waiting for space."""
        if self.reader_waiting:
            self.space.set()

    def close(self, stream: TokenStream, then: Optional[Callable[[], None]] = None) -> None:
        """Close from any thread without waiting: the stream is closed by a helper thread, then ``then()``."""
        first, self.closing = not self.closing, True
        if first:
            self.space.set()  # a reader blocked on space wakes and sees "closing"
        if stream.status != "streaming":
            if then is not None:
                then()
            return  # ended already: nothing to close
        spawn(_close, (stream, then), "llmstream-async-close")


def _close(stream: TokenStream, then: Optional[Callable[[], None]]) -> None:
    try:
        stream.close()
    finally:
        if then is not None:
            then()


def _resolve(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)


class AsyncTokenStream:
    """A streaming answer for asyncio: ``async for`` text, or ``async for`` over :meth:`events`.

    Usage::

        async with client.astream("Tell me a story", model="gpt-4o-mini") as s:
            async for text in s:
                print(text, end="", flush=True)
        print(s.result.usage)

    The event loop is never blocked: the stream runs in a thread of its own.
    Cancelling the task that iterates, ``aclose()``, leaving the ``async with``
    block or dropping the stream closes it (worker and socket). A failure
    raises the same :class:`~llmstream.StreamError` as the sync stream, with
    ``partial_text``.
    """

    def __init__(self, stream: TokenStream, *, max_buffered: int) -> None:
        self._stream = stream
        self._pipe = _Pipe(max_buffered)
        self._started = False

    def __del__(self) -> None:
        # A stream the caller dropped: closed (its reader thread, worker and
        # socket end). __del__, not a weakref.finalize: that one costs a
        # registry entry, a weak reference and two small objects per stream
        # (~320 bytes; issue 17).
        pipe, stream = getattr(self, "_pipe", None), getattr(self, "_stream", None)
        if pipe is not None and stream is not None:
            pipe.close(stream)

    def __aiter__(self) -> AsyncIterator[str]:
        """Yield the answer's text pieces in order."""
        return self._consume(text_only=True)

    def events(self) -> AsyncIterator[Event]:
        """Yield typed events, as :meth:`TokenStream.events` does (a ``Reset`` means: discard what you showed)."""
        return self._consume(text_only=False)

    def _start(self, text_only: bool) -> None:
        if self._started:
            raise StreamBusyError("this async stream is already being iterated; make one stream per consumer")
        if self._pipe.closing:
            raise StreamClosedError("this stream was closed; start a new stream to ask again")
        self._started = True
        pipe = self._pipe
        pipe.waker = _waker_for(asyncio.get_running_loop())
        spawn(pipe.read, (self._stream, text_only), f"llmstream-async-{next(_reader_ids)}")

    async def _consume(self, text_only: bool) -> AsyncIterator[Any]:
        self._start(text_only)
        pipe = self._pipe
        items = pipe.items
        create_future = asyncio.get_running_loop().create_future
        try:
            while True:
                if items:
                    item = items.popleft()
                    if item is _END:
                        # Taken out of the pipe: the pipe outlives this frame (the
                        # finalizer holds it), and the error's traceback holds the frame.
                        error, pipe.error = pipe.error, None
                        if error is not None:
                            raise error
                        return
                    pipe.took()
                    yield item
                    continue
                waiter = pipe.waiter = create_future()
                if not items:  # again, after saying we wait: the reader wakes us from now on
                    await waiter
                pipe.waiter = None
        finally:
            # Cancelled, broken out of, or failed: close (nothing happens after a normal end).
            if self._stream.status == "streaming":
                pipe.close(self._stream)

    async def aclose(self) -> None:
        """Close the stream (idempotent): the worker ends and the socket is shut, without blocking the loop.

        Returns once the stream is closed (its ``status`` is ``"closed"``
        unless it had ended already).
        """
        loop = asyncio.get_running_loop()
        closed = loop.create_future()

        def done() -> None:  # in the closing thread
            try:
                loop.call_soon_threadsafe(_resolve, closed)
            except RuntimeError:
                return  # the loop is gone: nobody waits

        self._pipe.close(self._stream, done)
        await closed

    async def __aenter__(self) -> "AsyncTokenStream":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def status(self) -> str:
        """``"streaming"``, ``"finished"``, ``"failed"`` or ``"closed"``, as :attr:`TokenStream.status`."""
        return self._stream.status

    @property
    def text(self) -> str:
        """The text delivered so far."""
        return self._stream.text

    @property
    def result(self) -> StreamResult:
        """The :class:`StreamResult`, once the stream was consumed to its end.

        Raises:
            StreamClosedError: still streaming (consume it first, or use ``await client.acomplete(...)``),
                or closed before it finished.
            StreamError: the stream's failure.
        """
        if self._stream.status == "streaming":
            raise StreamClosedError("this stream is still streaming: consume it with async for first "
                                    "(or use await client.acomplete(...))")
        return self._stream.result

    @property
    def metrics(self) -> Any:
        """Timings and counts so far (a :class:`StreamMetrics`)."""
        return self._stream.metrics

    def __repr__(self) -> str:
        return repr(self._stream).replace("<TokenStream", "<AsyncTokenStream", 1)


async def consume_to_result(stream: AsyncTokenStream) -> StreamResult:
    """Consume an async stream to its end and return its result (``acomplete``)."""
    async with stream:
        async for _ in stream.events():
            pass
        return stream.result
