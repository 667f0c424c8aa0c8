"""Server-sent events: bytes in, :class:`ServerSentEvent` out (public, sans-IO).

Contract
--------
Spec: WHATWG HTML, "Server-sent events", section "Interpreting an event stream"
https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
followed exactly; these rules live only in this module.

Strategy: :class:`~llmstream._linebuffer.LineBuffer` turns bytes into decoded
lines (CR, LF, CRLF, across any chunking; BOM stripped once; UTF-8 with
U+FFFD for invalid bytes). Each line is then interpreted:

  * empty line: dispatch the event (below);
  * ``:`` first: a comment, ignored;
  * otherwise the field name runs up to the first ``:`` (the whole line when
    there is none, with an empty value), and ONE leading space of the value
    is dropped;
  * ``data``: the value is appended to the data buffer, lines joined by LF;
  * ``event``: sets the event type buffer;
  * ``id``: sets the last event ID buffer, unless the value contains U+0000;
  * ``retry``: sets the reconnection time if the value is all ASCII digits;
  * any other field is ignored.

Dispatch sets ``last_event_id`` from the ID buffer (even for a block without
data), then, only if the data buffer is not empty, emits an event whose type
is the event type buffer or ``"message"`` and whose ``id`` is that last event
ID; the data and event type buffers are reset either way.

Speed: LLM APIs send runs of ``data: {...}`` + blank line. When a feed
completes a region of exactly that shape (checked, never assumed), the
values are cut out with C-speed bytes and str methods instead of
interpreting each line in Python; any other shape takes the line-by-line
path. Both give the same events (tests/test_framing_properties.py checks
them against a literal transcription of the rules).

Invariants: the same bytes give the same events however they are split;
``close()`` discards a block without its terminating blank line, as the spec
says ("the incomplete event is not dispatched"); a line over
``max_line_length`` raises ``MalformedStreamError``, and the decoder then
stays failed.

Never: dispatch an event with no ``data`` field (httpx-sse does, contrary to
the spec), strip more than one space, split lines on Unicode separators,
touch IO, threads or clocks. No deliberate deviations from the spec.
"""

from __future__ import annotations

import json
from typing import Any, List, Optional

from ._linebuffer import DEFAULT_MAX_LINE_LENGTH, LineBuffer
from ._record import Record, unfrozen_twin

__all__ = ["DEFAULT_MAX_LINE_LENGTH", "ServerSentEvent", "SSEDecoder"]

_setattr = object.__setattr__


class ServerSentEvent(Record):
    """One dispatched server-sent event. Immutable.

    Attributes:
        event: the event type (``"message"`` when the block had no ``event`` field).
        data: the data lines joined by ``"\\n"``.
        id: the last event ID when the event was dispatched ("" if none yet).
    """

    # A Record (what a frozen slotted dataclass gives, without its import cost).
    __slots__ = __match_args__ = ("event", "data", "id")
    event: str
    data: str
    id: str

    def __init__(self, event: str = "message", data: str = "", id: str = "") -> None:
        _setattr(self, "event", event)
        _setattr(self, "data", data)
        _setattr(self, "id", id)

    def json(self) -> Any:
        """Return ``json.loads(self.data)``.

        Raises:
            json.JSONDecodeError: the data is not JSON.
        """
        return json.loads(self.data)


# Building events is the largest per-event cost of the decoder, and a frozen
# dataclass is slow to build: its __init__ stores each field through
# object.__setattr__ (about 330 ns an event with CPython 3.11). Instead an
# event is built as an instance of a plain class with the SAME slots, filled
# with ordinary attribute stores, then handed its real class by __class__
# assignment (about 120 ns; see unfrozen_twin). The result is an ordinary,
# frozen ServerSentEvent: type(e) is ServerSentEvent, and eq, hash, repr and
# pickle are unchanged.
_Unfrozen = unfrozen_twin(ServerSentEvent)


def _data_values(region: bytes, complete: bool) -> Optional[List[str]]:
    """Return [v0, ..., vn], decoded, if region is b"data: v0" + SEP + ... + SEP + vn [+ LF]; else None.

    With SEP == b"\\n\\ndata: ", that region is exactly the lines "data: v0",
    "", "data: v1", ..., "", "data: vn" [, ""] when no v holds a LF (each
    SEP holds two; any other LF but a final one, when ``complete``, betrays
    another shape). Per the spec each blank line dispatches one "message"
    event whose data is v, ONE space dropped after the colon.
    """
    if region.isascii():
        # Most English text, and all JSON written with ensure_ascii: decoding
        # is a copy, so decode once and split the text.
        texts = region.decode("ascii").split("\n\ndata: ")
        joined = "".join(texts)
        if joined.find("\n") != (len(joined) - 1 if complete else -1):
            return None
    else:
        # Decoding each value alone is cheaper than widening the region to
        # UCS-2 and narrowing every piece split from it. Splitting at ASCII
        # separators never cuts a character; strict decoding is the cheapest
        # call, and invalid UTF-8 (rare) takes the general path, which
        # replaces it with U+FFFD.
        values = region.split(b"\n\ndata: ")
        raw = b"".join(values)
        if raw.find(b"\n") != (len(raw) - 1 if complete else -1):
            return None
        try:
            texts = list(map(bytes.decode, values))
        except UnicodeDecodeError:
            return None
    if complete:
        texts[-1] = texts[-1][:-1]
    texts[0] = texts[0][6:]
    return texts


def _message_events(texts: List[str], last_id: str) -> List[ServerSentEvent]:
    """Build one "message" event per data text (see _Unfrozen)."""
    events: List[Any] = []
    append = events.append
    for text in texts:
        event = _Unfrozen()
        event.event = "message"
        event.data = text
        event.id = last_id
        event.__class__ = ServerSentEvent
        append(event)
    return events


class SSEDecoder:
    """Decode an event stream (``text/event-stream``) incrementally.

    Usage::

        decoder = SSEDecoder()
        for chunk in chunks:
            for event in decoder.feed(chunk):
                print(event.event, event.data)
        decoder.close()

    Args:
        max_line_length: the longest line accepted, in bytes; a longer one
            raises ``MalformedStreamError`` without being buffered whole.
    """

    __slots__ = ("_lines", "_data", "_event", "_id", "_last_event_id", "_retry", "failed")

    def __init__(self, max_line_length: int = DEFAULT_MAX_LINE_LENGTH) -> None:
        self._lines = LineBuffer(max_line_length)
        #: True once a line was too long; the events before it were returned,
        #: every later call raises. An attribute, not a property (it is read at
        #: every read): the line buffer's own flag, copied after each call that can set it.
        self.failed = False
        self._data: List[str] = []  # the data buffer, one item per data line
        self._event = ""  # the event type buffer
        self._id = ""  # the last event ID buffer
        self._last_event_id = ""
        self._retry: Optional[int] = None

    @property
    def last_event_id(self) -> str:
        """The spec's last event ID string: set when a blank line ends a block ("" if none)."""
        return self._last_event_id

    @property
    def retry(self) -> Optional[int]:
        """The reconnection time the server asked for, in milliseconds, or ``None``."""
        return self._retry

    def feed(self, data: bytes) -> List[ServerSentEvent]:
        """Add bytes; return the events they complete, in order.

        Events completed before an over-long line in the same ``data`` are
        returned; the error comes from the next call (:attr:`failed` is True at once).

        Raises:
            MalformedStreamError: a line is longer than ``max_line_length``
                (and on every call after that).
            RuntimeError: called after ``close()``.
        """
        lines = self._lines
        if (lines.idle and data[:6] == b"data: " and data[-2:] == b"\n\n" and len(data) <= lines.max_line_length + 1
                and not self._data and not self._event):
            # One read, one "data: X" line and its blank line, nothing held
            # from before: one event, and the line buffer would be left as it
            # is (idle), so it is not called (the shape of a slow stream's
            # every read; issue 17). No other line ending in X is checked on
            # the decoded text: ``in`` on a str costs a fraction of a
            # ``bytes.find`` call, whose argument parsing alone is ~800 instructions.
            try:
                text = data[6:-2].decode()
            except UnicodeDecodeError:
                pass  # the general path replaces the invalid bytes
            else:
                if "\n" not in text and "\r" not in text:
                    self._last_event_id = last_id = self._id
                    event: Any = _Unfrozen()  # built as in _message_events
                    event.event = "message"
                    event.data = text
                    event.id = last_id
                    event.__class__ = ServerSentEvent
                    return [event]
        try:
            region = lines.feed_region(data)
        finally:
            self.failed = lines.failed
        if region is None:
            return []
        if region[:6] == b"data: " and not self._data and not self._event:
            events = self._feed_data_blocks(region)
            if events is not None:
                return events
        return self._feed_lines(region.decode("utf-8", "replace").split("\n"))

    def _feed_data_blocks(self, region: bytes) -> Optional[List[ServerSentEvent]]:
        """Fast path for the shape LLM APIs send: ``data: X`` lines, each followed by a blank line.

        Returns None, having changed nothing, when ``region`` has another shape.
        """
        complete = region[-1:] == b"\n"  # the region ends with a blank line
        texts = _data_values(region, complete)
        if texts is None:
            return None
        if not complete:
            # The last data line is complete but its blank line is still to come.
            self._data.append(texts.pop())
            if not texts:
                return []
        self._last_event_id = last_id = self._id
        return _message_events(texts, last_id)

    def _feed_lines(self, lines: List[str]) -> List[ServerSentEvent]:
        """Interpret complete lines one by one: the general path."""
        events: List[Any] = []
        append = events.append
        buffer = self._data
        for line in lines:
            if not line:
                # Dispatch. The last event ID string is set even when no event follows.
                self._last_event_id = last_id = self._id
                if buffer:
                    event = _Unfrozen()  # built as in _message_events
                    event.event = self._event or "message"
                    event.data = buffer[0] if len(buffer) == 1 else "\n".join(buffer)
                    event.id = last_id
                    event.__class__ = ServerSentEvent
                    append(event)
                    buffer.clear()
                self._event = ""
            elif line[:6] == "data: ":
                # The common case, inlined: ONE space after the colon is dropped.
                buffer.append(line[6:])
            else:
                self._field(line)
        return events

    def close(self) -> List[ServerSentEvent]:
        """Signal end of input. A block without its terminating blank line is discarded.

        Returns:
            ``[]``: per the spec, end of input never dispatches an event.

        Raises:
            MalformedStreamError: if the decoder had already failed.
        """
        # A final unterminated line is not a complete line of the event
        # stream grammar; the pending block is dropped with it.
        try:
            self._lines.close()
        finally:
            self.failed = self._lines.failed
        self._data.clear()
        self._event = ""
        return []

    def _field(self, line: str) -> None:
        """Process any line but an empty one or ``data: ...``."""
        colon = line.find(":")
        if colon == 0:
            return  # a comment
        if colon < 0:
            name, value = line, ""
        else:
            name = line[:colon]
            value = line[colon + 2 :] if line[colon + 1 : colon + 2] == " " else line[colon + 1 :]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\x00" not in value:
                self._id = value
        elif name == "retry":
            # "consists of only ASCII digits": str.isdigit alone would accept
            # "²" or "٣"; an empty value is not a number and is ignored.
            if value.isascii() and value.isdigit():
                self._retry = int(value)
