"""Dechunker: any split of a chunked body gives the same payload."""

from __future__ import annotations

from typing import List

import pytest

from llmstream._dechunk import Dechunker
from llmstream._exceptions import MalformedStreamError

BODY = b"5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nw\xc3\xb6rld\r\n0\r\nX-Trailer: 1\r\n\r\n"
PAYLOAD = b"hello w\xc3\xb6rld"


def feed_parts(parts: List[bytes]) -> bytes:
    dechunker = Dechunker()
    out = b"".join(dechunker.feed(p) for p in parts)
    assert dechunker.done
    return out


def test_whole() -> None:
    assert feed_parts([BODY]) == PAYLOAD


def test_byte_by_byte() -> None:
    assert feed_parts([BODY[i:i + 1] for i in range(len(BODY))]) == PAYLOAD


def test_every_two_way_split() -> None:
    for i in range(len(BODY) + 1):
        assert feed_parts([BODY[:i], BODY[i:]]) == PAYLOAD, i


def test_not_done_before_the_last_chunk() -> None:
    dechunker = Dechunker()
    assert dechunker.feed(b"5\r\nhello\r\n") == b"hello"
    assert not dechunker.done


@pytest.mark.parametrize(
    "body",
    [pytest.param(b"zz\r\nhello\r\n", id="bad-size"), pytest.param(b"2\r\nhiXX", id="no-crlf-after-data"),
     pytest.param(b"1" * 5000, id="size-line-too-long")],
)
def test_malformed(body: bytes) -> None:
    with pytest.raises(MalformedStreamError):
        Dechunker().feed(body)
