"""Retries and exactly-once resume, end to end against the fake server.

Each case asserts either the exact text delivered (no duplicate, no loss) or
the exact exception with its exact ``partial_text``, and the server's request
log proving the mechanism (the header, the prefill, the number of requests).
"""

from __future__ import annotations

import threading
import time
from typing import Any, List

import pytest
import requests

import llmstream
from llmstream import (
    AuthenticationError,
    BadRequestError,
    Client,
    IncompleteStreamError,
    NotFoundError,
    Reset,
    ResumeError,
    Retry,
    Retrying,
    ServerError,
    TextDelta,
    Timeout,
    ToolCall,
    ToolCallDelta,
)
from llmstream.testing import FakeLLMServer, RecordedRequest, Reply

from conftest import wait_no_worker_threads

TOKENS = ["The", " capital", " of", " France", " is", " Paris", ".", " Ça", " va", " 🎉"]
TEXT = "".join(TOKENS)
CUT = 4  # tokens delivered before the break
DELIVERED = "".join(TOKENS[:CUT])


def client(server: FakeLLMServer, provider: str, resume: str = "auto", attempts: int = 3, **kw: Any) -> Client:
    return Client(provider, base_url=server.base_url(provider), api_key="sk-test",
                  retry=Retry(max_attempts=attempts, initial_delay=0.01, resume=resume), **kw)


def stream_requests(server: FakeLLMServer) -> List[RecordedRequest]:
    return server.requests


def last_message(request: RecordedRequest) -> Any:
    return request.json["messages"][-1]


# -- the matrix: provider x fault x resume mode ----------------------------------------

FAULTS = {
    "close-after-tokens": dict(close_after_tokens=CUT),
    "stall-after-tokens": dict(stall_after_tokens=(CUT, 30.0)),
    "missing-end-marker": dict(close_after_tokens=CUT, omit_end_marker=True),
}

# What each mode does per provider: "ok" (resumes exactly), or the exception raised.
SUPPORT = {
    ("openai", "last-event-id"): "ok", ("openai", "continue"): "ok", ("openai", "replay"): "ok",
    ("openai-responses", "last-event-id"): "ok", ("openai-responses", "continue"): ResumeError,
    ("openai-responses", "replay"): "ok",
    ("anthropic", "last-event-id"): "ok", ("anthropic", "continue"): "ok", ("anthropic", "replay"): "ok",
    ("ollama", "last-event-id"): ResumeError, ("ollama", "continue"): "ok", ("ollama", "replay"): "ok",
}
PROVIDERS = ["openai", "openai-responses", "anthropic", "ollama"]


def check_mechanism(provider: str, mode: str, log: List[RecordedRequest]) -> None:
    first, second = log[0], log[1]
    if mode == "last-event-id" and provider == "openai-responses":
        assert second.method == "GET"
        assert second.path.startswith("/v1/responses/")
        assert int(second.query["starting_after"]) > 0
    elif mode == "last-event-id":
        assert second.header("Last-Event-ID") is not None and second.header("Last-Event-ID").isdigit()
        assert second.json == first.json
    elif mode == "continue":
        assert last_message(second) == {"role": "assistant", "content": DELIVERED.rstrip()}
        if provider == "openai":
            assert second.json["continue_final_message"] is True
    elif mode == "replay":
        assert second.json == first.json
        assert second.header("Last-Event-ID") is None


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("mode", ["last-event-id", "continue", "replay"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_resume_matrix(server: FakeLLMServer, provider: str, mode: str, fault: str) -> None:
    server.script(Reply(tokens=TOKENS, **FAULTS[fault], event_ids=True), Reply(tokens=TOKENS, event_ids=True))
    got: List[str] = []
    c = client(server, provider, resume=mode, timeout=Timeout(idle=0.3))
    expected = SUPPORT[(provider, mode)]
    if expected == "ok":
        for text in c.stream("Capital of France?", model="m"):
            got.append(text)
        assert "".join(got) == TEXT
        log = stream_requests(server)
        assert len(log) == 2
        check_mechanism(provider, mode, log)
    else:
        with pytest.raises(expected) as info:
            for text in c.stream("Capital of France?", model="m"):
                got.append(text)
        assert type(info.value) is expected
        assert info.value.partial_text == DELIVERED
        assert "".join(got) == DELIVERED
        assert len(stream_requests(server)) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_never_raises_incomplete_with_partial_text(server: FakeLLMServer, provider: str) -> None:
    server.script(Reply(tokens=TOKENS, close_after_tokens=CUT, event_ids=True), Reply(tokens=TOKENS, event_ids=True))
    with pytest.raises(IncompleteStreamError) as info:
        client(server, provider, resume="never").complete("q", model="m")
    assert info.value.partial_text == DELIVERED
    assert info.value.attempts == 1
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("provider", "mechanism"),
    [("openai", "last-event-id"), ("openai-responses", "last-event-id"), ("anthropic", "last-event-id"),
     ("ollama", "replay")],
)
def test_auto_picks_the_best_mechanism(server: FakeLLMServer, provider: str, mechanism: str) -> None:
    server.script(Reply(tokens=TOKENS, close_after_tokens=CUT, event_ids=True), Reply(tokens=TOKENS, event_ids=True))
    assert client(server, provider).complete("q", model="m").text == TEXT
    check_mechanism(provider, mechanism, server.requests)


@pytest.mark.parametrize(
    ("provider", "mechanism"),
    # Anthropic's API guarantees the prefill; OpenAI-compatible servers may
    # ignore continue_final_message, and a replay that differs is always seen.
    [("anthropic", "continue"), ("openai", "replay")],
)
def test_auto_without_event_ids(server: FakeLLMServer, provider: str, mechanism: str) -> None:
    server.script(Reply(tokens=TOKENS, close_after_tokens=CUT, event_ids=False), Reply(tokens=TOKENS, event_ids=False))
    assert client(server, provider).complete("q", model="m").text == TEXT
    check_mechanism(provider, mechanism, server.requests)


def test_refused_prefill_falls_back_to_replay(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=TOKENS, close_after_tokens=CUT, event_ids=False),
                  Reply(tokens=TOKENS, refuse_prefill=True, event_ids=False),
                  Reply(tokens=TOKENS, event_ids=False))
    s = client(server, "anthropic").stream("q", model="m")
    assert "".join(s) == TEXT
    log = server.requests
    assert len(log) == 3
    assert last_message(log[1])["role"] == "assistant"
    assert log[2].json == log[0].json


def test_prefill_whitespace_is_not_delivered_twice(server: FakeLLMServer) -> None:
    # Delivered "The capital " ends in a space: the prefill is sent without it,
    # and the continuation " of France..." must not show the space again.
    tokens = ["The", " capital ", "of", " France"]
    server.script(Reply(tokens=tokens, close_after_tokens=2, event_ids=False), Reply(tokens=tokens, event_ids=False))
    got = list(client(server, "anthropic", resume="continue").stream("q", model="m"))
    assert "".join(got) == "The capital of France"
    assert last_message(server.requests[1]) == {"role": "assistant", "content": "The capital"}


def test_replay_that_diverges_raises_resume_error(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=TOKENS, close_after_tokens=CUT, event_ids=True), Reply(text="Paris, of course.", event_ids=True))
    got: List[str] = []
    with pytest.raises(ResumeError) as info:
        for text in client(server, "openai", resume="replay").stream("q", model="m"):
            got.append(text)
    assert "".join(got) == DELIVERED
    assert info.value.partial_text == DELIVERED


def test_replay_that_diverges_emits_reset_in_events(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=TOKENS, close_after_tokens=CUT, event_ids=True), Reply(tokens=["The", " answer", " is", " Paris"], event_ids=True))
    s = client(server, "openai", resume="replay").stream("q", model="m")
    events = [e for e in s.events() if isinstance(e, (TextDelta, Reset))]
    resets = [e for e in events if isinstance(e, Reset)]
    assert resets == [Reset(attempt=2, discarded_text=DELIVERED)]
    after = events[events.index(resets[0]) + 1:]
    assert "".join(e.text for e in after) == "The answer is Paris"
    assert s.result.text == "The answer is Paris"


def probe_body(server: FakeLLMServer, reply: Reply) -> bytes:
    """The exact body the server sends for ``reply`` (to place a byte-precise fault)."""
    server.script(reply)
    body = requests.post(server.base_url("openai") + "/chat/completions",
                         json={"model": "m", "messages": [{"role": "user", "content": "q"}], "stream": True},
                         timeout=5).content
    return body


def test_tool_call_arguments_are_never_shown_twice(server: FakeLLMServer) -> None:
    calls = [("get_weather", {"city": "Paris", "unit": "celsius", "days": 3})]
    body = probe_body(server, Reply(text="", tool_calls=calls, event_ids=False))
    # Cut inside the second arguments fragment: the first was delivered.
    first = body.index(b'"arguments":"')
    cut = body.index(b'"arguments":"', first + 1) + 16
    server.script(Reply(text="", tool_calls=calls, close_after_bytes=cut, event_ids=False),
                  Reply(text="", tool_calls=calls, event_ids=False))
    s = client(server, "openai", resume="replay").stream("weather?", model="m")
    events = list(s.events())
    fragments = "".join(e.arguments for e in events if isinstance(e, ToolCallDelta))
    finished = [e for e in events if isinstance(e, ToolCall)]
    assert len(finished) == 1
    assert finished[0].arguments == calls[0][1]
    assert fragments == finished[0].raw_arguments
    assert sum(1 for e in events if isinstance(e, ToolCallDelta) and e.name) == 1
    assert any(isinstance(e, Retrying) for e in events)
    assert len(server.requests) == 3  # the probe, the broken attempt, the replay


@pytest.mark.parametrize("where", ["inside-json", "inside-utf8"])
@pytest.mark.parametrize("mode", ["last-event-id", "replay"])
def test_break_at_any_byte_resumes_exactly(server: FakeLLMServer, where: str, mode: str) -> None:
    body = probe_body(server, Reply(tokens=TOKENS, event_ids=True))
    cut = body.index(" Ça".encode()) + 2 if where == "inside-utf8" else body.index(b'"content":" France"') + 5
    assert cut < len(body)
    server.script(Reply(tokens=TOKENS, close_after_bytes=cut, event_ids=True), Reply(tokens=TOKENS, event_ids=True))
    assert client(server, "openai", resume=mode).complete("q", model="m").text == TEXT
    assert len(server.requests) == 3


# -- retry policy ---------------------------------------------------------------------


@pytest.mark.parametrize(("status", "cls"), [(400, BadRequestError), (401, AuthenticationError), (404, NotFoundError)])
def test_client_errors_are_tried_once(server: FakeLLMServer, status: int, cls: type) -> None:
    server.default_reply = Reply(status=status, error="no")
    with pytest.raises(cls):
        client(server, "openai", attempts=5).complete("q", model="m")
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [408, 409, 429, 500, 503, 529])
def test_retryable_statuses_are_retried(server: FakeLLMServer, status: int) -> None:
    server.script(Reply(status=status, error="busy"), Reply(tokens=TOKENS, event_ids=True))
    s = client(server, "anthropic").stream("q", model="m")
    events = list(s.events())
    retrying = [e for e in events if isinstance(e, Retrying)]
    assert len(retrying) == 1 and retrying[0].attempt == 2
    assert type(retrying[0].cause).__name__ in ("APIStatusError", "RateLimitError", "ServerError")
    assert s.result.text == TEXT
    assert s.result.attempts == 2


def test_x_should_retry_false_is_honoured(server: FakeLLMServer) -> None:
    server.default_reply = Reply(status=503, error="busy", headers={"x-should-retry": "false"})
    with pytest.raises(ServerError):
        client(server, "openai", attempts=5).complete("q", model="m")
    assert len(server.requests) == 1


@pytest.mark.parametrize(("header", "value", "wait"), [("Retry-After", "1", 1.0), ("retry-after-ms", "400", 0.4)])
def test_retry_after_is_honoured(server: FakeLLMServer, header: str, value: str, wait: float) -> None:
    server.script(Reply(status=429, error="slow down", headers={header: value}), Reply(tokens=TOKENS, event_ids=True))
    assert client(server, "openai").complete("q", model="m").text == TEXT
    first, second = server.requests
    assert second.received_at - first.received_at >= wait


def test_retry_after_beyond_the_cap_gives_up(server: FakeLLMServer) -> None:
    server.default_reply = Reply(status=429, error="slow down", headers={"Retry-After": "3600"})
    with pytest.raises(llmstream.RateLimitError) as info:
        client(server, "openai").complete("q", model="m")
    assert info.value.retry_after == 3600.0
    assert len(server.requests) == 1


@pytest.mark.parametrize("provider", ["openai", "openai-responses", "anthropic"])
@pytest.mark.parametrize("event_ids", [pytest.param(True, id="with-event-ids"), pytest.param(False, id="no-ids")])
def test_retryable_provider_error_mid_stream_resumes(server: FakeLLMServer, provider: str, event_ids: bool) -> None:
    # Reconnecting to a stream whose generation failed would replay the error
    # (or, with the Responses cursor, skip an event): the answer is asked again.
    server.script(Reply(tokens=TOKENS, error_event_at=CUT, error_event_type="overloaded_error", event_ids=event_ids),
                  Reply(tokens=TOKENS, event_ids=event_ids))
    assert client(server, provider).complete("q", model="m", max_tokens=50).text == TEXT
    second = server.requests[1]
    assert second.header("Last-Event-ID") is None and second.method == "POST"


def test_malformed_stream_is_not_retried(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=TOKENS, malformed_at=3, event_ids=True), Reply(tokens=TOKENS, event_ids=True))
    with pytest.raises(llmstream.MalformedStreamError):
        client(server, "openai").complete("q", model="m")
    assert len(server.requests) == 1


def test_attempts_are_bounded(server: FakeLLMServer) -> None:
    server.default_reply = Reply(status=503, error="down")
    with pytest.raises(ServerError) as info:
        client(server, "openai", attempts=3).complete("q", model="m")
    assert info.value.attempts == 3
    assert len(server.requests) == 3


def test_total_deadline_bounds_retries_and_waits(server: FakeLLMServer) -> None:
    server.default_reply = Reply(status=503, error="down", headers={"Retry-After": "0.4"})
    started = time.monotonic()
    with pytest.raises(ServerError):
        client(server, "openai", attempts=20, timeout=Timeout(total=1.0)).complete("q", model="m")
    assert time.monotonic() - started < 1.5
    assert 2 <= len(server.requests) <= 3


def test_close_interrupts_a_backoff_wait(server: FakeLLMServer) -> None:
    server.default_reply = Reply(status=503, error="down", headers={"Retry-After": "30"})
    s = client(server, "openai").stream("q", model="m")
    server.wait_for_requests(1, timeout=5)
    events: List[Any] = []
    consumer = threading.Thread(target=lambda: events.extend(s.events()))
    consumer.start()
    deadline = time.monotonic() + 5
    while not events and time.monotonic() < deadline:
        consumer.join(0.01)
    assert isinstance(events[0], Retrying)
    started = time.monotonic()
    s.close()
    consumer.join(2)
    assert time.monotonic() - started < 0.5
    assert wait_no_worker_threads(0.2) == []
    assert len(server.requests) == 1


def test_retry_logs_one_info_line(server: FakeLLMServer, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="llmstream")
    server.script(Reply(status=500, error="boom"), Reply(tokens=TOKENS, event_ids=True))
    client(server, "openai").complete("q", model="m")
    lines = [r.getMessage() for r in caplog.records if r.name == "llmstream" and r.levelno == logging.INFO]
    assert len(lines) == 1
    assert lines[0].startswith("retrying (attempt 2 of 3) in ")
    assert "ServerError: HTTP 500" in lines[0]


def test_retry_is_an_immutable_value() -> None:
    r = Retry(max_attempts=4, resume="replay")
    assert eval(repr(r), {"Retry": Retry}) == r
    with pytest.raises(AttributeError):
        r.max_attempts = 5  # type: ignore[misc]
    with pytest.raises(ValueError, match="resume must be one of"):
        Retry(resume="sometimes")




def test_a_retrying_events_cause_says_what_was_delivered(server: FakeLLMServer) -> None:
    server.script(Reply(text="Paris is big", close_after_tokens=2, event_ids=True), Reply(text="Paris is big", event_ids=True))
    client = Client("anthropic", base_url=server.base_url("anthropic"), api_key="k",
                    retry=Retry(max_attempts=2, initial_delay=0.01))
    with client.stream("q", model="m", max_tokens=5) as s:
        [retrying] = [e for e in s.events() if isinstance(e, llmstream.Retrying)]
    assert (retrying.cause.partial_text, retrying.cause.attempts) == ("Paris is", 1)
