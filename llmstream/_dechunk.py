"""HTTP/1.1 chunked transfer coding, undone: raw body bytes in, payload bytes out.

Spec: RFC 9112 section 7.1 (https://www.rfc-editor.org/rfc/rfc9112#section-7.1)::

    chunked-body = *chunk last-chunk trailer-section CRLF
    chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
    chunk-size   = 1*HEXDIG
    last-chunk   = 1*("0") [ chunk-ext ] CRLF
    chunk-ext    = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
    chunk-ext-val = token / quoted-string
    trailer-section = *( field-line CRLF )
    field-line   = field-name ":" OWS field-value OWS

Strategy: a state machine (size line, data, CRLF after the data, trailer
lines) over bytes fed as they arrive, returning all the payload that the bytes
so far complete, in one piece. A size or trailer line is judged only once it
is whole, by ``fullmatch`` of a compiled bytes regex over the line in place;
only then is the size converted, from at most 16 hex digits the regex already
checked (``int(x, 16)`` alone would take ``-6``, ``+5``, ``0x5``, ``5_0`` and
surrounding spaces). The data bytes are never searched, only sliced.

Rules, and where they differ from h11 0.16 (the reference the differential
test compares against, tests/test_dechunk_differential.py):

* Size lines end in CRLF; a bare LF is not a line end there, so ``5\\n`` is a
  malformed line once the CRLF arrives (as in h11). After the data, exactly
  CRLF, rejected at its first wrong byte (as in h11).
* Trailer lines end in LF with an optional CR before it (RFC 9112 section 2.2
  lets a recipient accept a bare LF for field lines; h11 does), and use h11's
  field grammar, obsolete line folding included (RFC 9112 section 5.2: a user
  agent must accept it). Unlike h11, which judges the trailer section once
  its blank line arrives, a bad trailer line is rejected as soon as it is whole.
* Stricter than h11: chunk extensions must follow the grammar above (h11
  takes anything after ``;``); no whitespace after the size unless an
  extension follows (h11 takes trailing whitespace); at most 16 hex digits,
  enough for any body (h11 takes 20).
* Laxer than h11: ``BWS`` before ``;``, as the grammar allows (h11 refuses it).
* A size or trailer line longer than ``MAX_LINE`` (4 KiB) is rejected, so a
  broken peer cannot make it buffer without bound (h11: 16 KiB per event).

Invariants: every step of ``feed``'s loop moves ``pos`` strictly forward or
leaves the loop to wait for bytes, so ``feed`` ends in at most ``len(data)``
steps plus the buffered line (sizes are non-negative by the grammar, and a
data step takes at least one byte). After a :class:`MalformedStreamError` the
decoder stays failed: every later ``feed`` raises it again (h11's ``ERROR``).
Never: regex the payload, buffer more than one line, or raise anything but
:class:`MalformedStreamError`.

Sans-IO: no sockets, threads or clocks; the transport feeds it.
"""

from __future__ import annotations

import re
from typing import List, Optional

from ._exceptions import MalformedStreamError

__all__ = ["Dechunker"]

# Grammar pieces, as in h11/_abnf.py (RFC 9110 section 5.6).
_OWS = rb"[ \t]*"
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
# quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE; qdtext excludes '"' and
# '\'; a quoted-pair is '\' then HTAB / SP / VCHAR / obs-text (RFC 9110 section 5.6.4).
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_EXT = rb"(?:%s;%s%s(?:%s=%s(?:%s|%s))?)*" % (_OWS, _OWS, _TOKEN, _OWS, _OWS, _TOKEN, _QUOTED)
# 16 hex digits cover 2**64 - 1 bytes: more is a size no body needs (h11 caps at 20).
_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})" + _CHUNK_EXT)
# The same line with its CRLF, for the one-chunk read: the line's grammar has no
# CR or LF, so a match ends at the first CRLF, as _decode's find() of it does.
_SIZE_LINE_CRLF = re.compile(_SIZE_LINE.pattern + rb"\r\n")
# h11's field-value: visible bytes and obs-text, plus the control bytes some
# servers send, but never NUL or whitespace other than SP/HTAB between words.
_FIELD_CONTENT = rb"[^\x00\s]+(?:[ \t]+[^\x00\s]+)*"
_FIELD_LINE = re.compile(rb"%s:%s(?:%s)?%s" % (_TOKEN, _OWS, _FIELD_CONTENT, _OWS))
# obs-fold: a line starting with whitespace continues the previous field line.
_FIELD_OR_FOLD = re.compile(rb"%s:%s(?:%s)?%s|[ \t]+(?:%s)?%s" % (
    _TOKEN, _OWS, _FIELD_CONTENT, _OWS, _FIELD_CONTENT, _OWS))

# States: what the next bytes are.
_SIZE, _DATA, _CRLF, _TRAILER_START, _TRAILER = range(5)


class Dechunker:
    """HTTP/1.1 chunked transfer coding (RFC 9112 section 7.1): raw body bytes in, payload out.

    Why: ``read1`` on a chunked urllib3/http.client response returns at most ONE
    chunk per call, so a server writing one event per chunk costs one read, one
    decode and one hand-over per token. Reading the connection's buffered reader
    with ``read1`` and de-chunking here returns everything already received at once.
    Chunk extensions and trailer fields are checked against the grammar, then ignored.
    """

    __slots__ = ("_buf", "_left", "_state", "_error", "done", "failed")

    #: The longest chunk-size or trailer line accepted, without its line end.
    MAX_LINE = 4096

    def __init__(self) -> None:
        self._buf = b""  # the start of a line not yet whole (at most MAX_LINE + 1 bytes)
        self._left = 0  # payload bytes of the current chunk still to come (> 0 in _DATA)
        self._state = _SIZE
        self._error: Optional[str] = None
        #: True once the last chunk and the trailer section have been read.
        self.done = False
        #: True once the bytes were found malformed: every later ``feed`` raises
        #: (an attribute, not a property: it is read at every read).
        self.failed = False

    def feed(self, data: bytes) -> bytes:
        """Return the payload that ``data`` completes; set ``done`` at the body's end.

        Bytes after the body's end are not payload and are dropped; a feed once
        ``done`` returns ``b""``.

        If the bytes turn malformed after some payload, that payload is
        returned and the decoder is :attr:`failed`: the next call raises.

        Raises:
            MalformedStreamError: the bytes are not chunked coding (and no
                payload came before the fault in this call); raised again by
                every later call.
        """
        if self._state == _SIZE and not self._buf and self._error is None:
            # The usual read of a slow stream: exactly one whole chunk
            # (size line, data, CRLF). Judged by the same rules as _decode's
            # size step, and the state stays as it was: waiting for a size.
            # One regex call finds and checks the size line, at most MAX_LINE
            # bytes and its CRLF (no bytes.find(): its argument parsing alone
            # costs more than the match).
            match = _SIZE_LINE_CRLF.match(data, 0, self.MAX_LINE + 2)
            if match is not None:
                start = match.end()
                stop = start + int(match.group(1), 16)
                if stop > start and data[stop:] == b"\r\n":  # the data, then its CRLF, then nothing
                    return data[start:stop]
        return self._feed_general(data)

    def _feed_general(self, data: bytes) -> bytes:
        """:meth:`feed` for any bytes: the state machine (the fast path's reference in the tests)."""
        if self._error is not None:
            raise MalformedStreamError(self._error)
        buf = self._buf + data if self._buf else data
        out: List[bytes] = []
        try:
            self._buf = self._decode(buf, out)
        except MalformedStreamError:
            if not any(out):
                raise
            # Payload decoded before the fault was received all the same: hand
            # it over; the fault is raised by the next call.
        return out[0] if len(out) == 1 else b"".join(out)

    def _decode(self, buf: bytes, out: List[bytes]) -> bytes:
        """Append the payload ``buf`` completes to ``out``; return the bytes of a line not yet whole."""
        pos, end = 0, len(buf)
        # Each pass moves pos forward (every ``new`` below is > pos) or leaves the loop.
        while pos < end and not self.done:
            state = self._state
            if state == _DATA:
                # _left > 0 here, so this takes at least one byte.
                stop = pos + self._left
                if stop >= end:
                    out.append(buf[pos:end])
                    self._left = stop - end
                    if not self._left:
                        self._state = _CRLF
                    pos = end
                    break
                out.append(buf[pos:stop])
                self._left = 0
                self._state = _CRLF
                new = stop
            elif state == _CRLF:
                new = self._crlf(buf, pos, end)
            elif state == _SIZE:
                # The usual case inline (a whole, valid line of a non-last chunk):
                # it runs once per chunk; _size_line handles every other case.
                eol = buf.find(b"\r\n", pos)
                match = _SIZE_LINE.fullmatch(buf, pos, eol) if 0 <= eol - pos <= self.MAX_LINE else None
                left = int(match.group(1), 16) if match is not None else 0
                if left:
                    self._left, self._state = left, _DATA
                    new = eol + 2
                else:
                    new = self._size_line(buf, pos, end)
            else:
                new = self._trailer_line(buf, pos, end)
            if new == pos:  # the line or CRLF is not whole yet: wait for more bytes
                break
            pos = new
        return b"" if self.done else buf[pos:]

    def _crlf(self, buf: bytes, pos: int, end: int) -> int:
        """The CRLF after a chunk's data: return ``pos + 2``, or ``pos`` if only a CR has come."""
        if buf.startswith(b"\r\n", pos):
            self._state = _SIZE
            return pos + 2
        if end - pos == 1 and buf[pos] == 0x0D:
            return pos
        raise self._fail("invalid chunked body: chunk data not followed by CRLF")

    def _size_line(self, buf: bytes, pos: int, end: int) -> int:
        """A chunk-size line: return the position after its CRLF, or ``pos`` if it is not whole."""
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            # The line may still end in the CR of its CRLF, hence the + 1.
            if end - pos > self.MAX_LINE + 1:
                raise self._fail("invalid chunked body: chunk size line too long")
            return pos
        if eol - pos > self.MAX_LINE:
            raise self._fail("invalid chunked body: chunk size line too long")
        match = _SIZE_LINE.fullmatch(buf, pos, eol)
        if match is None:
            raise self._fail(f"invalid chunk size line {buf[pos:min(eol, pos + 40)]!r}")
        size = int(match.group(1), 16)
        if size:
            self._left, self._state = size, _DATA
        else:
            self._state = _TRAILER_START
        return eol + 2

    def _trailer_line(self, buf: bytes, pos: int, end: int) -> int:
        """A trailer line, or the blank line ending the body: return the position after its LF, or ``pos``."""
        eol = buf.find(b"\n", pos)
        if eol < 0:
            if end - pos > self.MAX_LINE + 1:
                raise self._fail("invalid chunked body: trailer line too long")
            return pos
        stop = eol - 1 if eol > pos and buf[eol - 1] == 0x0D else eol
        if stop - pos > self.MAX_LINE:
            raise self._fail("invalid chunked body: trailer line too long")
        if stop == pos:
            self.done = True
        elif (_FIELD_LINE if self._state == _TRAILER_START else _FIELD_OR_FOLD).fullmatch(buf, pos, stop):
            self._state = _TRAILER
        else:
            raise self._fail(f"invalid chunked body trailer line {buf[pos:min(stop, pos + 40)]!r}")
        return eol + 1

    def _fail(self, message: str) -> MalformedStreamError:
        """Enter the failed state (h11's ERROR): every later feed raises ``message`` again."""
        self._error = message
        self.failed = True
        self._buf = b""
        return MalformedStreamError(message)
