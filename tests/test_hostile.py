"""Hostile servers: every framing, cuts, grammar attacks, stalls, close(), redirects, bad JSON, echoed keys.

The promise under test: every token exactly once, in order -- or a typed
llmstream error whose ``partial_text`` is exactly what the caller received;
bounded waits; ``close()`` stops the worker and the socket promptly in every
phase; keys never leak. Each case asserts the exact outcome, then that nothing
outlived the stream (worker thread, the TokenStream itself, a socket).

Decisions these tests make (where the design leaves room):
  * Text is delivered per complete SSE event: a cut inside an event loses
    that event, and ``partial_text`` is the text of the events completed before.
  * A body with a length (chunked, Content-Length) that ends early is
    ``IncompleteStreamError`` even after a ``finish_reason``; a close-delimited
    body (``Connection: close``, HTTP/1.0) that ends after the ``finish_reason``
    event ended cleanly (the OpenAI decoder's documented deviation).
  * A connection closed inside the status line or headers is
    ``APIConnectionError`` (no response was received).
  * A non-2xx answer is ``APIStatusError`` whatever its body (a body that cannot
    be parsed only shortens the message); its ``.body`` is server text shown to
    users, so it is redacted like the message.
  * Wrong-typed fields in a chunk (``"delta": null``, ``"content": 5``,
    ``"usage": "lots"``, a non-finite or negative token count) are
    ``MalformedStreamError``, after the text delivered before them.
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
from typing import List, Optional, Sequence

import pytest

import llmstream
from llmstream import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    IncompleteStreamError,
    MalformedStreamError,
    ProviderError,
    RateLimit,
    Retry,
    ServerError,
    StreamError,
    StreamTimeoutError,
    Timeout,
)

from conftest import READING_BODY, wait_thread_in, worker_threads
from hostile_server import (
    FRAMINGS,
    Close,
    HostileServer,
    Outcome,
    Send,
    ShutdownWrite,
    Signal,
    Step,
    Wait,
    chunked,
    consume,
    head,
    leaks,
    openai_done,
    openai_event,
    openai_finish,
    socket_fds,
)

_rng = random.Random(20240611)
KEY = "sk-test-" + "".join(_rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789") for _ in range(160))
FAST = Timeout(connect=1, first_token=2, idle=2, total=5)
ONCE = Retry(max_attempts=1)


def client_for(server: HostileServer, provider: str = "openai", **kwargs: object) -> llmstream.Client:
    kwargs.setdefault("retry", ONCE)
    kwargs.setdefault("timeout", FAST)
    base = f"{server.url}/v1" if provider == "openai" else server.url
    return llmstream.Client(provider=provider, base_url=base, api_key=KEY, **kwargs)  # type: ignore[arg-type]


def body_of(payload: bytes, framing: str, *, complete: bool = True) -> bytes:
    """``payload`` framed for ``framing`` (chunked: one chunk; without the last chunk if not ``complete``)."""
    return chunked([payload], last=complete) if framing == "chunked" else payload


def whole(events: Sequence[bytes], framing: str) -> List[Step]:
    """The script of a complete response carrying ``events``."""
    payload = b"".join(events)
    if framing == "chunked":
        return [Send(head(framing="chunked") + chunked(list(events)))]
    steps: List[Step] = [Send(head(framing=framing, length=len(payload)) + payload)]
    return steps + ([Close()] if framing in ("close", "http10") else [])


def check(out: Outcome, error: Optional[type], partial: Optional[str] = None, text: Optional[str] = None,
          **attrs: object) -> None:
    """Assert the exact outcome: ``text`` on success, or ``error`` (exact class) with ``partial``."""
    if error is None:
        assert (out.error, out.text) == (None, text), out.describe()
        return
    assert out.error is error, out.describe()
    assert out.partial == partial, out.describe()
    for name, value in attrs.items():
        assert out.attrs.get(name) == value, (name, out.describe())


def assert_clean(ref: object, client: llmstream.Client, servers: Sequence[HostileServer], before: int) -> None:
    problems = leaks(ref, client, servers, before)
    assert problems == [], problems


# -- framings -----------------------------------------------------------------------

EVENTS = [openai_event("Hi"), openai_event(" there"), openai_event(" — ça va? 日本"), openai_done()]
TEXT = "Hi there — ça va? 日本"
PAYLOAD = b"".join(EVENTS)


def _pieces(size: int) -> List[bytes]:
    return [PAYLOAD[i:i + size] for i in range(0, len(PAYLOAD), size)]


def _chunked_script(pieces: Sequence[bytes], *, ext: bytes = b"", trailers: Sequence[bytes] = (),
                    upper: bool = False, zeros: int = 0) -> List[Step]:
    out = []
    for p in pieces:
        size = (b"%X" if upper else b"%x") % len(p)
        out.append(b"0" * zeros + size + ext + b"\r\n" + p + b"\r\n")
    out.append(b"0" + ext + b"\r\n" + b"".join(t + b"\r\n" for t in trailers) + b"\r\n")
    return [Send(head(framing="chunked") + b"".join(out))]


FRAMING_CASES = [
    pytest.param(_chunked_script(EVENTS), id="chunked-event-per-chunk"),
    pytest.param(_chunked_script([PAYLOAD]), id="chunked-one-chunk"),
    pytest.param(_chunked_script(_pieces(1)), id="chunked-one-byte-per-chunk"),
    pytest.param(_chunked_script(_pieces(7)), id="chunked-7-byte-chunks"),
    pytest.param(_chunked_script(_pieces(31), upper=True), id="chunked-uppercase-hex"),
    pytest.param(_chunked_script(_pieces(13), zeros=3), id="chunked-leading-zeros"),
    pytest.param(_chunked_script(EVENTS, ext=b";foo=bar"), id="chunked-extension"),
    pytest.param(_chunked_script(EVENTS, ext=b' ; a ; b="c;d"'), id="chunked-quoted-extension"),
    pytest.param(_chunked_script(EVENTS, trailers=[b"X-Trailer: 1", b"X-Other: two"]), id="chunked-trailers"),
    pytest.param([Send(head(framing="chunked")), Wait(0.05)] + [
        Send(b"%x\r\n%s\r\n" % (len(p), p)) for p in _pieces(5)] + [Send(b"0\r\n\r\n")], id="chunked-dripped"),
    pytest.param(whole(EVENTS, "length"), id="content-length"),
    pytest.param(whole(EVENTS, "close"), id="close-delimited"),
    pytest.param(whole(EVENTS, "close")[:1] + [ShutdownWrite(), Wait(2)], id="close-delimited-half-close"),
    pytest.param(whole(EVENTS, "http10"), id="http10"),
]


@pytest.mark.parametrize("script", FRAMING_CASES)
def test_every_framing_gives_the_exact_text(serve, script) -> None:
    server = serve([script])
    before = socket_fds()
    client = client_for(server)
    out, ref = consume(client)
    check(out, None, text=TEXT)
    assert "".join(out.pieces) == TEXT
    assert_clean(ref, client, [server], before)


# -- a body cut at every point --------------------------------------------------------

CUT_EVENTS = [openai_event("Hi"), openai_event(" there"), openai_finish(), openai_done()]
CUT_TEXTS = ["Hi", " there", "", ""]


def _chunk_payload_before(pieces: Sequence[bytes], cut: int) -> int:
    """How many payload bytes a chunked body (one chunk per piece) cut at ``cut`` carries."""
    pos = paid = 0
    for piece in pieces:
        start = pos + len(b"%x\r\n" % len(piece))
        if cut <= start:
            return paid
        if cut < start + len(piece):
            return paid + cut - start
        paid += len(piece)
        pos = start + len(piece) + 2
    return paid


def _expected_cut(payload_len: int, framing: str) -> tuple:
    ends, pos = [], 0
    for event in CUT_EVENTS:
        pos += len(event)
        ends.append(pos)
    complete = sum(1 for end in ends if end <= payload_len)
    text = "".join(CUT_TEXTS[:complete])
    if complete == len(CUT_EVENTS) or (framing in ("close", "http10") and complete >= 3):
        return (None, None, "Hi there")
    return (IncompleteStreamError, text, None)


@pytest.mark.parametrize("framing", FRAMINGS)
def test_body_cut_at_every_point(serve, framing: str) -> None:
    payload = b"".join(CUT_EVENTS)
    body = chunked(CUT_EVENTS) if framing == "chunked" else payload
    hd = head(framing=framing, length=len(payload))
    cuts = list(range(len(body)))
    server = serve([[Send(hd + body[:cut]), Close()] for cut in cuts])
    before = socket_fds()
    client = client_for(server)
    wrong = []
    for cut in cuts:
        paid = _chunk_payload_before(CUT_EVENTS, cut) if framing == "chunked" else cut
        error, partial, text = _expected_cut(paid, framing)
        out, ref = consume(client)
        got = (out.error, out.partial, out.text)
        if got != (error, partial, text):
            wrong.append(f"cut {cut}: expected {(error, partial, text)}, got {out.describe()}")
    assert wrong == [], f"{len(wrong)} of {len(cuts)} cuts wrong:\n" + "\n".join(wrong[:15])
    assert_clean(ref, client, [server], before)


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("where", ["status-line", "mid-headers", "before-blank-line"])
def test_connection_closed_inside_the_head_is_a_connection_error(serve, framing: str, where: str) -> None:
    hd = head(framing=framing, length=100)
    cut = {"status-line": 6, "mid-headers": hd.index(b"\r\n") + 9, "before-blank-line": len(hd) - 2}[where]
    server = serve([[Send(hd[:cut]), Close()]])
    before = socket_fds()
    client = client_for(server)
    out, ref = consume(client)
    check(out, APIConnectionError, "")
    assert_clean(ref, client, [server], before)


# -- chunked grammar attacks --------------------------------------------------------

_THERE = openai_event(" there")
_N = len(_THERE)
_H = b"%x" % _N


def _grammar(size_line: bytes, rest: bytes = _THERE + b"\r\n", *, same_read: bool = False) -> List[Step]:
    """'Hi' in a valid chunk, then ``size_line`` (which int(x, 16) might read as the next chunk), then a stall.

    The 'Hi' goes out first, on its own, so it is delivered before the bad bytes
    arrive; with ``same_read`` both arrive together and 'Hi' must still be delivered.
    """
    first = head(framing="chunked") + b"%x\r\n%s\r\n" % (len(openai_event("Hi")), openai_event("Hi"))
    if same_read:
        return [Send(first + size_line + rest), Wait()]
    return [Send(first), Wait(0.1), Send(size_line + rest), Wait()]


GRAMMAR_CASES = [
    pytest.param(_grammar(b"-6\r\n"), id="negative-size"),
    pytest.param(_grammar(b"-6\r\n", same_read=True), id="negative-size-in-the-same-read"),
    pytest.param(_grammar(b"-" + _H + b"\r\n"), id="negative-size-of-the-data"),
    pytest.param(_grammar(b"+" + _H + b"\r\n"), id="plus-sign"),
    pytest.param(_grammar(b"0x" + _H + b"\r\n"), id="0x-prefix"),
    pytest.param(_grammar(_H[:1] + b"_" + _H[1:] + b"\r\n"), id="underscore"),
    pytest.param(_grammar(b" " + _H + b"\r\n"), id="leading-space"),
    pytest.param(_grammar(b"1" + b"0" * 24 + b"\r\n"), id="25-hex-digits"),
    pytest.param(_grammar(b"f" * 24 + b"\r\n"), id="huge-size"),
    pytest.param(_grammar(b"\r\n"), id="empty-size-line"),
    pytest.param(_grammar(b"zz\r\n"), id="not-hex"),
    pytest.param(_grammar(b"zz\r\n", same_read=True), id="not-hex-in-the-same-read-as-valid-data"),
    pytest.param(_grammar(b"0\r\nno colon in this trailer\r\n\r\n", b""), id="bad-trailer"),
    pytest.param(_grammar(b"0\r\nX-Long: " + b"a" * 20000, b""), id="endless-trailer-line"),
    pytest.param(_grammar(b"5;" + b"x" * 20000, b""), id="endless-size-line"),
]


#: Run in a child process: a size line such as ``-6`` once made the de-chunker
#: loop forever, and a spinning worker thread would slow every later test.
_CHILD = r"""
import json, sys, llmstream
from hostile_server import consume, leaks, socket_fds
before = socket_fds()
client = llmstream.Client(provider="openai", base_url=sys.argv[1], api_key="k",
                          retry=llmstream.Retry(max_attempts=1),
                          timeout=llmstream.Timeout(connect=1, first_token=1.5, idle=1.5, total=2))
out, ref = consume(client)
problems = leaks(ref, client, [], before)
print(json.dumps({"error": out.error.__name__ if out.error else None, "partial": out.partial,
                  "elapsed": out.elapsed, "describe": out.describe(), "leaks": problems}))
"""


@pytest.mark.parametrize("script", GRAMMAR_CASES)
def test_chunked_grammar_attack_is_malformed_promptly(serve, script) -> None:
    _assert_malformed_promptly(serve, script, "Hi")


def test_data_not_followed_by_crlf_delivers_the_chunk_then_fails(serve) -> None:
    # The chunk's data arrived whole (its size said so): it is delivered, as
    # h11 delivers data before it sees the framing after it; then the fault.
    _assert_malformed_promptly(serve, _grammar(_H + b"\r\n", _THERE + b"XX"), "Hi there")


def _assert_malformed_promptly(serve, script, partial: str) -> None:
    server = serve([script])
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(here), here]))
    try:
        child = subprocess.run([sys.executable, "-c", _CHILD, f"{server.url}/v1"], env=env,
                               capture_output=True, text=True, timeout=8)
    except subprocess.TimeoutExpired:
        pytest.fail("the client hung on a hostile chunk-size line")
    assert child.returncode == 0, child.stderr[-2000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert (result["error"], result["partial"]) == ("MalformedStreamError", partial), result["describe"]
    assert result["elapsed"] < 1.0, result["elapsed"]
    assert result["leaks"] == []


# -- stalls ---------------------------------------------------------------------------

FT = Timeout(connect=1, first_token=0.3, idle=5, total=1.5)
IDLE = Timeout(connect=1, first_token=5, idle=0.3, total=1.5)
TOTAL = Timeout(connect=1, first_token=5, idle=5, total=0.5)
_HI = openai_event("Hi")
_STALL_FULL = _HI + _THERE + openai_done()


def _stall_script(phase: str, framing: str) -> List[Step]:
    hd = head(framing=framing, length=len(_STALL_FULL))
    status = hd.split(b"\r\n", 1)[0] + b"\r\n"
    part = lambda payload: body_of(payload, framing, complete=False)  # noqa: E731
    if phase in ("before-status-line", "total-before-headers"):
        return [Wait()]
    if phase == "after-status-line":
        return [Send(status), Wait()]
    if phase == "after-headers":
        return [Send(hd), Wait()]
    if phase == "mid-event":
        return [Send(hd + part(_HI + _THERE[:12])), Wait()]
    if phase in ("after-content", "total-mid-stream"):
        return [Send(hd + part(_HI)), Wait()]
    if phase == "drip-bytes-of-an-event":
        return [Send(hd + part(_HI))] + [s for b in _THERE for s in (Wait(0.1), Send(part(bytes([b]))))] + [Wait()]
    raise AssertionError(phase)


STALLS = [
    ("before-status-line", FT, "first_token", ""),
    ("after-status-line", FT, "first_token", ""),
    ("after-headers", FT, "first_token", ""),
    ("mid-event", IDLE, "idle", "Hi"),
    ("after-content", IDLE, "idle", "Hi"),
    ("drip-bytes-of-an-event", IDLE, "idle", "Hi"),
    ("total-before-headers", TOTAL, "total", ""),
    ("total-mid-stream", TOTAL, "total", "Hi"),
]


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("phase,timeout,kind,partial", [pytest.param(*s, id=s[0]) for s in STALLS])
def test_stall_times_out_with_the_right_kind(serve, framing, phase, timeout, kind, partial) -> None:
    server = serve([_stall_script(phase, framing)])
    before = socket_fds()
    client = client_for(server, timeout=timeout)
    out, ref = consume(client)
    check(out, StreamTimeoutError, partial, kind=kind)
    limit = {"first_token": timeout.first_token, "idle": timeout.idle, "total": timeout.total}[kind]
    assert out.elapsed < limit + 0.4, out.elapsed
    assert_clean(ref, client, [server], before)


@pytest.mark.parametrize("first,drip", [
    pytest.param(b"0\r\n", b"x-a: b\r\n", id="trailer-lines-after-the-last-chunk"),
    pytest.param(b"5;a", b"a", id="a-chunk-extension-byte-by-byte"),
])
def test_chunk_framing_alone_is_not_progress(serve, first: bytes, drip: bytes) -> None:
    # Bytes that carry no payload (trailer lines, a size line's extension)
    # must not restart the wait: every read they take shares the one deadline.
    steps: List[Step] = [Send(head(framing="chunked") + body_of(_HI, "chunked", complete=False) + first)]
    steps += [s for _ in range(40) for s in (Wait(0.1), Send(drip))] + [Wait()]
    server = serve([steps])
    before = socket_fds()
    client = client_for(server, timeout=IDLE)
    out, ref = consume(client)
    check(out, StreamTimeoutError, "Hi", kind="idle")
    assert out.elapsed < IDLE.idle + 0.4, out.elapsed
    assert_clean(ref, client, [server], before)


# -- close() from another thread, in every phase -------------------------------------


def _close_script(phase: str, framing: str, reached: threading.Event) -> List[Step]:
    hd = head(framing=framing, length=len(_STALL_FULL))
    if phase == "waiting-for-headers":
        return [Signal(reached), Wait()]
    if phase == "after-headers":
        return [Send(hd), Signal(reached), Wait()]
    return [Send(hd + body_of(_HI, framing, complete=False)), Signal(reached), Wait()]


@pytest.mark.parametrize("framing", ["chunked", "length", "close"])
@pytest.mark.parametrize("phase", ["waiting-for-headers", "after-headers", "mid-body"])
def test_close_from_another_thread_closes_the_socket_within_100ms(serve, framing: str, phase: str) -> None:
    reached = threading.Event()
    server = serve([_close_script(phase, framing, reached)])
    before = socket_fds()
    client = client_for(server, timeout=Timeout(connect=1, first_token=5, idle=5, total=8))
    stream = client.stream("hi", model="m")
    got: List[str] = []
    errors: List[BaseException] = []
    first = threading.Event()

    def run() -> None:
        try:
            for piece in stream:
                got.append(piece)
                first.set()
        except BaseException as exc:  # reported below
            errors.append(exc)

    consumer = threading.Thread(target=run)
    consumer.start()
    assert reached.wait(2)
    if phase == "mid-body":
        assert first.wait(2)
    else:
        assert wait_thread_in(READING_BODY, [consumer], also_workers=True)  # the consumer is in its read
    started = time.monotonic()
    stream.close()
    returned = time.monotonic() - started
    left = worker_threads()
    consumer.join(1)
    conn = server.connections[0]
    assert conn.closed.wait(2), "the server never saw the connection close"
    seen = conn.closed_at - started  # type: ignore[operator]
    problems = []
    if returned >= 0.1:
        problems.append(f"close() took {returned:.3f}s")
    if seen >= 0.1:
        problems.append(f"the server saw the close {seen:.3f}s after close()")
    if left:
        problems.append(f"worker alive when close() returned: {[t.name for t in left]}")
    assert problems == [], problems
    assert not consumer.is_alive() and errors == [] and stream.status == "closed"
    assert got == (["Hi"] if phase == "mid-body" else [])
    import weakref

    ref = weakref.ref(stream)
    del stream
    assert_clean(ref, client, [server], before)


# -- redirects ------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_is_an_error_and_the_target_receives_nothing(serve, provider: str, status: int) -> None:
    target = serve([whole(EVENTS, "length")])
    path = "/v1/chat/completions" if provider == "openai" else "/v1/messages"
    location = f"http://user:hunter2@127.0.0.1:{target.port}{path}?token=SECRETQ"
    server = serve([[Send(head(status, [(b"Location", location.encode())], framing="length", length=0,
                                content_type=None))]])
    before = socket_fds()
    client = client_for(server, provider)
    out, ref = consume(client)
    time.sleep(0.05)  # a followed redirect would have connected by now (it happens before any error)
    assert target.connections == [] and target.requests == [], "the redirect target was contacted"
    check(out, APIStatusError, "", status_code=status)
    assert f"http://127.0.0.1:{target.port}{path}" in out.message, out.message
    for secret in ("SECRETQ", "hunter2", KEY):
        assert secret not in out.message and secret not in out.rep
    assert_clean(ref, client, [server, target], before)


# -- wrong-typed and hostile JSON -----------------------------------------------------


def _data(line: bytes) -> bytes:
    return b"data: " + line + b"\n\n"


BAD_CHUNKS = [
    pytest.param(b'{"choices":"x"}', id="choices-is-a-string"),
    pytest.param(b'{"choices":{"0":{}}}', id="choices-is-an-object"),
    pytest.param(b'{"choices":[5]}', id="choice-is-a-number"),
    pytest.param(b'{"choices":[{"index":0,"delta":"x"}]}', id="delta-string"),
    pytest.param(b'{"choices":[{"index":0,"delta":{"content":5}}]}', id="content-number"),
    pytest.param(b'{"choices":[{"index":0,"delta":{"content":["a"]}}]}', id="content-list"),
    pytest.param(b'{"choices":[{"index":0,"delta":{"tool_calls":"x"}}]}', id="tool-calls-string"),
    pytest.param(b'{"choices":[],"usage":"lots"}', id="usage-string"),
    pytest.param(b'{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1e999}}', id="usage-infinite"),
    pytest.param(b'{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":-5}}', id="usage-negative"),
    pytest.param(b'{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":"12"}}', id="usage-string-count"),
    pytest.param(b"[" * 100000, id="nested-100000-lists"),
    pytest.param(b'{"a":' * 50000, id="nested-50000-objects"),
    pytest.param(b'{"choices":[{"index":0,"delta":{"content":' + b"[" * 100000 + b"}}]}", id="nested-in-content"),
]


@pytest.mark.parametrize("bad", BAD_CHUNKS)
def test_wrong_typed_json_is_malformed_after_the_text_before_it(serve, bad: bytes) -> None:
    server = serve([whole([_HI, _data(bad), _THERE, openai_done()], "chunked")])
    before = socket_fds()
    client = client_for(server)
    out, ref = consume(client)
    check(out, MalformedStreamError, "Hi")
    assert_clean(ref, client, [server], before)


def test_a_null_delta_is_read_as_an_empty_one(serve) -> None:
    # Understood, not malformed: some OpenAI-compatible servers send "delta": null
    # on a chunk that carries nothing (the decoder treats absent and null alike).
    null_delta = _data(b'{"choices":[{"index":0,"delta":null}]}')
    server = serve([whole([_HI, null_delta, _THERE, openai_done()], "chunked")])
    before = socket_fds()
    client = client_for(server)
    out, ref = consume(client)
    check(out, None, text="Hi there")
    assert_clean(ref, client, [server], before)


def test_nested_json_in_an_error_body_is_still_the_status_error(serve) -> None:
    body = b"[" * 100000
    server = serve([[Send(head(500, framing="length", length=len(body), content_type=b"application/json") + body)]])
    before = socket_fds()
    client = client_for(server)
    out, ref = consume(client)
    check(out, ServerError, "", status_code=500)
    assert_clean(ref, client, [server], before)


def test_infinite_usage_does_not_poison_the_rate_limiter_or_the_monitor(serve) -> None:
    bad = _data(b'{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1e999}}')
    server = serve([whole([_HI, bad, openai_done()], "chunked"), whole(EVENTS, "chunked")])
    client = client_for(server, rate_limit=RateLimit(requests_per_minute=6000, tokens_per_minute=60000),
                        timeout=Timeout(connect=1, first_token=2, idle=2, total=3))
    first, _ = consume(client)
    check(first, MalformedStreamError, "Hi")
    second, _ = consume(client)
    check(second, None, text=TEXT)
    snapshot = llmstream.monitor.snapshot()
    assert snapshot.output_tokens == snapshot.output_tokens and abs(snapshot.output_tokens) != float("inf")
    client.close()


# -- Last-Event-ID resume with hostile ids --------------------------------------------


def _resume_scripts(event_id: str) -> List[List[Step]]:
    hd = head(framing="chunked")
    return [
        [Send(hd + chunked([openai_event("Hi", event_id=event_id)], last=False)), Close()],
        whole([_THERE, openai_done()], "chunked"),
    ]


def test_non_latin1_event_id_is_sent_back_as_utf8(serve) -> None:
    event_id = "résumé-€"
    server = serve(_resume_scripts(event_id))
    before = socket_fds()
    client = client_for(server, retry=Retry(max_attempts=2, initial_delay=0, resume="last-event-id"))
    out, ref = consume(client)
    check(out, None, text="Hi there")
    assert "last-event-id" not in server.requests[0].headers
    assert server.requests[1].headers["last-event-id"] == event_id.encode("utf-8")
    assert_clean(ref, client, [server], before)


@pytest.mark.parametrize("event_id", [" leading-space", "tab\there", "a\x7fdel"])
def test_awkward_event_id_is_a_typed_error_or_resumes(serve, event_id: str) -> None:
    server = serve(_resume_scripts(event_id))
    before = socket_fds()
    client = client_for(server, retry=Retry(max_attempts=2, initial_delay=0, resume="last-event-id"))
    out, ref = consume(client)
    if out.error is None:
        assert out.text == "Hi there"
    else:
        assert issubclass(out.error, StreamError) and out.partial == "Hi", out.describe()
    assert_clean(ref, client, [server], before)


# -- echoed secrets -------------------------------------------------------------------


def _error_json(message: str, kind: str = "invalid_request_error") -> bytes:
    return json.dumps({"error": {"message": message, "type": kind}}).encode()


def _status(status: int, body: bytes, content_type: bytes = b"application/json") -> List[Step]:
    return [Send(head(status, framing="length", length=len(body), content_type=content_type) + body)]


ECHO_CASES = [
    pytest.param("openai", _status(401, _error_json(f"Incorrect API key provided: {KEY}.")),
                 AuthenticationError, True, id="401-json-message"),
    pytest.param("openai", _status(500, b"x" * 150 + KEY.encode() + b" was refused", b"text/plain"),
                 ServerError, True, id="500-text-truncated-mid-key"),
    pytest.param("openai", _status(500, b"<html><body>" + KEY.encode() + b"</body></html>", b"text/html"),
                 ServerError, False, id="500-html"),
    pytest.param("openai", whole([_data(_error_json(f"key {KEY} is revoked", "server_error")), openai_done()],
                                 "chunked"), ProviderError, True, id="in-stream-error-event"),
    pytest.param("openai", [Send(head(200, framing="length", length=len(KEY) + 13,
                                      content_type=b"text/html; key=" + KEY.encode()) + b"<html>" + KEY.encode()
                                 + b"</html>")], MalformedStreamError, True, id="200-wrong-content-type"),
    pytest.param("openai", [Send(b"GARBAGE Bearer " + KEY.encode() + b"\r\n\r\n")],
                 APIConnectionError, True, id="garbage-status-line"),
    pytest.param("anthropic", _status(401, json.dumps({"type": "error", "error": {
        "type": "authentication_error", "message": f"invalid x-api-key {KEY}"}}).encode()),
                 AuthenticationError, True, id="anthropic-401"),
]


def _fragments(text: str) -> List[str]:
    return sorted({KEY[i:i + 8] for i in range(len(KEY) - 7) if KEY[i:i + 8] in text})


@pytest.mark.parametrize("provider,script,error,shown", ECHO_CASES)
def test_an_echoed_key_leaks_nowhere(serve, caplog, provider, script, error, shown) -> None:
    caplog.set_level(logging.DEBUG, logger="llmstream")
    server = serve([script])
    before = socket_fds()
    client = client_for(server, provider, retry=Retry(max_attempts=2, initial_delay=0, resume="replay"))
    out, ref = consume(client, use_events=True)
    assert out.error is error, out.describe()
    places = {"str(exc)": out.message, "repr(exc)": out.rep, "exc.body": str(out.attrs.get("body", "")),
              "events": "\n".join(out.event_reprs),
              "logs": "\n".join(caplog.text.splitlines()),
              "tracebacks (chained causes included)": "\n".join(out.traces)}
    leaked = {where: _fragments(text) for where, text in places.items() if _fragments(text)}
    assert leaked == {}, f"key fragments leaked in {sorted(leaked)}"
    if shown:
        assert "<redacted>" in out.message, out.message
    if "body" in out.attrs:
        assert "<redacted>" in str(out.attrs["body"])
    assert_clean(ref, client, [server], before)


def test_retrying_events_are_seen_by_the_echo_cases(serve) -> None:
    # Guards the test above: a 500 is retried, so its Retrying event (and its cause) is checked too.
    server = serve([_status(500, b"busy", b"text/plain")])
    client = client_for(server, retry=Retry(max_attempts=2, initial_delay=0))
    out, _ = consume(client, use_events=True)
    assert out.error is ServerError and out.attrs["attempts"] == 2
    assert any(r.startswith("Retrying(") for r in out.event_reprs), out.event_reprs
    client.close()
