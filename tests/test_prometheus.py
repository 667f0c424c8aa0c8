"""The Prometheus exporter: real streams against the fake server, values read back from a fresh registry.

Isolation: the monitor is process-wide, so every test installs the exporter
into its own ``CollectorRegistry`` and reads only series labelled with its own
model name (or its own server's base URL); the process-wide gauges are read as
deltas. Timing: a worker reports its stream to the monitor *before* it marks
the queue ended, so once a stream has finished or failed for the caller its
report is recorded; a closed stream is recorded once its worker thread has
ended, which the tests await with a bounded join.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, Iterator, Optional

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from llmstream import AuthenticationError, CircuitBreaker, Client, Retry, ServerError, StreamMetrics
from llmstream.prometheus import CIRCUIT_STATES, OTHER_MODEL, Exporter, install
from llmstream.testing import FakeLLMServer, Reply

from conftest import wait_no_worker_threads

NO_RETRY = Retry(max_attempts=1)
TEXT = "one two three four five"
#: ``TEXT`` as the fake server splits it: five tokens, and by default usage reports five output tokens.
TEXT_TOKENS = 5


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    exp = install(CollectorRegistry())
    yield exp
    exp.uninstall()


def client_for(server: FakeLLMServer, provider: str = "openai", **kwargs: Any) -> Client:
    return Client(provider, base_url=server.base_url(provider), api_key="sk-test-secret-key", **kwargs)


def value(exporter: Exporter, name: str, **labels: str) -> Optional[float]:
    return exporter.registry.get_sample_value(name, labels)


def run(client: Client, model: str, **kwargs: Any) -> StreamMetrics:
    """Stream to the end; return the metrics the monitor reported."""
    with client.stream("hi", model=model, **kwargs) as s:
        return s.result.metrics


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a condition that no event announces, with a bound."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# -- counters ------------------------------------------------------------------------------------


def test_finished_streams_are_counted_per_provider(server: FakeLLMServer, exporter: Exporter) -> None:
    counts = {"openai": 2, "openai-responses": 1, "anthropic": 3, "ollama": 1}
    received: Dict[str, int] = {}
    for provider, n in counts.items():
        server.script(*[Reply(text=TEXT)] * n)
        client = client_for(server, provider, retry=NO_RETRY)
        received[provider] = sum(run(client, "m-finished").bytes_received for _ in range(n))
    for provider, n in counts.items():
        labels = {"provider": provider, "model": "m-finished"}
        assert value(exporter, "llmstream_streams_total", outcome="finished", **labels) == n
        assert value(exporter, "llmstream_streams_total", outcome="failed", **labels) is None
        assert value(exporter, "llmstream_attempts_total", **labels) == n
        assert value(exporter, "llmstream_output_tokens_total", **labels) == n * TEXT_TOKENS
        assert value(exporter, "llmstream_received_bytes_total", **labels) == received[provider]
        assert value(exporter, "llmstream_stream_duration_seconds_count", outcome="finished", **labels) == n


def test_a_failed_stream_is_counted_with_its_error_type(server: FakeLLMServer, exporter: Exporter) -> None:
    server.script(Reply(status=401, error="bad key"))
    with client_for(server, retry=NO_RETRY).stream("hi", model="m-401") as s:
        with pytest.raises(AuthenticationError):
            s.result
    labels = {"provider": "openai", "model": "m-401"}
    assert value(exporter, "llmstream_streams_total", outcome="failed", **labels) == 1
    assert value(exporter, "llmstream_stream_errors_total", error="AuthenticationError", **labels) == 1
    assert value(exporter, "llmstream_attempts_total", **labels) == 1
    assert value(exporter, "llmstream_retries_total", error="AuthenticationError", **labels) is None
    # No content arrived: no time to first token, no speed, and the duration under outcome="failed".
    assert value(exporter, "llmstream_time_to_first_token_seconds_count", **labels) is None
    assert value(exporter, "llmstream_tokens_per_second_count", **labels) is None
    assert value(exporter, "llmstream_stream_duration_seconds_count", outcome="failed", **labels) == 1


def test_a_retried_stream_counts_its_retry_and_attempts(server: FakeLLMServer, exporter: Exporter) -> None:
    server.script(Reply(status=503), Reply(text=TEXT))
    metrics = run(client_for(server, retry=Retry(max_attempts=2, initial_delay=0)), "m-retried")
    assert (metrics.attempts, metrics.errors) == (2, ("ServerError",))
    labels = {"provider": "openai", "model": "m-retried"}
    assert value(exporter, "llmstream_retries_total", error="ServerError", **labels) == 1
    assert value(exporter, "llmstream_attempts_total", **labels) == 2
    assert value(exporter, "llmstream_streams_total", outcome="finished", **labels) == 1
    assert value(exporter, "llmstream_stream_errors_total", error="ServerError", **labels) is None


def test_a_stream_closed_by_the_caller_is_counted_closed(server: FakeLLMServer, exporter: Exporter) -> None:
    server.script(Reply(text=TEXT, stall_after_tokens=(1, 30.0)))
    s = client_for(server, retry=NO_RETRY).stream("hi", model="m-closed")
    pieces = iter(s)  # held: dropping an unfinished iterator would close the stream itself
    assert next(pieces) == "one"
    s.close()
    assert wait_no_worker_threads() == []  # the worker reports before it ends
    labels = {"provider": "openai", "model": "m-closed"}
    assert value(exporter, "llmstream_streams_total", outcome="closed", **labels) == 1
    assert value(exporter, "llmstream_streams_total", outcome="finished", **labels) is None
    assert value(exporter, "llmstream_stream_errors_total", error="Cancelled", **labels) is None
    assert value(exporter, "llmstream_stream_duration_seconds_count", outcome="closed", **labels) == 1
    assert value(exporter, "llmstream_time_to_first_token_seconds_count", **labels) == 1


# -- histograms ----------------------------------------------------------------------------------


def test_histograms_observe_the_stream_metrics(server: FakeLLMServer, exporter: Exporter) -> None:
    # Paced writes, so the content arrives in several reads and there are gaps to measure.
    server.script(Reply(text=TEXT, interval=0.02))
    m = run(client_for(server, retry=NO_RETRY), "m-hist")
    assert m.time_to_first_token is not None and m.tokens_per_second is not None
    assert m.chunk_gap.count >= 1 and m.chunk_gap.p50 is not None and m.chunk_gap.max is not None
    labels = {"provider": "openai", "model": "m-hist"}
    expected = {
        "llmstream_time_to_first_token_seconds": m.time_to_first_token,
        "llmstream_chunk_gap_seconds": m.chunk_gap.p50,
        "llmstream_chunk_gap_max_seconds": m.chunk_gap.max,
        "llmstream_tokens_per_second": m.tokens_per_second,
    }
    for name, observed in expected.items():
        observations = (value(exporter, f"{name}_count", **labels), value(exporter, f"{name}_sum", **labels))
        assert observations == (1, observed), name
    duration = "llmstream_stream_duration_seconds"
    assert value(exporter, f"{duration}_count", outcome="finished", **labels) == 1
    assert value(exporter, f"{duration}_sum", outcome="finished", **labels) == m.duration


def test_histogram_buckets_are_cumulative_and_end_at_inf(server: FakeLLMServer, exporter: Exporter) -> None:
    server.script(Reply(text=TEXT))
    m = run(client_for(server, retry=NO_RETRY), "m-buckets")
    assert m.time_to_first_token is not None
    labels = {"provider": "openai", "model": "m-buckets"}
    name = "llmstream_time_to_first_token_seconds_bucket"
    assert value(exporter, name, le="+Inf", **labels) == 1
    assert value(exporter, name, le="60.0", **labels) == 1
    assert value(exporter, name, le="0.05", **labels) == (1 if m.time_to_first_token <= 0.05 else 0)


# -- scrape-time gauges --------------------------------------------------------------------------


def test_active_gauge_counts_a_stream_in_flight(server: FakeLLMServer, exporter: Exporter) -> None:
    before = value(exporter, "llmstream_active_streams")
    assert before is not None
    server.script(Reply(text=TEXT, stall_after_tokens=(1, 30.0)))
    s = client_for(server, retry=NO_RETRY).stream("hi", model="m-active")
    pieces = iter(s)  # held: dropping an unfinished iterator would close the stream
    assert next(pieces) == "one"  # the worker counted itself active before its request
    assert value(exporter, "llmstream_active_streams") == before + 1
    s.close()
    assert wait_no_worker_threads() == []
    assert value(exporter, "llmstream_active_streams") == before


def test_waiting_gauge_counts_a_stream_waiting_for_a_slot(server: FakeLLMServer, exporter: Exporter) -> None:
    before = value(exporter, "llmstream_waiting_streams")
    assert before is not None
    server.script(Reply(text=TEXT, stall_after_tokens=(1, 30.0)))
    client = client_for(server, retry=NO_RETRY, max_concurrent=1)
    first = client.stream("hi", model="m-waiting")
    pieces = iter(first)  # held: dropping an unfinished iterator would close the stream
    assert next(pieces) == "one"  # holds the only slot
    second = client.stream("hi", model="m-waiting")
    try:
        # The second worker starts waiting in its own thread; nothing announces it.
        wait_until(lambda: value(exporter, "llmstream_waiting_streams") == before + 1)
    finally:
        second.close()
        first.close()
    assert wait_no_worker_threads() == []
    assert value(exporter, "llmstream_waiting_streams") == before


def test_circuit_breaker_state_is_a_state_set(server: FakeLLMServer, exporter: Exporter) -> None:
    server.script(Reply(status=503))
    client = client_for(server, retry=NO_RETRY, circuit_breaker=CircuitBreaker(failure_threshold=1, cooldown=60))
    base_url = server.base_url("openai")
    state = "llmstream_circuit_breaker_state"
    assert {s: value(exporter, state, base_url=base_url, state=s) for s in CIRCUIT_STATES} == {
        "closed": 1, "half-open": 0, "open": 0}
    with client.stream("hi", model="m-circuit") as s:
        with pytest.raises(ServerError):
            s.result
    assert {s: value(exporter, state, base_url=base_url, state=s) for s in CIRCUIT_STATES} == {
        "closed": 0, "half-open": 0, "open": 1}


def test_no_label_holds_a_key_or_url_credentials(server: FakeLLMServer, exporter: Exporter) -> None:
    url = f"http://user:url-secret@127.0.0.1:{server.port}/v1"
    client = Client("openai", base_url=url, api_key="sk-api-secret", retry=NO_RETRY, circuit_breaker=True)
    server.script(Reply(text=TEXT))
    run(client, "m-secret")
    exposition = generate_latest(exporter.registry).decode()
    assert f'base_url="http://127.0.0.1:{server.port}/v1",state="closed"}} 1.0' in exposition
    assert 'llmstream_streams_total{model="m-secret",outcome="finished",provider="openai"} 1.0' in exposition
    assert [word for word in ("secret", "user") if word in exposition.replace("m-secret", "")] == []


# -- install / uninstall -------------------------------------------------------------------------


def test_install_is_idempotent_per_registry_and_namespace(server: FakeLLMServer, exporter: Exporter) -> None:
    assert install(exporter.registry) is exporter
    other = install(exporter.registry, namespace="app_llm")
    try:
        assert other is not exporter
        server.script(Reply(text=TEXT))
        run(client_for(server, retry=NO_RETRY), "m-twice")
        labels = {"provider": "openai", "model": "m-twice", "outcome": "finished"}
        assert value(exporter, "llmstream_streams_total", **labels) == 1
        assert value(other, "app_llm_streams_total", **labels) == 1
    finally:
        other.uninstall()


def test_install_refuses_other_options_for_an_installed_registry(exporter: Exporter) -> None:
    with pytest.raises(ValueError, match=r"^llmstream.prometheus is already installed in this registry with "
                                         r"max_models=50; uninstall\(\) it first to change it$"):
        install(exporter.registry, max_models=3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"namespace": "llm-stream"}, "namespace must match [a-zA-Z_][a-zA-Z0-9_]*, got 'llm-stream'",
                     id="dash-in-namespace"),
        pytest.param({"namespace": ""}, "namespace must match [a-zA-Z_][a-zA-Z0-9_]*, got ''", id="empty-namespace"),
        pytest.param({"max_models": -1}, "max_models must be an int >= 0, got -1", id="negative-max-models"),
        pytest.param({"max_models": True}, "max_models must be an int >= 0, got True", id="bool-max-models"),
    ],
)
def test_install_validates_its_arguments(kwargs: Dict[str, Any], message: str) -> None:
    registry = CollectorRegistry()
    with pytest.raises(ValueError) as info:
        install(registry, **kwargs)
    assert str(info.value) == message
    assert list(registry.collect()) == []


def test_a_name_clash_registers_nothing(server: FakeLLMServer) -> None:
    registry = CollectorRegistry()
    Counter("llmstream_retries", "taken by the application", registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        install(registry)
    assert [metric.name for metric in registry.collect()] == ["llmstream_retries"]
    exporter = install(registry, namespace="llm")  # the failed install left nothing behind
    exporter.uninstall()


def test_uninstall_unregisters_and_stops_recording(server: FakeLLMServer) -> None:
    registry = CollectorRegistry()
    exporter = install(registry)
    exporter.uninstall()
    exporter.uninstall()  # idempotent
    assert (exporter.installed, list(registry.collect())) == (False, [])
    server.script(Reply(text=TEXT))
    run(client_for(server, retry=NO_RETRY), "m-gone")
    again = install(registry)
    try:
        assert again is not exporter
        assert value(again, "llmstream_streams_total", provider="openai", model="m-gone", outcome="finished") is None
    finally:
        again.uninstall()


def test_models_past_max_models_are_counted_as_other(server: FakeLLMServer, caplog: pytest.LogCaptureFixture) -> None:
    exporter = install(CollectorRegistry(), max_models=1)
    try:
        server.script(*[Reply(text=TEXT)] * 4)
        client = client_for(server, retry=NO_RETRY)
        with caplog.at_level(logging.WARNING, logger="llmstream"):
            for model in ("m-first", "m-second", "m-third", "m-first"):
                run(client, model)
        labels = {"provider": "openai", "outcome": "finished"}
        assert value(exporter, "llmstream_streams_total", model="m-first", **labels) == 2
        assert value(exporter, "llmstream_streams_total", model=OTHER_MODEL, **labels) == 2
        assert value(exporter, "llmstream_streams_total", model="m-second", **labels) is None
    finally:
        exporter.uninstall()
    assert [r.getMessage() for r in caplog.records if r.name == "llmstream" and r.levelno == logging.WARNING] == [
        "llmstream.prometheus: more than 1 models; further ones are counted as model='other'"]
