"""Dechunker against h11's chunked reader, on random valid and broken bodies.

h11 (https://github.com/python-hyper/h11) gets a request, then a response head
with ``Transfer-Encoding: chunked``, then the body; the Dechunker gets the body
whole, bytewise and split in two at every point. Outcomes are ``done`` (with
the payload), ``partial`` (not done, the payload so far) or ``error``.

The differences the Dechunker's docstring documents are the only ones allowed:

* size-line grammar (stricter extensions, no trailing whitespace, 16 digits;
  BWS before ``;`` accepted). ``test_same_as_h11`` judges each size line with
  both grammars (a recording stand-in for the module's regex) and, at the
  first line they disagree on, checks the disagreement is one of those;
  ``test_same_as_h11_with_its_size_grammar`` swaps h11's size grammar in and
  must then agree with h11 everywhere else, exactly;
* a bad trailer line fails as soon as it is whole, where h11 waits for the
  blank line: allowed when h11 fails on the same bytes once the blank line comes.
"""

from __future__ import annotations

import re
from unittest import mock
from dataclasses import dataclass, field
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import h11
import pytest
from h11 import _abnf
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from llmstream import _dechunk
from llmstream._dechunk import Dechunker
from llmstream._exceptions import MalformedStreamError

HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
# h11's chunk header without its "\r\n": the Dechunker matches the line without its line end.
H11_SIZE_LINE = re.compile(_abnf.chunk_header.removesuffix(r"\r\n").encode("ascii"))


@dataclass
class Outcome:
    kind: str  # "done", "partial" or "error"
    payload: bytes
    error: str = ""


def h11_outcome(body: bytes) -> Outcome:
    """What h11, as a client, makes of ``body`` after a chunked response head."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "example.com")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(HEAD + body)
    payload = b""
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                return Outcome("partial", payload)
            if isinstance(event, h11.Data):
                payload += event.data
            elif isinstance(event, h11.EndOfMessage):
                return Outcome("done", payload)
    except h11.RemoteProtocolError as exc:
        return Outcome("error", payload, str(exc))


def _ways(body: bytes, splits: bool) -> Iterator[Tuple[str, Sequence[bytes]]]:
    yield "whole", [body]
    yield "bytewise", [body[i:i + 1] for i in range(len(body))]
    for i in range(1, len(body)) if splits else ():
        yield f"split at {i}", [body[:i], body[i:]]


def our_outcome(body: bytes, splits: bool = True) -> Outcome:
    """What the Dechunker makes of ``body``: the same whole, bytewise and (``splits``) at every split."""
    first: Optional[Outcome] = None
    for name, parts in _ways(body, splits):
        dechunker, payload, got = Dechunker(), b"", None
        try:
            for part in parts:
                payload += dechunker.feed(part)
                if dechunker.failed:
                    dechunker.feed(b"")  # raise the fault kept after the payload before it
                assert len(dechunker._buf) <= Dechunker.MAX_LINE + 1, "buffered more than one line"
        except MalformedStreamError as exc:
            got = Outcome("error", b"", str(exc))  # the payload of the failing feed is dropped
        if got is None:
            got = Outcome("done" if dechunker.done else "partial", payload)
        if first is None:
            first = got
        else:
            assert got == first, f"{name}: {got} but fed whole: {first}"
    assert first is not None
    return first


class _BothGrammars:
    """Stands in for the module's size-line regex: answers with ``strict``, records disagreements."""

    def __init__(self, strict: "re.Pattern[bytes]") -> None:
        self.strict = strict
        self.disagreements: List[bytes] = []

    def fullmatch(self, buf: bytes, pos: int, end: int) -> Optional["re.Match[bytes]"]:
        match = self.strict.fullmatch(buf, pos, end)
        if bool(match) != bool(H11_SIZE_LINE.fullmatch(buf, pos, end)):
            self.disagreements.append(buf[pos:end])
        return match


# The documented size-line differences, each told from the line alone.
_STRICT_ONLY = re.compile(rb"[0-9A-Fa-f]+[ \t]+;.*", re.S)  # BWS before ";": RFC yes, h11 no


def _documented_difference(line: bytes) -> bool:
    if _STRICT_ONLY.fullmatch(line):
        return True  # we accept, h11 refuses
    digits = re.match(rb"[0-9A-Fa-f]*", line)
    assert digits is not None
    return (
        len(digits.group()) > 16  # more digits than any body needs
        or line != line.rstrip(b" \t")  # whitespace at the line's end
        or b";" in line  # an extension outside the RFC grammar (h11 takes ";.*")
    )


def assert_agrees(ours: Outcome, theirs: Outcome, body: bytes) -> None:
    """``ours`` is ``theirs``, but for an early trailer error (see module docstring)."""
    if ours.kind == theirs.kind == "error":
        return
    if ours.kind == "error" and theirs.kind == "partial" and "trailer line" in ours.error:
        assert h11_outcome(body + b"\r\n\r\n").kind == "error", (ours, theirs)
        return
    assert ours == theirs


# ---- strategies: valid bodies, then mutations -------------------------------------

_TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(_TOKEN_CHARS, min_size=1, max_size=6).map(str.encode)
quoted = st.lists(
    st.one_of(st.sampled_from([b"a", b" ", b"\t", b";", b"=", b"\x80", b"\\\"", b"\\\\", b"\\a"]), tokens),
    max_size=4,
).map(lambda parts: b'"' + b"".join(parts) + b'"')
bws = st.sampled_from([b"", b"", b" ", b"\t", b" \t "])


@st.composite
def extensions(draw: Any) -> bytes:
    out = b""
    for i in range(draw(st.integers(0, 2))):
        # No BWS before the first ";": h11 refuses it (a documented difference, tested apart).
        out += (draw(bws) if i else b"") + b";" + draw(bws) + draw(tokens)
        if draw(st.booleans()):
            out += draw(bws) + b"=" + draw(bws) + draw(st.one_of(tokens, quoted))
    return out


@st.composite
def size_field(draw: Any, size: int) -> bytes:
    digits = draw(st.sampled_from(["%x", "%X"])) % size
    zeros = draw(st.integers(0, 16 - len(digits)))
    return b"0" * zeros + digits.encode()


field_values = st.lists(st.sampled_from([b"v", b"1", b"a b", b"\x01", b"\xff", b"x\ty"]), max_size=3)


@st.composite
def trailers(draw: Any) -> bytes:
    out = b""
    for _ in range(draw(st.integers(0, 2))):
        name = draw(tokens).replace(b"-", b"x")  # keep clear of Content-Length & co, which h11 checks
        ows = draw(st.sampled_from([b"", b" ", b"\t"]))
        out += b"X" + name + b":" + ows + b" ".join(draw(field_values)) + ows
        out += draw(st.sampled_from([b"\r\n", b"\n"]))
        if draw(st.integers(0, 4)) == 0:
            out += b" folded\r\n"
    return out + draw(st.sampled_from([b"\r\n", b"\n"]))


@dataclass
class Body:
    data: bytes
    payload: bytes
    size_starts: List[int] = field(default_factory=list)  # where each size line begins


@st.composite
def valid_bodies(draw: Any) -> Body:
    body = Body(b"", b"")
    for chunk in draw(st.lists(st.binary(min_size=1, max_size=20), max_size=4)):
        body.size_starts.append(len(body.data))
        body.data += draw(size_field(len(chunk))) + draw(extensions()) + b"\r\n" + chunk + b"\r\n"
        body.payload += chunk
    body.size_starts.append(len(body.data))
    body.data += b"0" * draw(st.integers(1, 3)) + draw(extensions()) + b"\r\n" + draw(trailers())
    return body


_INSERTS = [b"-", b"+", b"0x", b"0X", b"_", b" ", b"\t", b"g", b"Z", b";", b"\"", b"\r", b"\n", b"\x00", b"0"]


@st.composite
def mutated_bodies(draw: Any) -> bytes:
    body = draw(valid_bodies())
    data = bytearray(body.data)
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["flip", "size", "insert", "delete", "truncate", "flip-and-cut"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if how == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif how == "size":  # inside or around a size line: signs, 0x, _, spaces, letters
            at = draw(st.sampled_from(body.size_starts)) + draw(st.integers(0, 2))
            data[at:at] = draw(st.sampled_from(_INSERTS))
        elif how == "insert":
            data[at:at] = draw(st.sampled_from(_INSERTS))
        elif how == "delete" and data:
            del data[at]
        elif how == "flip-and-cut" and data:  # a wrong byte as the last one received
            data[at] = draw(st.integers(0, 255))
            del data[at + 1:]
        else:
            del data[at:]
    return bytes(data)


_settings = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- the tests ------------------------------------------------------------------------


@_settings
@given(valid_bodies())
def test_valid_bodies_and_every_truncation(body: Body) -> None:
    assert h11_outcome(body.data) == Outcome("done", body.payload)
    assert our_outcome(body.data) == Outcome("done", body.payload)
    for cut in range(len(body.data)):
        # Whole and bytewise only: every split of every truncation would be cubic.
        ours, theirs = our_outcome(body.data[:cut], splits=False), h11_outcome(body.data[:cut])
        assert ours.kind == "partial" and body.payload.startswith(ours.payload), cut
        assert ours == theirs, cut


@_settings
@given(st.one_of(mutated_bodies(), valid_bodies().map(lambda b: b.data)))
@example(b"5 \r\nhello\r\n0\r\n\r\n")
@example(b"2;a@b\r\nhi\r\n0\r\n\r\n")
@example(b"0\r\nX: 1\r\nbad\r\n")
def test_same_as_h11_with_its_size_grammar(body: bytes) -> None:
    """With h11's size-line regex swapped in, the state machine must agree with h11 exactly."""
    with mock.patch.object(_dechunk, "_SIZE_LINE", H11_SIZE_LINE):
        ours = our_outcome(body)
    assert_agrees(ours, h11_outcome(body), body)


@_settings
@given(st.one_of(mutated_bodies(), valid_bodies().map(lambda b: b.data)))
@example(b"-6\r\nx")
@example(b"2\r\nhiX")
@example(b"5 ;a\r\nhello\r\n0\r\n\r\n")
@example(b"00000000000000000005\r\nhello\r\n0\r\n\r\n")
def test_same_as_h11(body: bytes) -> None:
    """Strict grammar: same as h11 unless a size line is judged differently, for a documented reason."""
    both = _BothGrammars(_dechunk._SIZE_LINE)
    with mock.patch.object(_dechunk, "_SIZE_LINE", both):
        ours = our_outcome(body)
    theirs = h11_outcome(body)
    if not both.disagreements:
        assert_agrees(ours, theirs, body)
        return
    assert _documented_difference(both.disagreements[0]), both.disagreements[0]
    # Up to that line both read the same bytes: neither has more payload than the other would.
    shorter, longer = sorted([ours.payload, theirs.payload], key=len)
    assert ours.kind == "error" or theirs.kind == "error" or longer.startswith(shorter)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), mutated_bodies()), st.lists(st.integers(0, 200), max_size=6))
@pytest.mark.timeout(60)
def test_fuzz_only_malformed_stream_error(data: bytes, cuts: List[int]) -> None:
    """Any bytes, cut anywhere: every feed returns, buffers at most a line, raises only MalformedStreamError."""
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    dechunker = Dechunker()
    try:
        for start, stop in zip(points, points[1:]):
            out = dechunker.feed(data[start:stop])
            assert isinstance(out, bytes) and len(out) <= stop - start + Dechunker.MAX_LINE + 1
            assert len(dechunker._buf) <= Dechunker.MAX_LINE + 1
    except MalformedStreamError:
        with pytest.raises(MalformedStreamError):
            dechunker.feed(b"0\r\n\r\n")
