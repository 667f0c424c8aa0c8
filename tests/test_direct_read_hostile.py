"""The per-token read path of issue 17 under attack: direct socket reads, folded metrics, lent steps.

What changed (and what each case here attacks):

  * ``OpenResponse._read_dechunked`` reads a chunked body through http.client's
    BufferedReader only until ``read1`` returns less than asked (its buffer,
    filled while the headers were parsed, is then empty and never refilled);
    after that it calls the socket's own ``recv`` (``socket.socket`` or
    ``ssl.SSLSocket``). Attacked: body bytes arriving with the headers in every
    amount (none, part of a chunk, exactly one read, more than the reader's
    8 KiB), headers that nearly fill the reader's buffer, the switch landing
    inside a chunk or an event, a close / RST / stall right after it, close()
    from another thread while blocked in the direct ``recv``, a connection
    reused after a direct-read body, the same over TLS (a real ``ssl`` server),
    and random write boundaries (Hypothesis).
  * ``BodyReader.step`` appends metrics straight to the histograms' pending
    lists, folding every ``FOLD_EVERY`` reads, and hands a lone text delta
    over when the resume filter returned the very same list. Attacked: a
    retry that replays the answer after a cut that came after the switch
    (exact text once; a diverging replay's ``Reset``; metrics that add up),
    and many streams read while another thread snapshots their metrics in a
    tight loop (never a value counted twice; pending lists stay bounded).

Each case asserts the exact text, the exact error type and ``partial_text``,
and that nothing outlived the stream.
"""

from __future__ import annotations

import gc
import ssl
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator, List, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import llmstream
from llmstream import IncompleteStreamError, ResumeError, Retry, Retrying, StreamTimeoutError, TextDelta, Timeout
from llmstream import Reset as ResetEvent
from llmstream._histogram import FOLD_EVERY

from conftest import worker_threads
from hostile_server import Close, HostileServer, Send, Signal, Step, Wait, head, leaks, openai_done, openai_event, openai_finish, socket_fds
from hostile_server import Reset as RST
from test_fastpath_hostile import run_client as run
from test_hostile import KEY, client_for
from test_options import pki  # noqa: F401  (the CA and server certificate fixture, made with openssl)

pytestmark = pytest.mark.timeout(30)

GAP = 0.003  # between the server's writes: each usually arrives in a read of its own
IDLE = 0.5
LATE = 0.4  # how late past its deadline a timeout may be seen on a loaded machine


def _chunk(piece: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(piece), piece)


def words(count: int, prefix: str = "w") -> List[str]:
    """Texts with multi-byte characters (a read cut inside one must not garble it)."""
    return [f" {prefix}{i:03d}\u00e9\u65e5" for i in range(count)]


def sse_events(texts: Sequence[str]) -> List[bytes]:
    return [openai_event(t) for t in texts] + [openai_finish(), openai_done()]


def chunked_body(events: Sequence[bytes]) -> bytes:
    """Every event a chunk of its own, then the last chunk."""
    return b"".join(_chunk(e) for e in events) + b"0\r\n\r\n"


def split_script(hd: bytes, body: bytes, first: int, cuts: Sequence[int], gap: float = GAP) -> List[Step]:
    """``hd`` and ``body[:first]`` in one write, then the body's pieces between the cuts, ``gap`` apart."""
    bounds = [first, *sorted(set(c for c in cuts if first < c < len(body))), len(body)]
    steps: List[Step] = [Send(hd + body[:first])]
    for start, end in zip(bounds, bounds[1:]):
        steps += [Wait(gap), Send(body[start:end])]
    return steps + [Wait()]


# -- servers: plain and TLS ---------------------------------------------------------------


class TLSServer(HostileServer):
    """The scripted server behind a real TLS handshake (each connection wrapped in its own thread)."""

    def __init__(self, scripts: Sequence[Sequence[Step]], context: ssl.SSLContext) -> None:
        super().__init__(scripts)
        self._context = context

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _serve(self, conn: Any) -> None:
        try:
            conn.sock.settimeout(5)
            conn.sock = self._context.wrap_socket(conn.sock, server_side=True)
            conn.sock.settimeout(None)
        except (ssl.SSLError, OSError):
            conn.sock.close()
            conn.done.set()
            return
        super()._serve(conn)


Start = Callable[..., Tuple[HostileServer, Callable[..., llmstream.Client]]]


@pytest.fixture(params=["plain", "tls"])
def transport(request: pytest.FixtureRequest, serve: Any) -> Iterator[Start]:
    """``start(scripts)`` -> (server, make_client(**client kwargs)), over plain TCP or TLS."""
    servers: List[HostileServer] = []
    if request.param == "plain":
        def start(scripts: Sequence[Sequence[Step]]) -> Tuple[HostileServer, Callable[..., llmstream.Client]]:
            server = serve(scripts)
            return server, lambda **kw: client_for(server, **kw)
    else:
        certs: Path = request.getfixturevalue("pki")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certs / "server.pem", certs / "server.key")

        def start(scripts: Sequence[Sequence[Step]]) -> Tuple[HostileServer, Callable[..., llmstream.Client]]:
            server = TLSServer(scripts, context).__enter__()
            servers.append(server)

            def make(**kw: Any) -> llmstream.Client:
                kw.setdefault("retry", Retry(max_attempts=1))
                kw.setdefault("timeout", Timeout(connect=2, first_token=3, idle=3, total=8))
                return llmstream.Client(provider="openai", base_url=f"{server.url}/v1", api_key=KEY,
                                        verify=str(certs / "ca.pem"), **kw)
            return server, make
    yield start
    for server in servers:
        server.stop()


def in_direct_recv(thread: threading.Thread) -> bool:
    """Whether ``thread`` is in a body read that goes to the socket's own recv, not through the buffered reader.

    The frames between ``_read_dechunked`` and the innermost: none for a
    plain socket (``socket.recv`` is C), ``recv`` then ``read`` for an
    ``ssl.SSLSocket``; through http.client's reader there is SocketIO's ``readinto``.
    """
    frame = sys._current_frames().get(thread.ident or -1)
    names: List[str] = []
    while frame is not None and frame.f_code.co_name != "_read_dechunked":
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return frame is not None and names in ([], ["read", "recv"])


def wait_in_direct_recv(threads: Sequence[threading.Thread], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(in_direct_recv(t) for t in [*threads, *worker_threads()]):
            return True
        time.sleep(0.002)
    return False


def check_metrics(metrics: Any, payload: bytes, drained: int = 0) -> None:
    """Every byte of the payload counted once; reads counted once in each per-read histogram.

    ``drained``: how many bytes after the end marker's dispatch may be left to
    the drain (a CRLF body: ``[DONE]\\r\\n\\r`` ends it), counted in
    ``bytes_received`` but not in the per-read histograms.
    """
    assert metrics.bytes_received == len(payload), (metrics.bytes_received, len(payload))
    assert len(payload) - drained <= metrics.chunk_size.total <= len(payload)
    assert metrics.chunks == metrics.chunk_size.count == metrics.read_time.count
    assert 1 <= metrics.chunks <= len(payload)
    assert metrics.chunk_gap.count <= metrics.chunks - 1 or metrics.chunks == 1


# -- body bytes read with the headers, then the socket directly -----------------------------


TEXTS = words(420)  # ~29 KB of payload: more than the reader's 8 KiB buffer with room to spare
EVENTS = sse_events(TEXTS)
PAYLOAD = b"".join(EVENTS)
BODY = chunked_body(EVENTS)


@pytest.mark.parametrize("buffered", [0, 2, 40, 448, 511, 512, 513, 2048, 8000, 9000, 20000])
def test_body_bytes_with_the_headers_in_every_amount_then_more_later(transport: Start, buffered: int) -> None:
    # ``buffered`` body bytes in the headers' write (a cut anywhere: inside a
    # size line, an event, a CRLF), then the rest in pieces, each cut inside a
    # chunk. 448 and 512 are whole reads' worth: read1 returns all it was asked
    # and the buffer is empty without a short read.
    rest = len(BODY) - buffered
    cuts = [buffered + rest * k // 7 + 3 for k in range(7)]
    server, make = transport([split_script(head(framing="chunked"), BODY, buffered, cuts)])
    error, partial, text, _, metrics, _, _ = run(make())
    assert (error, partial, text) == (None, None, "".join(TEXTS))
    check_metrics(metrics, PAYLOAD)


@pytest.mark.parametrize("buffered", [0, 30, 300, 9000])
@pytest.mark.parametrize("pad", [7900, 8150, 8300])
def test_headers_that_nearly_fill_the_readers_buffer(serve: Any, pad: int, buffered: int) -> None:
    # The head alone is close to (or past) the reader's 8 KiB buffer: the body
    # bytes it holds when the body starts are a few, or none, whatever came.
    hd = head(framing="chunked", headers=[(b"X-Pad", b"p" * pad)])
    rest = len(BODY) - buffered
    cuts = [buffered + rest * k // 4 + 5 for k in range(4)]
    server = serve([split_script(hd, BODY, buffered, cuts)])
    error, partial, text, _, metrics, _, _ = run(client_for(server))
    assert (error, partial, text) == (None, None, "".join(TEXTS))
    check_metrics(metrics, PAYLOAD)


def test_one_large_event_after_the_switch_grows_the_read_size(serve: Any) -> None:
    # A 200 KB event arriving in pieces after the direct reads began: reads
    # grow to 64 KiB, the event is handed over whole, once.
    big = "x\u00e9" * 70_000
    events = [openai_event("a"), openai_event(big), openai_event("z"), openai_finish(), openai_done()]
    body = chunked_body(events)
    first = len(_chunk(events[0]))
    cuts = [first, *range(first + 1, len(body), 37_000)]
    server = serve([split_script(head(framing="chunked"), body, cuts[0], cuts[1:])])
    error, partial, text, _, metrics, _, _ = run(client_for(server))
    assert (error, partial, text) == (None, None, "a" + big + "z")
    check_metrics(metrics, b"".join(events))


def test_a_connection_reused_after_a_direct_read_body(serve: Any) -> None:
    # The body ends during direct reads: the connection goes back to the pool
    # and the next stream's response (a new reader) reads it from its start.
    texts = words(6)
    events = sse_events(texts)
    body = chunked_body(events)
    cuts = [len(_chunk(events[0])) + 2, *range(80, len(body), 90)]
    server = serve([split_script(head(framing="chunked"), body, cuts[0], cuts[1:])[:-1]])  # no Wait: keep-alive, next request
    client = client_for(server)
    try:
        for _ in range(3):
            with client.stream("hi", model="m") as stream:
                assert "".join(stream) == "".join(texts)
                check_metrics(stream.metrics, b"".join(events))
        assert len(server.requests) == 3 and len(server.connections) == 1
    finally:
        client.close()


# -- faults right after the switch ------------------------------------------------------------


T3 = ["Hi", " th\u00e9re", " \u65e5\u672c"]
E3 = [openai_event(t) for t in T3]


def _lead(kind: str) -> Tuple[bytes, str, List[bytes]]:
    """(body bytes sent with the headers, text they complete, later writes before the fault)."""
    if kind == "whole-chunk":  # buffered: one whole chunk; the next read is the first direct one
        return _chunk(E3[0]), "Hi", []
    if kind == "mid-chunk":  # buffered: a chunk and part of the next (inside its event)
        second = _chunk(E3[1])
        return _chunk(E3[0]) + second[:20], "Hi", []
    # buffered: one chunk; a second whole chunk arrives by a direct read, then the fault
    return _chunk(E3[0]), "Hi th\u00e9re", [_chunk(E3[1])]


@pytest.mark.parametrize("lead", ["whole-chunk", "mid-chunk", "one-direct-read"])
@pytest.mark.parametrize("fault", ["close", "rst"])
def test_a_cut_right_after_the_switch(transport: Start, lead: str, fault: str) -> None:
    # The fault comes once the client is blocked in the direct recv (an RST
    # sent earlier could destroy bytes the client had not read yet).
    first, expected, later = _lead(lead)
    go = threading.Event()
    steps: List[Step] = [Send(head(framing="chunked") + first)]
    for piece in later:
        steps += [Wait(GAP), Send(piece)]
    steps += [Wait(event=go), Close() if fault == "close" else RST()]
    server, make = transport([steps])
    result: List[Any] = []
    seen: List[str] = []
    consumer = threading.Thread(target=lambda: result.append(run(make(), seen)))
    consumer.start()
    try:
        deadline = time.monotonic() + 5
        while "".join(seen) != expected and time.monotonic() < deadline:
            time.sleep(0.002)
        assert wait_in_direct_recv([consumer]), "the blocked read is not the socket's own recv"
    finally:
        go.set()
        consumer.join(10)
    error, partial, text, _, _, _, _ = result[0]
    assert (error, partial, text) == (IncompleteStreamError, expected, expected)


@pytest.mark.parametrize("lead", ["whole-chunk", "mid-chunk", "one-direct-read"])
def test_a_stall_right_after_the_switch_is_an_exact_idle_timeout(transport: Start, lead: str) -> None:
    first, expected, later = _lead(lead)
    steps: List[Step] = [Send(head(framing="chunked") + first)]
    for piece in later:
        steps += [Wait(GAP), Send(piece)]
    server, make = transport([steps + [Wait()]])
    error, partial, text, kind, _, arrivals, ended = run(
        make(timeout=Timeout(connect=2, first_token=3, idle=IDLE, total=10)))
    assert (error, partial, kind, text) == (StreamTimeoutError, expected, "idle", expected)
    assert IDLE - 0.01 <= ended - arrivals[-1] < IDLE + LATE, ended - arrivals[-1]


@pytest.mark.parametrize("drip", ["framing", "payload"])
def test_bytes_dripped_after_the_switch_do_not_stretch_idle(transport: Start, drip: str) -> None:
    # After the switch the server sends one byte every 20 ms for twice the idle
    # limit: chunk framing alone (a size line with extensions, never its data),
    # or payload that never completes an event. Neither is content: idle fires
    # IDLE after the last token, whatever the direct reads brought.
    piece = b"4" + b";x=y" * 100 if drip == "framing" else b"fff\r\n: " + b"p" * 200
    steps: List[Step] = [Send(head(framing="chunked") + _chunk(E3[0])), Wait(GAP), Send(_chunk(E3[1]))]
    for i in range(int(2 * IDLE / 0.02)):
        steps += [Wait(0.02), Send(piece[i:i + 1])]
    server, make = transport([steps + [Wait()]])
    error, partial, text, kind, _, arrivals, ended = run(
        make(timeout=Timeout(connect=2, first_token=3, idle=IDLE, total=10)))
    assert (error, partial, kind, text) == (StreamTimeoutError, "Hi th\u00e9re", "idle", "Hi th\u00e9re")
    assert IDLE - 0.01 <= ended - arrivals[-1] < IDLE + LATE, ended - arrivals[-1]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_every_read_exactly_one_line_after_the_switch(serve: Any, eol: bytes) -> None:
    # Each SSE line (and each blank line) a chunk and a write of its own: the
    # reads are exactly one line each, the shape of LineBuffer's one-line
    # shortcut, with a blank line read alone ("\r\n": a CR at its very start).
    texts = words(6)
    lines: List[bytes] = []
    for event in sse_events(texts):
        lines += [line + eol for line in event.split(b"\n")[:-1]]
    body = b"".join(_chunk(line) for line in lines) + b"0\r\n\r\n"
    cuts, pos = [], 0
    for line in lines:
        pos += len(_chunk(line))
        cuts.append(pos)
    server = serve([split_script(head(framing="chunked"), body, cuts[0], cuts[1:])])
    error, partial, text, _, metrics, _, _ = run(client_for(server))
    assert (error, partial, text) == (None, None, "".join(texts))
    check_metrics(metrics, b"".join(lines), drained=len(eol) - 1)


def test_a_byte_left_to_the_drain_is_counted_in_bytes_received(serve: Any) -> None:
    # A CRLF body whose last blank line is cut between its CR and LF: "[DONE]\r\n\r"
    # already ends the stream, and the LF is read by the drain (for the
    # connection's reuse). It was received: bytes_received counts it; it is no
    # read of the answer: the per-read histograms do not.
    events = [e.replace(b"\n", b"\r\n") for e in sse_events(words(3))]
    payload = b"".join(events)
    body = _chunk(payload[:-1]) + _chunk(payload[-1:]) + b"0\r\n\r\n"
    server = serve([split_script(head(framing="chunked"), body, 0, [len(_chunk(payload[:-1]))])])
    error, partial, text, _, metrics, _, _ = run(client_for(server))
    assert (error, partial, text) == (None, None, "".join(words(3)))
    assert metrics.bytes_received == len(payload)
    assert metrics.chunk_size.total == len(payload) - 1


def test_a_malformed_line_read_with_a_whole_event_after_the_switch_fails_at_once(serve: Any) -> None:
    # One read: a whole event, then a line longer than max_line_length (the
    # SSE framing's one refusal). The event is handed over, and the failure is
    # raised by the very next step, not after whatever the server does next
    # (here: nothing, for longer than idle).
    steps: List[Step] = [Send(head(framing="chunked") + _chunk(E3[0])), Wait(GAP),
                         Send(_chunk(E3[1] + b"data: " + b"x" * 300 + b"\n")), Wait()]
    server = serve([steps])
    started = time.monotonic()
    error, partial, text, _, _, _, ended = run(
        client_for(server, timeout=Timeout(connect=2, first_token=3, idle=2, total=10), max_line_length=200))
    assert (error, partial, text) == (llmstream.MalformedStreamError, "Hi th\u00e9re", "Hi th\u00e9re")
    assert ended - started < 1.0


def test_text_deltas_read_directly_are_ordinary_frozen_events(serve: Any) -> None:
    # The OpenAI hot path builds its TextDelta through an unfrozen twin and a
    # __class__ swap: what the caller gets must be indistinguishable from TextDelta(text).
    import pickle

    texts = words(5)
    events = sse_events(texts)
    body = chunked_body(events)
    server = serve([split_script(head(framing="chunked"), body, len(_chunk(events[0])),
                                 range(len(_chunk(events[0])), len(body), 61))])
    client = client_for(server)
    try:
        with client.stream("hi", model="m") as stream:
            deltas = [e for e in stream.events() if isinstance(e, TextDelta)]
        assert [d.text for d in deltas] == texts
        for delta in deltas:
            twin = TextDelta(delta.text)
            assert type(delta) is TextDelta and delta == twin and hash(delta) == hash(twin)
            assert repr(delta) == repr(twin) and pickle.loads(pickle.dumps(delta)) == twin
            with pytest.raises(llmstream.FrozenInstanceError if hasattr(llmstream, "FrozenInstanceError")
                               else AttributeError):
                delta.text = "changed"  # type: ignore[misc]
            assert delta.text == twin.text and not hasattr(delta, "__dict__")
    finally:
        client.close()


@pytest.mark.parametrize("buffered", [40, 512, 9000])
def test_close_from_another_thread_while_blocked_in_the_direct_recv(transport: Start, buffered: int) -> None:
    texts = words(200)
    events = [openai_event(t) for t in texts]
    body = b"".join(_chunk(e) for e in events)
    # ``buffered`` bytes with the headers, then the rest of the event they cut
    # plus one more whole event (a short read: the switch), then silence.
    upto = next(i for i in range(len(events) + 1) if len(b"".join(_chunk(e) for e in events[:i])) > buffered)
    end = len(b"".join(_chunk(e) for e in events[:upto + 1]))
    reached = threading.Event()
    server, make = transport([[Send(head(framing="chunked") + body[:buffered]), Wait(GAP),
                               Send(body[buffered:end]), Signal(reached), Wait()]])
    before = socket_fds()
    client = make(timeout=Timeout(connect=2, first_token=5, idle=5, total=8))
    stream = client.stream("hi", model="m")
    got: List[str] = []
    errors: List[BaseException] = []

    def consume() -> None:
        try:
            for piece in stream:
                got.append(piece)
        except BaseException as exc:  # reported below
            errors.append(exc)

    consumer = threading.Thread(target=consume)
    consumer.start()
    try:
        assert reached.wait(5)
        deadline = time.monotonic() + 5
        while "".join(got) != "".join(texts[:upto + 1]) and time.monotonic() < deadline:
            time.sleep(0.002)
        assert "".join(got) == "".join(texts[:upto + 1])
        assert wait_in_direct_recv([consumer]), "the blocked read is not the socket's own recv"
        started = time.monotonic()
        stream.close()
        consumer.join(1)
        ended = time.monotonic() - started
        assert not consumer.is_alive(), "the consumer is still blocked 1 s after close()"
        assert ended < 1.0 and errors == [] and stream.status == "closed"
        assert stream.text == "".join(texts[:upto + 1])
        conn = server.connections[0]
        assert conn.closed.wait(2) and conn.closed_at - started < 1.0  # type: ignore[operator]
    finally:
        stream.close()
        consumer.join(5)
    ref = weakref.ref(stream)
    del stream
    assert leaks(ref, client, [server], before) == []


def test_close_while_the_worker_reads_ahead_in_the_direct_recv(transport: Start) -> None:
    # Nobody iterates: the worker reads ahead into the queue, and blocks in the
    # direct recv after the switch. close() from this thread ends it at once.
    reached = threading.Event()
    server, make = transport([[Send(head(framing="chunked") + _chunk(E3[0])), Wait(GAP), Send(_chunk(E3[1])),
                               Signal(reached), Wait()]])
    before = socket_fds()
    client = make(timeout=Timeout(connect=2, first_token=5, idle=5, total=8))
    stream = client.stream("hi", model="m")
    try:
        assert reached.wait(5)
        assert wait_in_direct_recv([]), "the worker is not blocked in the socket's own recv"
        workers = worker_threads()
        started = time.monotonic()
        stream.close()
        for worker in workers:
            worker.join(1)
        assert time.monotonic() - started < 1.0 and not any(w.is_alive() for w in workers)
        assert stream.status == "closed" and stream.text == ""
        with pytest.raises(llmstream.StreamClosedError):
            next(iter(stream))
        conn = server.connections[0]
        assert conn.closed.wait(2) and conn.closed_at - started < 1.0  # type: ignore[operator]
    finally:
        stream.close()
    ref = weakref.ref(stream)
    del stream
    assert leaks(ref, client, [server], before) == []


# -- retries and resume after a cut that came after the switch -------------------------------


def _resume_client(make: Callable[..., llmstream.Client]) -> llmstream.Client:
    return make(retry=Retry(max_attempts=2, initial_delay=0.01, resume="replay"),
                timeout=Timeout(connect=2, first_token=3, idle=3, total=10))


def _attempt_one(texts: Sequence[str]) -> Tuple[List[Step], bytes]:
    """The first answer: one chunk with the headers, the rest by direct reads, then a cut."""
    events = [openai_event(t) for t in texts]
    steps: List[Step] = [Send(head(framing="chunked") + _chunk(events[0]))]
    for event in events[1:]:
        steps += [Wait(GAP), Send(_chunk(event))]
    return steps + [Wait(GAP), Close()], b"".join(events)


def _attempt_two(texts: Sequence[str], with_headers: int) -> Tuple[List[Step], bytes]:
    events = sse_events(texts)
    steps: List[Step] = [Send(head(framing="chunked") + b"".join(_chunk(e) for e in events[:with_headers]))]
    for event in events[with_headers:]:
        steps += [Wait(GAP), Send(_chunk(event))]
    return steps + [Wait(GAP), Send(b"0\r\n\r\n")], b"".join(events)  # keep-alive: the next request may follow


@pytest.mark.parametrize("with_headers", [1, 3, 5])
def test_a_replay_after_a_cut_after_the_switch_delivers_the_text_once(transport: Start, with_headers: int) -> None:
    full = words(7, "r")
    one, sent1 = _attempt_one(full[:4])
    two, sent2 = _attempt_two(full, with_headers)
    server, make = transport([one, two])
    client = _resume_client(make)
    try:
        with client.stream("hi", model="m") as stream:
            kinds: List[str] = []
            text = ""
            for event in stream.events():
                kinds.append(type(event).__name__)
                if isinstance(event, TextDelta):
                    text += event.text
            assert text == stream.text == "".join(full)
            assert "Reset" not in kinds and kinds.count("Retrying") == 1
            metrics = stream.metrics
            assert metrics.attempts == 2
            check_metrics(metrics, sent1 + sent2)
            assert metrics.text_deltas <= len(full) + 4
    finally:
        client.close()


def test_a_diverging_replay_after_the_switch_is_a_reset_then_the_new_answer(transport: Start) -> None:
    old, new = words(4, "o"), words(5, "n")
    one, sent1 = _attempt_one(old)
    two, sent2 = _attempt_two(new, 1)
    server, make = transport([one, two, one, two])
    client = _resume_client(make)
    try:
        with client.stream("hi", model="m") as stream:
            seen: List[Any] = [e for e in stream.events() if not isinstance(e, llmstream.Finish)]
            texts = [e.text for e in seen if isinstance(e, TextDelta)]
            resets = [e for e in seen if isinstance(e, ResetEvent)]
            assert [type(e).__name__ for e in seen] == (["TextDelta"] * 4 + ["Retrying", "Reset"] + ["TextDelta"] * 5)
            assert isinstance(seen[4], Retrying) and resets[0].discarded_text == "".join(old)
            assert "".join(texts) == "".join(old) + "".join(new) and stream.text == "".join(new)
            check_metrics(stream.metrics, sent1 + sent2)
        # Plain text iteration cannot take the text back: ResumeError, after the old text.
        with client.stream("hi", model="m") as stream:
            got: List[str] = []
            with pytest.raises(ResumeError) as info:
                for piece in stream:
                    got.append(piece)
            assert "".join(got) == info.value.partial_text == "".join(old)
    finally:
        client.close()


# -- metrics: folding, and snapshots from another thread ---------------------------------------


def test_many_streams_fold_their_histograms_and_snapshots_never_count_twice(serve: Any) -> None:
    # Each stream reads well over FOLD_EVERY times (one token a read) while a
    # thread snapshots every stream's metrics in a tight loop, with the
    # interpreter switching threads as often as it can: a snapshot taken in
    # the middle of a fold may miss the values being folded, never count them
    # twice. Reads so far are at most the tokens taken + the one being handed.
    streams, tokens = 4, 3 * FOLD_EVERY
    texts = words(tokens)
    events = sse_events(texts)
    prefix = [0]
    for event in events:
        prefix.append(prefix[-1] + len(event))
    steps: List[Step] = [Send(head(framing="chunked"))]
    for event in events:
        steps += [Wait(0.002), Send(_chunk(event))]
    server = serve([steps + [Wait(0.002), Send(b"0\r\n\r\n"), Wait()]])
    client = client_for(server, timeout=Timeout(connect=2, first_token=5, idle=5, total=20))
    opened = [client.stream("hi", model="m") for _ in range(streams)]
    taken = [0] * streams
    errors: List[BaseException] = []
    bad: List[str] = []
    done = threading.Event()

    def consume(i: int) -> None:
        try:
            for _ in opened[i]:
                taken[i] += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    def snapshot() -> None:
        while not done.is_set():
            for i, stream in enumerate(opened):
                m = stream.metrics
                after = min(taken[i] + 3, len(events))  # + the read being handed, the finish, [DONE]
                for name, count in (("chunks", m.chunks), ("chunk_size", m.chunk_size.count),
                                    ("read_time", m.read_time.count), ("chunk_gap", m.chunk_gap.count)):
                    if count > after:
                        bad.append(f"stream {i}: {name} {count} > {after} reads possible")
                if m.bytes_received > prefix[after]:
                    bad.append(f"stream {i}: {m.bytes_received} bytes > {prefix[after]} received")

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    threads = [threading.Thread(target=consume, args=(i,)) for i in range(streams)]
    watcher = threading.Thread(target=snapshot)
    try:
        watcher.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    finally:
        done.set()
        watcher.join(5)
        sys.setswitchinterval(switch)
        for stream in opened:
            stream.close()
        client.close()
    assert errors == [] and bad[:5] == []
    assert taken == [tokens] * streams
    for stream in opened:
        assert stream.text == "".join(texts)
        metrics = stream.metrics
        check_metrics(metrics, b"".join(events))
        assert metrics.chunks > 2 * FOLD_EVERY, metrics.chunks  # enough reads to fold, more than once
        assert metrics.text_deltas == tokens
        stats = stream._worker.stats
        # Folded as they go: the pending lists stay short (memory per stream is bounded).
        assert max(len(h.pending) for h in (stats.chunk_sizes, stats.read_times, stats.gaps)) < FOLD_EVERY


# -- random write boundaries ----------------------------------------------------------------------


def _tls_context(certs: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs / "server.pem", certs / "server.key")
    return context


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_random_write_boundaries_of_a_valid_body(pki: Path, tls: bool) -> None:  # noqa: F811
    # Random cuts of a valid chunked SSE body (LF or CRLF lines, chunk
    # extensions, trailers) across writes a few ms apart, the first with the
    # headers: the text is exact and every payload byte counted once.
    context = _tls_context(pki) if tls else None

    @settings(max_examples=40 if not tls else 20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        texts = data.draw(st.lists(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12),
                                   min_size=1, max_size=12), label="texts")
        events = sse_events(texts)
        crlf = data.draw(st.booleans(), label="crlf")
        if crlf:  # a read may then start (or end) with a CR
            events = [e.replace(b"\n", b"\r\n") for e in events]
        ext = data.draw(st.sampled_from([b"", b";x=1", b' ; n="q\\"v"']), label="ext")
        trailers = data.draw(st.sampled_from([b"", b"X-T: 1\r\n", b"A: b\r\n c\r\n"]), label="trailers")
        body = b"".join(b"%x%s\r\n%s\r\n" % (len(e), ext, e) for e in events) + b"0\r\n" + trailers + b"\r\n"
        first = data.draw(st.integers(0, len(body)), label="first")
        cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=6), label="cuts")
        gap = data.draw(st.sampled_from([0.0, 0.001, 0.003]), label="gap")
        script = split_script(head(framing="chunked"), body, first, cuts, gap)
        server = TLSServer([script], context) if context is not None else HostileServer([script])
        with server:
            if context is not None:
                client = llmstream.Client(provider="openai", base_url=f"{server.url}/v1", api_key=KEY,
                                          verify=str(pki / "ca.pem"), retry=Retry(max_attempts=1),
                                          timeout=Timeout(connect=2, first_token=3, idle=3, total=8))
            else:
                client = client_for(server)
            error, partial, text, _, metrics, _, _ = run(client)
            assert (error, partial, text) == (None, None, "".join(texts))
            check_metrics(metrics, b"".join(events), drained=1 if crlf else 0)

    check()
    gc.collect()


@pytest.mark.parametrize("fold_every", [2, FOLD_EVERY])
def test_a_histogram_snapshot_during_folds_never_counts_a_value_twice(monkeypatch: pytest.MonkeyPatch,
                                                                       fold_every: int) -> None:
    # The race of the test above, without sockets and with folds as frequent as
    # they can be: one thread records as BodyReader does (appends to the
    # pending list, folds every ``fold_every``), another takes summaries
    # without pause. Every value is 1.0, so a summary's total is its count,
    # and its count is at most the values recorded when it returned.
    from llmstream import _histogram

    monkeypatch.setattr(_histogram, "FOLD_EVERY", fold_every)
    hist = _histogram.Histogram()
    written = [0]
    stop = threading.Event()
    bad: List[str] = []

    def write() -> None:
        pending = hist.pending
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            for _ in range(64):
                pending.append(1.0)
                written[0] += 1
                if len(pending) >= fold_every:
                    hist.fold()
        stop.set()

    def read() -> None:
        while not stop.is_set():
            summary = hist.summary()
            after = written[0] + 1  # a value appended but not yet counted by the writer
            if summary.count > after or summary.total != summary.count:
                bad.append(f"count {summary.count}, total {summary.total}, {after} recorded")

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    finally:
        stop.set()
        sys.setswitchinterval(switch)
    assert bad[:3] == [] and hist.summary().count == written[0]
