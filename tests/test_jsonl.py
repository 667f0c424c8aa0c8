"""JSONLinesDecoder: one JSON value per line, however the bytes are split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List

import pytest
from helpers import DATA_DIR, feed_all_ways, feed_all_ways_no_close

from llmstream._exceptions import MalformedStreamError
from llmstream._jsonl import JSONLinesDecoder


def values(data: bytes, max_line_length: int = 1_048_576) -> List[Any]:
    return feed_all_ways(lambda: JSONLinesDecoder(max_line_length), data)


@pytest.mark.parametrize(
    "data, expected",
    [
        pytest.param(b'{"a": 1}\n{"b": 2}\n', [{"a": 1}, {"b": 2}], id="objects"),
        pytest.param(b'1\n"s"\nnull\n[true]\n', [1, "s", None, [True]], id="any-json-value"),
        pytest.param(b'{"a": 1}\r\n{"b": 2}\r\n', [{"a": 1}, {"b": 2}], id="crlf"),
        pytest.param(b'{"a": 1}\r{"b": 2}\r', [{"a": 1}, {"b": 2}], id="cr"),
        pytest.param(b'\n\n{"a": 1}\n\n\n{"b": 2}\n\n', [{"a": 1}, {"b": 2}], id="blank-lines-ignored"),
        pytest.param(b' \t\n{"a": 1}\n  \n', [{"a": 1}], id="whitespace-lines-ignored"),
        pytest.param(b'  {"a": 1}  \n', [{"a": 1}], id="surrounding-whitespace"),
        pytest.param(b'{"a": 1}\n{"b": 2}', [{"a": 1}, {"b": 2}], id="last-line-without-lf"),
        pytest.param(b"", [], id="empty"),
        pytest.param(b"\xef\xbb\xbf[1]\n", [[1]], id="bom-stripped"),
        pytest.param('{"t": "東京 🦜 \u2028"}\n'.encode(), [{"t": "東京 🦜 \u2028"}], id="unicode"),
        pytest.param(b'{"t": "a\\nb"}\n', [{"t": "a\nb"}], id="escaped-newline"),
    ],
)
def test_values(data: bytes, expected: List[Any]) -> None:
    assert values(data) == expected


def test_last_line_waits_for_close() -> None:
    assert feed_all_ways_no_close(JSONLinesDecoder, b'{"a": 1}\n{"b": 2}') == [{"a": 1}]


@pytest.mark.parametrize(
    "data, message",
    [
        pytest.param(
            b'{"a": 1}\n\ngarbage{\n',
            "invalid JSON on line 3: 'garbage{' (Expecting value: line 1 column 1 (char 0))",
            id="garbage",
        ),
        pytest.param(
            b'{"a": 1}\n{"b": ',
            "invalid JSON on line 2: '{\"b\": ' (Expecting value: line 1 column 7 (char 6))",
            id="truncated-last-line",
        ),
        pytest.param(
            b"<html>\r\n",
            "invalid JSON on line 1: '<html>' (Expecting value: line 1 column 1 (char 0))",
            id="html-crlf",
        ),
        pytest.param(
            b'{"a": 1} {"b": 2}\n',
            "invalid JSON on line 1: '{\"a\": 1} {\"b\": 2}' (Extra data: line 1 column 10 (char 9))",
            id="two-values-on-one-line",
        ),
        pytest.param(
            b"\xa0[1]\n",
            "invalid JSON on line 1: '\ufffd[1]' (Expecting value: line 1 column 1 (char 0))",
            id="invalid-utf8-is-not-whitespace",
        ),
    ],
)
def test_invalid_json_names_line_and_excerpt(data: bytes, message: str) -> None:
    with pytest.raises(MalformedStreamError) as info:
        values(data)
    assert str(info.value) == message


def test_non_breaking_space_line_is_not_blank() -> None:
    with pytest.raises(MalformedStreamError, match="^invalid JSON on line 1: '\\\\xa0'"):
        values("\u00a0\n".encode())


def test_excerpt_is_at_most_80_characters() -> None:
    with pytest.raises(MalformedStreamError) as info:
        values(b"x" * 500 + b"\n")
    assert str(info.value) == f"invalid JSON on line 1: {'x' * 80!r} (Expecting value: line 1 column 1 (char 0))"


def test_error_is_chained_from_the_json_error() -> None:
    decoder = JSONLinesDecoder()
    with pytest.raises(MalformedStreamError) as info:
        decoder.feed(b"nope\n")
    assert isinstance(info.value.__cause__, json.JSONDecodeError)


def test_values_before_a_bad_line_are_returned_then_it_stays_failed() -> None:
    decoder = JSONLinesDecoder()
    assert decoder.feed(b"[1]\nnope\n[2]\n") == [[1]]  # received whole before the bad line
    assert decoder.failed
    with pytest.raises(MalformedStreamError, match="^invalid JSON on line 2: 'nope'"):
        decoder.feed(b"[3]\n")
    with pytest.raises(MalformedStreamError, match="^invalid JSON on line 2: 'nope'"):
        decoder.close()


def test_over_long_line_raises() -> None:
    with pytest.raises(MalformedStreamError, match="^line longer than the maximum of 8 bytes$"):
        values(b"[1]\n[1,2,3,4,5]\n", max_line_length=8)


def test_absurdly_deep_nesting_is_malformed_not_a_crash() -> None:
    with pytest.raises(MalformedStreamError) as info:
        JSONLinesDecoder().feed(b"[" * 100_000 + b"]" * 100_000 + b"\n")
    assert str(info.value).startswith("invalid JSON on line 1: '[[[[")


def test_feed_after_close_is_a_programming_error() -> None:
    decoder = JSONLinesDecoder()
    decoder.close()
    with pytest.raises(RuntimeError, match="after close"):
        decoder.feed(b"[1]\n")


JSONL_FIXTURES = sorted((DATA_DIR / "ollama").glob("*.txt"))


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in JSONL_FIXTURES])
def test_recorded_streams_split_anywhere(path: Path) -> None:
    try:
        out = values(path.read_bytes())
    except MalformedStreamError as exc:  # a fixture of a broken stream: every way agreed on the error
        assert str(exc).startswith("invalid JSON on line ")
        return
    assert all(isinstance(value, dict) for value in out)


def test_stays_failed_after_raising() -> None:
    decoder = JSONLinesDecoder()
    with pytest.raises(MalformedStreamError, match="^invalid JSON on line 1: 'nope'"):
        decoder.feed(b"nope\n[2]\n")
    with pytest.raises(MalformedStreamError, match="^invalid JSON on line 1: 'nope'"):
        decoder.feed(b"[3]\n")


def test_values_before_an_over_long_line_are_returned() -> None:
    decoder = JSONLinesDecoder(max_line_length=8)
    assert decoder.feed(b"[1]\n[1,2,3,4,5]\n") == [[1]]
    assert decoder.failed
    with pytest.raises(MalformedStreamError, match="^line longer than the maximum of 8 bytes$"):
        decoder.close()
