"""Property tests: framing gives the same result however the bytes are split, and matches the spec.

Each decoder is checked against a reference written straight from the spec,
run on the whole input at once: the line buffer against ``re.split`` on the
decoded text, the SSE decoder against a line-by-line transcription of the
WHATWG rules (so the decoder's fast path is checked too), the JSON-lines
decoder against the values that were encoded.
"""

from __future__ import annotations

import json
import re
from typing import Any, List, Optional, Sequence, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st

from llmstream._exceptions import MalformedStreamError
from llmstream._jsonl import JSONLinesDecoder
from llmstream._linebuffer import LineBuffer
from llmstream.sse import ServerSentEvent, SSEDecoder

SETTINGS = settings(max_examples=300, deadline=None, database=None)

ENDINGS = st.sampled_from(["\n", "\r", "\r\n"])
VALUES = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=12),
    st.sampled_from(["", " ", "  x", "123", "1x", "a\x00b", "\u2028", "\x85", "é", "東京", "🦜", ":", "[DONE]"]),
)
NAMES = st.sampled_from(["data", "data", "data", "event", "id", "retry", "foo", "Data", ""])
LINES = st.one_of(
    st.builds(lambda value: "data: " + value, VALUES),
    st.builds(lambda name, colon, value: name + colon + value, NAMES, st.sampled_from([":", ": ", ":  "]), VALUES),
    NAMES,
    st.builds(lambda value: ":" + value, VALUES),
    st.just(""),
    st.just(""),
)


@st.composite
def sse_streams(draw: Any) -> bytes:
    """Lines of an event stream, each with its own line ending; maybe a BOM, a tail, stray bytes."""
    lines = draw(st.lists(st.tuples(LINES, ENDINGS), max_size=25))
    data: bytes = "".join(line + ending for line, ending in lines).encode()
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    data += draw(st.sampled_from([b"", b"data: tail", b"\r", b"\xef\xbb"]))
    if draw(st.integers(0, 9)) == 0:
        at = draw(st.integers(0, len(data)))
        stray: bytes = draw(st.sampled_from([b"\xff", b"\xe6\x9d", b"\xc3"]))
        data = data[:at] + stray + data[at:]
    return data


def split_at(data: bytes, points: Sequence[int]) -> List[bytes]:
    cuts = sorted({min(p, len(data)) for p in points})
    return [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)])]


def feed(decoder: Any, chunks: Sequence[bytes]) -> List[Any]:
    out: List[Any] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    out.extend(decoder.close())
    return out


def reference_lines(data: bytes) -> List[str]:
    """Decode once, strip one BOM, split at CRLF, CR or LF; a non-empty tail is a last line."""
    text = data.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    parts = re.split(r"\r\n|\r|\n", text)
    return parts[:-1] + ([parts[-1]] if parts[-1] else [])


def reference_sse(data: bytes) -> Tuple[List[ServerSentEvent], str, Optional[int]]:
    """The WHATWG interpretation rules, transcribed literally, on the whole stream."""
    text = data.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = re.split(r"\r\n|\r|\n", text)[:-1]  # an unterminated last line is never processed
    events: List[ServerSentEvent] = []
    data_buffer, event_type, id_buffer, last_event_id, retry = "", "", "", "", None
    for line in lines:
        if line == "":
            last_event_id = id_buffer
            if data_buffer:
                events.append(ServerSentEvent(event_type or "message", data_buffer[:-1], last_event_id))
            data_buffer, event_type = "", ""
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            event_type = value
        elif name == "data":
            data_buffer += value + "\n"
        elif name == "id" and "\x00" not in value:
            id_buffer = value
        elif name == "retry" and value and all(c in "0123456789" for c in value):
            retry = int(value)
    return events, last_event_id, retry


def reference_too_long(data: bytes, limit: int) -> bool:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return any(len(line) > limit for line in re.split(rb"\r\n|\r|\n", data))


SPLITS = st.lists(st.integers(0, 400), max_size=8)


@SETTINGS
@given(sse_streams(), SPLITS)
def test_line_buffer_matches_reference_for_any_split(data: bytes, points: List[int]) -> None:
    assert feed(LineBuffer(), split_at(data, points)) == reference_lines(data)


@SETTINGS
@given(sse_streams(), SPLITS)
def test_sse_decoder_matches_reference_for_any_split(data: bytes, points: List[int]) -> None:
    decoder = SSEDecoder()
    events = feed(decoder, split_at(data, points))
    assert (events, decoder.last_event_id, decoder.retry) == reference_sse(data)


@SETTINGS
@given(sse_streams(), SPLITS)
def test_sse_decoder_split_equals_unsplit(data: bytes, points: List[int]) -> None:
    assert feed(SSEDecoder(), split_at(data, points)) == feed(SSEDecoder(), [data])


@SETTINGS
@given(sse_streams(), SPLITS, st.integers(1, 12))
def test_line_limit_raises_exactly_when_a_line_is_too_long(data: bytes, points: List[int], limit: int) -> None:
    try:
        feed(SSEDecoder(max_line_length=limit), split_at(data, points))
    except MalformedStreamError:
        raised = True
    else:
        raised = False
    assert raised == reference_too_long(data, limit)


# Blank-ish lines must not shift values; floats are kept exact for == comparison.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)


@st.composite
def jsonl_streams(draw: Any) -> Tuple[bytes, List[Any]]:
    values = draw(st.lists(JSON_VALUES, max_size=12))
    parts = []
    for value in values:
        parts.append(draw(st.sampled_from(["", "", " ", "\t "])) + draw(ENDINGS) if draw(st.booleans()) else "")
        parts.append(json.dumps(value, ensure_ascii=draw(st.booleans())) + draw(ENDINGS))
    text = "".join(parts)
    if values and draw(st.booleans()):
        text = text.rstrip("\r\n")  # the last line without its line ending
    return text.encode(), values


@SETTINGS
@given(jsonl_streams(), SPLITS)
def test_jsonl_decoder_matches_values_for_any_split(stream: Tuple[bytes, List[Any]], points: List[int]) -> None:
    data, values = stream
    assert feed(JSONLinesDecoder(), split_at(data, points)) == values
