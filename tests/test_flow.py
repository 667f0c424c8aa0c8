"""Client flow control against the fake server: concurrency slots, rate limiter, circuit breaker, output guard."""

from __future__ import annotations

import concurrent.futures
import pickle
import random
import threading
import time
from typing import Any, Callable, Dict, List

import pytest

import llmstream
from llmstream import (
    CircuitBreaker,
    CircuitOpenError,
    Client,
    Finish,
    IncompleteStreamError,
    RateLimit,
    RateLimitError,
    Retry,
    ServerError,
    StreamError,
    StreamTimeoutError,
    TextDelta,
    ThinkingDelta,
    Timeout,
    ToolCall,
    ToolCallDelta,
)
from llmstream.testing import DEFAULT_TEXT, FakeLLMServer, Reply

from conftest import wait_no_worker_threads

NO_RETRY = Retry(max_attempts=1)
STALL = Reply(stall_before_first_byte=float("inf"))


def client_for(server: FakeLLMServer, **kwargs: Any) -> Client:
    kwargs.setdefault("retry", NO_RETRY)
    return Client("openai", base_url=server.base_url("openai"), api_key="sk-test-key", **kwargs)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll a condition that no event signals (a count in another object), bounded."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def prompts(server: FakeLLMServer) -> List[str]:
    return [r.json["messages"][-1]["content"] for r in server.requests]


# -- max_concurrent ---------------------------------------------------------------------------


def test_waiting_streams_are_served_in_fifo_order(server: FakeLLMServer) -> None:
    client = client_for(server, max_concurrent=2)
    server.script(STALL, STALL)
    holders = [client.stream(f"hold{i}", model="m") for i in range(2)]
    server.wait_for_requests(2)
    waiters = []
    for i in range(4):
        waiters.append(client.stream(f"wait{i}", model="m"))
        # Each waiter joins the line before the next one is created: the order is known.
        wait_until(lambda: client._flow.slots.waiting == i + 1, what=f"waiter {i} in line")
    assert len(server.requests) == 2  # nobody got past the limit
    holders[0].close()
    texts = [w.result.text for w in waiters]  # each frees its slot for the next in line
    assert texts == [DEFAULT_TEXT] * 4
    order = prompts(server)
    assert sorted(order[:2]) == ["hold0", "hold1"]  # the two holders raced for free slots
    assert order[2:] == ["wait0", "wait1", "wait2", "wait3"]
    holders[1].close()


def test_a_waiting_stream_can_be_cancelled_and_loses_no_slot(server: FakeLLMServer) -> None:
    client = client_for(server, max_concurrent=1)
    server.script(STALL)
    holder = client.stream("hold", model="m")
    server.wait_for_requests(1)
    cancelled = client.stream("cancelled", model="m")
    wait_until(lambda: client._flow.slots.waiting == 1, what="a waiter")
    after = client.stream("after", model="m")
    wait_until(lambda: client._flow.slots.waiting == 2, what="two waiters")
    started = time.monotonic()
    cancelled.close()
    assert time.monotonic() - started < 0.5
    assert cancelled.status == "closed"
    assert client._flow.slots.waiting == 1
    holder.close()
    assert after.result.text == DEFAULT_TEXT
    assert prompts(server) == ["hold", "after"]  # the cancelled stream never sent a request
    assert client._flow.slots.in_use == 0


def test_waiting_for_a_slot_counts_against_the_total_timeout(server: FakeLLMServer) -> None:
    client = client_for(server, max_concurrent=1)
    server.script(STALL)
    holder = client.stream("hold", model="m")
    server.wait_for_requests(1)
    with client.stream("late", model="m", timeout=Timeout(total=0.3)) as late:
        with pytest.raises(StreamTimeoutError) as info:
            late.result
    assert info.value.kind == "total"
    assert str(info.value) == ("total timeout: the stream's Timeout.total passed while waiting for "
                               "a free slot (Client(max_concurrent=1))")
    assert prompts(server) == ["hold"]
    holder.close()


def test_queued_time_is_in_the_metrics(server: FakeLLMServer) -> None:
    # The first stream holds the one slot until the second has waited 0.15 s at least
    # (timed from when it joined the line, so a slow test thread cannot shorten the wait).
    client = client_for(server, max_concurrent=1)
    server.script(Reply(stall_before_first_byte=float("inf")))
    first = client.stream("first", model="m")
    server.wait_for_requests(1)
    second = client.stream("second", model="m")
    wait_until(lambda: client._flow.slots.waiting == 1, what="the second stream in line")
    time.sleep(0.15)  # the queued time to measure
    first.close()
    assert second.result.metrics.queued >= 0.15
    assert first.metrics.queued < 0.1


# -- the shared rate limiter ----------------------------------------------------------------


def test_one_429_with_retry_after_pauses_every_stream_of_the_client(server: FakeLLMServer) -> None:
    client = client_for(server, retry=Retry(max_attempts=2))
    server.script(Reply(status=429, headers={"Retry-After": "1"}))
    limited = client.stream("limited", model="m")
    events = limited.events()
    retrying = next(e for e in events if isinstance(e, llmstream.Retrying))
    assert retrying.delay == 1.0
    other = client.stream("other", model="m")  # a different stream, which got no 429
    assert other.result.text == DEFAULT_TEXT
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == DEFAULT_TEXT
    first, *later = server.requests
    assert sorted(r.json["messages"][-1]["content"] for r in later) == ["limited", "other"]
    assert min(r.received_at for r in later) - first.received_at >= 0.95


def test_a_429_on_another_client_does_not_pause_this_one(server: FakeLLMServer) -> None:
    limited_client, free_client = client_for(server), client_for(server)
    server.script(Reply(status=429, headers={"Retry-After": "30"}))
    with pytest.raises(RateLimitError):
        limited_client.complete("limited", model="m")
    started = time.monotonic()
    assert free_client.complete("free", model="m").text == DEFAULT_TEXT
    assert time.monotonic() - started < 5


def test_requests_per_minute_spaces_requests_out(server: FakeLLMServer) -> None:
    # 600/min with a 0.1 s burst: a bucket of one request refilled every 0.1 s.
    # Measured when each request left the client (its attempt's start): the server's
    # receive times add a connection and a thread start, which vary on a loaded machine
    # (CI once saw two requests received 45 ms apart, though sent 0.1 s apart).
    reports: List[llmstream.StreamReport] = []
    unsubscribe = llmstream.monitor.subscribe(reports.append)
    try:
        client = client_for(server, rate_limit=RateLimit(requests_per_minute=600, burst_seconds=0.1))
        for i in range(4):
            assert client.complete(f"q{i}", model="m").text == DEFAULT_TEXT
    finally:
        unsubscribe()
    assert len(server.requests) == 4
    times = sorted(attempt.started for r in reports if r.base_url == server.base_url("openai") for attempt in r.attempts)
    assert len(times) == 4 and all(b - a >= 0.09 for a, b in zip(times, times[1:])), times


def test_tokens_per_minute_charges_the_output_limit(server: FakeLLMServer) -> None:
    # 60k tokens/min = 1000/s; a 0.1 s burst holds 100 tokens, and each request
    # asks for max_tokens=100, so each one waits for a full bucket. The usage
    # reported (150 tokens) is charged too once known, so nothing is refunded.
    server.default_reply = Reply(usage=(50, 100))
    client = client_for(server, rate_limit=RateLimit(tokens_per_minute=60_000, burst_seconds=0.1))
    for i in range(3):
        client.complete(f"q{i}", model="m", max_tokens=100)
    times = [r.received_at for r in server.requests]
    assert all(b - a >= 0.09 for a, b in zip(times, times[1:])), times


def test_the_reported_usage_corrects_the_charge_of_the_attempt_that_ended_the_stream(server: FakeLLMServer) -> None:
    # A bucket that refills 1 token/s, so the level after the stream is what was
    # charged and corrected. Each attempt is charged its estimate E when it goes
    # out; the last one's E is then replaced by the usage reported (150), and
    # the failed first attempt's E stays charged: capacity - E - 150.
    server.script(Reply(status=500), Reply(usage=(50, 100)))
    client = client_for(server, retry=Retry(max_attempts=2, initial_delay=0.01),
                        rate_limit=RateLimit(tokens_per_minute=60, burst_seconds=60_000))
    limiter = client._flow.limiter  # type: ignore[attr-defined]
    capacity = limiter._tokens.capacity
    result = client.complete("q", model="m", max_tokens=1000)
    assert result.attempts == 2
    estimate = client._provider.estimate_tokens(server.requests[0].json)  # type: ignore[attr-defined]
    assert estimate > 1000
    assert capacity - estimate - 150 <= limiter._tokens.level <= capacity - estimate - 150 + 5  # + the refill


def test_rate_limit_config_is_validated() -> None:
    with pytest.raises(ValueError, match="requests_per_minute must be a number > 0"):
        RateLimit(requests_per_minute=0)
    with pytest.raises(TypeError, match="rate_limit must be a llmstream.RateLimit"):
        Client("openai", base_url="http://127.0.0.1:9/v1", rate_limit=100)  # type: ignore[arg-type]
    assert RateLimit(tokens_per_minute=10) == RateLimit(tokens_per_minute=10.0)


# -- the circuit breaker --------------------------------------------------------------------


def test_the_circuit_opens_after_consecutive_failures_and_fails_fast(server: FakeLLMServer) -> None:
    client = client_for(server, circuit_breaker=CircuitBreaker(failure_threshold=2, cooldown=60))
    server.script(Reply(status=503), Reply(status=503))
    for _ in range(2):
        with pytest.raises(ServerError):
            client.complete("q", model="m")
    assert client.circuit_state == "open"
    started = time.monotonic()
    with pytest.raises(CircuitOpenError) as info:
        client.complete("q", model="m")
    assert time.monotonic() - started < 0.5
    assert len(server.requests) == 2  # no request was sent
    error = info.value
    assert isinstance(error, StreamError)
    assert error.base_url == server.base_url("openai")
    assert 59 < error.retry_after <= 60
    assert str(error).startswith(f"circuit open for {server.base_url('openai')} after 2 consecutive failures")
    assert pickle.loads(pickle.dumps(error)).retry_after == error.retry_after
    assert llmstream.monitor.snapshot().circuits[server.base_url("openai")] == "open"


def test_a_success_resets_the_failure_count(server: FakeLLMServer) -> None:
    client = client_for(server, circuit_breaker=CircuitBreaker(failure_threshold=2, cooldown=60))
    server.script(Reply(status=503), Reply(), Reply(status=503), Reply(status=400), Reply(status=503))
    for expected in (ServerError, None, ServerError, llmstream.BadRequestError, ServerError):
        if expected is None:
            client.complete("q", model="m")
        else:
            with pytest.raises(expected):
                client.complete("q", model="m")
    assert client.circuit_state == "closed"  # a 4xx answer proves the server is up


def test_after_the_cooldown_one_probe_goes_through(server: FakeLLMServer) -> None:
    client = client_for(server, circuit_breaker=CircuitBreaker(failure_threshold=1, cooldown=0.2))
    server.script(Reply(status=503), Reply(stall_before_first_byte=0.5), Reply(), Reply(status=503))
    with pytest.raises(ServerError):
        client.complete("q", model="m")
    wait_until(lambda: client.circuit_state == "half-open", what="the cooldown")
    probe = client.stream("probe", model="m")
    # The probe's 2xx answer closes the circuit at once, not when its (slow) body ends.
    wait_until(lambda: client.circuit_state == "closed", what="the probe's answer")
    assert probe.status == "streaming"
    assert client.complete("during the probe", model="m").text == DEFAULT_TEXT
    assert probe.result.text == DEFAULT_TEXT
    # Closed again: a failure with threshold 1 opens it at once.
    with pytest.raises(ServerError):
        client.complete("q", model="m")
    assert client.circuit_state == "open"
    assert prompts(server) == ["q", "probe", "during the probe", "q"]


def test_while_a_probe_is_in_flight_other_attempts_are_refused() -> None:
    from llmstream._flow import Breaker

    breaker = Breaker(CircuitBreaker(failure_threshold=1, cooldown=0.01), "http://example.test/v1")
    breaker.record(False, ServerError("down", status_code=503))
    wait_until(lambda: breaker.state == "half-open", what="the cooldown")
    assert breaker.admit() is True  # the probe
    with pytest.raises(CircuitOpenError, match=r"\(a probe request is in flight\)$"):
        breaker.admit()
    breaker.record(True, llmstream.APIConnectionError("refused"))
    assert breaker.state == "open"


def test_closing_streams_early_does_not_open_the_circuit(server: FakeLLMServer) -> None:
    # Breaking out of the loop shuts the socket, which the worker sees as a
    # broken stream: that is the caller's doing, not a server failure.
    client = client_for(server, circuit_breaker=CircuitBreaker(failure_threshold=2, cooldown=60))
    server.default_reply = Reply(interval=0.01)
    for _ in range(4):
        with client.stream("q", model="m") as s:
            for _piece in s:
                break
    assert client.circuit_state == "closed"
    assert client._flow.breaker.consecutive_failures == 0  # type: ignore[union-attr]


def test_closing_a_stream_read_ahead_in_its_own_thread_does_not_count_against_the_server(server: FakeLLMServer) -> None:
    # Nobody iterates: a thread of the worker's waits for the body when close()
    # shuts the socket. The read it was in fails like a broken stream, but that
    # was our doing: no failure for the breaker, no retry.
    client = client_for(server, retry=Retry(max_attempts=3, initial_delay=0.01),
                        circuit_breaker=CircuitBreaker(failure_threshold=1, cooldown=60))
    server.script(STALL)
    s = client.stream("q", model="m")
    wait_until(lambda: len(server.requests) == 1, what="the request")
    s.close()
    assert client.circuit_state == "closed"
    assert client._flow.breaker.consecutive_failures == 0  # type: ignore[attr-defined]
    assert len(server.requests) == 1


def test_a_failed_probe_opens_the_circuit_again(server: FakeLLMServer) -> None:
    client = client_for(server, circuit_breaker=CircuitBreaker(failure_threshold=1, cooldown=0.2))
    server.script(Reply(status=503), Reply(status=503))
    with pytest.raises(ServerError):
        client.complete("q", model="m")
    wait_until(lambda: client.circuit_state == "half-open", what="the cooldown")
    with pytest.raises(ServerError):
        client.complete("probe", model="m")
    assert client.circuit_state == "open"
    with pytest.raises(CircuitOpenError):
        client.complete("refused", model="m")
    assert prompts(server) == ["q", "probe"]


def test_a_retrying_stream_stops_when_the_circuit_opens(server: FakeLLMServer) -> None:
    client = client_for(server, retry=Retry(max_attempts=5, initial_delay=0.01),
                        circuit_breaker=CircuitBreaker(failure_threshold=2, cooldown=60))
    server.script(Reply(status=503), Reply(status=503), Reply())
    with pytest.raises(CircuitOpenError) as info:
        client.complete("q", model="m")
    assert info.value.attempts == 2
    assert len(server.requests) == 2


def test_no_breaker_by_default(server: FakeLLMServer) -> None:
    client = client_for(server)
    assert client.circuit_state is None
    assert client_for(server, circuit_breaker=True).circuit_state == "closed"


# -- max_output_chars ---------------------------------------------------------------------


def test_output_guard_cuts_the_answer_and_closes_the_socket(server: FakeLLMServer) -> None:
    # 2000 tokens paced over ~10 s: only a client that hangs up ends it early.
    server.script(Reply(token_count=2000, interval=0.005), Reply())
    client = client_for(server, max_output_chars=30)
    with client.stream("long", model="m") as s:
        events = list(s.events())
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == "tok0 tok1 tok2 tok3 tok4 tok5 "  # 30 characters
    assert events[-1] == Finish("max_output_chars")
    assert s.result.finish_reason == "max_output_chars"
    assert s.result.text == text
    wait_until(lambda: server.active_connections == 0, timeout=2, what="the server to see the socket closed")
    client.complete("next", model="m")
    first, second = server.requests
    assert first.client_port != second.client_port  # the cut connection was not reused


def test_output_guard_per_stream_and_at_the_exact_limit(server: FakeLLMServer) -> None:
    client = client_for(server)
    exact = client.complete("q", model="m", max_output_chars=len(DEFAULT_TEXT))
    assert (exact.text, exact.finish_reason) == (DEFAULT_TEXT, "stop")  # reaching the limit is not passing it
    cut = client.complete("q", model="m", max_output_chars=5)
    assert (cut.text, cut.finish_reason) == ("Hello", "max_output_chars")
    with pytest.raises(ValueError, match="max_output_chars must be an int >= 1"):
        client.stream("q", model="m", max_output_chars=0)


def test_output_guard_counts_thinking_and_drops_a_partial_tool_call(server: FakeLLMServer) -> None:
    server.script(Reply(thinking="Let me think.", text="Sure.", tool_calls=[("get_weather", {"city": "Paris"})]))
    client = Client("anthropic", base_url=server.base_url("anthropic"), api_key="k", retry=NO_RETRY,
                    max_output_chars=len("Let me think.") + len("Sure.") + 5)
    with client.stream("q", model="m", max_tokens=10) as s:
        events = list(s.events())
    assert "".join(e.text for e in events if isinstance(e, ThinkingDelta)) == "Let me think."
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Sure."
    args = "".join(e.arguments for e in events if isinstance(e, ToolCallDelta))
    assert len(args) <= 5 and not any(isinstance(e, ToolCall) for e in events)
    assert events[-1] == Finish("max_output_chars")


# -- everything at once -------------------------------------------------------------------


@pytest.mark.parametrize("client_limit, server_limit", [
    pytest.param(8, 12, id="client-limit-below-the-server's"),
    pytest.param(16, 8, id="client-limit-above-the-server's"),
])
def test_200_streams_from_32_threads_against_a_limiting_server(client_limit: int, server_limit: int) -> None:
    rng = random.Random(7)
    with FakeLLMServer(max_concurrent=server_limit, limit_retry_after=0.05) as server:
        # Paced answers so that streams overlap; one request in 20 gets a
        # scripted 429 and one in 20 breaks mid-stream and must resume.
        paced = Reply(interval=0.002)
        script = []
        for _ in range(200):
            roll = rng.random()
            script.append(Reply(status=429, headers={"Retry-After": "0.05"}) if roll < 0.05
                          else Reply(interval=0.002, close_after_tokens=3) if roll < 0.10 else paced)
        server.script(*script)
        server.default_reply = paced
        client = client_for(server, max_concurrent=client_limit,
                            retry=Retry(max_attempts=6, initial_delay=0.02, max_delay=0.2))
        results: Dict[int, Any] = {}
        lock = threading.Lock()

        def one(i: int) -> None:
            try:
                result: Any = client.complete(f"p{i}", model="m").text
            except StreamError as exc:
                # Kept as (type, attempts, partial text), not the exception: its traceback holds the stream.
                result = (type(exc), exc.attempts, exc.partial_text)
            with lock:
                results[i] = result

        before = llmstream.monitor.snapshot()
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            list(pool.map(one, range(200)))
        after = llmstream.monitor.snapshot()
        assert len(results) == 200
        for i, result in results.items():
            # A stream either gets its exact text, or used all six attempts: over-limit 429s,
            # scripted 429s and scripted breaks may together exhaust them (the last one says which).
            assert result == DEFAULT_TEXT or (
                result[0] in (RateLimitError, IncompleteStreamError) and result[1] == 6
                and DEFAULT_TEXT.startswith(result[2])
            ), (i, result)
        assert server.max_active_connections <= min(client_limit, server_limit)
        if client_limit < server_limit:
            assert server.rejected_over_limit == 0
            assert all(r == DEFAULT_TEXT for r in results.values())
        else:
            assert server.rejected_over_limit > 0
        assert after.started - before.started == 200
        assert (after.finished + after.failed) - (before.finished + before.failed) == 200
        assert client._flow.slots.in_use == 0 and client._flow.slots.waiting == 0  # type: ignore[union-attr]
    assert wait_no_worker_threads() == []


def test_tokens_per_minute_debt_of_a_request_bigger_than_the_bucket() -> None:
    from llmstream._flow import RateLimiter

    limiter = RateLimiter(RateLimit(tokens_per_minute=60_000, burst_seconds=0.1))  # 1000/s, holds 100
    never = threading.Event()
    assert limiter.acquire(600, never, deadline=time.monotonic() + 5) < 0.05  # a full bucket lets it go
    # ...and it owes 500: the next request waits for the debt to be paid back (about 0.5 s).
    assert limiter.acquire(1, never, deadline=time.monotonic() + 5) >= 0.45
    limiter.correct(-10_000)  # a refund never fills the bucket past its capacity
    assert limiter.acquire(100, never, deadline=time.monotonic() + 5) < 0.05


def test_output_guard_counts_again_after_a_reset() -> None:
    from llmstream._output_guard import OutputGuard

    guard = OutputGuard(limit=6)
    assert guard.filter([TextDelta("abcd")]) == ([TextDelta("abcd")], False)
    reset = llmstream.Reset(attempt=2, discarded_text="abcd")
    assert guard.filter([reset, TextDelta("wxyz")]) == ([reset, TextDelta("wxyz")], False)
    assert guard.filter([TextDelta("123")]) == ([TextDelta("12"), Finish("max_output_chars")], True)


def test_fake_server_limit_answers_429_without_consuming_a_scripted_reply() -> None:
    with FakeLLMServer(max_concurrent=1, limit_retry_after=2) as server:
        server.script(STALL, Reply(text="scripted"))
        client = client_for(server)
        holder = client.stream("hold", model="m")
        server.wait_for_requests(1)
        with pytest.raises(RateLimitError) as info:
            client.complete("rejected", model="m")
        assert (info.value.status_code, info.value.retry_after) == (429, 2.0)
        assert server.rejected_over_limit == 1
        holder.close()
        wait_until(lambda: server.active_connections == 0, what="the held request to end")
        assert client.complete("next", model="m").text == "scripted"


def test_a_probe_cancelled_while_waiting_for_the_rate_limiter_is_freed(server: FakeLLMServer) -> None:
    # One request per 10 s: after the failing request the probe waits in the limiter.
    client = client_for(server, circuit_breaker=CircuitBreaker(failure_threshold=1, cooldown=0.2),
                        rate_limit=RateLimit(requests_per_minute=6, burst_seconds=10))
    server.script(Reply(status=503))
    with pytest.raises(ServerError):
        client.complete("q", model="m")
    wait_until(lambda: client.circuit_state == "half-open", what="the cooldown")
    probe = client.stream("probe", model="m")
    wait_until(lambda: llmstream.monitor.snapshot().waiting >= 1, what="the probe to wait for the limiter")
    probe.close()
    assert len(server.requests) == 1
    assert client._flow.breaker.admit() is True  # type: ignore[union-attr]  # the probe slot is free again
