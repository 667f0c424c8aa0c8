"""The per-token fast paths (issue 17) against the same decoders without them.

Each fast path shortcuts a general path and must be invisible: for any bytes,
split anywhere, the decoder with the fast path returns the same output, raises
the same error (type and message) and is left in the same state as a
reference that never takes it:

* ``Dechunker.feed``'s one-whole-chunk read, against :class:`SlowDechunker`
  (the same class with ``feed``'s general part only);
* ``LineBuffer.idle`` (what the SSE one-event read trusts instead of calling
  the line buffer) against the buffer's state, and what ``feed_region`` does
  with a read of whole lines when it is set;
* ``SSEDecoder.feed``'s one-event read (and its region fast path), against
  :class:`SlowSSE`, whose ``feed`` is ``LineBuffer.feed`` then the
  line-by-line interpretation.

The chunkings are biased to the fast paths' shapes: splits at chunk and
event boundaries, often one chunk or one event per feed.
"""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from llmstream._dechunk import Dechunker
from llmstream._exceptions import MalformedStreamError
from llmstream._linebuffer import LineBuffer
from llmstream.sse import SSEDecoder

SETTINGS = settings(max_examples=400, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- helpers ------------------------------------------------------------------------------


def split_at(data: bytes, points: Sequence[int]) -> List[bytes]:
    cuts = sorted({p for p in points if 0 < p < len(data)})
    out, last = [], 0
    for cut in cuts:
        out.append(data[last:cut])
        last = cut
    out.append(data[last:])
    return [p for p in out if p]


@st.composite
def chunkings(draw: Any, data: bytes, boundaries: Sequence[int]) -> List[bytes]:
    """``data`` split: at every boundary, at a random subset of them, at random points, or a mix."""
    how = draw(st.sampled_from(["boundaries", "some-boundaries", "random", "mix", "bytewise", "whole"]))
    if how == "whole" or not data:
        return [data]
    if how == "bytewise":
        return [data[i:i + 1] for i in range(len(data))]
    points: List[int] = []
    if how in ("boundaries", "mix"):
        points += list(boundaries)
    if how == "some-boundaries":
        points += [b for b in boundaries if draw(st.booleans())]
    if how in ("random", "mix"):
        points += draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=8))
    return split_at(data, points)


def outcome(call: Any) -> Tuple[str, Any]:
    try:
        return "ok", call()
    except MalformedStreamError as exc:
        return "MalformedStreamError", str(exc)
    except RuntimeError as exc:
        return "RuntimeError", str(exc)


# -- chunked transfer coding ----------------------------------------------------------------


class SlowDechunker(Dechunker):
    """The Dechunker with ``feed``'s general part only (the reference)."""

    __slots__ = ()

    def feed(self, data: bytes) -> bytes:
        return self._feed_general(data)


def dechunker_state(d: Dechunker) -> Tuple[Any, ...]:
    return (d._buf, d._left, d._state, d._error, d.done, d.failed)


_SIZE_FORMS = [b"%x", b"%X", b"000%x", b"%x;a=b", b"%x ; q=\"x;y\"", b"%x;", b"%x ", b"-%x", b"0x%x", b"%x\n"]


@st.composite
def chunk_bodies(draw: Any) -> Tuple[bytes, List[int]]:
    """A chunked body (valid, or with faults where the fast path looks) and its chunk boundaries."""
    pieces = draw(st.lists(st.binary(min_size=1, max_size=12), min_size=0, max_size=6))
    out: List[bytes] = []
    for piece in pieces:
        form = draw(st.sampled_from(_SIZE_FORMS[:5]) if draw(st.integers(0, 9)) else st.sampled_from(_SIZE_FORMS))
        size = len(piece) + draw(st.sampled_from([0] * 12 + [-1, 1, 2]))
        size = max(size, 0)
        end = draw(st.sampled_from([b"\r\n"] * 12 + [b"\n", b"\r", b"", b"\r\r\n", b"xx"]))
        # Data that holds CRLF and size-line look-alikes: the fast path must slice, never search.
        if draw(st.integers(0, 5)) == 0:
            piece = b"\r\n" + piece + b"\r\n5\r\n"
            size = len(piece)
        out.append(form % size + b"\r\n" + piece + end)
    if draw(st.booleans()):
        trailers = draw(st.sampled_from([b"", b"X-T: 1\r\n", b"X-T: 1\n", b"bad trailer\r\n"]))
        out.append(draw(st.sampled_from([b"0", b"000", b"0;e=1"])) + b"\r\n" + trailers + b"\r\n")
        if draw(st.booleans()):
            out.append(b"5\r\nafter\r\n")  # bytes after the body's end are dropped
    if draw(st.integers(0, 6)) == 0:
        out.insert(draw(st.integers(0, len(out))), draw(st.binary(max_size=6)))
    boundaries, pos = [], 0
    for part in out:
        pos += len(part)
        boundaries.append(pos)
    return b"".join(out), boundaries


def run_dechunker(cls: type, parts: Sequence[bytes]) -> List[Tuple[Any, ...]]:
    d = cls()
    trace = []
    for part in parts + [b""]:  # a last empty feed: a pending failure is raised
        trace.append(outcome(lambda: d.feed(part)) + (dechunker_state(d),))
    return trace


@st.composite
def dechunk_cases(draw: Any) -> List[bytes]:
    body, boundaries = draw(chunk_bodies())
    return draw(chunkings(body, boundaries))


@SETTINGS
@given(dechunk_cases())
@example([b"5\r\nhello\r\n", b"3\r\nabc\r\n", b"0\r\n\r\n"])
@example([b"5\r\nhello\r\n", b"5\r\nhell\r\n"])  # a malformed chunk right after a fast-path one
@example([b"5\r\nhello\r\n", b"0\r\n\r\n", b"5\r\nhello\r\n"])  # a whole chunk after the end
@example([b"5\r\nhel", b"lo\r\n", b"3\r\nabc\r\n"])  # a whole chunk after a split one
@example([b"5\r\nhello\r", b"\n3\r\nabc\r\n"])  # the CR of a chunk's CRLF ends a read
@example([b"5\r\nhello\r\n", b"5;e\r\nhello\r\n"])  # an extension without its value, then more
@example([b"5\r\nhello\n\r\n"])  # data followed by the wrong line end: the slice must not fit
@example([b"0\r\n\r\n"])  # the last chunk alone is never the fast path (size 0)
@example([b"10000000000000000\r\n" + b"x" * 4 + b"\r\n"])  # 17 hex digits
@example([b"5;" + b"e" * 4094 + b"\r\nhello\r\n"])  # a size line of exactly MAX_LINE bytes
@example([b"5;" + b"e" * 4095 + b"\r\nhello\r\n"])  # one byte over MAX_LINE
def test_dechunker_fast_path_is_invisible(parts: List[bytes]) -> None:
    assert run_dechunker(Dechunker, parts) == run_dechunker(SlowDechunker, parts)


def test_the_fast_path_is_taken() -> None:
    # The differential test is only worth something if the fast path runs:
    # a whole chunk from the waiting state comes back as a slice of the read,
    # without the general path's buffering.
    d = Dechunker()
    calls = []
    real = Dechunker._decode

    class Spy(Dechunker):
        __slots__ = ()

        def _decode(self, buf: bytes, out: List[bytes]) -> bytes:
            calls.append(buf)
            return real(self, buf, out)

    d = Spy()
    assert d.feed(b"5\r\nhello\r\n") == b"hello"
    assert d.feed(b"3;x=y\r\nabc\r\n") == b"abc"
    assert calls == []
    assert d.feed(b"0\r\n\r\n") == b"" and d.done and calls == [b"0\r\n\r\n"]


# -- the line buffer --------------------------------------------------------------------------


def line_state(b: LineBuffer) -> Tuple[Any, ...]:
    return (bytes(b._buf), b._trailing_cr, b._at_start, b._failure, b.failed, b._closed, b.idle)


_LINE_BYTES = st.lists(st.sampled_from([b"a", b"\n", b"\r", b"\xef\xbb\xbf", b"\xef", b"\xff", b"data: x", b"\xc3\xa9"]),
                       max_size=12).map(b"".join)


@SETTINGS
@given(prefix=st.lists(_LINE_BYTES, max_size=4), data=_LINE_BYTES, limit=st.integers(1, 12), close=st.booleans())
@example(prefix=[b"\xef\xbb\xbf"], data=b"abc\n", limit=8, close=False)
@example(prefix=[b"x\n"], data=b"abcdefgh\n", limit=8, close=False)  # exactly max_line_length + 1
@example(prefix=[b"x\n"], data=b"abcdefghi\n", limit=8, close=False)  # one byte over
@example(prefix=[b"x\r"], data=b"\nabc\n", limit=8, close=False)  # a CRLF cut in two
@example(prefix=[b"x\n"], data=b"\xef\xbb\xbfab\n", limit=8, close=False)  # a BOM later is data
@example(prefix=[b"x"], data=b"ab\n", limit=8, close=False)  # part of a line held
def test_idle_is_the_state_and_a_whole_read_is_its_own_lines(
        prefix: List[bytes], data: bytes, limit: int, close: bool) -> None:
    b = LineBuffer(limit)
    assert not b.idle  # at the start a BOM may still come
    for part in prefix:
        outcome(lambda: b.feed(part))
        assert b.idle == (not b._buf and not b._trailing_cr and not b._at_start and b._failure is None
                          and not b._closed)
    if close:
        outcome(b.close)
        assert not b.idle
    whole = data[-1:] == b"\n" and data.find(b"\r") < 0 and len(data) <= limit + 1
    if b.idle and whole:
        # What the SSE one-event read assumes when it skips the line buffer.
        assert outcome(lambda: b.feed_region(data)) == ("ok", data[:-1])
        assert b.idle


# -- server-sent events -----------------------------------------------------------------------


class SlowSSE(SSEDecoder):
    """The SSE decoder without its fast paths: the line buffer's general path, then line by line."""

    __slots__ = ()

    def feed(self, data: bytes) -> List[Any]:
        return self._feed_lines(self._lines.feed(data))


def sse_state(d: SSEDecoder) -> Tuple[Any, ...]:
    return (list(d._data), d._event, d._id, d._last_event_id, d._retry, line_state(d._lines))


_FIELDS = st.sampled_from([
    b"data: x", b"data: {\"a\": 1}", b"data:x", b"data:  two spaces", b"data", b"data:", b"data: ",
    b": comment", b":", b"event: e", b"event:", b"id: 7", b"id", b"id: a\x00b", b"retry: 10", b"retry: x",
    b"other: y", b"data: \xc3\xa9t\xc3\xa9", b"data: \xff\xfe", b"data: \xe6\x97", b"\xef\xbb\xbfdata: bom",
    b"data: [DONE]", b"data: " + b"L" * 20, b"data: " + b"M" * 40,
])
_ENDS = st.sampled_from([b"\n"] * 8 + [b"\r\n", b"\r"])


@st.composite
def sse_streams(draw: Any) -> Tuple[bytes, List[int]]:
    """An event stream, mostly ``data: X`` blocks, with hostile lines and line ends, and its event boundaries."""
    out: List[bytes] = []
    if draw(st.integers(0, 4)) == 0:
        out.append(draw(st.sampled_from([b"\xef\xbb\xbf", b"\xef\xbb", b"\xef\xbb\xbf\xef\xbb\xbf"])))
    boundaries = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.integers(0, 2)):
            # The LLM shape: one data line and its blank line.
            value = draw(st.sampled_from([b"x", b"", b"{\"t\":\"hi\"}", b"\xc3\xa9", b"\xff", b"a" * 30]))
            block = b"data: " + value + b"\n\n"
        else:
            lines = draw(st.lists(_FIELDS, min_size=0, max_size=4))
            block = b""
            for line in lines:
                block += line + draw(_ENDS)
                # A line boundary inside a block: the next read may be the fast shape with a field pending.
                boundaries.append(len(b"".join(out)) + len(block))
            block += draw(_ENDS)
        out.append(block)
        boundaries.append(len(b"".join(out)))
    if draw(st.integers(0, 3)) == 0:
        out.append(draw(_FIELDS))  # an unterminated last line
    return b"".join(out), boundaries


@st.composite
def sse_cases(draw: Any) -> Tuple[List[bytes], int]:
    stream, boundaries = draw(sse_streams())
    limit = draw(st.sampled_from([8, 20, 26, 27, 28, 40, 1 << 20]))
    return draw(chunkings(stream, boundaries)), limit


def run_sse(cls: type, parts: Sequence[bytes], limit: int) -> List[Tuple[Any, ...]]:
    d = cls(max_line_length=limit)
    trace = []
    for part in parts:
        trace.append(outcome(lambda: [(e.event, e.data, e.id, type(e)) for e in d.feed(part)]) + (sse_state(d),))
    trace.append(outcome(d.close) + (sse_state(d),))
    trace.append(outcome(lambda: d.feed(b"data: x\n\n")) + (sse_state(d),))  # after close: RuntimeError (or the failure)
    return trace


@SETTINGS
@given(sse_cases())
@example(([b"\xef\xbb\xbf", b"data: a\n\n", b"data: b\n\n"], 1 << 20))
@example(([b"data: a\n\n", b"data: \xff\n\n", b"data: c\n\n"], 1 << 20))  # invalid UTF-8 in a one-event read
@example(([b"data: a\n\n", b"data: " + b"x" * 30 + b"\n\n"], 20))  # a one-event read with an over-long line
@example(([b"data: a\n\n", b"data: " + b"x" * 14 + b"\n\n"], 20))  # the line exactly max_line_length
@example(([b"data: a\n\n", b"data: " + b"x" * 15 + b"\n\n"], 20))  # one byte over
@example(([b"data: a\r", b"\ndata: b\n\n"], 1 << 20))  # a CRLF cut in two, then the fast shape
@example(([b"data: a\n", b"data: b\n\n"], 1 << 20))  # a data line pending: no one-event read
@example(([b"event: e\n", b"data: b\n\n"], 1 << 20))  # an event type pending
@example(([b"id: 9\n\n", b"data: b\n\n"], 1 << 20))
@example(([b"id: 9\n", b"data: b\n\n"], 1 << 20))  # an id pending: the one-event read sets last_event_id
@example(([b"retry: 5\n", b"data: b\n\n", b"id: 1\n", b"data: c\n\n"], 1 << 20))  # the id of a block without data, then the fast shape
@example(([b"data: a\n\n", b"data: b\n\ndata: c\n\n"], 1 << 20))
@example(([b"data: a\n\n", b"data: b\n\n\n"], 1 << 20))
@example(([b"data: a\n\n", b"data: b\ndata: c\n\n"], 1 << 20))
@example(([b"data: a\n\n", b"data: b\n\xef\xbb\xbf\n"], 1 << 20))
@example(([b"\xef\xbb", b"\xbfdata: a\n\n"], 1 << 20))
@example(([b"data: a\n\n", b"data:b\n\n"], 1 << 20))
@example(([b"data: a\n\n", b"data: b\rid: 7\n\n"], 1 << 20))  # a lone CR ends a line too
def test_sse_fast_paths_are_invisible(case: Tuple[List[bytes], int]) -> None:
    parts, limit = case
    assert run_sse(SSEDecoder, parts, limit) == run_sse(SlowSSE, parts, limit)


def test_the_one_event_read_is_taken() -> None:
    # Guard for the differential test: the one-event read really skips the line buffer's general path.
    d = SSEDecoder()
    d.feed(b"data: first\n\n")  # past the BOM check
    called = []
    lines = d._lines

    class Spy(LineBuffer):
        __slots__ = ()

        def feed_region(self, data: bytes) -> Any:
            called.append(data)
            return LineBuffer.feed_region(self, data)

    spy = Spy(lines.max_line_length)
    spy._at_start = False
    spy.idle = True
    d._lines = spy
    events = d.feed(b"data: two\n\n")
    assert [(e.event, e.data) for e in events] == [("message", "two")]
    assert called == []
