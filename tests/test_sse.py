"""SSEDecoder against the WHATWG event-stream interpretation rules, one test per rule.

https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import List

import pytest
from helpers import DATA_DIR, feed_all_ways, feed_all_ways_no_close

from llmstream._exceptions import MalformedStreamError
from llmstream.sse import DEFAULT_MAX_LINE_LENGTH, ServerSentEvent, SSEDecoder

Event = ServerSentEvent


def events(data: bytes, max_line_length: int = DEFAULT_MAX_LINE_LENGTH) -> List[ServerSentEvent]:
    return feed_all_ways(lambda: SSEDecoder(max_line_length), data)


def decoder_after(data: bytes) -> SSEDecoder:
    """A decoder fed ``data`` whole (for checking its state afterwards)."""
    decoder = SSEDecoder()
    decoder.feed(data)
    return decoder


# The examples of the spec's "Interpreting an event stream" section, verbatim.


def test_whatwg_example_1() -> None:
    # "The following event stream, once followed by a blank line: ... would
    # cause an event message with the interface MessageEvent to be dispatched
    # on the EventSource object. The event's data attribute would contain the
    # string "YHOO\n+2\n10"".
    stream = b"data: YHOO\ndata: +2\ndata: 10\n\n"
    assert events(stream) == [Event(data="YHOO\n+2\n10")]


def test_whatwg_example_2() -> None:
    # "The first block has just a comment, and will fire nothing. The second
    # block has two fields with names "data" and "id" respectively; an event
    # will be fired for this block, with the data "first event", and will then
    # set the last event ID to "1" ... The third block fires an event with
    # data "second event", and also has an "id" field, this time with no
    # value, which resets the last event ID to the empty string ... Finally,
    # the last block just fires an event with the data " third event" (with a
    # single leading space character)."
    stream = b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n"
    assert events(stream) == [
        Event(data="first event", id="1"),
        Event(data="second event", id=""),
        Event(data=" third event", id=""),
    ]


def test_whatwg_example_2_last_block_needs_its_blank_line() -> None:
    # "Note that the last still has to end with a blank line, the end of the
    # stream is not enough to trigger the dispatch of the last event."
    stream = b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n"
    assert [e.data for e in events(stream)] == ["first event", "second event"]


def test_whatwg_example_3() -> None:
    # "The first block fires events with the data set to the empty string, as
    # would the last block if it was followed by a blank line. The middle
    # block fires an event with the data set to a single newline character.
    # The last block is discarded because it is not followed by a blank line."
    stream = b"data\n\ndata\ndata\n\ndata:"
    assert events(stream) == [Event(data=""), Event(data="\n")]


def test_whatwg_example_4() -> None:
    # "The following stream fires two identical events: ... This is because
    # the space after the colon is ignored if present."
    stream = b"data:test\n\ndata: test\n\n"
    assert events(stream) == [Event(data="test"), Event(data="test")]


# One test per rule.


def test_empty_line_dispatches() -> None:
    assert events(b"data: a\n\n") == [Event(data="a")]


def test_comment_line_is_ignored() -> None:
    assert events(b": keep-alive\ndata: a\n:\n\n") == [Event(data="a")]


def test_comment_only_block_dispatches_nothing() -> None:
    assert events(b": ping\n\n: ping\n\n") == []


def test_field_without_colon_is_the_whole_line_with_empty_value() -> None:
    assert events(b"data\n\n") == [Event(data="")]


@pytest.mark.parametrize(
    "line, value",
    [
        pytest.param(b"data:x", "x", id="no-space"),
        pytest.param(b"data: x", "x", id="one-space-stripped"),
        pytest.param(b"data:  x", " x", id="only-one-space-stripped"),
        pytest.param(b"data:\tx", "\tx", id="tab-kept"),
        pytest.param(b"data: x ", "x ", id="trailing-space-kept"),
        pytest.param(b"data: a:b: c", "a:b: c", id="colons-in-value"),
        pytest.param(b"data:", "", id="empty-value"),
        pytest.param(b"data: ", "", id="space-only-value"),
    ],
)
def test_value_after_first_colon_minus_one_space(line: bytes, value: str) -> None:
    assert events(line + b"\n\n") == [Event(data=value)]


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"foo: bar", id="unknown-field"),
        pytest.param(b"Data: x", id="field-names-are-case-sensitive"),
        pytest.param(b"data : x", id="space-before-colon-is-part-of-the-name"),
        pytest.param(b" data: x", id="leading-space-is-part-of-the-name"),
    ],
)
def test_unknown_fields_are_ignored(line: bytes) -> None:
    assert events(b"data: kept\n" + line + b"\n\n") == [Event(data="kept")]


def test_data_lines_are_joined_with_lf() -> None:
    assert events(b"data: a\ndata: b\ndata: c\n\n") == [Event(data="a\nb\nc")]


def test_only_the_final_lf_is_removed() -> None:
    assert events(b"data: a\ndata\ndata\n\n") == [Event(data="a\n\n")]


def test_no_dispatch_when_data_buffer_is_empty() -> None:
    assert events(b"event: ping\n\nid: 3\n\nretry: 5\n\n") == []


def test_event_type_is_reset_even_without_dispatch() -> None:
    assert events(b"event: ping\n\ndata: x\n\n") == [Event(event="message", data="x")]


def test_event_type_applies_to_its_block_only() -> None:
    assert events(b"event: a\ndata: 1\n\ndata: 2\n\n") == [Event(event="a", data="1"), Event(data="2")]


def test_empty_event_type_means_message() -> None:
    assert events(b"event:\ndata: x\n\n") == [Event(event="message", data="x")]


def test_last_event_field_wins() -> None:
    assert events(b"event: a\nevent: b\ndata: x\n\n") == [Event(event="b", data="x")]


def test_id_persists_across_events() -> None:
    assert events(b"id: 1\ndata: a\n\ndata: b\n\n") == [Event(data="a", id="1"), Event(data="b", id="1")]


def test_id_with_nul_is_ignored() -> None:
    assert events(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n") == [Event(data="a", id="1"), Event(data="b", id="1")]


def test_empty_id_resets_the_last_event_id() -> None:
    assert events(b"id: 1\ndata: a\n\nid:\ndata: b\n\n") == [Event(data="a", id="1"), Event(data="b", id="")]


def test_id_after_data_in_the_same_block_applies_to_it() -> None:
    assert events(b"data: a\nid: 9\n\n") == [Event(data="a", id="9")]


def test_last_event_id_is_set_on_dispatch_even_without_data() -> None:
    decoder = decoder_after(b"id: 7\n\n")
    assert decoder.last_event_id == "7"


def test_last_event_id_waits_for_the_blank_line() -> None:
    decoder = decoder_after(b"data: a\n\nid: 7\ndata: b\n")
    assert decoder.last_event_id == ""
    decoder.feed(b"\n")
    assert decoder.last_event_id == "7"


def test_last_event_id_unchanged_by_a_discarded_block() -> None:
    decoder = decoder_after(b"id: 1\ndata: a\n\nid: 2\ndata: b\n")
    assert decoder.close() == []
    assert decoder.last_event_id == "1"


def test_last_event_id_starts_empty() -> None:
    assert SSEDecoder().last_event_id == ""


@pytest.mark.parametrize(
    "stream, retry",
    [
        pytest.param(b"retry: 3000\n", 3000, id="digits"),
        pytest.param(b"retry:0\n", 0, id="zero"),
        pytest.param(b"retry: 007\n", 7, id="leading-zeros"),
        pytest.param(b"retry: 1\nretry: 2\n", 2, id="last-wins"),
        pytest.param(b"retry: 1000\nretry: x\n", 1000, id="invalid-keeps-previous"),
        pytest.param(b"retry: 3s\n", None, id="unit-suffix-ignored"),
        pytest.param(b"retry: -1\n", None, id="sign-ignored"),
        pytest.param(b"retry: 1.5\n", None, id="decimal-ignored"),
        pytest.param(b"retry:  10\n", None, id="second-space-ignored"),
        pytest.param(b"retry:\n", None, id="empty-ignored"),
        pytest.param("retry: ١٢\n".encode(), None, id="non-ascii-digits-ignored"),
        pytest.param("retry: ²\n".encode(), None, id="superscript-ignored"),
    ],
)
def test_retry_set_only_from_ascii_digits(stream: bytes, retry: object) -> None:
    # Set as soon as the line is read, with no blank line needed.
    assert decoder_after(stream).retry == retry


def test_retry_alone_dispatches_nothing() -> None:
    assert events(b"retry: 10\n\n") == []


# End of input.


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(b"data: x", id="unterminated-line"),
        pytest.param(b"data: x\n", id="terminated-line-no-blank-line"),
        pytest.param(b"data: x\r", id="cr-no-blank-line"),
        pytest.param(b"event: e\ndata: x\nid: 1\n", id="whole-block-no-blank-line"),
    ],
)
def test_close_discards_a_block_without_its_blank_line(stream: bytes) -> None:
    assert events(stream) == []


def test_close_returns_nothing_after_a_complete_stream() -> None:
    decoder = decoder_after(b"data: a\n\n")
    assert decoder.close() == []


def test_pending_block_stays_buffered_without_close() -> None:
    assert feed_all_ways_no_close(SSEDecoder, b"data: a\n\ndata: b\n") == [Event(data="a")]


def test_feed_after_close_is_a_programming_error() -> None:
    decoder = SSEDecoder()
    decoder.close()
    with pytest.raises(RuntimeError, match="after close"):
        decoder.feed(b"data: a\n\n")


# Line endings and decoding.


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(b"event: e\ndata: a\ndata: b\n\ndata: c\n\n", id="lf"),
        pytest.param(b"event: e\rdata: a\rdata: b\r\rdata: c\r\r", id="cr"),
        pytest.param(b"event: e\r\ndata: a\r\ndata: b\r\n\r\ndata: c\r\n\r\n", id="crlf"),
        pytest.param(b"event: e\rdata: a\r\ndata: b\n\r\ndata: c\r\n\r", id="mixed"),
    ],
)
def test_cr_lf_and_crlf_end_lines_alike(stream: bytes) -> None:
    assert events(stream) == [Event(event="e", data="a\nb"), Event(data="c")]


def test_crlf_split_across_feeds_is_one_line_ending() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n\r") == [Event(data="a")]
    assert decoder.feed(b"\ndata: b\r\n\r\n") == [Event(data="b")]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("a\u2028b", id="line-separator"),
        pytest.param("a\u2029b", id="paragraph-separator"),
        pytest.param("a\x85b", id="nel"),
        pytest.param("a\x0bb\x0cc", id="vt-ff"),
    ],
)
def test_unicode_separators_stay_inside_data(text: str) -> None:
    assert events(b"data: " + text.encode() + b"\n\n") == [Event(data=text)]


def test_bom_is_stripped_once_at_the_start() -> None:
    assert events(b"\xef\xbb\xbfdata: a\n\n") == [Event(data="a")]


def test_second_bom_is_part_of_the_field_name() -> None:
    # "\ufeffdata" is an unknown field, so nothing is dispatched.
    assert events(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n") == []


def test_bom_later_in_the_stream_is_data() -> None:
    assert events(b"data: a\n\ndata: \xef\xbb\xbfb\n\n") == [Event(data="a"), Event(data="\ufeffb")]


@pytest.mark.parametrize(
    "stream, data",
    [
        pytest.param(b"data: a\xffb\n\n", "a\ufffdb", id="invalid-byte"),
        pytest.param(b"data: \xe6\x9d\n\n", "\ufffd", id="cut-sequence"),
        pytest.param(b"data: ok\n\ndata: \xff\n\ndata: ok\n\n", "\ufffd", id="among-valid-events"),
    ],
)
def test_invalid_utf8_becomes_replacement_character(stream: bytes, data: str) -> None:
    assert data in [event.data for event in events(stream)]


def test_multibyte_characters_survive_every_split() -> None:
    assert events("data: 東京 🦜 café\n\n".encode()) == [Event(data="東京 🦜 café")]


# Line length.


def test_over_long_line_raises() -> None:
    with pytest.raises(MalformedStreamError, match="^line longer than the maximum of 16 bytes$"):
        events(b"data: 0123456789abcdef\n\n", max_line_length=16)


def test_over_long_line_is_refused_before_it_is_buffered() -> None:
    decoder = SSEDecoder(max_line_length=1024)
    with pytest.raises(MalformedStreamError):
        decoder.feed(b"data: " + b"x" * 5_000_000)
    assert len(decoder._lines._buf) == 0


def test_stays_failed_after_an_over_long_line() -> None:
    decoder = SSEDecoder(max_line_length=8)
    with pytest.raises(MalformedStreamError):
        decoder.feed(b"data: 123456789")
    with pytest.raises(MalformedStreamError):
        decoder.feed(b"\n\n")
    with pytest.raises(MalformedStreamError):
        decoder.close()


def test_long_line_under_the_limit_is_fine() -> None:
    payload = "x" * 100_000
    decoder = SSEDecoder()
    out: List[ServerSentEvent] = []
    data = b"data: " + payload.encode() + b"\n\n"
    for i in range(0, len(data), 1000):
        out.extend(decoder.feed(data[i : i + 1000]))
    assert out == [Event(data=payload)]


# The fast path for runs of "data: ..." blocks must keep every rule.


def test_fast_path_keeps_a_pending_event_type() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: delta\n") == []
    assert decoder.feed(b"data: a\n\ndata: b\n\n") == [Event(event="delta", data="a"), Event(data="b")]


def test_fast_path_keeps_a_pending_id() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 5\n") == []
    assert decoder.feed(b"data: a\n\ndata: b\n\n") == [Event(data="a", id="5"), Event(data="b", id="5")]
    assert decoder.last_event_id == "5"


def test_fast_path_keeps_pending_data() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"data: b\n\ndata: c\n\n") == [Event(data="a\nb"), Event(data="c")]


def test_fast_path_leaves_a_block_without_blank_line_pending() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: b\n") == [Event(data="a")]
    assert decoder.feed(b"data: c\n\n") == [Event(data="b\nc")]


@pytest.mark.parametrize(
    "stream, expected",
    [
        pytest.param(b"data: a\n\n\ndata: b\n\n", ["a", "b"], id="extra-blank-line"),
        pytest.param(b"data: a\n\ndata: b\ndata: c\n\n", ["a", "b\nc"], id="two-data-lines"),
        pytest.param(b"data: a\n\n: ping\n\ndata: b\n\n", ["a", "b"], id="comment-between"),
        pytest.param(b"data: a\n\ndata:b\n\n", ["a", "b"], id="no-space-later"),
        pytest.param(b"data: \n\ndata:  x\n\n", ["", " x"], id="empty-and-two-spaces"),
        pytest.param(b"data: a\n\ndata: b\n\n\n", ["a", "b"], id="trailing-blank-lines"),
        pytest.param("data: é\n\ndata: a\xffb\n\n".encode("latin-1"), ["\ufffd", "a\ufffdb"], id="invalid-utf8"),
        pytest.param("data: é\n\ndata: b\ndata: c\n\n".encode(), ["é", "b\nc"], id="non-ascii-two-data-lines"),
        pytest.param("data: é\n\n\ndata: b\n\n".encode(), ["é", "b"], id="non-ascii-extra-blank-line"),
        pytest.param("data: é\n\nevent: x\ndata: b\n\n".encode(), ["é", "b"], id="non-ascii-event-line"),
    ],
)
def test_fast_path_falls_back_on_other_shapes(stream: bytes, expected: List[str]) -> None:
    assert [event.data for event in events(stream)] == expected


# ServerSentEvent.


def test_server_sent_event_defaults() -> None:
    assert ServerSentEvent() == ServerSentEvent(event="message", data="", id="")


def test_server_sent_event_is_frozen() -> None:
    with pytest.raises(AttributeError):  # llmstream._record.FrozenInstanceError
        ServerSentEvent().data = "x"  # type: ignore[misc]


def test_server_sent_event_has_no_dict() -> None:
    assert not hasattr(ServerSentEvent(), "__dict__")


def test_server_sent_event_json() -> None:
    assert ServerSentEvent(data='{"a": [1, null]}').json() == {"a": [1, None]}


def test_server_sent_event_json_error() -> None:
    with pytest.raises(json.JSONDecodeError):
        ServerSentEvent(data="[DONE]").json()


def test_server_sent_event_pickles_and_hashes() -> None:
    event = ServerSentEvent("e", "d", "i")
    assert pickle.loads(pickle.dumps(event)) == event
    assert hash(event) == hash(ServerSentEvent("e", "d", "i"))
    assert repr(event) == "ServerSentEvent(event='e', data='d', id='i')"


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(b"data: a\n\n", id="fast-path"),
        pytest.param(b"event: message\ndata: a\n\n", id="line-by-line-path"),
    ],
)
def test_decoded_events_are_ordinary_frozen_instances(stream: bytes) -> None:
    decoder = SSEDecoder()
    (event,) = decoder.feed(stream)
    assert type(event) is ServerSentEvent
    assert event == ServerSentEvent(data="a")
    assert hash(event) == hash(ServerSentEvent(data="a"))
    assert pickle.loads(pickle.dumps(event)) == event
    assert event.replace(data="b") == ServerSentEvent(data="b")
    with pytest.raises(AttributeError):  # llmstream._record.FrozenInstanceError
        event.data = "b"  # type: ignore[misc]


# Recorded provider streams: the SSE layer gives the same events however they are split.


SSE_FIXTURES = sorted(
    path
    for provider in ("openai_chat", "openai_responses", "anthropic")
    for path in (DATA_DIR / provider).glob("*.txt")
)


@pytest.mark.parametrize("path", [pytest.param(p, id=f"{p.parent.name}/{p.name}") for p in SSE_FIXTURES])
def test_recorded_streams_split_anywhere(path: Path) -> None:
    out = events(path.read_bytes())
    assert all(type(event) is ServerSentEvent for event in out)


# -- the one-event-per-read fast path (issue 17) keeps the line buffer's state exact ----------


def _feed_each(chunks: List[bytes]) -> List[str]:
    decoder = SSEDecoder()
    return [event.data for chunk in chunks for event in decoder.feed(chunk)]


def test_a_bom_after_the_first_read_is_not_stripped() -> None:
    # The BOM is stripped only at the stream's start: later it makes "\ufeffdata" an unknown field.
    assert _feed_each([b"data: a\n\n", b"\xef\xbb\xbfdata: b\n\n", b"data: c\n\n"]) == ["a", "c"]


def test_a_read_after_a_trailing_cr_clears_it() -> None:
    # "a" ends in CR CR: the last CR may pair with an LF that starts the next read.
    # "data: b" starts it instead, so a LF starting a later read is a blank line again.
    assert _feed_each([b"data: a\r\r", b"data: b\n\n", b"data: c\n", b"\n"]) == ["a", "b", "c"]


def test_one_event_reads_and_whole_block_reads_agree() -> None:
    chunks = [b"data: x\n\n", b"data: caf\xc3\xa9\n\n", b"data: \xff\n\n", b"data: y\n\ndata: z\n\n", b"data: w\n\n"]
    assert _feed_each(chunks) == ["x", "café", "\ufffd", "y", "z", "w"]
