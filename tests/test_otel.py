"""llmstream.otel: GenAI spans and metrics, read from the OpenTelemetry SDK's in-memory exporters after real streams."""

from __future__ import annotations

import json
from typing import Any, Dict, Iterator, List

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

import llmstream  # noqa: E402
import llmstream.otel  # noqa: E402
from llmstream.testing import DEFAULT_TEXT, FakeLLMServer, Reply  # noqa: E402

NOW = dict(retry=llmstream.Retry(max_attempts=3, initial_delay=0.0, max_delay=0.0))


class Telemetry:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def finished(self) -> List[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def stream_span(self) -> ReadableSpan:
        found = [s for s in self.finished() if s.kind == trace.SpanKind.CLIENT]
        assert len(found) == 1, [s.name for s in self.finished()]
        return found[0]

    def attempt_spans(self) -> List[ReadableSpan]:
        return sorted((s for s in self.finished() if s.name == "llmstream.attempt"),
                      key=lambda s: s.attributes["llmstream.attempt.number"])

    def metrics(self) -> Dict[str, Any]:
        """name -> (unit, [(attributes, data point)])."""
        data = self.reader.get_metrics_data()
        found: Dict[str, Any] = {}
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found[metric.name] = (metric.unit, [(dict(p.attributes), p) for p in metric.data.data_points])
        return found


@pytest.fixture
def otel(monkeypatch: pytest.MonkeyPatch) -> Iterator[Telemetry]:
    monkeypatch.delenv("OTEL_SEMCONV_STABILITY_OPT_IN", raising=False)
    monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", raising=False)
    t = Telemetry()
    inst = llmstream.otel.install(t.tracer_provider, t.meter_provider)
    yield t
    inst.uninstall()
    t.tracer_provider.shutdown()
    t.meter_provider.shutdown()


def client(server: FakeLLMServer, provider: str = "openai", **kwargs: Any) -> llmstream.Client:
    return llmstream.Client(provider, base_url=server.base_url(provider), api_key="sk-test", **kwargs)


def test_success_span_has_the_genai_attributes(otel: Telemetry, server: FakeLLMServer) -> None:
    server.script(Reply(usage=(12, 18)))
    result = client(server).complete("Hi", model="gpt-4o-mini", max_tokens=50, temperature=0.5)
    assert result.text == DEFAULT_TEXT
    span = otel.stream_span()
    assert span.name == "chat gpt-4o-mini"
    a = dict(span.attributes)
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "gpt-4o-mini"
    assert a["gen_ai.request.stream"] is True
    assert a["gen_ai.request.max_tokens"] == 50
    assert a["gen_ai.request.temperature"] == 0.5
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    assert a["gen_ai.usage.input_tokens"] == 12
    assert a["gen_ai.usage.output_tokens"] == 18
    assert a["gen_ai.response.time_to_first_chunk"] == pytest.approx(result.metrics.time_to_first_token)
    assert a["server.address"] == "127.0.0.1"
    assert a["server.port"] == server.port
    assert a["llmstream.outcome"] == "finished"
    assert isinstance(a["gen_ai.response.id"], str) and a["gen_ai.response.id"]
    assert a["gen_ai.response.model"]
    assert "error.type" not in a
    assert "gen_ai.input.messages" not in a and "gen_ai.output.messages" not in a  # content is opt-in
    assert span.status.status_code == trace.StatusCode.UNSET
    (attempt,) = otel.attempt_spans()
    assert attempt.parent is not None and attempt.parent.span_id == span.context.span_id
    assert span.start_time <= attempt.start_time <= attempt.end_time <= span.end_time


def test_traceparent_names_the_attempt_span_and_the_callers_span_is_the_parent(
        otel: Telemetry, server: FakeLLMServer) -> None:
    server.script(Reply())
    tracer = otel.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("handle request") as outer:
        client(server).complete("Hi", model="m")
    span = otel.stream_span()
    assert span.parent is not None and span.parent.span_id == outer.get_span_context().span_id
    assert span.context.trace_id == outer.get_span_context().trace_id
    (attempt,) = otel.attempt_spans()
    header = server.requests[0].header("traceparent")
    ctx = attempt.context
    assert header == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    assert int(ctx.trace_flags) & 1  # sampled


def test_propagate_false_sends_no_traceparent(server: FakeLLMServer) -> None:
    t = Telemetry()
    inst = llmstream.otel.install(t.tracer_provider, t.meter_provider, propagate=False)
    try:
        server.script(Reply())
        client(server).complete("Hi", model="m")
    finally:
        inst.uninstall()
    assert server.requests[0].header("traceparent") is None
    assert t.stream_span().name == "chat m"


def test_a_header_the_request_has_is_kept() -> None:
    from llmstream._monitor import merge_headers

    mine = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    merged = merge_headers({"TraceParent": mine, "Authorization": "Bearer k"}, {"traceparent": "00-other-01"})
    assert merged == {"TraceParent": mine, "Authorization": "Bearer k"}
    assert merge_headers({}, {"traceparent": "x"}) == {"traceparent": "x"}


def test_retry_is_an_event_and_each_attempt_a_span(otel: Telemetry, server: FakeLLMServer) -> None:
    server.script(Reply(status=503, headers={"retry-after-ms": "0"}), Reply(usage=(12, 18)))
    result = client(server, **NOW).complete("Hi", model="m")
    assert result.attempts == 2
    span = otel.stream_span()
    first, second = otel.attempt_spans()
    assert first.attributes["error.type"] == "ServerError"
    assert first.status.status_code == trace.StatusCode.ERROR
    assert "error.type" not in second.attributes
    assert dict(span.attributes)["llmstream.attempts"] == 2
    (retry,) = [e for e in span.events if e.name == "llmstream.retry"]
    assert dict(retry.attributes) == {"llmstream.attempt.number": 2, "llmstream.retry.cause": "ServerError",
                                      "llmstream.retry.delay": 0.0, "llmstream.retry.resume": "none"}
    assert first.end_time <= second.start_time
    # each request carried its own attempt's span
    assert server.requests[0].header("traceparent").split("-")[2] == f"{first.context.span_id:016x}"
    assert server.requests[1].header("traceparent").split("-")[2] == f"{second.context.span_id:016x}"


def test_resume_names_its_mode(otel: Telemetry, server: FakeLLMServer) -> None:
    server.script(Reply(close_after_tokens=3), Reply())
    result = client(server, retry=llmstream.Retry(max_attempts=3, initial_delay=0.0, max_delay=0.0,
                                                   resume="replay")).complete("Hi", model="m")
    assert result.text == DEFAULT_TEXT
    first, second = otel.attempt_spans()
    assert first.attributes["error.type"] == "IncompleteStreamError"
    assert second.attributes["llmstream.attempt.resume"] == "replay"
    (retry,) = [e for e in otel.stream_span().events if e.name == "llmstream.retry"]
    assert retry.attributes["llmstream.retry.resume"] == "replay"
    assert retry.attributes["llmstream.retry.cause"] == "IncompleteStreamError"
    # the replayed generation's output was paid twice: the first one's three pieces are wasted
    assert otel.stream_span().attributes["llmstream.usage.wasted_output_tokens"] == 3


def test_reset_is_an_event(otel: Telemetry, server: FakeLLMServer) -> None:
    server.script(Reply(text="Hello there friend", close_after_tokens=2), Reply(text="Goodbye now"))
    with client(server, retry=llmstream.Retry(max_attempts=3, initial_delay=0.0, max_delay=0.0,
                                              resume="replay")).stream("Hi", model="m") as s:
        events = list(s.events())
    assert any(isinstance(e, llmstream.Reset) for e in events)
    (reset,) = [e for e in otel.stream_span().events if e.name == "llmstream.reset"]
    assert dict(reset.attributes) == {"llmstream.attempt.number": 2, "llmstream.reset.discarded_chars": len("Hello there")}


def test_failure_sets_error_type_and_status(otel: Telemetry, server: FakeLLMServer) -> None:
    server.script(Reply(status=404, error="no such model"))
    with pytest.raises(llmstream.NotFoundError):
        client(server).complete("Hi", model="gpt-5-mega")
    span = otel.stream_span()
    assert span.attributes["error.type"] == "NotFoundError"
    assert span.attributes["llmstream.outcome"] == "failed"
    assert span.attributes["gen_ai.response.finish_reasons"] == ("error",)
    assert span.status.status_code == trace.StatusCode.ERROR
    (_, points), = [otel.metrics()["gen_ai.client.operation.duration"]]
    assert [attrs.get("error.type") for attrs, _ in points] == ["NotFoundError"]


def test_cancellation_ends_the_span_as_closed(otel: Telemetry, server: FakeLLMServer) -> None:
    server.script(Reply(token_count=1000, interval=0.01))
    with client(server).stream("Hi", model="m") as s:
        next(iter(s))
    span = otel.stream_span()
    assert span.attributes["llmstream.outcome"] == "closed"
    assert span.attributes["gen_ai.response.finish_reasons"] == ("error",)
    assert "error.type" not in span.attributes
    assert span.status.status_code == trace.StatusCode.UNSET
    (attempt,) = otel.attempt_spans()
    assert "error.type" not in attempt.attributes
    assert span.end_time is not None


def test_metrics_have_the_conventions_names_units_and_buckets(otel: Telemetry, server: FakeLLMServer) -> None:
    server.script(Reply(usage=(12, 18), interval=0.005))  # paced: one chunk per token
    result = client(server).complete("Hi", model="gpt-4o-mini")
    found = otel.metrics()
    assert set(found) == {"gen_ai.client.operation.duration", "gen_ai.client.token.usage",
                          "gen_ai.client.operation.time_to_first_chunk",
                          "gen_ai.client.operation.time_per_output_chunk"}
    unit, [(attrs, point)] = found["gen_ai.client.operation.duration"]
    assert unit == "s"
    assert tuple(point.explicit_bounds) == llmstream.otel.SECONDS_BUCKETS
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == "gpt-4o-mini" and attrs["server.port"] == server.port
    assert point.count == 1 and point.sum == pytest.approx(result.metrics.duration)
    unit, points = found["gen_ai.client.token.usage"]
    assert unit == "{token}"
    assert {a["gen_ai.token.type"]: (p.sum, tuple(p.explicit_bounds)) for a, p in points} == {
        "input": (12, llmstream.otel.TOKEN_BUCKETS), "output": (18, llmstream.otel.TOKEN_BUCKETS)}
    unit, [(attrs, point)] = found["gen_ai.client.operation.time_to_first_chunk"]
    assert unit == "s" and point.count == 1
    unit, [(attrs, point)] = found["gen_ai.client.operation.time_per_output_chunk"]
    # one observation per content-bearing chunk after the first
    assert point.count == result.metrics.inter_token_gap.count > 0
    assert point.sum == pytest.approx(result.metrics.inter_token_gap.total, rel=0.03)


def test_latest_experimental_names(monkeypatch: pytest.MonkeyPatch, server: FakeLLMServer) -> None:
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http, gen_ai_latest_experimental")
    t = Telemetry()
    inst = llmstream.otel.install(t.tracer_provider, t.meter_provider)
    try:
        raw = _sse_with_usage({"prompt_tokens": 100, "completion_tokens": 20,
                               "prompt_tokens_details": {"cached_tokens": 40},
                               "completion_tokens_details": {"reasoning_tokens": 5}})
        server.script(Reply(raw_body=raw, content_type="text/event-stream"), Reply(interval=0.005))
        client(server).complete("Hi", model="m")
        span = t.stream_span()
        client(server).complete("Hi", model="m")  # paced: chunks after the first
    finally:
        inst.uninstall()
    found = t.metrics()
    assert "gen_ai.client.operation.duration" not in found and "gen_ai.client.token.usage" not in found
    sums = {name: sum(p.value for _, p in points)
            for name, (unit, points) in found.items() if name.startswith("gen_ai.client.inference.usage.")}
    assert sums == {"gen_ai.client.inference.usage.input_tokens": 100 + 12,
                    "gen_ai.client.inference.usage.output_tokens": 20 + 18,
                    "gen_ai.client.inference.usage.cache_read.input_tokens": 40,
                    "gen_ai.client.inference.usage.cache_write.input_tokens": 0,
                    "gen_ai.client.inference.usage.reasoning.output_tokens": 5}
    assert found["gen_ai.client.inference.usage.input_tokens"][1][0][0]["gen_ai.token.modality"] == "unknown"
    for name in ("gen_ai.client.inference.duration", "gen_ai.client.inference.time_to_first_chunk",
                 "gen_ai.client.inference.time_per_output_chunk"):
        assert found[name][0] == "s"
    assert sum(p.sum for _, p in found["gen_ai.client.inference.operation.input_tokens"][1]) == 100 + 12
    assert span.attributes["gen_ai.usage.cache_read.input_tokens"] == 40
    assert span.attributes["gen_ai.usage.reasoning.output_tokens"] == 5


def _sse_with_usage(usage: Dict[str, Any]) -> bytes:
    chunks = [
        {"id": "chatcmpl-1", "model": "m-2025", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": "Hi"}}]},
        {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": " there"}}]},
        {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"id": "chatcmpl-1", "choices": [], "usage": usage},
    ]
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks).encode() + b"data: [DONE]\n\n"


def test_content_only_on_opt_in(server: FakeLLMServer) -> None:
    t = Telemetry()
    inst = llmstream.otel.install(t.tracer_provider, t.meter_provider, capture_content=True)
    try:
        server.script(Reply(text="Bonjour"))
        client(server, retry=1).complete("Salut", model="m", system="Be brief")
    finally:
        inst.uninstall()
    a = t.stream_span().attributes
    assert json.loads(a["gen_ai.input.messages"]) == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief"}]},
        {"role": "user", "parts": [{"type": "text", "content": "Salut"}]}]
    assert json.loads(a["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "Bonjour"}], "finish_reason": "stop"}]


def test_anthropic_system_goes_to_system_instructions(server: FakeLLMServer) -> None:
    t = Telemetry()
    inst = llmstream.otel.install(t.tracer_provider, t.meter_provider, capture_content=True)
    try:
        server.script(Reply(text="Hi"))
        client(server, "anthropic").complete("Salut", model="claude-x", system="Be brief")
    finally:
        inst.uninstall()
    a = t.stream_span().attributes
    assert a["gen_ai.provider.name"] == "anthropic"
    assert json.loads(a["gen_ai.system_instructions"]) == [{"type": "text", "content": "Be brief"}]
    assert a["gen_ai.response.model"] and a["gen_ai.response.id"]


@pytest.mark.parametrize("provider, url, expected", [
    ("openai", "https://api.openai.com/v1/chat/completions", "openai"),
    ("openai", "https://myres.openai.azure.com/openai/deployments/x/chat/completions", "azure.ai.openai"),
    ("openai", "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions", "gcp.gemini"),
    ("openai", "https://us-central1-aiplatform.googleapis.com/v1/x", "gcp.vertex_ai"),
    ("openai", "https://api.groq.com/openai/v1/chat/completions", "groq"),
    ("openai-responses", "https://api.openai.com/v1/responses", "openai"),
    ("anthropic", "https://api.anthropic.com/v1/messages", "anthropic"),
    ("ollama", "http://localhost:11434/api/chat", "ollama"),
])
def test_provider_names_as_the_conventions_spell_them(provider: str, url: str, expected: str) -> None:
    assert llmstream.otel.provider_name(provider, url) == expected


def test_uninstall_stops_tracing(server: FakeLLMServer) -> None:
    t = Telemetry()
    llmstream.otel.install(t.tracer_provider, t.meter_provider)
    llmstream.otel.uninstall()
    assert not llmstream.monitor.observing
    server.script(Reply())
    client(server).complete("Hi", model="m")
    assert t.finished() == [] and server.requests[0].header("traceparent") is None


def test_install_again_replaces(server: FakeLLMServer) -> None:
    first, second = Telemetry(), Telemetry()
    a = llmstream.otel.install(first.tracer_provider, first.meter_provider)
    b = llmstream.otel.install(second.tracer_provider, second.meter_provider)
    try:
        assert not a.installed and b.installed
        server.script(Reply())
        client(server).complete("Hi", model="m")
    finally:
        b.uninstall()
    assert first.finished() == [] and len(second.finished()) == 2


def test_a_broken_observer_never_breaks_a_stream(server: FakeLLMServer, caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        wants_text = False

        def attempt_started(self, number: int, resume: Any) -> Dict[str, str]:
            raise RuntimeError("observer bug")

        def stream_ended(self, report: Any, gaps: Any, text: Any) -> None:
            raise RuntimeError("observer bug")

    remove = llmstream.monitor.observe(lambda start: Broken())
    try:
        server.script(Reply())
        assert client(server).complete("Hi", model="m").text == DEFAULT_TEXT
    finally:
        remove()
    logged = [r for r in caplog.records if r.getMessage().startswith("llmstream observer")]
    assert [str(r.exc_info[1]) for r in logged if r.exc_info] == ["observer bug", "observer bug"]


def test_chunk_observations_are_capped_keeping_the_distribution(otel: Telemetry, monkeypatch: pytest.MonkeyPatch,
                                                                 server: FakeLLMServer) -> None:
    monkeypatch.setattr(llmstream.otel, "MAX_CHUNK_OBSERVATIONS", 10)
    server.script(Reply(token_count=300, interval=0.001))
    result = client(server).complete("Hi", model="m")
    gaps = result.metrics.inter_token_gap.count
    assert gaps > 100
    unit, [(attrs, point)] = otel.metrics()["gen_ai.client.operation.time_per_output_chunk"]
    # scaled down (each distinct 2% bucket keeps at least one observation)
    assert 10 <= point.count < gaps
    assert point.min >= result.metrics.inter_token_gap.min * 0.97


def test_without_an_sdk_nothing_is_sent_and_streams_work(server: FakeLLMServer) -> None:
    # The global providers are OpenTelemetry's no-op ones until an application sets an SDK.
    inst = llmstream.otel.install()
    try:
        server.script(Reply())
        assert client(server).complete("Hi", model="m").text == DEFAULT_TEXT
    finally:
        inst.uninstall()
    assert server.requests[0].header("traceparent") is None


def test_a_circuit_open_stream_has_a_span_and_no_attempt(otel: Telemetry, server: FakeLLMServer) -> None:
    # Refused before any request: the span still ends, as failed, with no attempt span and no request.
    c = client(server, circuit_breaker=llmstream.CircuitBreaker(failure_threshold=1, cooldown=60.0))
    server.script(Reply(status=500))
    with pytest.raises(llmstream.ServerError):
        c.complete("Hi", model="m", retry=1)
    otel.spans.clear()
    with pytest.raises(llmstream.CircuitOpenError):
        c.complete("Hi", model="m", retry=1)
    span = otel.stream_span()
    assert span.attributes["error.type"] == "CircuitOpenError" and otel.attempt_spans() == []
    assert len(server.requests) == 1
