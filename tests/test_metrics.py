"""Per-stream metrics, the histogram behind them, the process-wide monitor, and logging."""

from __future__ import annotations

import logging
import math
import random
import threading
from typing import Any, List

import pytest

import llmstream
from llmstream import Client, Distribution, Retry, StreamError, StreamReport
from llmstream._histogram import Histogram
from llmstream.testing import DEFAULT_TEXT, FakeLLMServer, Reply

NO_RETRY = Retry(max_attempts=1)
KEY = "sk-test-METRICS-SECRET-123"


def client_for(server: FakeLLMServer, provider: str = "openai", **kwargs: Any) -> Client:
    kwargs.setdefault("retry", NO_RETRY)
    return Client(provider, base_url=server.base_url(provider), api_key=KEY, **kwargs)


# -- the histogram --------------------------------------------------------------------------


def exact_quantile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_histogram_percentiles_are_within_two_percent(seed: int) -> None:
    rng = random.Random(seed)
    values = [rng.lognormvariate(-4, 1.5) for _ in range(20_000)]
    histogram = Histogram()
    for value in values:
        histogram.add(value)
    summary = histogram.summary()
    for q, got in ((0.5, summary.p50), (0.9, summary.p90), (0.99, summary.p99)):
        want = exact_quantile(values, q)
        assert got is not None and abs(got - want) <= 0.02 * want, (q, got, want)
    assert (summary.count, summary.min, summary.max) == (20_000, min(values), max(values))
    assert summary.total == pytest.approx(sum(values))
    assert summary.mean == pytest.approx(sum(values) / len(values))


def test_histogram_of_a_constant_is_exact_and_empty_is_none() -> None:
    histogram = Histogram()
    assert histogram.summary() == Distribution()
    assert histogram.summary().mean is None
    for _ in range(5):
        histogram.add(0.25)
    assert histogram.summary() == Distribution(count=5, total=1.25, min=0.25, p50=0.25, p90=0.25, p99=0.25, max=0.25)


def test_histogram_counts_zeros_and_merges() -> None:
    a, b = Histogram(), Histogram()
    for value in (0.0, 0.0, 0.0, 1.0):
        a.add(value)
    b.add(4.0)
    a.merge(b)
    summary = a.summary()
    assert (summary.count, summary.min, summary.p50, summary.max) == (5, 0.0, 0.0, 4.0)
    assert a.quantile(1.0) == 4.0


def test_histogram_memory_is_bounded() -> None:
    histogram = Histogram()
    for i in range(1, 200_001):
        histogram.add(i * 1e-5)  # 10 µs .. 2 s
    assert len(histogram._buckets) < 700


# -- per-stream metrics ----------------------------------------------------------------------


def test_metrics_of_a_paced_stream(server: FakeLLMServer) -> None:
    server.script(Reply(text=DEFAULT_TEXT, interval=0.02, usage=(7, 21)))
    result = client_for(server).complete("q", model="m")
    m = result.metrics
    assert m.output_tokens == 21 and m.tokens == 21
    assert m.text_deltas == len([t for t in DEFAULT_TEXT.split(" ")])
    assert m.time_to_first_token is not None and 0 < m.time_to_first_token < m.duration
    gaps = m.inter_token_gap
    # One gap per read that brought content, after the first; the server waits 20 ms between writes.
    assert 1 <= gaps.count <= m.text_deltas
    assert gaps.p50 is not None and gaps.p99 is not None and gaps.max is not None
    assert 0.018 <= gaps.p50 <= gaps.p99 <= gaps.max
    assert m.tokens_per_second == pytest.approx(21 / (m.duration - m.time_to_first_token))
    assert (m.chunk_size.count, m.chunk_size.total) == (m.chunks, m.bytes_received)
    assert m.read_time.count == m.chunks and m.read_time.max is not None and m.read_time.max >= 0.018
    assert (m.attempts, m.retries, m.errors) == (1, 0, ())


def test_metrics_record_each_error_met(server: FakeLLMServer) -> None:
    server.script(Reply(status=503), Reply(close_after_tokens=2), Reply())
    client = client_for(server, retry=Retry(max_attempts=3, initial_delay=0.01))
    result = client.complete("q", model="m")
    assert result.text == DEFAULT_TEXT
    assert result.metrics.errors == ("ServerError", "IncompleteStreamError")
    assert (result.metrics.attempts, result.metrics.retries) == (3, 2)


def test_metrics_of_a_failed_stream_end_with_its_error(server: FakeLLMServer) -> None:
    server.script(Reply(status=503), Reply(status=401))
    with client_for(server, retry=Retry(max_attempts=3, initial_delay=0.01)).stream("q", model="m") as s:
        with pytest.raises(llmstream.AuthenticationError):
            s.result
    assert s.metrics.errors == ("ServerError", "AuthenticationError")
    assert s.metrics.time_to_first_token is None and s.metrics.tokens_per_second is None


def test_inter_token_gaps_leave_out_a_slow_caller(server: FakeLLMServer) -> None:
    # The server writes every 5 ms; the caller takes 30 ms per piece with a
    # queue of one event, so the worker is blocked most of the time while the
    # server keeps writing: the gaps it measures must be the server's, not 30 ms.
    server.script(Reply(token_count=20, interval=0.005))
    gate = threading.Event()
    with client_for(server, max_buffered=1).stream("q", model="m") as s:
        for _ in s:
            gate.wait(0.03)
    gaps = s.metrics.inter_token_gap
    assert gaps.max is not None and gaps.max < 0.025, gaps


# -- the monitor ---------------------------------------------------------------------------


def test_monitor_counts_outcomes_errors_and_reports(server: FakeLLMServer) -> None:
    reports: List[StreamReport] = []
    unsubscribe = llmstream.monitor.subscribe(reports.append)
    try:
        before = llmstream.monitor.snapshot()
        server.script(Reply(), Reply(status=429), Reply(token_count=10_000, interval=0.001))
        client = client_for(server)
        client.complete("ok", model="model-a")
        with pytest.raises(llmstream.RateLimitError):
            client.complete("limited", model="model-a")
        with client.stream("closed", model="model-a") as s:
            next(iter(s.events()))  # a temporary iterator: dropping it closes the stream
        after = llmstream.monitor.snapshot()
    finally:
        unsubscribe()
    assert [(r.outcome, r.error, r.model, r.provider) for r in reports] == [
        ("finished", None, "model-a", "openai"),
        ("failed", "RateLimitError", "model-a", "openai"),
        ("closed", None, "model-a", "openai"),
    ]
    assert reports[0].base_url == server.base_url("openai")
    assert reports[0].metrics.text_deltas > 0
    assert (after.started - before.started, after.finished - before.finished,
            after.failed - before.failed, after.closed - before.closed) == (3, 1, 1, 1)
    assert after.errors.get("RateLimitError", 0) - before.errors.get("RateLimitError", 0) == 1
    assert after.time_to_first_token.count - before.time_to_first_token.count == 2
    assert after.active == before.active


def test_monitor_success_rate_and_reset() -> None:
    snapshot = llmstream.MonitorSnapshot(finished=3, failed=1)
    assert snapshot.success_rate == 0.75
    assert llmstream.MonitorSnapshot().success_rate is None
    monitor = llmstream.Monitor()
    monitor.stream_started()
    monitor.reset()
    assert (monitor.snapshot().started, monitor.snapshot().active) == (1, 1)  # still running: still counted


def test_a_failing_listener_is_logged_and_does_not_break_streams(server: FakeLLMServer,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    def broken(report: StreamReport) -> None:
        raise ValueError("listener bug")

    unsubscribe = llmstream.monitor.subscribe(broken)
    try:
        with caplog.at_level(logging.ERROR, logger="llmstream"):
            assert client_for(server).complete("q", model="m").text == DEFAULT_TEXT
    finally:
        unsubscribe()
    assert any("listener" in r.getMessage() and r.exc_info for r in caplog.records)


def test_monitor_is_consistent_under_many_threads(server: FakeLLMServer) -> None:
    before = llmstream.monitor.snapshot()
    client = client_for(server)
    errors: List[BaseException] = []

    def run() -> None:
        for _ in range(10):
            try:
                client.complete("q", model="m")
            except (StreamError, AssertionError) as exc:
                errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    after = llmstream.monitor.snapshot()
    assert errors == []
    assert (after.started - before.started, after.finished - before.finished) == (160, 160)
    assert after.active == before.active


# -- logging -------------------------------------------------------------------------------


def test_logging_info_per_retry_and_failure_debug_per_event_never_the_key(
        server: FakeLLMServer, caplog: pytest.LogCaptureFixture) -> None:
    server.script(Reply(status=503), Reply(text="Hi there", tokens=["Hi", " there"]), Reply(status=401))
    client = client_for(server, retry=Retry(max_attempts=2, initial_delay=0.01))
    assert not logging.getLogger("llmstream").handlers  # the library configures no handler
    with caplog.at_level(logging.DEBUG, logger="llmstream"):
        client.complete("q", model="m")
        with pytest.raises(llmstream.AuthenticationError):
            client.complete("q", model="m")
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(info) == 2
    assert info[0].startswith("retrying (attempt 2 of 2) in ")
    assert info[1].startswith("stream failed after 1 attempt(s): AuthenticationError: ")
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and r.getMessage().startswith("event ")]
    assert debug[:2] == ["event TextDelta(text='Hi')", "event TextDelta(text=' there')"]
    everything = "\n".join(r.getMessage() + repr(r.args) for r in caplog.records)
    assert KEY not in everything
