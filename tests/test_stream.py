"""The streaming engine end to end: real HTTP against the fake server on 127.0.0.1."""

from __future__ import annotations

import gc
import logging
import os
import pickle
import signal
import socket
import threading
import time
from typing import Any, Dict, List

import pytest

import llmstream
from llmstream import (
    AuthenticationError,
    BadRequestError,
    Client,
    Finish,
    IncompleteStreamError,
    MalformedStreamError,
    NotFoundError,
    RateLimitError,
    Retry,
    ServerError,
    StreamBusyError,
    StreamClosedError,
    StreamTimeoutError,
    TextDelta,
    Timeout,
    ToolCallDelta,
    Usage,
)
from llmstream.testing import DEFAULT_TEXT, FakeLLMServer, Reply

from conftest import wait_no_worker_threads, wait_thread_in, worker_threads

PROVIDERS = ["openai", "openai-responses", "anthropic", "ollama"]
TEXT = "Paris is the capital of France — ça va? 日本語 🎉"
NO_RETRY = Retry(max_attempts=1)


def client_for(server: FakeLLMServer, provider: str, **kwargs: Any) -> Client:
    kwargs.setdefault("retry", NO_RETRY)
    return Client(provider, base_url=server.base_url(provider), api_key="sk-test-key", **kwargs)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_text_arrives_exactly(server: FakeLLMServer, provider: str) -> None:
    server.script(Reply(text=TEXT, usage=(5, 9)))
    with client_for(server, provider).stream("Where is Paris?", model="m") as s:
        pieces = list(s)
    assert "".join(pieces) == TEXT
    assert len(pieces) > 5
    result = s.result
    assert result.text == TEXT
    assert (result.usage.input_tokens, result.usage.output_tokens) == (5, 9)
    assert result.attempts == 1
    assert s.status == "finished"


@pytest.mark.parametrize(
    ("provider", "finish"),
    [("openai", "stop"), ("openai-responses", "stop"), ("anthropic", "end_turn"), ("ollama", "stop")],
)
def test_finish_reason(server: FakeLLMServer, provider: str, finish: str) -> None:
    server.script(Reply(text="ok"))
    assert client_for(server, provider).complete("hi", model="m").finish_reason == finish


@pytest.mark.parametrize(
    ("provider", "finish"),
    [("openai", "tool_calls"), ("openai-responses", "tool_calls"), ("anthropic", "tool_use"), ("ollama", "stop")],
)
def test_tool_calls_are_assembled_with_parsed_arguments(server: FakeLLMServer, provider: str, finish: str) -> None:
    calls = [("get_weather", {"city": "Paris", "unit": "°C"}), ("get_time", {"tz": "Europe/Paris"})]
    server.script(Reply(text="Let me check.", tool_calls=calls))
    with client_for(server, provider).stream("weather?", model="m") as s:
        events = list(s.events())
    result = s.result
    assert result.text == "Let me check."
    assert [(c.name, c.arguments) for c in result.tool_calls] == calls
    assert [c.index for c in result.tool_calls] == [0, 1]
    assert result.finish_reason == finish
    fragments: Dict[int, str] = {}
    for event in events:
        if isinstance(event, ToolCallDelta):
            fragments[event.index] = fragments.get(event.index, "") + event.arguments
    assert [fragments[c.index] for c in result.tool_calls] == [c.raw_arguments for c in result.tool_calls]
    assert [e for e in events if isinstance(e, Finish)] == [Finish(finish)]


def test_events_are_typed_and_in_order(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=["Hel", "lo", " wörld"], usage=(3, 3)))
    with client_for(server, "openai").stream("hi", model="m") as s:
        events = list(s.events())
    assert events == [
        TextDelta("Hel"), TextDelta("lo"), TextDelta(" wörld"), Finish("stop"),
        Usage(3, 3, {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6,
                     "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                     "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                   "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
              cached_input_tokens=0, reasoning_tokens=0),
    ]


def test_request_is_what_the_provider_expects(server: FakeLLMServer) -> None:
    client = client_for(server, "openai")
    client.complete("hi", model="gpt-x", temperature=0.5, system="be brief")
    (request,) = server.requests
    assert request.method == "POST"
    assert request.path == "/v1/chat/completions"
    assert request.header("Authorization") == "Bearer sk-test-key"
    assert request.header("Accept") == "text/event-stream"
    assert request.header("Accept-Encoding") == "identity"
    assert request.json == {
        "model": "gpt-x",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.5,
    }


def test_ollama_asks_for_ndjson(server: FakeLLMServer) -> None:
    client_for(server, "ollama").complete("hi", model="llama3.2")
    (request,) = server.requests
    assert request.path == "/api/chat"
    assert request.header("Accept") == "application/x-ndjson"


def test_connections_are_reused(server: FakeLLMServer) -> None:
    client = client_for(server, "openai")
    for _ in range(3):
        assert client.complete("hi", model="m").text == DEFAULT_TEXT
    assert len({r.client_port for r in server.requests}) == 1


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "connection-close"])
@pytest.mark.parametrize("line_ending", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
def test_framing_variants(server: FakeLLMServer, chunked: bool, line_ending: str) -> None:
    server.script(Reply(text=TEXT, chunked=chunked, line_ending=line_ending, split_seed=7, keepalive_every=2))
    assert client_for(server, "anthropic").complete("hi", model="m").text == TEXT


def test_buffered_events_are_handed_over_together(server: FakeLLMServer) -> None:
    # One event per chunk, all already received when the worker reads: read1
    # returns one chunk per call, so without coalescing this would be 300 reads.
    server.script(Reply(token_count=300, events_per_write=1))
    client = client_for(server, "openai", max_buffered=1)
    with client.stream("hi", model="m") as s:
        it = iter(s)
        next(it)
        server.wait_for_requests(1)
        # The whole answer arrives while the queue is full: the server's handler has written
        # it all once it waits for the connection's next request.
        handlers = [t for t in threading.enumerate()
                    if t.name.startswith("llmstream-fake-server-") and not t.name.endswith("-accept")]
        assert wait_thread_in("readinto", handlers)
        rest = list(it)
    assert len(rest) == 299
    assert s.metrics.chunks < 100, s.metrics.chunks


def test_drip_one_byte_per_write(server: FakeLLMServer) -> None:
    server.script(Reply(text=TEXT, drip=True))
    assert client_for(server, "openai").complete("hi", model="m").text == TEXT


# -- HTTP errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        pytest.param(400, BadRequestError, id="400"),
        pytest.param(401, AuthenticationError, id="401"),
        pytest.param(404, NotFoundError, id="404"),
        pytest.param(429, RateLimitError, id="429"),
        pytest.param(500, ServerError, id="500"),
        pytest.param(529, ServerError, id="529"),
    ],
)
def test_status_errors_are_typed(server: FakeLLMServer, status: int, cls: type) -> None:
    server.script(Reply(status=status, error="Something specific went wrong", headers={"Retry-After": "7"}))
    with pytest.raises(cls) as info:
        client_for(server, "openai").complete("hi", model="m")
    error = info.value
    assert type(error) is cls
    assert error.status_code == status
    assert "Something specific went wrong" in str(error)
    assert str(error).startswith(f"HTTP {status} ")
    assert error.retry_after == 7.0
    assert error.partial_text == ""
    assert error.attempts == 1
    assert "Something specific went wrong" in error.body


def test_wrong_content_type_is_malformed(server: FakeLLMServer) -> None:
    server.script(Reply(content_type="text/html", raw_body=b"<html>Please log in</html>"))
    with pytest.raises(MalformedStreamError) as info:
        client_for(server, "openai").complete("hi", model="m")
    assert "text/html" in str(info.value)


def test_connection_refused_is_api_connection_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = Client("openai", base_url=f"http://127.0.0.1:{port}/v1", api_key="k", retry=NO_RETRY)
    with pytest.raises(llmstream.APIConnectionError) as info:
        client.complete("hi", model="m")
    assert "could not connect to http://127.0.0.1" in str(info.value)


def test_truncated_stream_is_incomplete_with_partial_text(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=["one", " two", " three", " four"], close_after_tokens=2))
    got: List[str] = []
    with pytest.raises(IncompleteStreamError) as info:
        for text in client_for(server, "openai").stream("hi", model="m"):
            got.append(text)
    assert got == ["one", " two"]
    assert info.value.partial_text == "one two"
    assert info.value.attempts == 1


def test_errors_pickle_with_their_data() -> None:
    error = RateLimitError("HTTP 429", status_code=429, body="{}", retry_after=2.0, partial_text="Par", attempts=3)
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.status_code, copy.retry_after, copy.partial_text, copy.attempts) == (
        RateLimitError, 429, 2.0, "Par", 3)


# -- timeouts ----------------------------------------------------------------------


def test_first_token_timeout(server: FakeLLMServer) -> None:
    server.script(Reply(stall_before_first_byte=float("inf")))
    client = client_for(server, "openai", timeout=Timeout(first_token=0.3))
    started = time.monotonic()
    with pytest.raises(StreamTimeoutError) as info:
        client.complete("hi", model="m")
    assert info.value.kind == "first_token"
    assert 0.25 < time.monotonic() - started < 2.0


def test_idle_timeout_keeps_partial_text(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=["a", "b", "c"], stall_after_tokens=(2, 30.0)))
    got: List[str] = []
    with pytest.raises(StreamTimeoutError) as info:
        for text in client_for(server, "openai", timeout=Timeout(idle=0.3)).stream("hi", model="m"):
            got.append(text)
    assert info.value.kind == "idle"
    assert got == ["a", "b"]
    assert info.value.partial_text == "ab"
    assert isinstance(info.value, TimeoutError)


def test_keepalives_are_not_progress(server: FakeLLMServer) -> None:
    # A comment every event, a stall after the first token: the comments keep
    # the socket busy but must not keep the stream alive.
    server.script(Reply(tokens=["a", "b"], stall_after_tokens=(1, 30.0), keepalive_every=1, interval=0.05))
    with pytest.raises(StreamTimeoutError) as info:
        client_for(server, "openai", timeout=Timeout(idle=0.5)).complete("hi", model="m")
    assert info.value.kind == "idle"


def test_total_timeout(server: FakeLLMServer) -> None:
    server.script(Reply(token_count=1000, interval=0.01))
    started = time.monotonic()
    with pytest.raises(StreamTimeoutError) as info:
        client_for(server, "openai", timeout=Timeout(total=0.5)).complete("hi", model="m")
    assert info.value.kind == "total"
    assert info.value.partial_text.startswith("tok0 tok1")
    assert time.monotonic() - started < 2.0


def test_connect_timeout() -> None:
    # A listening socket whose accept backlog is full: the kernel drops further
    # SYNs, so connect() hangs, all on 127.0.0.1.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        client = Client("openai", base_url=f"http://127.0.0.1:{port}/v1", api_key="k", retry=NO_RETRY,
                        timeout=Timeout(connect=0.3, first_token=0.3))
        with pytest.raises(StreamTimeoutError) as info:
            client.complete("hi", model="m")
        assert info.value.kind in ("connect", "first_token")
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_default_timeouts_never_wait_forever() -> None:
    timeout = Timeout()
    assert None not in (timeout.connect, timeout.first_token, timeout.idle, timeout.total)


# -- cancellation and threads -----------------------------------------------------


def test_close_from_another_thread_wakes_the_caller(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=["a", "b"], stall_after_tokens=(1, 30.0)))
    stream = client_for(server, "openai").stream("hi", model="m")
    first = threading.Event()
    got: List[str] = []

    def consume() -> None:
        for text in stream:
            got.append(text)
            first.set()

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert first.wait(5)
    started = time.monotonic()
    stream.close()
    consumer.join(2)
    assert not consumer.is_alive()
    assert time.monotonic() - started < 0.5
    assert got == ["a"]
    assert stream.status == "closed"
    assert wait_no_worker_threads(0.1) == []
    stream.close()  # idempotent
    with pytest.raises(StreamClosedError):
        list(stream)


def test_close_in_the_loop_body_ends_the_loop_even_mid_batch(server: FakeLLMServer) -> None:
    # 60 tokens in one write arrive in one read, one batch: close() from the loop's
    # own body must end the loop there, not after the rest of the batch in hand.
    server.script(Reply(tokens=[f"t{i} " for i in range(60)], events_per_write=60))
    stream = client_for(server, "openai").stream("hi", model="m")
    got: List[str] = []
    closed_after = None
    for text in stream:
        got.append(text)
        if closed_after is None and stream._pos < len(stream._batch):  # more of this read in hand
            stream.close()
            closed_after = len(got)
    assert closed_after is not None
    assert (got, stream.status) == ([f"t{i} " for i in range(closed_after)], "closed")
    assert wait_no_worker_threads(0.5) == []


def test_close_shuts_the_socket_within_100ms(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=["a", "b"], stall_after_tokens=(1, 30.0)))
    stream = client_for(server, "openai").stream("hi", model="m")
    it = iter(stream)
    assert next(it) == "a"
    started = time.monotonic()
    stream.close()
    elapsed = time.monotonic() - started
    assert elapsed < 0.1, elapsed
    assert worker_threads() == []


def test_break_leaves_the_stream_for_the_next_loop_and_with_closes_it(server: FakeLLMServer) -> None:
    # As the official SDKs' streams: a loop that stops early does not close the
    # stream (the next loop goes on); close(), the with block or collection does.
    server.script(Reply(token_count=100000))
    with client_for(server, "openai").stream("hi", model="m") as stream:
        for first in stream:
            break
        assert stream.status == "streaming"
        assert next(iter(stream)) != first
    assert stream.status == "closed"
    assert wait_no_worker_threads(0.5) == []


def test_dropping_the_stream_closes_it(server: FakeLLMServer) -> None:
    server.script(Reply(token_count=100000))
    stream = client_for(server, "openai").stream("hi", model="m")
    next(iter(stream))
    del stream
    gc.collect()
    assert wait_no_worker_threads(1.0) == []


def test_two_threads_cannot_iterate_at_once(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=["a", "b"], stall_after_tokens=(1, 30.0)))
    with client_for(server, "openai").stream("hi", model="m") as stream:
        it = iter(stream)
        assert next(it) == "a"
        with pytest.raises(StreamBusyError):
            next(iter(stream))


def test_iterating_a_finished_stream_says_what_to_do(server: FakeLLMServer) -> None:
    stream = client_for(server, "openai").stream("hi", model="m")
    assert "".join(stream) == DEFAULT_TEXT
    with pytest.raises(StreamClosedError, match="read .text or .result"):
        list(stream)


def test_keyboard_interrupt_while_waiting_closes_the_stream(server: FakeLLMServer) -> None:
    # A real SIGINT, as Ctrl+C sends: it interrupts the main thread's blocked
    # read (``_thread.interrupt_main`` only sets a flag, which a blocked
    # system call never sees).
    server.script(Reply(tokens=["a", "b"], stall_after_tokens=(1, 30.0)))
    stream = client_for(server, "openai").stream("hi", model="m")
    it = iter(stream)
    assert next(it) == "a"
    started = time.monotonic()
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            next(it)
    finally:
        timer.cancel()
    assert time.monotonic() - started < 5
    assert stream.status == "closed"
    assert wait_no_worker_threads(0.5) == []


def test_no_thread_left_after_200_streams(server: FakeLLMServer) -> None:
    client = client_for(server, "openai", timeout=Timeout(idle=0.5))
    outcomes: Dict[str, int] = {}
    for i in range(200):
        kind = ("ok", "break", "truncated", "status", "close")[i % 5]
        reply = {
            "ok": Reply(text="fine"),
            "break": Reply(token_count=1000),
            "truncated": Reply(tokens=["a", "b"], close_after_tokens=1),
            "status": Reply(status=500, error="boom"),
            "close": Reply(tokens=["a", "b"], stall_after_tokens=(1, 30.0)),
        }[kind]
        server.script(reply)
        stream = client.stream("hi", model="m")
        try:
            for _ in stream:
                if kind in ("break", "close"):
                    break
        except llmstream.StreamError:
            outcomes[kind] = outcomes.get(kind, 0) + 1
    assert outcomes == {"truncated": 40, "status": 40}
    assert wait_no_worker_threads() == []


def test_50_concurrent_streams_each_get_their_text(server: FakeLLMServer) -> None:
    client = client_for(server, "openai")
    server.default_reply = Reply(token_count=300, events_per_write=3)
    expected = "".join(["tok0"] + [f" tok{i}" for i in range(1, 300)])
    results: List[str] = []
    errors: List[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            text = "".join(client.stream("hi", model="m"))
            with lock:
                results.append(text)
        except BaseException as exc:  # collected and asserted below
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert results == [expected] * 50


# -- secrets ------------------------------------------------------------------------


def test_api_key_never_leaks(server: FakeLLMServer, caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-SECRET-abc123"
    caplog.set_level(logging.DEBUG, logger="llmstream")
    client = Client("openai", base_url=server.base_url("openai"), api_key=secret, retry=Retry(max_attempts=2, initial_delay=0))
    texts = [repr(client)]
    server.script(Reply(status=401, error="Incorrect API key provided"), Reply(status=401, error="bad"))
    for reply in (Reply(status=500, error="boom"), Reply(tokens=["a", "b"], close_after_tokens=1),
                  Reply(content_type="text/html", raw_body=b"<html></html>")):
        server.script(reply, reply)
    for _ in range(4):
        stream = client.stream("hi", model="m")
        texts.append(repr(stream))
        try:
            stream.result
        except llmstream.StreamError as exc:
            texts += [str(exc), repr(exc), exc.body if hasattr(exc, "body") else ""]
            cause = exc.__cause__
            while cause is not None:
                texts.append(str(cause))
                cause = cause.__cause__
    texts += [record.getMessage() for record in caplog.records]
    assert len(texts) > 10
    assert not [t for t in texts if secret in t]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_text_before_an_in_stream_error_in_the_same_read_is_delivered(server: FakeLLMServer, provider: str) -> None:
    # The two tokens and the error event are written at once, so one socket
    # read holds them all: the text must still reach the caller before the error.
    server.script(Reply(error_event_at=2, events_per_write=1000))
    pieces: List[str] = []
    with client_for(server, provider).stream("q", model="m", max_tokens=5) as s:
        with pytest.raises(llmstream.ProviderError) as info:
            for piece in s:
                pieces.append(piece)
    assert "".join(pieces) == "Hello from"
    assert info.value.partial_text == "Hello from"


def test_text_before_a_missing_end_marker_is_delivered(server: FakeLLMServer) -> None:
    server.script(Reply(text="Hi there", omit_end_marker=True, events_per_write=1000))
    with client_for(server, "anthropic").stream("q", model="m", max_tokens=5) as s:
        with pytest.raises(IncompleteStreamError) as info:
            s.result
    assert info.value.partial_text == "Hi there"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_text_before_an_over_long_line_in_the_same_read_is_delivered(server: FakeLLMServer, provider: str) -> None:
    server.script(Reply(oversized_line=4096, events_per_write=1000))
    client = client_for(server, provider, max_line_length=1024)
    with client.stream("q", model="m", max_tokens=5) as s:
        with pytest.raises(MalformedStreamError) as info:
            s.result
    assert info.value.partial_text == "Hello"
    assert str(info.value) == "line longer than the maximum of 1024 bytes"


def test_ollama_text_before_invalid_json_in_the_same_read_is_delivered(server: FakeLLMServer) -> None:
    server.script(Reply(malformed_at=3, events_per_write=1000))
    with client_for(server, "ollama").stream("q", model="m") as s:
        with pytest.raises(MalformedStreamError) as info:
            s.result
    assert info.value.partial_text == "Hello from"


# -- a stream iterated at once runs in the caller's thread --------------------------------


def test_retries_in_the_callers_own_thread_never_wait_for_themselves(server: FakeLLMServer) -> None:
    # The caller runs the retries itself: with a one-event queue, a second
    # Retrying event must not wait for a caller that is the same thread.
    server.script(Reply(status=503), Reply(status=503), Reply(text="ok"))
    client = client_for(server, "openai", max_buffered=1,
                        retry=Retry(max_attempts=3, initial_delay=0.01, max_delay=0.01))
    events = list(client.stream("hi", model="m").events())
    assert [type(e).__name__ for e in events][:3] == ["Retrying", "Retrying", "TextDelta"]


def test_a_retrying_event_comes_before_its_wait(server: FakeLLMServer) -> None:
    server.script(Reply(status=429, headers={"Retry-After": "1"}), Reply(text="ok"))
    client = client_for(server, "openai", retry=Retry(max_attempts=2, max_retry_after=5))
    started = time.monotonic()
    seen = []
    for event in client.stream("hi", model="m").events():
        seen.append((type(event).__name__, time.monotonic() - started))
    assert seen[0][0] == "Retrying" and seen[0][1] < 0.5, seen
    assert seen[1][0] == "TextDelta" and seen[1][1] >= 0.95, seen

