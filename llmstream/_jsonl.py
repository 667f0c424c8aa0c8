"""JSON lines framing (Ollama's ``application/x-ndjson``): bytes in, parsed JSON values out.

Contract
--------
Spec: JSON Lines, https://jsonlines.org/ (one JSON value per line, UTF-8),
as relaxed by NDJSON readers: blank and whitespace-only lines are skipped,
and a line may end with CR, LF or CRLF.

Strategy: :class:`~llmstream._linebuffer.LineBuffer` yields complete decoded
lines; each non-blank line is parsed with ``_fastjson.loads`` (``json.loads``
with bounded nesting). A final line without its line ending is parsed by
``close()``: JSON lines has no block terminator, so a complete value on the
last line is a complete message.

Invariants: the same bytes give the same values however they are split;
line numbers in errors are 1-based and count every line, blank ones
included, so they match what an editor shows; after raising, the decoder
stays failed and every later call raises ``MalformedStreamError`` again.

Never: skip or repair a line that is not JSON (that would hide a truncated
or foreign stream), touch IO, threads or clocks.
"""

from __future__ import annotations

from typing import Any, List, Optional

from ._fastjson import loads as fast_loads
from ._exceptions import MalformedStreamError
from ._linebuffer import DEFAULT_MAX_LINE_LENGTH, LineBuffer

__all__ = ["JSONLinesDecoder"]

# Enough of a bad line to recognise it (an HTML error page, a proxy banner)
# without copying a megabyte into an exception message.
_EXCERPT = 80


class JSONLinesDecoder:
    """Decode a JSON-lines stream incrementally.

    Usage::

        decoder = JSONLinesDecoder()
        for chunk in chunks:
            for value in decoder.feed(chunk):
                ...
        for value in decoder.close():   # a last line without a line ending
            ...

    Args:
        max_line_length: the longest line accepted, in bytes; a longer one
            raises ``MalformedStreamError``.
    """

    __slots__ = ("_lines", "_line_number", "_failure")

    def __init__(self, max_line_length: int = DEFAULT_MAX_LINE_LENGTH) -> None:
        self._lines = LineBuffer(max_line_length)
        self._line_number = 0  # lines consumed so far
        self._failure: Optional[str] = None

    @property
    def failed(self) -> bool:
        """True once a line was not JSON or too long; values before it were returned, later calls raise."""
        return self._failure is not None or self._lines.failed

    def feed(self, data: bytes) -> List[Any]:
        """Add bytes; return the JSON values of the lines they complete, in order.

        Values of the lines before a bad line in the same ``data`` are returned;
        the error comes from the next call (:attr:`failed` is True at once).

        Raises:
            MalformedStreamError: a line is not JSON or is too long (and on
                every call after that).
            RuntimeError: called after ``close()``.
        """
        if self._failure is not None:
            raise MalformedStreamError(self._failure)
        return self._parse(self._lines.feed(data))

    def close(self) -> List[Any]:
        """Signal end of input; return the value of a last line without a line ending.

        Raises:
            MalformedStreamError: that line is not JSON, or the decoder had
                already failed.
        """
        if self._failure is not None:
            raise MalformedStreamError(self._failure)
        return self._parse(self._lines.close())

    def _parse(self, lines: List[str]) -> List[Any]:
        values: List[Any] = []
        loads = fast_loads
        for line in lines:
            self._line_number += 1
            # Blank means JSON whitespace only (RFC 8259: space and tab once
            # CR/LF are gone); str.isspace() would also skip a line of U+00A0.
            if not line.strip(" \t"):
                continue
            try:
                values.append(loads(line))
            except ValueError as exc:  # JSONDecodeError, or JSONNestingError (too deep)
                self._failure = f"invalid JSON on line {self._line_number}: {line[:_EXCERPT]!r} ({exc})"
                if values:
                    return values  # received whole before the bad line; the error comes next call
                raise MalformedStreamError(self._failure) from exc
        return values
