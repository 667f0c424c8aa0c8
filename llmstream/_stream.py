"""TokenStream: the caller's side of one stream.

Strategy: the worker (``_worker.py``) fills a bounded queue with batches of
events; this class takes them, keeps the books (usage, finish reason, tool
calls, how much text its caller took) and hands them out either as ``str`` pieces (iteration) or
as typed events (``.events()``). Both views draw from the same queue, so a
caller may switch between them, but each event is handed out once.

Outcomes are kept distinct: ``status`` is ``"streaming"``, then one of
``"finished"`` (ended normally), ``"failed"`` (it broke: the error is raised
with ``partial_text``) or ``"closed"`` (the caller closed it). Misuse raises
``StreamClosedError`` / ``StreamBusyError`` (``RuntimeError`` subclasses).

The text: kept once, in the worker's ``SharedText`` (``_textlog.py``), which
the resumer fills as batches are handed over; ``.text`` is the prefix of it
that the caller took (read-ahead batches may still be queued). With
``keep_text=False`` there is none: ``.text`` raises ``TextNotKeptError``, and
the text goes only to the caller's loop, its ``sink`` and ``to_file()``.

Waiting: the caller blocks on the queue until the next batch (on Windows, in
slices of 0.1 s, since only POSIX lets a signal interrupt a blocked lock), so a
``KeyboardInterrupt`` is seen promptly; the interrupt closes the stream (worker
and socket) and propagates. The ``total`` deadline is checked here as well as in
the worker: a slow caller cannot stretch a stream past it.
"""

from __future__ import annotations

import os
import threading
import time
from typing import IO, Any, Callable, Generator, Iterator, List, Optional, Sequence, Tuple, Union

from ._callbacks import Callbacks, wrap
from ._events import (
    Cost,
    Event,
    Finish,
    OutputItem,
    Reset,
    Retrying,
    StreamMetrics,
    StreamResult,
    TextDelta,
    ToolCall,
    Usage,
)
from ._exceptions import (
    ResumeError,
    StreamBusyError,
    StreamClosedError,
    StreamError,
    StreamTimeoutError,
    TextNotKeptError,
)
from ._turn import TurnRecorder, as_messages
from ._lending import LentBody
from ._worker import POLL_INTERVAL, Worker

__all__ = ["Sink", "TokenStream"]

#: Where a stream's text may also go as it arrives: a callable taking each
#: piece (``print``-like), or an object with a ``write(str)`` method (a text file).
Sink = Union[Callable[[str], Any], IO[str], None]

#: How long ``close()`` waits for the worker thread to end. A worker blocked in
#: connect() cannot be woken; it is abandoned (a daemon thread that ends by its
#: connect timeout, its result discarded).
CLOSE_JOIN_TIMEOUT = 1.0
#: On POSIX a signal (Ctrl+C) interrupts a blocked lock in the main thread, so
#: the caller waits for the next batch in one piece; elsewhere it waits in
#: slices of ``POLL_INTERVAL`` to notice an interrupt.
_SLICED_WAITS = os.name == "nt"
#: The caller enforces ``total`` this long after the worker should have: the
#: worker's own error says more (what it was waiting for), so it should win.
TOTAL_GRACE = 0.05
#: Taken only to change a stream's status or its iterating thread (a flag or two,
#: nothing allocated under it, so a finalizer cannot find it held by its own
#: thread): one lock for every stream, not two each (issue 17).
_STATE_LOCK = threading.Lock()
#: The turn of a stream that recorded no item, retry or reset (``turn()`` only reads it).
_NO_TURN = TurnRecorder()


class TokenStream:
    """A streaming answer: iterate it for text, or call :meth:`events` for typed events.

    Usage::

        with client.stream("Tell me a story", model="gpt-4o-mini") as s:
            for text in s:
                print(text, end="", flush=True)
        print(s.result.usage)

    Iteration yields ``str`` pieces in order, each exactly once. A loop that
    stops early leaves the stream where it was: the next loop (or ``next()``)
    goes on from there, so ``first = next(iter(stream))`` then ``for text in
    stream:`` peeks and continues. ``close()``, leaving the ``with`` block or
    dropping the stream (once it is collected) closes it: the worker thread
    ends and the socket is shut; Ctrl+C while waiting closes it too. A
    failure raises a :class:`~llmstream.StreamError` whose ``partial_text`` is
    what the loop had received. A stream may be consumed by one loop at a
    time, in one thread at a time.
    """

    # Slotted: one per stream, hundreds at once (issue 17: an instance dict's
    # values cost 40-60 bytes more than slots).
    __slots__ = (
        "_worker", "_callbacks", "_provider", "_model", "_log", "_consumed", "_epoch", "_sink", "_tool_calls",
        "_turn", "_usage", "_finish_reason", "_status", "_error", "_iterating", "_batch", "_pos", "_lent",
        "__weakref__",
    )

    def __init__(self, worker: Worker, *, provider: str, model: str, sink: Sink = None,
                 callbacks: Optional[Callbacks] = None) -> None:
        self._worker = worker
        self._callbacks = callbacks or None  # on_text & co. (_callbacks.py); None: none set
        self._provider = provider
        self._model = model
        sink_function = _sink_function(sink)  # first: a wrong sink must not leave a worker behind
        # The delivered text is the worker's log (shared with the resumer: one
        # copy); this stream reads the prefix its caller took. None: keep_text=False.
        self._log = worker.text
        self._consumed = 0
        self._epoch = 0
        self._sink = sink_function
        self._tool_calls: Tuple[ToolCall, ...] = ()  # rare: a tuple, grown by one (no list per stream)
        self._turn: Optional[TurnRecorder] = None  # made by the first OutputItem, Retrying or Reset
        self._usage: Optional[Usage] = None
        self._finish_reason: Optional[str] = None
        self._status = "streaming"
        self._error: Optional[BaseException] = None
        # The thread whose loop is iterating (one at a time: taken and left under _STATE_LOCK).
        self._iterating: Optional[int] = None
        # Where consumption stands: events of the current batch from _pos on are not handed out yet.
        self._batch: Sequence[Event] = ()
        self._pos = 0
        # The body the worker lent this stream's consumer, while it reads it (see _next_batch).
        self._lent: Optional[LentBody] = None
        worker.start()

    def __del__(self) -> None:
        # A stream the caller dropped without closing it: its worker is
        # cancelled (its socket shut, its slot freed). __del__, not a
        # weakref.finalize: that one costs a registry entry, a weak reference
        # and two small objects per stream (~320 bytes; issue 17). The worker
        # never refers to its stream, so a dropped stream is collected by
        # reference counting, or with the cycle its error's traceback makes.
        worker = getattr(self, "_worker", None)  # None: __init__ failed before it was set
        if worker is not None:
            worker.cancel()

    # -- consumption ----------------------------------------------------------

    def __iter__(self) -> Iterator[str]:
        """Yield the answer's text pieces in order (see the class docstring)."""
        return self._view(text_only=True)

    def events(self) -> Iterator[Event]:
        """Yield typed events: TextDelta, ThinkingDelta, ToolCallDelta, ToolCall, Usage, Finish, Retrying, Reset.

        A ``Reset`` means a replayed answer did not repeat the text already
        delivered: discard what you showed; the next events restart the answer.
        """
        return self._view(text_only=False)

    def _view(self, text_only: bool) -> Iterator[Any]:
        if self._callbacks is None:
            return self._consume(text_only)
        return wrap(self, self._consume(text_only), text_only, self._callbacks)

    def _consume(self, text_only: bool) -> Generator[Any, None, None]:
        # One generator per loop, reading the stream's own position (the
        # current batch and the index in it): a loop that stops early, or a
        # temporary iterator dropped after next(), leaves the stream where it
        # was, so the next loop goes on from there (peeking). Only close(),
        # the with block or the stream being collected close it; an interrupt
        # or a failure while waiting closes it too.
        self._take_turn()
        try:
            self._check_open()
            sink = self._sink
            while True:
                batch = self._batch
                pos = self._pos
                end = len(batch)
                while pos < end:
                    event = batch[pos]
                    pos += 1
                    # Stored per event: _more_in_hand() reads it (the relay's pump).
                    self._pos = pos
                    if event.__class__ is TextDelta:
                        # The text itself is in the worker's log (kept once);
                        # the stream counts how much of it its caller took.
                        text = event.text
                        self._consumed += len(text)
                        if sink is not None:
                            sink(text)
                        yield text if text_only else event
                    else:
                        self._record(event, text_only)
                        if not text_only:
                            yield event
                    if self._status == "closed":
                        # close() from the loop's own body (or another thread): nothing
                        # more, not even the rest of a batch already in hand.
                        return
                try:
                    # A body lent to this thread is stepped here first (the per-token
                    # path, one call less); anything else -- nothing read, the body
                    # gone back, no body lent -- is _next_batch's to handle.
                    lent = self._lent
                    more = lent.step() if lent is not None else None
                    if not more:
                        more = self._next_batch()
                except (StreamError, GeneratorExit):
                    raise
                except BaseException:
                    # An interrupt (Ctrl+C) or a crash while waiting: stop the stream.
                    self.close()
                    raise
                if more is None:
                    return
                self._batch = more
                self._pos = 0
        finally:
            self._iterating = None

    def _take_turn(self) -> None:
        """Become the stream's one loop, or raise ``StreamBusyError`` (a flag under the shared lock, not a lock each)."""
        me = threading.get_ident()
        with _STATE_LOCK:
            iterating = self._iterating
            if iterating is None:
                self._iterating = me
        if iterating is None:
            return
        if iterating == me:
            raise StreamBusyError(
                "this stream is already being iterated in this thread (a loop over it is still running, "
                "or you hold an iterator of it): take the next item from that loop or iterator"
            )
        raise StreamBusyError(
            "this stream is being iterated by another thread; give each consumer its own stream"
        )

    def _record(self, event: Event, text_only: bool) -> None:
        if self._callbacks is not None:
            self._callbacks.observe(event, self)
        if event.__class__ is OutputItem or event.__class__ is Retrying or event.__class__ is Reset:
            turn = self._turn
            if turn is None:
                turn = self._turn = TurnRecorder()
            turn.record(event, self._text_length())
        if isinstance(event, Usage):
            self._usage = event
        elif isinstance(event, Finish):
            self._finish_reason = event.reason
        elif isinstance(event, ToolCall):
            self._tool_calls += (event,)
        elif isinstance(event, Reset):
            if text_only or self._sink is not None:
                where = ("use .events() to receive a Reset instead" if text_only else
                         "a sink cannot take back the text it was given")
                error = ResumeError(
                    "the retried answer did not repeat the text already delivered, so it cannot be "
                    f"continued without duplicating or losing text ({where})",
                    partial_text=self._delivered(),
                    attempts=self._worker.stats.attempts,
                )
                self._fail(error)
                raise error
            self._epoch += 1
            self._consumed = 0
            if self._log is not None:
                self._log.release(self._epoch)
            self._tool_calls = ()

    def _more_in_hand(self) -> bool:
        """True when events already received follow the one last handed out: the next needs no wait.

        For a consumer that batches what arrived together (the relay's pump,
        ``_runs.Run``); per token, so it only compares.
        """
        return self._pos < len(self._batch)

    def _text_length(self) -> int:
        # The characters the caller has taken (called per OutputItem, never per token).
        return self._consumed

    def _next_batch(self) -> Optional[List[Event]]:
        """The next events (at least one), or None at a normal end or after close; raises on failure."""
        lent = self._lent
        while lent is not None and self._status != "closed":  # closed: nothing more, even what was received
            # The per-token path of a body lent to this thread (issue 17): one
            # read step, none of the hand-over's checks. A body that went back
            # (its end, a failure, close() from any thread) steps to None, and
            # the general path below takes over.
            events = lent.step()
            if events:
                return events
            if events is None:
                self._lent = lent = None
        worker = self._worker
        queue = worker.queue
        deadline = worker.total_deadline + TOTAL_GRACE
        while True:
            if self._status == "closed":
                self._lent = None
                return None
            # A segment of the stream that is due (the request, a retry, the
            # end of an attempt) runs here, in the consumer's thread, unless a
            # thread of the worker's already has it.
            worker.run_here()
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(StreamTimeoutError("total timeout: the stream took longer than Timeout.total", kind="total"))
            batches, ended, error, lent = queue.get(min(POLL_INTERVAL, left) if _SLICED_WAITS else left)
            if batches:
                return batches[0] if len(batches) == 1 else [e for b in batches for e in b]
            if lent is not None:
                # The worker lent us the body: read it in this thread (one
                # wake-up per token instead of two); the read's own deadlines apply.
                self._lent = lent
                events = lent.step()
                if events:
                    return events
                continue
            if ended:
                if error is not None:
                    self._fail(error)
                self._finish()
                return None

    def _finish(self) -> None:
        with _STATE_LOCK:
            if self._status == "streaming":
                self._status = "finished"
        self._worker.join(CLOSE_JOIN_TIMEOUT)

    def _fail(self, error: BaseException) -> None:
        """Record the failure, stop the worker and raise ``error``."""
        if isinstance(error, StreamError):
            error.partial_text = self._delivered()
            error.attempts = self._worker.stats.attempts
        with _STATE_LOCK:
            if self._status == "streaming":
                self._status = "failed"
                self._error = error
        self._worker.fail(error)
        self._worker.join(CLOSE_JOIN_TIMEOUT)
        raise error

    def _check_open(self) -> None:
        if self._status == "closed":
            raise StreamClosedError("this stream was closed; start a new stream to ask again (.text holds what was delivered)")
        if self._status == "failed":
            raise StreamClosedError("this stream failed; its error was raised already (see .text for what was delivered)")
        if self._status == "finished":
            raise StreamClosedError("this stream was consumed to its end; read .text or .result instead of iterating again")

    # -- control ----------------------------------------------------------------

    def close(self) -> None:
        """Stop the stream: idempotent and safe from any thread.

        The worker thread ends and the socket is shut down promptly in every
        phase: connecting, waiting for the response headers, reading the body
        (the socket is shut down, which wakes a blocked call), or waiting out a
        backoff delay (an Event). The server sees its connection closed at
        once. Only a name lookup (DNS) cannot be interrupted: a worker caught
        there ends by itself when the lookup returns, opening no connection.
        A loop iterating the stream ends quietly at its next step, whether
        ``close()`` came from its own body or another thread (nothing more is
        handed out, not even the rest of a read already in hand); ``status``
        is then ``"closed"``.
        """
        with _STATE_LOCK:
            if self._status == "streaming":
                self._status = "closed"
        self._worker.cancel()
        self._worker.join(CLOSE_JOIN_TIMEOUT)

    def __enter__(self) -> "TokenStream":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- state ------------------------------------------------------------------

    @property
    def status(self) -> str:
        """``"streaming"``, ``"finished"``, ``"failed"`` or ``"closed"``."""
        return self._status

    @property
    def closed(self) -> bool:
        """True once the stream was closed by the caller (not when it ended by itself)."""
        return self._status == "closed"

    @property
    def text(self) -> str:
        """The text delivered so far (after a ``Reset``, only the new answer's).

        Raises:
            TextNotKeptError: the stream was made with ``keep_text=False``.
        """
        log = self._log
        if log is None:
            raise TextNotKeptError(
                f"this stream keeps no text (keep_text=False), so .text is not available ({self._consumed} "
                "characters were delivered): take the text as it arrives (iterate, sink=..., .to_file(path)), "
                "or make the stream with keep_text=True"
            )
        if not log.kept:
            raise TextNotKeptError(
                f"this stream's text went to a file (to_file()), not to memory ({self._consumed} characters "
                "were delivered): read the file"
            )
        return log.prefix(self._consumed, self._epoch)

    def _delivered(self) -> str:
        """``.text``, or "" when the stream keeps none (for ``partial_text``)."""
        return "" if self._log is None or not self._log.kept else self.text

    def to_file(self, path: "os.PathLike[str] | str", *, encoding: str = "utf-8") -> StreamResult:
        """Write the answer to ``path`` as it arrives, and return the :class:`StreamResult`.

        The text goes to ``path + ".partial"`` while it streams (flushed at
        every line end, so it can be followed with ``tail -f``), and that file
        is renamed to ``path`` only when the answer is complete. On a failure
        the error is raised as usual and ``path + ".partial"`` holds exactly
        the text delivered; ``path`` is not touched.

        The file is then the one copy of the text: from this call on the
        stream keeps none in memory, as with ``keep_text=False`` (memory stays
        flat however long the answer; ``.text`` raises ``TextNotKeptError``;
        ``result.text`` and ``partial_text`` are ``""``). A broken stream still
        resumes exactly once by ``last-event-id``, or by ``replay`` checked
        against a hash of what was written; a replay that differs raises
        ``ResumeError`` (a ``Reset`` from a replay that began before this call
        empties the file and writes the new answer from its start).

        Usage::

            with client.stream("Write a long report", model="gpt-4o-mini", keep_text=False) as s:
                result = s.to_file("report.md")
        """
        self._check_open()
        log = self._log
        if self._consumed and (log is None or not log.kept):
            raise TextNotKeptError(
                "to_file() must be called before iterating a stream that keeps no text (keep_text=False): "
                "the text already delivered was not kept"
            )
        target = os.fspath(path)
        partial = target + ".partial"
        # Line-buffered: a reader tailing the file sees each line as it arrives.
        with open(partial, "w", encoding=encoding, errors="surrogatepass", newline="", buffering=1) as file:
            if self._consumed:
                file.write(self.text)
            if log is not None:
                # The file is the copy now: memory stays flat, and a resume checks
                # a replay against the text's digest (as with keep_text=False).
                log.stop_keeping()
            for event in self.events():
                if event.__class__ is TextDelta:
                    file.write(event.text)
                elif event.__class__ is Reset:
                    file.seek(0)
                    file.truncate()
        result = self.result  # raises if the stream was closed meanwhile: the .partial file stays
        os.replace(partial, target)
        return result

    @property
    def result(self) -> StreamResult:
        """The :class:`StreamResult`; if the stream is still running, consume it to the end first.

        Raises:
            StreamError: the stream's failure, if it failed.
            StreamClosedError: the stream was closed before it finished.
        """
        if self._status == "streaming":
            if self._iterating is not None:
                if self._iterating == threading.get_ident():
                    raise StreamBusyError(
                        ".result was read inside the loop over this stream: it waits for the end of the answer, "
                        "which that loop is still reading. Read .result after the loop (.text holds the text so far)"
                    )
                raise StreamBusyError(
                    ".result waits for the end of the answer, and another thread is iterating this stream: "
                    "read .result after that loop ends"
                )
            for _ in self._view(text_only=False):
                pass
        if self._status == "failed" and self._error is not None:
            raise self._error
        if self._status == "closed":
            raise StreamClosedError("this stream was closed before it finished; .text holds what was delivered")
        text = self._delivered()  # "" when the stream keeps no text
        tool_calls = self._tool_calls
        message = self._worker.provider.assistant_message((self._turn or _NO_TURN).turn(text, tool_calls))
        return StreamResult(
            text=text,
            finish_reason=self._finish_reason,
            usage=self._usage,
            tool_calls=tool_calls,
            attempts=self._worker.stats.attempts,
            metrics=self.metrics,
            message=message,
            messages=as_messages(message),
            cost=self._worker.cost,
        )

    @property
    def cost(self) -> Optional[Cost]:
        """What the stream cost (a :class:`~llmstream.Cost`), once it has ended in any way; else ``None``.

        Also after ``close()`` or a failure, when ``result`` raises: then
        ``cost.at_least`` says the figure is a lower bound. ``None`` while the
        stream runs, or when the client has no ``pricing`` for the model.
        """
        return self._worker.cost

    @property
    def metrics(self) -> StreamMetrics:
        """Timings and counts so far (final once the stream has ended): a :class:`StreamMetrics`."""
        return self._worker.stats.metrics()

    def __repr__(self) -> str:
        return (
            f"<TokenStream provider={self._provider!r} model={self._model!r} "
            f"status={self._status!r} delivered={self._consumed} chars>"
        )

    def _ipython_display_(self) -> None:
        """Jupyter's hook for a stream left as a cell's last expression (needs the ``notebook`` extra).

        A streaming stream is followed live, as ``llmstream.notebook.show``
        does; an ended one shows its text and status. A failure is shown in
        the status line, not raised; an interrupt closes the stream and
        propagates. ``repr()`` does not need IPython.
        """
        from .notebook import display_stream  # lazy: IPython is an optional extra

        display_stream(self)


def _sink_function(sink: Sink) -> Optional[Callable[[str], Any]]:
    """The callable a sink is written through (its ``write`` method, for a file)."""
    if sink is None:
        return None
    write = getattr(sink, "write", None)
    if callable(write):
        return write  # type: ignore[no-any-return]
    if callable(sink):
        return sink
    raise TypeError(f"sink must be a callable taking each text piece, or an object with write(str), "
                    f"not {type(sink).__name__}")
