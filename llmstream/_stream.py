"""TokenStream: the caller's side of one stream.

Strategy: the worker (``_worker.py``) fills a bounded queue with batches of
events; this class takes them, keeps the books (``.text``, usage, finish
reason, tool calls) and hands them out either as ``str`` pieces (iteration) or
as typed events (``.events()``). Both views draw from the same queue, so a
caller may switch between them, but each event is handed out once.

Outcomes are kept distinct: ``status`` is ``"streaming"``, then one of
``"finished"`` (ended normally), ``"failed"`` (it broke: the error is raised
with ``partial_text``) or ``"closed"`` (the caller closed it). Misuse raises
``StreamClosedError`` / ``StreamBusyError`` (``RuntimeError`` subclasses).

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
import weakref
from typing import Any, Iterator, List, Optional

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
from ._exceptions import ResumeError, StreamBusyError, StreamClosedError, StreamError, StreamTimeoutError
from ._turn import TurnRecorder, as_messages
from ._worker import POLL_INTERVAL, Worker

__all__ = ["TokenStream"]

#: How long ``close()`` waits for the worker thread to end. A worker blocked in
#: connect() cannot be woken; it is abandoned (a daemon thread that ends by its
#: connect timeout, its result discarded).
CLOSE_JOIN_TIMEOUT = 1.0
#: Text pieces are joined into one string every this many: a list of small
#: ``str`` objects costs ~60 bytes per token, a joined string ~1 byte per
#: character, which keeps a very long stream's memory close to its text's size.
COMPACT_EVERY = 4096
#: On POSIX a signal (Ctrl+C) interrupts a blocked lock in the main thread, so
#: the caller waits for the next batch in one piece; elsewhere it waits in
#: slices of ``POLL_INTERVAL`` to notice an interrupt.
_SLICED_WAITS = os.name == "nt"
#: The caller enforces ``total`` this long after the worker should have: the
#: worker's own error says more (what it was waiting for), so it should win.
TOTAL_GRACE = 0.05


class TokenStream:
    """A streaming answer: iterate it for text, or call :meth:`events` for typed events.

    Usage::

        with client.stream("Tell me a story", model="gpt-4o-mini") as s:
            for text in s:
                print(text, end="", flush=True)
        print(s.result.usage)

    Iteration yields ``str`` pieces in order, each exactly once. Breaking out of
    the loop, dropping the stream or leaving the ``with`` block closes it: the
    worker thread ends and the socket is shut. A failure raises a
    :class:`~llmstream.StreamError` whose ``partial_text`` is what the loop had
    received. A stream may be consumed by one thread at a time.
    """

    def __init__(self, worker: Worker, *, provider: str, model: str) -> None:
        self._worker = worker
        self._provider = provider
        self._model = model
        self._parts: List[str] = []
        self._blocks: List[str] = []
        self._tool_calls: List[ToolCall] = []
        self._turn = TurnRecorder()
        self._usage: Optional[Usage] = None
        self._finish_reason: Optional[str] = None
        self._status = "streaming"
        self._error: Optional[BaseException] = None
        self._busy = threading.Lock()
        self._lock = threading.Lock()
        # Cancels the worker if the caller drops the stream without closing it.
        # Through a weak reference: the finalizer registry is global, and a
        # strong one would keep the worker, its error, the error's traceback,
        # the caller's frames and so this very stream alive for ever.
        self._finalizer = weakref.finalize(self, _cancel_if_alive, weakref.ref(worker))
        worker.start()

    # -- consumption ----------------------------------------------------------

    def __iter__(self) -> Iterator[str]:
        """Yield the answer's text pieces in order (see the class docstring)."""
        return self._consume(text_only=True)

    def events(self) -> Iterator[Event]:
        """Yield typed events: TextDelta, ThinkingDelta, ToolCallDelta, ToolCall, Usage, Finish, Retrying, Reset.

        A ``Reset`` means a replayed answer did not repeat the text already
        delivered: discard what you showed; the next events restart the answer.
        """
        return self._consume(text_only=False)

    def _consume(self, text_only: bool) -> Iterator[Any]:
        if not self._busy.acquire(blocking=False):
            raise StreamBusyError(
                "this stream is already being iterated (by another thread or another loop); "
                "give each consumer its own stream"
            )
        try:
            self._check_open()
            append = self._parts.append
            while True:
                batches = self._next_batches()
                if batches is None:
                    return
                for batch in batches:
                    for event in batch:
                        if event.__class__ is TextDelta:
                            append(event.text)
                            yield event.text if text_only else event
                        else:
                            self._record(event, text_only)
                            if not text_only:
                                yield event
                if len(self._parts) >= COMPACT_EVERY:
                    self._compact()
        finally:
            self._busy.release()
            if self._status == "streaming":
                # The consumer stopped early (break, exception, interrupt): close.
                self.close()

    def _record(self, event: Event, text_only: bool) -> None:
        if event.__class__ is OutputItem or event.__class__ is Retrying or event.__class__ is Reset:
            self._turn.record(event, self._text_length())
        if isinstance(event, Usage):
            self._usage = event
        elif isinstance(event, Finish):
            self._finish_reason = event.reason
        elif isinstance(event, ToolCall):
            self._tool_calls.append(event)
        elif isinstance(event, Reset):
            if text_only:
                error = ResumeError(
                    "the retried answer did not repeat the text already delivered, so it cannot be "
                    "continued without duplicating or losing text (use .events() to receive a Reset instead)",
                    partial_text=self.text,
                    attempts=self._worker.stats.attempts,
                )
                self._fail(error)
                raise error
            self._parts.clear()
            self._blocks.clear()
            self._tool_calls.clear()

    def _text_length(self) -> int:
        # Called per OutputItem (one per block or item), never per token.
        return sum(map(len, self._blocks)) + sum(map(len, self._parts))

    def _compact(self) -> None:
        self._blocks.append("".join(self._parts))
        # Cleared in place: the consuming loop holds a bound ``append`` of this list.
        self._parts.clear()

    def _next_batches(self) -> Optional[List[List[Event]]]:
        """The next batches, or None at a normal end or after close; raises on failure."""
        worker = self._worker
        queue = worker.queue
        deadline = worker.total_deadline + TOTAL_GRACE
        while True:
            if self._status == "closed":
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
                return batches
            if lent is not None:
                # The worker lent us the body: read it in this thread (one
                # wake-up per token instead of two); the read's own deadlines apply.
                events = lent.step()
                if events:
                    return [events]
                continue
            if ended:
                if error is not None:
                    self._fail(error)
                self._finish()
                return None

    def _finish(self) -> None:
        with self._lock:
            if self._status == "streaming":
                self._status = "finished"
        self._worker.join(CLOSE_JOIN_TIMEOUT)

    def _fail(self, error: BaseException) -> None:
        """Record the failure, stop the worker and raise ``error``."""
        if isinstance(error, StreamError):
            error.partial_text = self.text
            error.attempts = self._worker.stats.attempts
        with self._lock:
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
        A loop iterating the stream in another thread ends quietly; ``status``
        is then ``"closed"``.
        """
        with self._lock:
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
        """The text delivered so far (after a ``Reset``, only the new answer's)."""
        return "".join(self._blocks) + "".join(self._parts)

    @property
    def result(self) -> StreamResult:
        """The :class:`StreamResult`; if the stream is still running, consume it to the end first.

        Raises:
            StreamError: the stream's failure, if it failed.
            StreamClosedError: the stream was closed before it finished.
        """
        if self._status == "streaming":
            for _ in self._consume(text_only=False):
                pass
        if self._status == "failed" and self._error is not None:
            raise self._error
        if self._status == "closed":
            raise StreamClosedError("this stream was closed before it finished; .text holds what was delivered")
        text = self.text
        tool_calls = tuple(self._tool_calls)
        message = self._worker.provider.assistant_message(self._turn.turn(text, tool_calls))
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
            f"status={self._status!r} delivered={len(self.text)} chars>"
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


def _cancel_if_alive(worker_ref: "weakref.ref[Worker]") -> None:
    """The finalizer of a dropped stream: cancel its worker if it still runs."""
    worker = worker_ref()
    if worker is not None:
        worker.cancel()
