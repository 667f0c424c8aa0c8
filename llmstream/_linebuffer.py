"""Bytes in, complete decoded lines out: the manual line buffer under every framing.

Contract
--------
Strategy:
  * Split *bytes*, decode *lines*. Incoming chunks are searched for line
    endings as bytes; only a complete line is decoded (UTF-8, invalid bytes
    become U+FFFD), so a multi-byte character cut in two by the network comes
    out whole.
  * A line ends at CR, LF or CRLF (the line endings of the event-stream
    grammar, https://html.spec.whatwg.org/multipage/server-sent-events.html#parsing-an-event-stream,
    which JSON lines also tolerate). A CR that ends one chunk ends its line at
    once; a LF at the start of the next chunk is then swallowed, so a CRLF cut
    in two is still ONE line ending (httpx's ``trailing_cr``).
  * The buffer only ever holds the bytes after the last line ending, so each
    feed searches only the new bytes and never rescans old ones: a long line
    arriving in many small feeds costs O(n), not O(n^2) (h11's
    ``_next_line_search``, taken to its conclusion).

Invariants:
  * Feeding the same bytes split anywhere gives the same lines.
  * A UTF-8 byte order mark is stripped once, at the very start of the stream
    only, even if it arrives split across feeds.
  * Never more than ``max_line_length`` bytes of an incomplete line are held:
    a line longer than that raises ``MalformedStreamError`` however it arrives.
    Complete lines before it in the same feed are returned first (they were
    received); the error then comes from the next call, and ``failed`` is
    True at once, so a caller need not wait for more input to learn of it.
  * After failing, the buffer stays failed: every later call raises again.

Never: split on U+2028, U+0085 (NEL) or any other Unicode separator (so never
``str.splitlines``); decode per network chunk; touch IO, threads or clocks.
"""

from __future__ import annotations

from typing import List, NoReturn, Optional

from ._exceptions import MalformedStreamError

__all__ = ["LineBuffer", "DEFAULT_MAX_LINE_LENGTH"]

# 1 MiB. A streamed LLM line is one JSON chunk: a few hundred bytes, a few
# KiB for a tool call, rarely a large base64 payload. Precedents for a cap:
# h11 refuses headers over 16 KiB, Node's http parser over 16 KiB, aiohttp
# caps a line at 8 KiB by default, and asyncio's StreamReader.readline() at
# 64 KiB. LLM lines are bigger than headers, so we allow 64x h11's limit:
# generous for real payloads, yet a server that never sends a newline cannot
# make us buffer without bound.
DEFAULT_MAX_LINE_LENGTH = 1_048_576

_BOM = b"\xef\xbb\xbf"


class LineBuffer:
    """Split a byte stream into decoded lines, CR/LF/CRLF aware, across any chunking.

    Usage::

        buffer = LineBuffer()
        for chunk in chunks:
            for line in buffer.feed(chunk):
                ...
        for line in buffer.close():   # a final line without a line ending
            ...

    Args:
        max_line_length: the longest line, in bytes without its line ending,
            that may be buffered; a longer one raises ``MalformedStreamError``.
    """

    __slots__ = ("max_line_length", "_buf", "_trailing_cr", "_at_start", "_failure", "_closed", "failed", "idle")

    def __init__(self, max_line_length: int = DEFAULT_MAX_LINE_LENGTH) -> None:
        if max_line_length < 1:
            raise ValueError(f"max_line_length must be at least 1, got {max_line_length!r}")
        self.max_line_length = max_line_length
        # Bytes after the last line ending: never holds a CR or LF.
        self._buf = bytearray()
        # The last chunk ended with CR: a LF starting the next one is its pair.
        self._trailing_cr = False
        # No byte seen yet that rules out a leading BOM.
        self._at_start = True
        # The message of the error raised, repeated by every later call.
        self._failure: Optional[str] = None
        #: True once a line was too long: lines before it were returned, every later
        #: call raises (an attribute, not a property: the framing reads it at every read).
        self.failed = False
        self._closed = False
        #: True when the buffer holds nothing from before: no part of a line,
        #: no CR whose LF may follow, past the stream's start (BOM), neither
        #: failed nor closed. Then a read of whole LF-terminated lines, no CR
        #: in them and none too long, is its own lines: a framing's fast path
        #: may take it without a call here (issue 17). Kept up to date by
        #: ``feed_region`` and ``close``, the only calls that change the state.
        self.idle = False

    def feed(self, data: bytes) -> List[str]:
        """Add bytes; return the lines they complete, decoded, without line endings.

        Lines completed before an over-long line in the same ``data`` are
        returned; the failure is then raised by every later call, and
        :attr:`failed` is True at once.

        Raises:
            MalformedStreamError: a line is longer than ``max_line_length``
                (and on every call after that).
            RuntimeError: called after ``close()``.
        """
        region = self.feed_region(data)
        if region is None:
            return []
        # Decoding the region once gives the same lines as decoding each
        # line: 0x0A is ASCII, never part of a multi-byte sequence, and the
        # decoder replaces an invalid or cut sequence before a LF without
        # consuming the LF.
        return region.decode("utf-8", "replace").split("\n")

    def feed_region(self, data: bytes) -> Optional[bytes]:
        """Like :meth:`feed`, but return the complete lines as undecoded bytes joined by LF (None if none).

        One bytes object instead of a list of lines lets a framing look at a
        whole region with C-speed bytes methods before (or instead of)
        splitting it; lines are still decoded one at a time, by the caller.
        ``region.decode("utf-8", "replace").split("\\n") == feed(data)``.

        Raises:
            MalformedStreamError: as :meth:`feed`.
            RuntimeError: called after ``close()``.
        """
        try:
            return self._feed_region(data)
        finally:
            self.idle = (not self._buf and not self._trailing_cr and not self._at_start and self._failure is None
                         and not self._closed)

    def _feed_region(self, data: bytes) -> Optional[bytes]:
        if self._failure is not None:
            raise MalformedStreamError(self._failure)
        if self._closed:
            raise RuntimeError("LineBuffer.feed() called after close(); use a new LineBuffer per stream")
        if not data:
            return None
        if self._at_start:
            data = self._strip_bom(data)
            if not data:
                return None
        if self._trailing_cr:
            self._trailing_cr = False
            if data[:1] == b"\n":
                data = data[1:]
        # find(), not ``in``: ``bytes in bytes`` first tries the needle as an
        # int and raises and clears a TypeError inside, ~2,000 instructions a read.
        if data.find(b"\r") >= 0:
            # Lone CRs and CRLFs become LF; a CR ending the chunk is a line
            # ending now, and its LF, if it comes, is dropped by the next feed.
            self._trailing_cr = data[-1:] == b"\r"
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = data.rfind(b"\n")
        buf = self._buf
        if end < 0:
            if len(buf) + len(data) > self.max_line_length:
                self._fail()
            buf += data
            return None
        # The memoryview slices copy nothing: the region is built in one copy.
        view = memoryview(data)
        region = b"".join((buf, view[:end])) if buf else data[:end]
        if len(region) > self.max_line_length:
            bad = self._first_long_line(region)
            if bad >= 0:
                # The lines before the long one were received whole: hand them
                # over, and fail from the next call on (``failed`` says so now).
                self._set_failure()
                if bad == 0:
                    raise MalformedStreamError(self._failure or "")
                return region[: bad - 1]
        if len(data) - end - 1 > self.max_line_length:
            self._set_failure()
            return region
        buf[:] = view[end + 1 :]
        return region

    def close(self) -> List[str]:
        """Signal end of input; return the final line if it had no line ending.

        The line buffer does not judge an unterminated last line: the framing
        above it decides what it means. Calling ``close()`` again returns ``[]``.

        Raises:
            MalformedStreamError: if the buffer had already failed.
        """
        self.idle = False
        if self._failure is not None:
            raise MalformedStreamError(self._failure)
        if self._closed:
            return []
        self._closed = True
        if not self._buf:
            return []
        if len(self._buf) > self.max_line_length:
            self._fail()  # a held-back BOM prefix is the only way to get here
        line = self._buf.decode("utf-8", "replace")
        self._buf.clear()
        return [line]

    def _strip_bom(self, data: bytes) -> bytes:
        """Drop a leading UTF-8 BOM, holding back a possible BOM prefix until it is known."""
        head = bytes(self._buf) + data
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._buf[:] = head
            return b""
        self._at_start = False
        self._buf.clear()
        return head[len(_BOM) :] if head.startswith(_BOM) else head

    def _first_long_line(self, region: bytes) -> int:
        """Where the first too-long line of a region of complete lines starts, or -1 (large regions only)."""
        limit = self.max_line_length
        start = 0
        while True:
            end = region.find(b"\n", start)
            if (len(region) if end < 0 else end) - start > limit:
                return start
            if end < 0:
                return -1
            start = end + 1

    def _set_failure(self) -> None:
        self._buf.clear()
        self._failure = f"line longer than the maximum of {self.max_line_length} bytes"
        self.failed = True

    def _fail(self) -> NoReturn:
        self._set_failure()
        raise MalformedStreamError(self._failure or "")
