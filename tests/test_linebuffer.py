"""LineBuffer: bytes in, decoded lines out, however the bytes are split."""

from __future__ import annotations

from typing import List

import pytest

from llmstream._exceptions import MalformedStreamError
from llmstream._linebuffer import DEFAULT_MAX_LINE_LENGTH, LineBuffer

from helpers import feed_all_ways, feed_all_ways_no_close


def lines(data: bytes, max_line_length: int = DEFAULT_MAX_LINE_LENGTH) -> List[str]:
    return feed_all_ways(lambda: LineBuffer(max_line_length), data)


@pytest.mark.parametrize(
    "data, expected",
    [
        pytest.param(b"a\nb\n", ["a", "b"], id="lf"),
        pytest.param(b"a\rb\r", ["a", "b"], id="cr"),
        pytest.param(b"a\r\nb\r\n", ["a", "b"], id="crlf"),
        pytest.param(b"a\rb\nc\r\nd\n", ["a", "b", "c", "d"], id="mixed"),
        pytest.param(b"\n\n", ["", ""], id="empty-lines-lf"),
        pytest.param(b"\r\r", ["", ""], id="empty-lines-cr"),
        pytest.param(b"\r\n\r\n", ["", ""], id="empty-lines-crlf"),
        pytest.param(b"a\n\rb\r\n", ["a", "", "b"], id="lf-then-cr-is-two-endings"),
        pytest.param(b"a\r\r\nb\n", ["a", "", "b"], id="cr-then-crlf-is-two-endings"),
        pytest.param(b"a\n\r\nb\n", ["a", "", "b"], id="lf-then-crlf"),
        pytest.param(b"", [], id="nothing"),
        pytest.param(b"last", ["last"], id="unterminated-last-line-from-close"),
        pytest.param(b"a\nlast", ["a", "last"], id="line-then-unterminated"),
        pytest.param(b"a\r", ["a"], id="trailing-cr"),
    ],
)
def test_line_endings(data: bytes, expected: List[str]) -> None:
    assert lines(data) == expected


def test_cr_at_end_of_feed_and_lf_at_start_of_next_is_one_line_ending() -> None:
    buffer = LineBuffer()
    assert buffer.feed(b"a\r") == ["a"]
    assert buffer.feed(b"\nb\n") == ["b"]
    assert buffer.close() == []


def test_cr_at_end_of_feed_then_empty_feed_still_pairs_with_lf() -> None:
    buffer = LineBuffer()
    assert buffer.feed(b"a\r") == ["a"]
    assert buffer.feed(b"") == []
    assert buffer.feed(b"\n\n") == [""]


def test_cr_at_end_of_feed_then_other_byte_is_a_lone_cr() -> None:
    buffer = LineBuffer()
    assert buffer.feed(b"a\r") == ["a"]
    assert buffer.feed(b"\rb\n") == ["", "b"]


@pytest.mark.parametrize(
    "separator",
    [
        pytest.param("\u2028", id="line-separator"),
        pytest.param("\u2029", id="paragraph-separator"),
        pytest.param("\x85", id="nel"),
        pytest.param("\x0b", id="vertical-tab"),
        pytest.param("\x0c", id="form-feed"),
        pytest.param("\x1c", id="file-separator"),
        pytest.param("\x1d", id="group-separator"),
        pytest.param("\x1e", id="record-separator"),
    ],
)
def test_never_splits_on_other_separators(separator: str) -> None:
    # str.splitlines() splits on every one of these.
    assert lines(f"a{separator}b\n".encode()) == [f"a{separator}b"]


@pytest.mark.parametrize(
    "data, expected",
    [
        pytest.param("héllo wörld\n".encode(), ["héllo wörld"], id="two-byte"),
        pytest.param("東京\n".encode(), ["東京"], id="three-byte"),
        pytest.param("🦜 parrot\n".encode(), ["🦜 parrot"], id="four-byte"),
        pytest.param(b"a\xffb\n", ["a\ufffdb"], id="invalid-byte"),
        pytest.param(b"a\xe6\x9d\n", ["a\ufffd"], id="cut-sequence-before-lf"),
        pytest.param(b"\xe6\x9d\nx\n", ["\ufffd", "x"], id="lf-not-swallowed-by-cut-sequence"),
        pytest.param(b"\xc0\xafz\n", ["\ufffd\ufffdz"], id="overlong-encoding"),
        pytest.param(b"\xed\xa0\x80\n", ["\ufffd\ufffd\ufffd"], id="surrogate"),
    ],
)
def test_decodes_utf8_per_line_with_replacement(data: bytes, expected: List[str]) -> None:
    # feed_all_ways also cuts every multi-byte character in two.
    assert lines(data) == expected


@pytest.mark.parametrize(
    "data, expected",
    [
        pytest.param(b"\xef\xbb\xbfa\n", ["a"], id="bom-stripped"),
        pytest.param(b"\xef\xbb\xbf\xef\xbb\xbfa\n", ["\ufeffa"], id="only-one-bom-stripped"),
        pytest.param(b"a\n\xef\xbb\xbfb\n", ["a", "\ufeffb"], id="bom-not-at-start-kept"),
        pytest.param(b"\xef\xbb\xbf", [], id="bom-only"),
        pytest.param(b"\xef\xbb\xbf\n", [""], id="bom-then-empty-line"),
        pytest.param(b"\xef\xbbx\n", ["\ufffdx"], id="bom-prefix-then-other"),
        pytest.param(b"\xef\xbb", ["\ufffd"], id="bom-prefix-then-close"),
        pytest.param(b"\xef\n", ["\ufffd"], id="bom-first-byte-then-lf"),
    ],
)
def test_bom_stripped_once_at_start_only(data: bytes, expected: List[str]) -> None:
    assert lines(data) == expected


def test_bom_split_across_feeds() -> None:
    buffer = LineBuffer()
    assert buffer.feed(b"\xef") == []
    assert buffer.feed(b"\xbb") == []
    assert buffer.feed(b"\xbfa\n") == ["a"]


def test_line_of_exactly_max_length_is_accepted() -> None:
    assert lines(b"x" * 64 + b"\n" + b"y" * 64, max_line_length=64) == ["x" * 64, "y" * 64]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"x" * 65 + b"\n", id="terminated"),
        pytest.param(b"x" * 65, id="unterminated"),
        pytest.param(b"ok\n" + b"x" * 65 + b"\nok\n", id="between-short-lines"),
        pytest.param(b"x" * 65 + b"\r\n", id="crlf"),
    ],
)
def test_line_over_max_length_raises(data: bytes) -> None:
    with pytest.raises(MalformedStreamError) as info:
        lines(data, max_line_length=64)
    assert str(info.value) == "line longer than the maximum of 64 bytes"


def test_line_length_counts_bytes_not_characters() -> None:
    with pytest.raises(MalformedStreamError):
        lines("é".encode() * 33 + b"\n", max_line_length=64)  # 33 characters, 66 bytes


def test_raises_as_soon_as_the_buffered_line_passes_the_limit() -> None:
    buffer = LineBuffer(max_line_length=64)
    for _ in range(64):
        assert buffer.feed(b"x") == []
    with pytest.raises(MalformedStreamError):
        buffer.feed(b"x")


def test_a_huge_chunk_without_line_ending_is_refused_not_buffered() -> None:
    buffer = LineBuffer(max_line_length=1024)
    with pytest.raises(MalformedStreamError):
        buffer.feed(b"x" * 10_000_000)
    assert len(buffer._buf) == 0


def test_stays_failed_after_raising() -> None:
    buffer = LineBuffer(max_line_length=4)
    with pytest.raises(MalformedStreamError):
        buffer.feed(b"12345")
    with pytest.raises(MalformedStreamError, match="^line longer than the maximum of 4 bytes$"):
        buffer.feed(b"\n")
    with pytest.raises(MalformedStreamError, match="^line longer than the maximum of 4 bytes$"):
        buffer.close()


def test_default_max_line_length_is_one_mebibyte() -> None:
    assert DEFAULT_MAX_LINE_LENGTH == 1_048_576
    assert LineBuffer().max_line_length == 1_048_576


def test_long_line_in_many_small_feeds() -> None:
    buffer = LineBuffer()
    line = b"x" * 300_000
    out: List[str] = []
    for i in range(0, len(line), 100):
        out.extend(buffer.feed(line[i : i + 100]))
    assert out == []
    assert buffer.feed(b"\n") == ["x" * 300_000]


def test_trailing_bytes_stay_buffered_until_close() -> None:
    assert feed_all_ways_no_close(LineBuffer, b"a\nb\r\nc") == ["a", "b"]


def test_close_is_idempotent() -> None:
    buffer = LineBuffer()
    buffer.feed(b"tail")
    assert buffer.close() == ["tail"]
    assert buffer.close() == []


def test_feed_after_close_is_a_programming_error() -> None:
    buffer = LineBuffer()
    buffer.close()
    with pytest.raises(RuntimeError, match="after close"):
        buffer.feed(b"a\n")


def test_max_line_length_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_line_length must be at least 1, got 0"):
        LineBuffer(0)


@pytest.mark.parametrize(
    "chunks, expected",
    [
        pytest.param([b"a\nb"], [b"a"], id="one-line"),
        pytest.param([b"a\r\nb\rc\n"], [b"a\nb\nc"], id="endings-normalised-to-lf"),
        pytest.param([b"part", b"ial\nx"], [None, b"partial"], id="joins-buffered-start"),
        pytest.param([b"no line ending"], [None], id="none-when-no-complete-line"),
    ],
)
def test_feed_region_returns_complete_lines_undecoded(chunks: List[bytes], expected: List[object]) -> None:
    buffer = LineBuffer()
    assert [buffer.feed_region(chunk) for chunk in chunks] == expected


@pytest.mark.parametrize("data, lines", [
    pytest.param(b"ab\ncd\n0123456789\n", ["ab", "cd"], id="long-complete-line"),
    pytest.param(b"ab\ncd\n0123456789", ["ab", "cd"], id="long-incomplete-line"),
])
def test_lines_before_an_over_long_line_in_the_same_feed_are_returned(data: bytes, lines: list) -> None:
    buffer = LineBuffer(max_line_length=8)
    assert buffer.feed(data) == lines
    assert buffer.failed
    with pytest.raises(MalformedStreamError, match="^line longer than the maximum of 8 bytes$"):
        buffer.feed(b"x\n")
