"""Mutated real transcripts against every provider decoder: only llmstream errors come out.

The recorded streams under ``tests/data/<provider>/`` are mutated -- bytes
flipped, cut at every point, a JSON value inside a data line swapped for one
of another type or for deep nesting -- and fed to ``StreamDecoder`` in random
pieces. Whatever the damage, the decoder returns well-typed events (text is
always a ``str``, token counts bounded integers) or raises a ``StreamError``
subclass; nothing else (``TypeError``, ``RecursionError``...) may escape.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator, List, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import DATA_DIR, split_points
from llmstream._events import (ContentFilter, Event, Finish, OutputItem, TextDelta, ThinkingDelta, ToolCall,
                              ToolCallDelta, Usage)
from llmstream._exceptions import StreamError
from llmstream._providers import PROVIDERS
from llmstream._providers._base import StreamDecoder
from llmstream._providers._shape import MAX_TOKENS

#: Fixture directory -> provider name.
_DIRS = {"openai_chat": "openai", "openai_think": "openai-think", "openai_responses": "openai-responses",
         "anthropic": "anthropic", "ollama": "ollama", "gemini": "gemini", "azure": "azure"}
TRANSCRIPTS: List[Tuple[str, str, bytes]] = [
    (_DIRS[path.parent.name], f"{path.parent.name}/{path.name}", path.read_bytes())
    for path in sorted(DATA_DIR.glob("*/*.txt"))
    if path.parent.name in _DIRS
]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# The JSON text of a data line: after "data:" for SSE, the whole line for JSON lines.
_SSE_DATA = re.compile(rb"^(data: ?)(.*?)(\r\n|\r|\n)?$", re.DOTALL)


def check_events(events: Sequence[Event]) -> None:
    """Every event is well typed: text is str, counts are bounded ints."""
    for event in events:
        if isinstance(event, (TextDelta, ThinkingDelta)):
            assert type(event.text) is str
            assert not isinstance(event, ThinkingDelta) or event.signature is None or type(event.signature) is str
        elif isinstance(event, ToolCallDelta):
            assert type(event.arguments) is str and type(event.index) is int
            assert event.id is None or type(event.id) is str
            assert event.name is None or type(event.name) is str
        elif isinstance(event, ToolCall):
            assert type(event.raw_arguments) is str and type(event.id) is str and type(event.name) is str
        elif isinstance(event, Usage):
            for count in (event.input_tokens, event.output_tokens, event.cached_input_tokens,
                          event.cache_write_tokens, event.reasoning_tokens):
                assert count is None or (type(count) is int and 0 <= count <= MAX_TOKENS)
        elif isinstance(event, ContentFilter):
            assert type(event.source) is str and type(event.reason) is str and type(event.blocked) is bool
        elif isinstance(event, OutputItem):
            assert type(event.item) is dict and (event.text_key is None or type(event.text_key) is str)
            if event.item.get("type") == "thinking":  # signed thinking goes back as strings
                assert type(event.item["thinking"]) is str and type(event.item["signature"]) is str
        else:
            assert isinstance(event, Finish) and type(event.reason) is str


def run(provider: str, pieces: Sequence[bytes]) -> None:
    """Feed the pieces, then close: only StreamError may come out, and it stays raised."""
    spec = PROVIDERS[provider]
    decoder = StreamDecoder(spec.new_decoder(), framing=spec.framing)
    try:
        for piece in pieces:
            check_events(decoder.feed(piece))
        check_events(decoder.close())
    except StreamError:
        with pytest.raises(StreamError):
            decoder.close()


def split(data: bytes, cuts: List[int]) -> List[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


def json_lines(provider: str, data: bytes) -> Iterator[Tuple[int, bytes, bytes, bytes]]:
    """(line index, head, JSON text, line ending) of each line that carries JSON."""
    jsonl = PROVIDERS[provider].framing == "jsonl"
    for i, line in enumerate(data.splitlines(keepends=True)):
        body = line.rstrip(b"\r\n")
        ending = line[len(body):]
        if jsonl:
            head, text = b"", body
        else:
            match = _SSE_DATA.match(body)
            if match is None:
                continue
            head, text = match.group(1), match.group(2)
        try:
            json.loads(text)
        except ValueError:
            continue  # [DONE], or a line already broken in the recording
        yield i, head, text, ending


def paths(value: Any, prefix: Tuple[Any, ...] = ()) -> Iterator[Tuple[Any, ...]]:
    """Every path to a value inside ``value`` (the root included)."""
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from paths(child, (*prefix, i))


def replaced(value: Any, path: Tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = replaced(value[path[0]], path[1:], new)
    return copy


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


_INF = "__INF__"  # json.dumps cannot write 1e999; spliced in as text after dumping
REPLACEMENTS = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 2.5, 12.0, 10**12, "", "x", [], {}, [1, "a"], {"a": None}, _INF]),
    st.integers(1, 400).map(nested),
)


def swap_value(provider: str, data: bytes, line_pick: int, path_pick: int, new: Any) -> bytes:
    """Replace one value inside one JSON line of ``data`` with ``new``."""
    candidates = list(json_lines(provider, data))
    if not candidates:
        return data
    index, head, text, ending = candidates[line_pick % len(candidates)]
    value = json.loads(text)
    all_paths = list(paths(value))
    new_text = json.dumps(replaced(value, all_paths[path_pick % len(all_paths)], new)).replace(f'"{_INF}"', "1e999")
    lines = data.splitlines(keepends=True)
    lines[index] = head + new_text.encode() + ending
    return b"".join(lines)


transcripts = st.sampled_from(TRANSCRIPTS)
cuts = st.lists(st.integers(0, 6000), max_size=6)


@FUZZ
@given(transcripts, st.lists(st.tuples(st.integers(0, 6000), st.integers(1, 255)), min_size=1, max_size=8), cuts)
def test_byte_flips(transcript: Tuple[str, str, bytes], flips: List[Tuple[int, int]], pieces: List[int]) -> None:
    provider, _, data = transcript
    mutated = bytearray(data)
    for position, mask in flips:
        mutated[position % len(mutated)] ^= mask
    run(provider, split(bytes(mutated), pieces))


@FUZZ
@given(transcripts, st.integers(0, 10**6), st.integers(0, 10**6), REPLACEMENTS, cuts)
def test_json_type_swaps(transcript: Tuple[str, str, bytes], line_pick: int, path_pick: int, new: Any, pieces: List[int]) -> None:
    provider, _, data = transcript
    run(provider, split(swap_value(provider, data, line_pick, path_pick, new), pieces))


@FUZZ
@given(transcripts, st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), REPLACEMENTS), min_size=2, max_size=5))
def test_several_swaps(transcript: Tuple[str, str, bytes], swaps: List[Tuple[int, int, Any]]) -> None:
    provider, _, data = transcript
    for line_pick, path_pick, new in swaps:
        data = swap_value(provider, data, line_pick, path_pick, new)
    run(provider, [data])


@FUZZ
@given(transcripts, st.integers(0, 10**6), st.integers(0, 10**6), st.integers(1, 100_000))
def test_deep_nesting_spliced_into_a_line(transcript: Tuple[str, str, bytes], line_pick: int, at_pick: int, depth: int) -> None:
    provider, _, data = transcript
    candidates = list(json_lines(provider, data))
    index, head, text, ending = candidates[line_pick % len(candidates)]
    at = at_pick % (len(text) + 1)
    lines = data.splitlines(keepends=True)
    lines[index] = head + text[:at] + b"[" * depth + text[at:] + ending
    run(provider, [b"".join(lines)])


@pytest.mark.parametrize("transcript", TRANSCRIPTS, ids=[t[1] for t in TRANSCRIPTS])
def test_truncated_at_every_point(transcript: Tuple[str, str, bytes]) -> None:
    provider, _, data = transcript
    for point in split_points(len(data)):
        run(provider, [data[:point]])
