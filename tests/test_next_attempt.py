"""RetryDecision: what comes after a failed attempt, decided without threads, sockets or clocks."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, Optional

import pytest

from llmstream import (
    APIConnectionError,
    BadRequestError,
    IncompleteStreamError,
    MalformedStreamError,
    ProviderError,
    RateLimitError,
    ResumeError,
    Retry,
    ServerError,
    StreamError,
    StreamTimeoutError,
    TextDelta,
)
from llmstream._next_attempt import NextAttempt, RetryDecision
from llmstream._providers._base import StreamDecoder
from llmstream._providers.anthropic import AnthropicProvider
from llmstream._providers.openai_chat import OpenAIChatProvider
from llmstream._resume import Resumer
from llmstream._retry import RetrySchedule

NO_DEADLINE = float("inf")
BROKEN = IncompleteStreamError("cut")


def no_jitter(base: float) -> float:
    return base


class Stream:
    """One stream's resumer and decision, driven by hand: an attempt, its text, its failure."""

    def __init__(self, retry: Retry, provider: Any = None, *, total_deadline: float = NO_DEADLINE,
                 keep_text: bool = True) -> None:
        self.provider = provider if provider is not None else OpenAIChatProvider()
        self.spec = self.provider.build_request(base_url="http://x", api_key="k", model="m",
                                                messages=[{"role": "user", "content": "q"}], params={})
        self.resumer = Resumer(self.provider, self.spec, retry.resume, max_line_length=1 << 16,
                               keep_text=keep_text, text=None)
        self.decision = RetryDecision(retry, self.provider, self.resumer, total_deadline,
                                      RetrySchedule(retry, jitter=no_jitter))
        self.decoder: StreamDecoder = self.resumer.new_decoder()

    def deliver(self, text: str, event_id: Optional[str] = None) -> None:
        """The attempt's decoder reads one SSE event carrying ``text``, and the caller is handed it."""
        block = (f"id:{event_id}\n" if event_id is not None else "") + \
            f'data: {{"choices":[{{"index":0,"delta":{{"content":"{text}"}}}}]}}\n\n'
        assert self.resumer.filter(self.decoder.feed(block.encode())) == [TextDelta(text)]

    def after(self, error: StreamError, attempts: int, now: float = 0.0) -> NextAttempt:
        following = self.decision.after(error, self.decoder, attempts=attempts, now=now)
        self.decoder = self.resumer.new_decoder()
        return following


# -- whether to try again ------------------------------------------------------------


@pytest.mark.parametrize("error", [
    pytest.param(BROKEN, id="incomplete"),
    pytest.param(APIConnectionError("refused"), id="connection"),
    pytest.param(StreamTimeoutError("slow", kind="idle"), id="idle-timeout"),
    pytest.param(StreamTimeoutError("slow", kind="first_token"), id="first-token-timeout"),
    pytest.param(ServerError("boom", status_code=503), id="503"),
    pytest.param(BadRequestError("busy", status_code=409), id="409"),
])
def test_a_retryable_error_is_retried_with_the_same_request_when_nothing_was_delivered(error: StreamError) -> None:
    s = Stream(Retry(max_attempts=3, initial_delay=0.5))
    assert s.after(error, attempts=1) == NextAttempt(s.spec, 0.5)


@pytest.mark.parametrize("error", [
    pytest.param(BadRequestError("no", status_code=400), id="400"),
    pytest.param(StreamTimeoutError("late", kind="total"), id="total-timeout"),
    pytest.param(MalformedStreamError("not json"), id="malformed"),
    pytest.param(ProviderError("bad", type="invalid_request_error"), id="provider-non-transient"),
    pytest.param(ServerError("no", status_code=503, should_retry=False), id="x-should-retry-false"),
])
def test_an_error_that_is_not_retryable_is_raised_itself(error: StreamError) -> None:
    s = Stream(Retry(max_attempts=3))
    with pytest.raises(type(error)) as raised:
        s.after(error, attempts=1)
    assert raised.value is error


def test_no_attempt_past_max_attempts() -> None:
    s = Stream(Retry(max_attempts=3, initial_delay=0.5))
    assert s.after(BROKEN, attempts=2).delay == 0.5
    with pytest.raises(IncompleteStreamError) as raised:
        s.after(BROKEN, attempts=3)
    assert raised.value is BROKEN


def test_the_waits_grow_exponentially_up_to_max_delay() -> None:
    s = Stream(Retry(max_attempts=10, initial_delay=0.5, max_delay=3.0))
    assert [s.after(BROKEN, attempts=n).delay for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_the_schedule_advances_only_for_a_retried_error() -> None:
    s = Stream(Retry(max_attempts=10, initial_delay=0.5))
    with pytest.raises(BadRequestError):
        s.after(BadRequestError("no", status_code=400), attempts=1)
    assert s.after(BROKEN, attempts=1).delay == 0.5


@pytest.mark.parametrize(("retry_after", "delay"), [(2.5, 2.5), (0.0, 0.0), (60.0, 60.0)], ids=["2.5s", "zero", "at-the-cap"])
def test_retry_after_is_the_wait(retry_after: float, delay: float) -> None:
    s = Stream(Retry(max_attempts=3, initial_delay=0.5, max_retry_after=60.0))
    assert s.after(RateLimitError("slow down", status_code=429, retry_after=retry_after), attempts=1).delay == delay


def test_a_retry_after_past_max_retry_after_gives_up() -> None:
    s = Stream(Retry(max_attempts=3, max_retry_after=60.0))
    error = RateLimitError("slow down", status_code=429, retry_after=61.0)
    with pytest.raises(RateLimitError) as raised:
        s.after(error, attempts=1)
    assert raised.value is error


def test_a_wait_that_would_reach_the_total_deadline_gives_up_now() -> None:
    s = Stream(Retry(max_attempts=5, initial_delay=1.0), total_deadline=100.0)
    assert s.after(BROKEN, attempts=1, now=98.9) == NextAttempt(s.spec, 1.0)  # 99.9 < 100
    with pytest.raises(IncompleteStreamError):
        s.after(BROKEN, attempts=2, now=98.0)  # the second wait is 2.0: 100.0 is the deadline itself


# -- which request comes next: resume ---------------------------------------------------


def test_after_delivered_text_replay_asks_again_and_holds_back_what_was_delivered() -> None:
    s = Stream(Retry(max_attempts=3, initial_delay=0.5, resume="replay"))
    s.deliver("Par")
    assert s.after(BROKEN, attempts=1) == NextAttempt(s.spec, 0.5)
    assert s.resumer.strategy == "replay"
    # The new answer's start is held back: only what goes past "Par" reaches the caller.
    assert s.resumer.filter(s.decoder.feed(b'data: {"choices":[{"index":0,"delta":{"content":"Paris"}}]}\n\n')) == [TextDelta("is")]


def test_after_delivered_text_last_event_id_reconnects_with_the_header() -> None:
    s = Stream(Retry(max_attempts=3, initial_delay=0.5, resume="last-event-id"))
    s.deliver("Par", event_id="7")
    following = s.after(BROKEN, attempts=1)
    assert following.delay == 0.5
    assert following.request.headers["Last-Event-ID"] == b"7"  # sent as its UTF-8 bytes
    assert following.request.json == s.spec.json


def test_resume_never_raises_the_error_once_text_was_delivered() -> None:
    s = Stream(Retry(max_attempts=3, resume="never"))
    s.deliver("Par")
    with pytest.raises(IncompleteStreamError) as raised:
        s.after(BROKEN, attempts=1)
    assert raised.value is BROKEN


def test_a_stream_that_cannot_be_resumed_raises_resume_error() -> None:
    # Without the text kept, a continuation cannot send it back as the prefill.
    s = Stream(Retry(max_attempts=3, resume="continue"), AnthropicProvider(), keep_text=False)
    s.resumer.filter([TextDelta("Par")])
    with pytest.raises(ResumeError, match="cannot resume with resume='continue'"):
        s.after(BROKEN, attempts=1)


def test_a_refused_continuation_falls_back_to_replay_at_once_even_for_a_400() -> None:
    s = Stream(Retry(max_attempts=4, initial_delay=0.5, resume="auto"), AnthropicProvider())
    s.resumer.filter([TextDelta("Par")])
    continuation = s.after(BROKEN, attempts=1)
    assert s.resumer.strategy == "continue"
    assert continuation.delay == 0.5
    assert continuation.request.json["messages"][-1] == {"role": "assistant", "content": "Par"}
    refused = BadRequestError("prefill not supported", status_code=400)
    assert s.after(refused, attempts=2) == NextAttempt(s.spec, 0.0)  # no backoff: the way was refused
    assert s.resumer.strategy == "replay"


def test_a_refusal_on_the_last_attempt_is_raised() -> None:
    s = Stream(Retry(max_attempts=2, resume="auto"), AnthropicProvider())
    s.resumer.filter([TextDelta("Par")])
    s.after(BROKEN, attempts=1)
    refused = BadRequestError("prefill not supported", status_code=400)
    with pytest.raises(BadRequestError) as raised:
        s.after(refused, attempts=2)
    assert raised.value is refused


# -- the client's pause after a 429 --------------------------------------------------


@pytest.mark.parametrize(("error", "pause"), [
    pytest.param(RateLimitError("slow", status_code=429, retry_after=3.0), 3.0, id="retry-after"),
    pytest.param(RateLimitError("slow", status_code=429), 0.5, id="initial-delay-without-retry-after"),
    pytest.param(RateLimitError("slow", status_code=429, retry_after=600.0), 60.0, id="capped-at-max-retry-after"),
    pytest.param(ServerError("boom", status_code=503, retry_after=3.0), None, id="not-a-429"),
    pytest.param(BROKEN, None, id="not-a-status"),
])
def test_a_429_pauses_the_client(error: StreamError, pause: Optional[float]) -> None:
    s = Stream(Retry(max_attempts=3, initial_delay=0.5, max_retry_after=60.0))
    assert s.decision.flow_pause(error) == pause


def test_a_429_pauses_the_client_even_when_this_stream_gives_up() -> None:
    s = Stream(Retry(max_attempts=1, initial_delay=0.5))
    error = RateLimitError("slow", status_code=429, retry_after=2.0)
    assert s.decision.flow_pause(error) == 2.0
    with pytest.raises(RateLimitError):
        s.after(error, attempts=1)


# -- no threads, no clocks -------------------------------------------------------------


def test_the_decision_imports_no_threads_clocks_or_sockets() -> None:
    path = Path(__file__).resolve().parent.parent / "llmstream" / "_next_attempt.py"
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert imported & {"threading", "time", "socket", "select", "queue", "asyncio", "requests", "urllib3"} == set()


def test_one_retry_value_serves_many_streams() -> None:
    retry = Retry(max_attempts=5, initial_delay=0.5)
    first, second = Stream(retry), Stream(retry)
    assert first.after(BROKEN, attempts=1).delay == 0.5
    assert first.after(BROKEN, attempts=2).delay == 1.0
    assert second.after(BROKEN, attempts=1).delay == 0.5  # its own schedule
    assert retry == Retry(max_attempts=5, initial_delay=0.5)

