"""Cost: a Pricing table, result.cost over every attempt, wasted tokens apart, "at least" for cut streams."""

from __future__ import annotations

import json
from typing import Any, Dict, List

import pytest

import llmstream
from llmstream import Price, Pricing
from llmstream._cost import token_counts
from llmstream.testing import FakeLLMServer, Reply

TOKENS = ["The", " capital", " of", " France", " is", " Paris", "."]
TEXT = "".join(TOKENS)
M = 1_000_000
PRICES = Pricing({"m": Price(input=1.0, output=2.0, cached_input=0.5, reasoning=4.0)})


def client(server: FakeLLMServer, provider: str = "openai", resume: str = "auto", **kw: Any) -> llmstream.Client:
    return llmstream.Client(provider, base_url=server.base_url(provider), api_key="sk-test", pricing=PRICES,
                            retry=llmstream.Retry(max_attempts=3, initial_delay=0.0, max_delay=0.0, resume=resume),
                            **kw)


def test_cost_of_a_clean_stream(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=TOKENS, usage=(12, 7)))
    result = client(server).complete("q", model="m")
    assert result.cost == llmstream.Cost(total=12 * 1.0 / M + 7 * 2.0 / M, input=12 / M, output=14 / M, model="m")
    assert result.metrics.wasted_output_tokens == 0


def test_no_pricing_no_cost(server: FakeLLMServer) -> None:
    server.script(Reply(), Reply())
    plain = llmstream.Client("openai", base_url=server.base_url("openai"), api_key="k")
    assert plain.complete("q", model="m").cost is None
    assert client(server).complete("q", model="not-priced").cost is None


def _chat_sse(usage: Dict[str, Any], texts: List[str]) -> bytes:
    chunks: List[Dict[str, Any]] = [{"id": "c1", "model": "m-2025", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    chunks += [{"id": "c1", "choices": [{"index": 0, "delta": {"content": t}}]} for t in texts]
    chunks += [{"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
               {"id": "c1", "choices": [], "usage": usage}]
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks).encode() + b"data: [DONE]\n\n"


def test_breakdown_with_cached_input_and_reasoning(server: FakeLLMServer) -> None:
    usage = {"prompt_tokens": 1000, "completion_tokens": 300, "prompt_tokens_details": {"cached_tokens": 400},
             "completion_tokens_details": {"reasoning_tokens": 100}}
    server.script(Reply(raw_body=_chat_sse(usage, ["Hi"]), content_type="text/event-stream"))
    cost = client(server).complete("q", model="m").cost
    assert cost is not None
    assert (cost.input, cost.cached_input, cost.output, cost.reasoning) == pytest.approx(
        (600 * 1.0 / M, 400 * 0.5 / M, 200 * 2.0 / M, 100 * 4.0 / M))
    assert cost.total == pytest.approx(cost.input + cost.cached_input + cost.output + cost.reasoning)
    assert not cost.at_least


def test_usage_shapes_are_normalised() -> None:
    anthropic = llmstream.Usage(10, 50, raw={"input_tokens": 10, "output_tokens": 50, "cache_read_input_tokens": 200,
                                             "cache_creation_input_tokens": 30})
    assert token_counts(anthropic)[0] == token_counts(anthropic)[0].__class__(
        input=240, cache_read=200, cache_write=30, output=50, reasoning=0)
    responses = llmstream.Usage(100, 40, raw={"input_tokens_details": {"cached_tokens": 60},
                                              "output_tokens_details": {"reasoning_tokens": 25}})
    counts = token_counts(responses)[0]
    assert (counts.input, counts.cache_read, counts.output, counts.reasoning) == (100, 60, 40, 25)
    hostile = llmstream.Usage(10, 5, raw={"prompt_tokens_details": {"cached_tokens": -3},
                                          "completion_tokens_details": {"reasoning_tokens": 10 ** 15}})
    assert token_counts(hostile)[0] == counts.__class__(input=10, output=5)


def test_the_decoders_usage_fields_are_priced_for_every_provider() -> None:
    # Gemini: promptTokenCount includes the cache, thoughts are billed as output
    # (its decoder adds them to output_tokens); DeepSeek's cache hits have no
    # OpenAI-shaped detail object: the decoders' fields carry them.
    from llmstream._providers import get_provider
    from llmstream._providers._base import StreamDecoder
    gemini = get_provider("gemini")
    decoder = StreamDecoder(gemini.new_decoder(), framing=gemini.framing)
    metadata = {"promptTokenCount": 100, "cachedContentTokenCount": 40, "candidatesTokenCount": 10,
                "thoughtsTokenCount": 30, "totalTokenCount": 140}
    chunk = {"candidates": [{"content": {"parts": [{"text": "Hi"}], "role": "model"}, "finishReason": "STOP",
                             "index": 0}], "usageMetadata": metadata}
    events = decoder.feed(b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n")
    (usage,) = [e for e in events if isinstance(e, llmstream.Usage)]
    assert (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens, usage.reasoning_tokens) == (
        100, 40, 40, 30)
    counts = token_counts(usage)[0]
    assert counts == counts.__class__(input=100, cache_read=40, output=40, reasoning=30)
    deepseek = llmstream.Usage(50, 5, raw={"prompt_cache_hit_tokens": 20}, cached_input_tokens=20)
    assert token_counts(deepseek)[0] == counts.__class__(input=50, cache_read=20, output=5)


def test_anthropic_cache_write_is_priced() -> None:
    from llmstream._cost import Accounting, price
    counts = token_counts(llmstream.Usage(10, 50, raw={"cache_read_input_tokens": 200,
                                                       "cache_creation_input_tokens": 30}))[0]
    table = Pricing({"claude-*": {"input": 3.0, "cached_input": 0.3, "output": 15.0, "cache_write": 3.75}})
    cost = price(table, "claude-sonnet", Accounting(counts, counts.__class__(), False, None))
    assert cost is not None and cost.model == "claude-sonnet"
    assert (cost.input, cost.cached_input, cost.cache_write, cost.output) == pytest.approx(
        (10 * 3.0 / M, 200 * 0.3 / M, 30 * 3.75 / M, 50 * 15.0 / M))


def test_a_refused_attempt_costs_nothing(server: FakeLLMServer) -> None:
    server.script(Reply(status=503, headers={"retry-after-ms": "0"}), Reply(tokens=TOKENS, usage=(12, 7)))
    result = client(server).complete("q", model="m")
    assert result.attempts == 2
    assert result.cost is not None and result.cost.total == pytest.approx(26 / M) and not result.cost.at_least
    assert result.metrics.wasted_output_tokens == 0


def test_a_replay_pays_twice_and_shows_the_waste(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=TOKENS, close_after_tokens=3, event_ids=False), Reply(tokens=TOKENS, usage=(12, 7)))
    result = client(server, resume="replay").complete("q", model="m")
    assert result.text == TEXT
    assert result.metrics.wasted_output_tokens == 3
    cost = result.cost
    assert cost is not None
    # the broken attempt reported no usage: its 3 pieces count, as a lower bound
    assert cost.output == pytest.approx((7 + 3) * 2.0 / M)
    assert cost.wasted == pytest.approx(3 * 2.0 / M)
    assert cost.at_least


def test_a_continuation_wastes_nothing(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=TOKENS, close_after_tokens=3, event_ids=False), Reply(tokens=TOKENS))
    result = client(server, "anthropic", resume="continue").complete("q", model="m")
    assert result.text == TEXT
    assert result.metrics.wasted_output_tokens == 0
    assert result.cost is not None and result.cost.wasted == 0


def test_last_event_id_is_one_answer_counted_once(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=TOKENS, close_after_tokens=3, usage=(12, 7), event_ids=True),
                  Reply(tokens=TOKENS, usage=(12, 7), event_ids=True))
    result = client(server, resume="last-event-id").complete("q", model="m")
    assert result.text == TEXT and result.attempts == 2
    assert result.metrics.wasted_output_tokens == 0
    assert result.cost is not None and result.cost.total == pytest.approx(26 / M) and not result.cost.at_least


def test_close_reports_at_least(server: FakeLLMServer) -> None:
    server.script(Reply(token_count=1000, interval=0.005))
    s = client(server).stream("q", model="m")
    it = iter(s)
    pieces = [next(it) for _ in range(5)]
    s.close()
    assert len(pieces) == 5
    with pytest.raises(llmstream.StreamClosedError):
        s.result
    cost = s.cost
    assert cost is not None and cost.at_least
    assert cost.output >= 5 * 2.0 / M


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_max_output_chars_reports_at_least(server: FakeLLMServer, provider: str) -> None:
    # Anthropic reports usage at message_start (output_tokens 1): a cut answer still counts what it saw.
    server.script(Reply(token_count=1000, interval=0.002))
    result = client(server, provider, max_output_chars=20).complete("q", model="m")
    assert result.finish_reason == "max_output_chars"
    cost = result.cost
    assert cost is not None and cost.at_least
    assert cost.output >= result.metrics.text_deltas * 2.0 / M > 2.0 / M


def test_monitor_and_prometheus_totals(server: FakeLLMServer) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    import llmstream.prometheus

    registry = prometheus_client.CollectorRegistry()
    exporter = llmstream.prometheus.install(registry)
    llmstream.monitor.reset()
    try:
        server.script(Reply(tokens=TOKENS, close_after_tokens=3, event_ids=False), Reply(tokens=TOKENS, usage=(12, 7)))
        result = client(server, resume="replay").complete("q", model="m")
        assert result.cost is not None
        snap = llmstream.monitor.snapshot()
        assert snap.cost == pytest.approx(result.cost.total)
        assert snap.wasted_output_tokens == 3
        labels = {"provider": "openai", "model": "m", "outcome": "finished"}
        assert registry.get_sample_value("llmstream_cost_usd_total", labels) == pytest.approx(result.cost.total)
        assert registry.get_sample_value("llmstream_wasted_output_tokens_total",
                                         {"provider": "openai", "model": "m"}) == 3
    finally:
        exporter.uninstall()


def test_report_carries_the_attempts(server: FakeLLMServer) -> None:
    reports: List[llmstream.StreamReport] = []
    unsubscribe = llmstream.monitor.subscribe(reports.append)
    try:
        server.script(Reply(status=503, headers={"retry-after-ms": "0"}), Reply(tokens=TOKENS, usage=(12, 7)))
        client(server).complete("q", model="m")
    finally:
        unsubscribe()
    (report,) = reports
    first, second = report.attempts
    assert (first.number, first.error, first.usage, first.text_deltas) == (1, "ServerError", None, 0)
    assert (second.number, second.error, second.text_deltas) == (2, None, 7)
    # The fake server reports cached and reasoning tokens (0) as OpenAI does: Usage carries them (issue 12).
    assert second.usage == llmstream.Usage(12, 7, raw=second.usage.raw if second.usage else {}, cached_input_tokens=0, reasoning_tokens=0)
    assert report.finish_reason == "stop" and report.cost == report.cost
    assert first.ended <= second.started


@pytest.mark.parametrize("bad, message", [
    ({"m": {"input": -1.0, "output": 1.0}}, "Price.input must be a finite number >= 0"),
    ({"m": {"input": 1.0, "output": float("inf")}}, "Price.output must be a finite number >= 0"),
    ({"": Price(1.0, 1.0)}, "Pricing keys must be model names"),
])
def test_pricing_is_checked(bad: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Pricing(bad)


def test_pricing_lookup() -> None:
    table = Pricing({"gpt-4o": Price(1, 2), "gpt-4o-mini": Price(3, 4), "gpt-4*": Price(5, 6), "gpt-*": Price(7, 8)})
    assert table.lookup("gpt-4o-mini") == ("gpt-4o-mini", Price(3, 4))
    assert table.lookup("gpt-4.1") == ("gpt-4.1", Price(5, 6))
    assert table.lookup("gpt-5") == ("gpt-5", Price(7, 8))
    assert table.lookup("claude", "gpt-4o") == ("gpt-4o", Price(1, 2))
    assert table.lookup("claude") is None
    assert Price(1, 2) == Price(1, 2, cached_input=1, reasoning=2, cache_write=1)
    with pytest.raises(TypeError):
        llmstream.Client(pricing={"m": Price(1, 2)})  # type: ignore[arg-type]


def test_each_attempt_has_only_its_own_usage(server: FakeLLMServer) -> None:
    # Anthropic reports input tokens at message_start: the broken attempt has usage, the refused one none.
    reports: List[llmstream.StreamReport] = []
    unsubscribe = llmstream.monitor.subscribe(reports.append)
    try:
        server.script(Reply(tokens=TOKENS, close_after_tokens=3, event_ids=False),
                      Reply(status=503, headers={"retry-after-ms": "0"}), Reply(tokens=TOKENS))
        result = client(server, "anthropic", resume="replay").complete("q", model="m")
    finally:
        unsubscribe()
    assert result.text == TEXT
    first, refused, last = reports[0].attempts
    assert first.usage is not None and first.usage.input_tokens == 12 and first.text_deltas == 3
    assert refused.usage is None and refused.error == "ServerError" and refused.resume == "replay"
    assert last.usage is not None and last.resume == "replay"
    assert result.metrics.wasted_output_tokens == 3
