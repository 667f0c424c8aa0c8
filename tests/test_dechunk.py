"""Dechunker: any split of a chunked body gives the same payload; hostile bodies fail typed.

Every case goes through ``feed_all_ways`` (tests/helpers.py): whole, bytewise
and split in two at every point, with the same outcome each way.
"""

from __future__ import annotations

from typing import List

import pytest

from llmstream._dechunk import Dechunker
from llmstream._exceptions import MalformedStreamError
from helpers import feed_all_ways_no_close

BODY = b"5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nw\xc3\xb6rld\r\n0\r\nX-Trailer: 1\r\n\r\n"
PAYLOAD = b"hello w\xc3\xb6rld"
LONG = Dechunker.MAX_LINE + 2  # one byte past the longest line plus the CR of its line end


class _Feeder:
    """Dechunker with the feed() -> list shape feed_all_ways wants: one list item per payload byte.

    The payload is kept whole-bytes (not ints) so a failure message shows text.
    """

    def __init__(self) -> None:
        self.dechunker = Dechunker()

    def feed(self, data: bytes) -> List[bytes]:
        payload = self.dechunker.feed(data)
        if self.dechunker.failed:
            # The payload before a fault is returned, the fault kept: raise it
            # now, so every way of feeding fails at the same point.
            self.dechunker.feed(b"")
        return [payload[i:i + 1] for i in range(len(payload))]


def dechunk_all_ways(body: bytes) -> bytes:
    """The payload of ``body``, the same whole, bytewise and at every split, and the body done."""
    feeders: List[_Feeder] = []

    def make() -> _Feeder:
        feeders.append(_Feeder())
        return feeders[-1]

    payload = b"".join(feed_all_ways_no_close(make, body))
    assert all(f.dechunker.done for f in feeders)
    return payload


def test_whole_bytewise_and_every_split() -> None:
    assert dechunk_all_ways(BODY) == PAYLOAD


def test_payload_before_a_fault_is_returned_then_the_fault_raised() -> None:
    dechunker = Dechunker()
    assert dechunker.feed(b"2\r\nHi\r\nzz\r\n") == b"Hi"
    assert dechunker.failed
    for _ in range(2):
        with pytest.raises(MalformedStreamError, match=r"^invalid chunk size line b'zz'$"):
            dechunker.feed(b"2\r\nok\r\n")


def test_not_done_before_the_last_chunk() -> None:
    dechunker = Dechunker()
    assert dechunker.feed(b"5\r\nhello\r\n") == b"hello"
    assert not dechunker.done


def test_not_done_before_the_trailer_ends() -> None:
    dechunker = Dechunker()
    assert dechunker.feed(b"5\r\nhello\r\n0\r\nX: 1\r\n") == b"hello"
    assert not dechunker.done
    assert dechunker.feed(b"\r\n") == b""
    assert dechunker.done


def test_bytes_after_the_end_are_not_payload() -> None:
    dechunker = Dechunker()
    assert dechunker.feed(b"2\r\nhi\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n") == b"hi"
    assert dechunker.done
    assert dechunker.feed(b"more") == b""


@pytest.mark.parametrize(
    "body, payload",
    [
        pytest.param(b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789", id="upper-hex"),
        pytest.param(b"a\r\n0123456789\r\n0\r\n\r\n", b"0123456789", id="lower-hex"),
        pytest.param(b"0000000000000002\r\nhi\r\n0\r\n\r\n", b"hi", id="16-digits"),
        pytest.param(b"2;a\r\nhi\r\n0\r\n\r\n", b"hi", id="ext-name-only"),
        pytest.param(b"2;a=b;c=\"d;\\\"e\"\r\nhi\r\n0;z\r\n\r\n", b"hi", id="ext-token-and-quoted"),
        pytest.param(b"2 ; a = \"\" \t;b\r\nhi\r\n0\r\n\r\n", b"hi", id="ext-with-bws"),
        pytest.param(b"2\r\nhi\r\n000\r\n\r\n", b"hi", id="last-chunk-many-zeros"),
        pytest.param(b"2\r\nhi\r\n0\r\nA: 1\nB:\r\nC:  x y \t\r\n\n", b"hi", id="trailer-lf-and-crlf"),
        pytest.param(b"2\r\nhi\r\n0\r\nA: 1\r\n  folded\r\n\t\r\n\r\n", b"hi", id="trailer-obs-fold"),
        pytest.param(b"2\r\nhi\r\n0\r\n\n", b"hi", id="last-line-bare-lf"),
        pytest.param(b"2\r\n\r\n\r\n0\r\n\r\n", b"\r\n", id="crlf-as-data"),
    ],
)
def test_valid(body: bytes, payload: bytes) -> None:
    assert dechunk_all_ways(body) == payload


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"-6\r\nx", id="negative-size"),
        pytest.param(b"-6\r\nabcdefgh", id="negative-size-more-bytes"),
        pytest.param(b"+5\r\nhello\r\n0\r\n\r\n", id="plus-sign"),
        pytest.param(b"0x5\r\nhello\r\n0\r\n\r\n", id="0x-prefix"),
        pytest.param(b"5_0\r\n", id="underscore"),
        pytest.param(b" 5\r\nhello\r\n0\r\n\r\n", id="space-before-size"),
        pytest.param(b"5 \r\nhello\r\n0\r\n\r\n", id="space-after-size"),
        pytest.param(b"\t5\t\r\nhello\r\n0\r\n\r\n", id="tabs-around-size"),
        pytest.param(b"5 0\r\n", id="space-inside-size"),
        pytest.param(b"\r\nhello\r\n", id="empty-size-line"),
        pytest.param(b"zz\r\nhello\r\n", id="not-hex"),
        pytest.param(b"\xd9\xa5\r\nhello\r\n", id="non-ascii-digit"),
        pytest.param(b"00000000000000005\r\nhello\r\n", id="17-digits"),
        pytest.param(b"1" * 40 + b"\r\n", id="40-digits"),
        pytest.param(b"5\nhello\r\n0\r\n\r\n", id="bare-lf-after-size"),
        pytest.param(b"5\r\r\nhello\r\n", id="cr-cr-lf-after-size"),
        pytest.param(b"5;\r\nhello\r\n", id="ext-empty-name"),
        pytest.param(b"5;a b\r\nhello\r\n", id="ext-space-in-name"),
        pytest.param(b"5;a=b c\r\nhello\r\n", id="ext-space-in-value"),
        pytest.param(b"5;a@b\r\nhello\r\n", id="ext-bad-char-in-name"),
        pytest.param(b"5;a=b@\r\nhello\r\n", id="ext-bad-char-in-value"),
        pytest.param(b"5;a=\r\nhello\r\n", id="ext-empty-value"),
        pytest.param(b"5;a=\"b\r\nhello\r\n", id="ext-unterminated-quote"),
        pytest.param(b"5;a=\"b\\\"\r\nhello\r\n", id="ext-escaped-closing-quote"),
        pytest.param(b"5;a=\"\x00\"\r\nhello\r\n", id="ext-nul-in-quote"),
        pytest.param(b"5 ;a \r\nhello\r\n", id="ext-trailing-space"),
        pytest.param(b"5x;a\r\nhello\r\n", id="ext-without-semicolon"),
        pytest.param(b"2\r\nhiXX", id="no-crlf-after-data"),
        pytest.param(b"2\r\nhi\n0\r\n\r\n", id="bare-lf-after-data"),
        pytest.param(b"2\r\nhi\rX", id="cr-then-junk-after-data"),
        pytest.param(b"2\r\nhiX", id="junk-after-data-at-end-of-input"),
        pytest.param(b"2\r\nhi0\r\n\r\n", id="data-runs-into-next-size"),
        pytest.param(b"2\r\nhi\r\n0\r\nX-Trailer\r\n\r\n", id="trailer-no-colon"),
        pytest.param(b"2\r\nhi\r\n0\r\nX-Trailer : 1\r\n\r\n", id="trailer-space-before-colon"),
        pytest.param(b"2\r\nhi\r\n0\r\n: 1\r\n\r\n", id="trailer-empty-name"),
        pytest.param(b"2\r\nhi\r\n0\r\nX: a\x00b\r\n\r\n", id="trailer-nul-in-value"),
        pytest.param(b"2\r\nhi\r\n0\r\nX: a\rb\r\n\r\n", id="trailer-cr-in-value"),
        pytest.param(b"2\r\nhi\r\n0\r\n folded\r\n\r\n", id="trailer-fold-first"),
        pytest.param(b"2\r\nhi\r\n0\r\n\r\r\n", id="trailer-cr-cr-lf"),
        pytest.param(b"1" * (LONG + 100), id="size-line-too-long-no-end"),
        pytest.param(b"1;a=" + b"b" * LONG + b"\r\nx\r\n", id="size-line-too-long-valid-ext"),
        pytest.param(b"1\r\nx\r\n0\r\nX: " + b"b" * LONG + b"\r\n\r\n", id="trailer-line-too-long"),
        pytest.param(b"1\r\nx\r\n0\r\n" + b"b" * (LONG + 100), id="trailer-line-too-long-no-end"),
    ],
)
def test_malformed(body: bytes) -> None:
    with pytest.raises(MalformedStreamError) as info:
        dechunk_all_ways(body)
    assert type(info.value) is MalformedStreamError


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"1;a=" + b"b" * (Dechunker.MAX_LINE - 4) + b"\r\nx\r\n0\r\n\r\n", id="size-line-max"),
        pytest.param(b"1\r\nx\r\n0\r\nX:" + b"b" * (Dechunker.MAX_LINE - 2) + b"\r\n\r\n", id="trailer-line-max"),
    ],
)
def test_longest_line_is_accepted(body: bytes) -> None:
    assert dechunk_all_ways(body) == b"x"


def test_error_messages_name_the_line() -> None:
    with pytest.raises(MalformedStreamError, match=r"^invalid chunk size line b'-6'$"):
        Dechunker().feed(b"-6\r\nx")
    with pytest.raises(MalformedStreamError, match=r"^invalid chunked body trailer line b'X-Trailer'$"):
        Dechunker().feed(b"0\r\nX-Trailer\r\n\r\n")


def test_stays_failed_after_an_error() -> None:
    dechunker = Dechunker()
    with pytest.raises(MalformedStreamError):
        dechunker.feed(b"-6\r\nx")
    for later in (b"5\r\nhello\r\n", b"", b"0\r\n\r\n"):
        with pytest.raises(MalformedStreamError, match=r"^invalid chunk size line b'-6'$"):
            dechunker.feed(later)
    assert not dechunker.done


@pytest.mark.timeout(10)
def test_negative_size_does_not_loop() -> None:
    # The attack that found the bug: int("-6", 16) made a step move pos backwards.
    dechunker = Dechunker()
    with pytest.raises(MalformedStreamError):
        dechunker.feed(b"-6\r\n")
        dechunker.feed(b"x")
