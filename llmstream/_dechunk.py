"""HTTP/1.1 chunked transfer coding, undone: raw body bytes in, payload bytes out.

Strategy: a small state machine (size line, data, CR LF after the data,
trailer) over bytes fed as they arrive; it returns all the payload that the
bytes so far complete, in one piece. Spec: RFC 9112 section 7.1. Chunk
extensions and trailer fields are read and ignored; a size or trailer line is
capped at 4 KiB, so a broken peer cannot make it buffer without bound.

Sans-IO: no sockets, threads or clocks; the transport feeds it.
"""

from __future__ import annotations

from ._exceptions import MalformedStreamError

__all__ = ["Dechunker"]


class Dechunker:
    """HTTP/1.1 chunked transfer coding (RFC 9112 section 7.1): raw body bytes in, payload out.

    Why: ``read1`` on a chunked urllib3/http.client response returns at most ONE
    chunk per call, so a server writing one event per chunk costs one read, one
    decode and one hand-over per token. Reading the connection's buffered reader
    with ``read1`` and de-chunking here returns everything already received at once.
    Chunk extensions and trailer fields are read and ignored.
    """

    __slots__ = ("_buf", "_left", "_state", "done")

    _SIZE, _DATA_END, _TRAILER = 0, 1, 2
    #: The longest chunk-size or trailer line accepted.
    MAX_LINE = 4096

    def __init__(self) -> None:
        self._buf = b""
        self._left = 0  # payload bytes of the current chunk still to come
        self._state = self._SIZE
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """Return the payload in ``data``; sets ``done`` at the last chunk's end.

        Raises:
            MalformedStreamError: not chunked coding.
        """
        buf = self._buf + data if self._buf else data
        out = []
        pos, end = 0, len(buf)
        while pos < end and not self.done:
            if self._left:
                stop = min(end, pos + self._left)
                out.append(buf[pos:stop])
                self._left -= stop - pos
                pos = stop
                if not self._left:
                    self._state = self._DATA_END
            elif self._state == self._DATA_END:
                if end - pos < 2:
                    break
                if buf[pos:pos + 2] != b"\r\n":
                    raise MalformedStreamError("invalid chunked body: chunk data not followed by CRLF")
                pos += 2
                self._state = self._SIZE
            else:
                eol = buf.find(b"\n", pos)
                if eol < 0:
                    if end - pos > self.MAX_LINE:
                        raise MalformedStreamError("invalid chunked body: chunk size line too long")
                    break
                line = buf[pos:eol].rstrip(b"\r")
                pos = eol + 1
                if self._state == self._TRAILER:
                    self.done = not line
                    continue
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise MalformedStreamError(f"invalid chunk size line {line[:40]!r}") from None
                if size:
                    self._left = size
                else:
                    self._state = self._TRAILER
        self._buf = buf[pos:]
        return out[0] if len(out) == 1 else b"".join(out)
