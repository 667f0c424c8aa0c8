"""SSE whose server may also write a bare JSON object between events: bytes in, messages out.

Contract
--------
Some servers stream with ``data:`` lines (Server-Sent Events) but report a
failure that happens mid-stream by writing the error object itself, pretty
printed over several lines, outside any ``data:`` line::

    data: {"candidates": [...]}

    {
      "error": {
        "code": 503,
        "message": "The model is overloaded. Please try again later.",
        "status": "UNAVAILABLE"
      }
    }

A plain SSE reader reads ``{`` as a field named ``{`` and ignores it (WHATWG
rules), so the error would vanish and the stream would look merely cut
short. This framing gives the provider decoder both kinds of message:

  * a :class:`~llmstream.sse.ServerSentEvent` for each ``data:`` block ended
    by a blank line (``data:`` lines joined with ``\\n``, as the spec says;
    comments and the other fields ignored; a block without its blank line at
    the end of input is discarded, as the spec says);
  * a parsed JSON value (a ``dict``) for each JSON text that starts on a line
    beginning with ``{`` or ``[`` outside ``data:``, read until its brackets
    balance outside strings (how the official ``google-genai`` client reads
    them).

Invariants: the same bytes give the same messages however they are split
(``LineBuffer`` does the splitting, CR, LF and CRLF); a bare JSON text is
bounded by ``max_line_length`` in total, not only per line; after raising,
the framing stays failed.

Never: drop a bare JSON text (a broken one is a ``MalformedStreamError``,
one cut off by the end of input too, which ``StreamDecoder`` turns into
``IncompleteStreamError``); touch IO, threads or clocks.
"""

from __future__ import annotations

from typing import Any, List, Optional

from .._exceptions import MalformedStreamError
from .._fastjson import loads as fast_loads
from .._linebuffer import LineBuffer
from ..sse import DEFAULT_MAX_LINE_LENGTH, ServerSentEvent

__all__ = ["SSEWithJSONDecoder"]

_EXCERPT = 80


class SSEWithJSONDecoder:
    """Decode SSE ``data:`` blocks and bare JSON objects between them (see the module contract).

    Usage::

        frames = SSEWithJSONDecoder()
        for message in frames.feed(chunk):   # ServerSentEvent or dict
            ...
        frames.close()
    """

    def __init__(self, max_line_length: int = DEFAULT_MAX_LINE_LENGTH) -> None:
        self._lines = LineBuffer(max_line_length)
        self._max = max_line_length
        self._data: List[str] = []
        self._raw: List[str] = []
        self._raw_size = 0
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._failure: Optional[str] = None

    @property
    def failed(self) -> bool:
        """True once the input was refused; messages before it were returned, later calls raise."""
        return self._failure is not None or self._lines.failed

    @property
    def last_event_id(self) -> str:
        """Always "": this framing carries no event ids."""
        return ""

    def feed(self, data: bytes) -> List[Any]:
        """Add bytes; return the messages they complete, in order."""
        if self._failure is not None:
            raise MalformedStreamError(self._failure)
        return self._lines_to_messages(self._lines.feed(data))

    def close(self) -> List[Any]:
        """End of input: raise ``MalformedStreamError`` for a bare JSON text cut off."""
        if self._failure is not None:
            raise MalformedStreamError(self._failure)
        out = self._lines_to_messages(self._lines.close())
        if self._raw:
            self._failure = f"input ended inside a JSON object outside a data: line: {''.join(self._raw)[:_EXCERPT]!r}"
            if out:
                return out
            raise MalformedStreamError(self._failure)
        self._data.clear()  # a block without its blank line is discarded (WHATWG)
        return out

    def _lines_to_messages(self, lines: List[str]) -> List[Any]:
        out: List[Any] = []
        for line in lines:
            if self._raw or (not self._data and line[:1] in ("{", "[")):
                try:
                    value = self._raw_line(line)
                except MalformedStreamError:
                    if out:
                        return out
                    raise
                if value is not None:
                    out.append(value)
            elif not line:
                if self._data:
                    out.append(ServerSentEvent(data="\n".join(self._data)))
                    self._data = []
            elif line.startswith("data"):
                name, colon, value = line.partition(":")
                if name == "data":
                    self._data.append(value[1:] if value.startswith(" ") else value)
            # Comments and other fields (event, id, retry) carry nothing this framing uses.
        return out

    def _raw_line(self, line: str) -> Optional[Any]:
        self._raw.append(line)
        self._raw_size += len(line) + 1
        if self._raw_size > self._max:
            self._failure = f"a JSON object outside a data: line is longer than {self._max} bytes"
            raise MalformedStreamError(self._failure)
        for c in line:
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif c == "\\":
                    self._escaped = True
                elif c == '"':
                    self._in_string = False
            elif c == '"':
                self._in_string = True
            elif c in "{[":
                self._depth += 1
            elif c in "}]":
                self._depth -= 1
        if self._depth > 0:
            return None
        text = "\n".join(self._raw)
        self._raw, self._raw_size, self._depth, self._in_string, self._escaped = [], 0, 0, False, False
        try:
            return fast_loads(text)
        except ValueError as exc:
            self._failure = f"invalid JSON outside a data: line: {text[:_EXCERPT]!r} ({exc})"
            raise MalformedStreamError(self._failure) from exc
