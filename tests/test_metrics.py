"""Per-stream metrics, the histogram behind them, the process-wide monitor, and logging."""

from __future__ import annotations

import logging
import math
import os
import random
import re
import subprocess
import sys
import threading
from pathlib import Path
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
    assert histogram._buckets is not None and len(histogram._buckets) < 700


def test_a_slow_streams_histogram_keeps_bucket_numbers_not_dict_entries() -> None:
    # Hundreds of slow streams at once (issue 17): each read time falls in a
    # bucket of its own, and a dict entry with its int key costs ~60 bytes.
    histogram = Histogram()
    values = [0.0001 * 1.05 ** i for i in range(300)]  # 300 values, 300 distinct buckets
    for value in values:
        histogram.add(value)
    histogram.fold()
    assert not histogram._buckets
    assert histogram._keys is not None and sys.getsizeof(histogram._keys) < 2 * 1024
    summary = histogram.summary()
    assert summary.count == 300
    for q, got in ((0.5, summary.p50), (0.9, summary.p90), (0.99, summary.p99)):
        want = exact_quantile(values, q)
        assert got is not None and abs(got - want) <= 0.02 * want, (q, got, want)
    # Past KEYS_KEPT the bucket numbers are counted into the dict: same answers.
    for value in values * 4:
        histogram.add(value)
    histogram.fold()
    assert histogram._buckets and (histogram._keys is None or len(histogram._keys) < 1024)
    assert histogram.summary().count == 1500
    assert histogram.quantile(0.5) == summary.p50


def test_a_snapshot_taken_while_bucket_numbers_are_counted_never_counts_a_value_twice(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The caller's thread may read .metrics while the body's thread folds: a
    # snapshot may miss the values being folded, never count them twice.
    import llmstream._histogram as module

    histogram = Histogram()
    real = module._count_elements
    seen: List[int] = []

    def count_and_peek(buckets: Any, keys: Any) -> None:
        if getattr(count_and_peek, "busy", False):
            real(buckets, keys)
            return
        count_and_peek.busy = True  # type: ignore[attr-defined]
        try:
            seen.append(sum(n for _, n in histogram.buckets()))  # a reader just before the count
            real(buckets, keys)
            seen.append(sum(n for _, n in histogram.buckets()))  # and just after it
        finally:
            count_and_peek.busy = False  # type: ignore[attr-defined]

    monkeypatch.setattr(module, "_count_elements", count_and_peek)
    for i in range(1, 1100):
        histogram.add(i * 1e-3)
        assert all(n <= i for n in seen), (i, seen)
    assert seen and max(seen) <= 1099


# -- per-stream metrics ----------------------------------------------------------------------


def test_metrics_of_a_paced_stream(server: FakeLLMServer) -> None:
    server.script(Reply(text=DEFAULT_TEXT, interval=0.02, usage=(7, 21)))
    result = client_for(server).complete("q", model="m")
    m = result.metrics
    assert m.output_tokens == 21 and m.tokens == 21
    assert m.text_deltas == len([t for t in DEFAULT_TEXT.split(" ")])
    assert m.time_to_first_token is not None and 0 < m.time_to_first_token < m.duration
    gaps = m.chunk_gap
    # One gap per read that brought content, after the first; the server waits 20 ms between writes.
    assert 1 <= gaps.count <= m.text_deltas
    assert gaps.p50 is not None and gaps.p99 is not None and gaps.max is not None
    assert 0.018 <= gaps.p50 <= gaps.p99 <= gaps.max
    assert m.generation_time == pytest.approx(gaps.total)
    assert m.tokens_per_second == pytest.approx(21 / (gaps.total + gaps.total / gaps.count))
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
    # The server writes every 5 ms; the caller takes 200 ms per piece with a
    # queue of one event, so the worker is blocked most of the time while the
    # server keeps writing: the gaps it measures must be the server's, not 200 ms.
    # (The bound is half the caller's pace, not the server's 5 ms: on a loaded
    # machine a read can wait tens of ms for the CPU; that is not under test.)
    caller = 0.2
    server.script(Reply(token_count=8, interval=0.005))
    gate = threading.Event()
    with client_for(server, max_buffered=1).stream("q", model="m") as s:
        for _ in s:
            gate.wait(caller)
    gaps = s.metrics.chunk_gap
    assert gaps.max is not None and gaps.max < caller / 2, gaps


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


# -- honest metrics (issue 14, item 4) ---------------------------------------------------------


def test_an_answer_in_one_read_has_no_gap_and_no_rate(server: FakeLLMServer) -> None:
    # One content piece: whatever the reads, there is no gap between content reads.
    server.script(Reply(tokens=["The whole answer at once."]))
    m = client_for(server).complete("q", model="m").metrics
    assert m.chunk_gap == Distribution() and not m.chunk_gap
    assert m.chunk_gap.p50 is None and m.inter_token_gap is m.chunk_gap  # the former name still answers
    assert m.generation_time is None
    assert m.tokens_per_second is None
    assert m.time_to_first_token is not None


def test_a_rate_over_a_window_too_short_to_mean_anything_is_not_reported(server: FakeLLMServer) -> None:
    # 18 pieces in 18 writes with no pause: several reads, but within a few milliseconds.
    server.script(Reply(interval=0))
    m = client_for(server).complete("q", model="m").metrics
    assert m.generation_time is None or m.generation_time < 0.05
    assert m.tokens_per_second is None


def test_the_rate_of_an_evenly_paced_stream_is_its_pace() -> None:
    # N pieces in N reads at interval t: 1/t, not N/(N-1)/t nor a rate diluted by the end of the stream.
    m = llmstream.StreamMetrics(text_deltas=10, time_to_first_token=0.5, duration=5.0,
                                chunk_gap=Distribution(count=9, total=0.9, min=0.1, p50=0.1, p90=0.1, p99=0.1, max=0.1))
    assert m.tokens_per_second == pytest.approx(10.0)
    assert llmstream.StreamMetrics(text_deltas=3, chunk_gap=Distribution(count=2, total=0.049)).tokens_per_second is None
    assert llmstream.StreamMetrics(text_deltas=3, chunk_gap=Distribution(count=2, total=0.05)).tokens_per_second == \
        pytest.approx(3 / 0.075)


def readme_metrics_example() -> str:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("```python\n", readme.index("## Metrics and monitoring")) + len("```python\n")
    return readme[start:readme.index("```", start)]


@pytest.mark.parametrize("reply, expected", [
    (Reply(tokens=["All at once."]), r"first token after \d+ ms, 1 tokens\n1 attempt\(s\), errors: \(\)\n"),
    (Reply(interval=0.01), r"first token after \d+ ms, 18 tokens\ngenerated at \d+ tokens/s\n"
                           r"gap between chunks: p50 \d+\.\d ms, p99 \d+\.\d ms, max \d+\.\d ms\n1 attempt\(s\), errors: \(\)\n"),
])
def test_the_readme_metrics_example_is_safe_when_the_answer_came_in_one_read(
        server: FakeLLMServer, reply: Reply, expected: str) -> None:
    code = readme_metrics_example()
    assert "m.chunk_gap" in code
    server.script(reply)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OPENAI_BASE_URL": server.base_url("openai"), "OPENAI_API_KEY": "test",
           "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=env, cwd=root)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(expected, done.stdout), done.stdout
