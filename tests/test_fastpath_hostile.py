"""The per-token fast paths (issue 17) through the whole client, on a raw socket.

A slow stream's every read is one whole chunk holding one whole event: the
shape the one-chunk de-chunk and the one-event SSE read shortcut. These cases
put that shape at every point of a stream, then break the stream right after
it (a stall, a close, a malformed chunk), and check the exact text, the exact
error type and ``partial_text``, and the timeouts' kind and timing (the
deadline math inlined in ``BodyReader.step``, the socket timeout kept within
``TIMEOUT_SLACK``).
"""

from __future__ import annotations

import time
from typing import Any, List, Optional, Tuple

import pytest

import llmstream
from llmstream import IncompleteStreamError, MalformedStreamError, StreamTimeoutError, Timeout

from hostile_server import Close, HostileServer, anthropic_transcript, Send, Step, Wait, head, openai_done, openai_event, openai_finish
from test_hostile import client_for

pytestmark = pytest.mark.timeout(30)

EVENTS = [openai_event("Hi"), openai_event(" th\u00e9re"), openai_event(" \u65e5\u672c"), openai_finish(), openai_done()]
TEXTS = ["Hi", " th\u00e9re", " \u65e5\u672c", "", ""]
PAYLOAD = b"".join(EVENTS)
GAP = 0.003  # between the server's writes: each usually arrives in a read of its own


def _chunk(piece: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(piece), piece)


def run_client(client: llmstream.Client, seen: Optional[List[str]] = None
        ) -> Tuple[Optional[type], Optional[str], str, Optional[str], Any, List[float], float]:
    """One stream: (error type, partial_text, text, timeout kind, metrics, arrival times, end time).

    ``seen``, if given, gets each piece as it arrives (for a test watching from another thread).
    """
    arrivals: List[float] = []
    text = ""
    try:
        with client.stream("hi", model="m") as stream:
            try:
                for piece in stream:
                    arrivals.append(time.monotonic())
                    text += piece
                    if seen is not None:
                        seen.append(piece)
            except llmstream.StreamError as exc:
                return (type(exc), exc.partial_text, text, getattr(exc, "kind", None), stream.metrics, arrivals,
                        time.monotonic())
            return None, None, stream.text, None, stream.metrics, arrivals, time.monotonic()
    finally:
        client.close()


def run(server: HostileServer, **kwargs: object) -> Tuple[Optional[type], Optional[str], str, Optional[str], List[float], float]:
    """Consume one stream: (error type, partial_text, text, timeout kind, arrival time of each piece, end time)."""
    error, partial, text, kind, _, arrivals, ended = run_client(client_for(server, **kwargs))
    return error, partial, text, kind, arrivals, ended


def _cut_script(cut: int) -> List[Step]:
    """Every event a chunk of its own, but the payload byte ``cut`` starts a new chunk; each write apart."""
    steps: List[Step] = [Send(head(framing="chunked"))]
    pos = 0
    for event in EVENTS:
        pieces = [event]
        if pos < cut < pos + len(event):
            pieces = [event[:cut - pos], event[cut - pos:]]
        for piece in pieces:
            steps += [Wait(GAP), Send(_chunk(piece))]
        pos += len(event)
    return steps + [Wait(GAP), Send(b"0\r\n\r\n")]


def test_one_chunk_per_read_at_every_point_of_the_stream(serve) -> None:
    # Every way to cut the stream in two at one point; the chunks before and
    # after the cut are whole events (the fast paths), the two around it are not.
    cuts = range(1, len(PAYLOAD), 3)
    server = serve([_cut_script(cut) for cut in cuts])
    for cut in cuts:
        assert run(server)[:4] == (None, None, "".join(TEXTS), None), cut


@pytest.mark.parametrize("after", [1, 2, 3])
def test_close_right_after_a_whole_chunk(serve, after: int) -> None:
    steps: List[Step] = [Send(head(framing="chunked"))]
    for event in EVENTS[:after]:
        steps += [Wait(GAP), Send(_chunk(event))]
    server = serve([steps + [Close()]])
    error, partial, text, _, _, _ = run(server)
    assert (error, partial, text) == (IncompleteStreamError, "".join(TEXTS[:after]), "".join(TEXTS[:after]))


# What follows a whole chunk: each is malformed chunked coding, and the text
# delivered before the fault (payload before a bad CRLF was received whole).
MALFORMED = {
    "bad-size": b"zz\r\n" + EVENTS[1] + b"\r\n",
    "negative-size": b"-5\r\nhello\r\n",
    "0x-size": b"0x%x\r\n%s\r\n" % (len(EVENTS[1]), EVENTS[1]),
    "size-too-small": b"%x\r\n%s\r\n" % (len(EVENTS[1]) - 1, EVENTS[1]),
    "data-then-lf": b"%x\r\n%s\n\n" % (len(EVENTS[1]), EVENTS[1]),  # the event's data came: "Hi th\u00e9re"
    "bare-lf-size-line": b"%x\n%s\r\n" % (len(EVENTS[1]), EVENTS[1]),
    "17-hex-digits": b"0" * 17 + b"\r\n",
}


@pytest.mark.parametrize("name", list(MALFORMED))
@pytest.mark.parametrize("together", [False, True], ids=["apart", "same-write"])
def test_malformed_chunk_right_after_a_whole_chunk(serve, name: str, together: bool) -> None:
    first = Send(head(framing="chunked") + _chunk(EVENTS[0]))
    bad = Send(MALFORMED[name])
    steps: List[Step] = ([Send(head(framing="chunked") + _chunk(EVENTS[0]) + MALFORMED[name])] if together
                         else [first, Wait(GAP), bad])
    server = serve([steps + [Wait()]])
    error, partial, text, _, _, _ = run(server)
    expected = "Hi th\u00e9re" if name == "data-then-lf" else "Hi"
    assert (error, partial, text) == (MalformedStreamError, expected, expected), name


def test_a_chunk_longer_than_announced_then_close(serve) -> None:
    # The size line says more than comes: the fast path must not take the read
    # (the event inside is still whole, so delivered), and the close is a cut.
    server = serve([[Send(head(framing="chunked") + _chunk(EVENTS[0])), Wait(GAP),
                     Send(b"%x\r\n%s\r\n" % (len(EVENTS[1]) + 10, EVENTS[1])), Close()]])
    error, partial, text, _, _, _ = run(server)
    assert (error, partial, text) == (IncompleteStreamError, "Hi th\u00e9re", "Hi th\u00e9re")


# -- timeouts after fast-path reads ---------------------------------------------------------


# Long enough that a loaded machine's scheduling (up to ~0.25 s seen) stays inside the
# bounds, short enough that a deadline restarted once (2 x IDLE) falls outside them.
IDLE = 0.5
LATE = 0.4  # how late past its deadline a timeout may be seen on a loaded machine


@pytest.mark.parametrize("framing", ["chunked", "length"])
@pytest.mark.parametrize("tokens", [1, 3])
def test_silence_after_n_tokens_is_an_idle_timeout_at_idle_after_the_last(serve, framing: str, tokens: int) -> None:
    events = [openai_event(f"t{i}") for i in range(tokens)]
    if framing == "chunked":
        steps: List[Step] = [Send(head(framing="chunked"))]
        for event in events:
            steps += [Wait(0.05), Send(_chunk(event))]
    else:
        steps = [Send(head(framing="length", length=10_000))]
        for event in events:
            steps += [Wait(0.05), Send(event)]
    server = serve([steps + [Wait()]])
    error, partial, text, kind, arrivals, ended = run(
        server, timeout=Timeout(connect=1, first_token=2, idle=IDLE, total=10))
    expected = "".join(f"t{i}" for i in range(tokens))
    assert (error, partial, kind, text) == (StreamTimeoutError, expected, "idle", expected)
    assert len(arrivals) == tokens
    # The idle clock starts when the caller asks for more, just after the last arrival.
    assert IDLE - 0.01 <= ended - arrivals[-1] < IDLE + LATE, ended - arrivals[-1]


@pytest.mark.parametrize("ping,interval", [(b": ping\n\n", 0.002), (b": ping\n\n", 0.004), (b"\n", 0.002)],
                         ids=["comment-2ms", "comment-4ms", "blank-line-2ms"])
def test_pings_faster_than_the_timeout_slack_do_not_stretch_idle(serve, ping: bytes, interval: float) -> None:
    # A ping every few ms (under TIMEOUT_SLACK), each a whole chunk, for 1.5 s
    # after the only token. Once the idle deadline passed, the read is a last
    # poll (LAST_POLL, 1 ms); with the socket timeout kept within the slack
    # (up to 6 ms) every poll found a new ping and idle fired only when the
    # pings stopped (bug found here: 0.85-1.05 s instead of 0.3 s with pings for 1 s).
    steps: List[Step] = [Send(head(framing="chunked") + _chunk(openai_event("Hi")))]
    for _ in range(int(1.5 / interval)):
        steps += [Wait(interval), Send(_chunk(ping))]
    server = serve([steps + [Wait()]])
    error, partial, text, kind, arrivals, ended = run(
        server, timeout=Timeout(connect=1, first_token=2, idle=IDLE, total=10))
    assert (error, partial, kind) == (StreamTimeoutError, "Hi", "idle")
    assert IDLE - 0.01 <= ended - arrivals[-1] < IDLE + LATE, ended - arrivals[-1]


def test_silence_before_the_first_token_is_a_first_token_timeout(serve) -> None:
    server = serve([[Send(head(framing="chunked")), Wait(0.05), Send(_chunk(b": hello\n\n")), Wait()]])
    started = time.monotonic()
    error, partial, text, kind, arrivals, ended = run(
        server, timeout=Timeout(connect=1, first_token=IDLE, idle=2, total=10))
    assert (error, partial, kind, arrivals) == (StreamTimeoutError, "", "first_token", [])
    assert IDLE <= ended - started < IDLE + LATE


def test_a_stream_that_keeps_writing_hits_total(serve) -> None:
    steps: List[Step] = [Send(head(framing="chunked"))]
    for i in range(100):
        steps += [Send(_chunk(openai_event("x"))), Wait(0.03)]
    server = serve([steps + [Wait()]])
    started = time.monotonic()
    error, partial, text, kind, arrivals, ended = run(
        server, timeout=Timeout(connect=1, first_token=2, idle=IDLE, total=0.8))
    assert (error, kind) == (StreamTimeoutError, "total")
    assert partial == text == "x" * len(arrivals) and len(arrivals) >= 3
    assert 0.8 <= ended - started < 0.8 + LATE, ended - started


def test_a_late_caller_still_gets_what_arrived_then_times_out(serve) -> None:
    # The caller starts iterating after first_token has passed: the token
    # already received still counts (the last poll), and the silence after it
    # is then an idle timeout, counted from the caller's next ask.
    server = serve([[Send(head(framing="chunked") + _chunk(openai_event("Hi"))), Wait()]])
    client = client_for(server, timeout=Timeout(connect=1, first_token=0.2, idle=0.2, total=10))
    try:
        with client.stream("hi", model="m") as stream:
            assert server.wait_requests(1)
            time.sleep(0.35)
            pieces: List[str] = []
            with pytest.raises(StreamTimeoutError) as info:
                for piece in stream:
                    pieces.append(piece)
            assert (pieces, info.value.kind, info.value.partial_text) == (["Hi"], "idle", "Hi")
    finally:
        client.close()


def test_bytes_that_arrived_while_a_slow_caller_held_a_non_content_event_still_count(serve) -> None:
    # The caller is handed message_start (not content, so the first_token
    # clock runs on) and spends longer than first_token with it; the text
    # arrived meanwhile. The next read finds first_token passed: a last poll
    # (LAST_POLL) takes what arrived instead of timing out.
    start, *rest = anthropic_transcript(["Hi", " there"])
    server = serve([[Send(head(framing="chunked") + _chunk(start)), Wait(0.05),
                     Send(b"".join(_chunk(event) for event in rest) + b"0\r\n\r\n"), Wait()]])
    client = client_for(server, "anthropic", timeout=Timeout(connect=1, first_token=0.3, idle=0.3, total=10))
    try:
        with client.stream("hi", model="m") as stream:
            kinds = []
            for event in stream.events():
                kinds.append(type(event).__name__)
                if len(kinds) == 1:
                    time.sleep(0.45)  # past first_token, nobody reading
            assert stream.text == "Hi there"
            assert "TextDelta" in kinds
    finally:
        client.close()


@pytest.mark.parametrize("buffered", [1, 8, 40])
def test_body_bytes_read_with_the_headers_come_first_then_the_socket_directly(serve, buffered: int) -> None:
    # The headers and ``buffered`` chunks in one write: http.client's reader
    # holds body bytes (up to 8 KiB, more than one 512-byte read) when the
    # body starts. They must all be read through it before the socket is read
    # directly; each later chunk arrives in a read of its own.
    words = [f" w{i:03d}" for i in range(buffered + 6)]
    first = head(framing="chunked") + b"".join(_chunk(openai_event(w)) for w in words[:buffered])
    steps: List[Step] = [Send(first)]
    for word in words[buffered:]:
        steps += [Wait(GAP), Send(_chunk(openai_event(word)))]
    steps += [Wait(GAP), Send(_chunk(openai_finish()) + _chunk(openai_done()) + b"0\r\n\r\n"), Wait()]
    error, _, text, _, _, _ = run(serve([steps]))
    assert (error, text) == (None, "".join(words))
