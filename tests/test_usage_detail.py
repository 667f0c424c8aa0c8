"""Usage in detail: cached input, cache writes and reasoning tokens, normalized across providers, raw kept."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import pytest

import llmstream
from helpers import feed_all_ways, load_fixture
from llmstream._events import Usage
from llmstream._providers import PROVIDERS
from llmstream._providers._base import StreamDecoder
from llmstream.testing import FakeLLMServer, Reply


def last_usage(provider: str, folder: str, name: str) -> Usage:
    spec = PROVIDERS[provider]
    events = feed_all_ways(lambda: StreamDecoder(spec.new_decoder(), framing=spec.framing), load_fixture(folder, name))
    return [e for e in events if isinstance(e, Usage)][-1]


Counts = Tuple[Optional[int], Optional[int], Optional[int], Optional[int], Optional[int]]


@pytest.mark.parametrize(("provider", "folder", "name", "counts"), [
    # (input, output, cached input, cache writes, reasoning), as each provider reports them
    pytest.param("openai", "openai_chat", "usage.txt", (19, 3, 0, None, 0), id="openai"),
    pytest.param("openai", "openai_chat", "deepseek_cache_usage.txt", (1200, 20, 1152, None, 18), id="deepseek"),
    pytest.param("openai", "openai_chat", "groq_x_groq_usage.txt", (36, 3, None, None, None), id="groq"),
    pytest.param("openai-responses", "openai_responses", "reasoning_summary.txt", (13, 75, 0, None, 64), id="responses"),
    pytest.param("anthropic", "anthropic", "redacted_thinking_cache.txt", (21, 74, 12040, 1890, None), id="anthropic-cache"),
    pytest.param("ollama", "ollama", "text.txt", None, id="ollama-no-detail"),
])
def test_usage_normalized(provider: str, folder: str, name: str, counts: Any) -> None:
    usage = last_usage(provider, folder, name)
    got = (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens, usage.cache_write_tokens, usage.reasoning_tokens)
    if counts is None:
        assert got[2:] == (None, None, None)
    else:
        assert got == counts
    assert usage.raw  # the provider's own object, unchanged


def test_usage_keeps_its_old_fields_positionally() -> None:
    usage = Usage(3, 4, {"x": 1})
    assert (usage.input_tokens, usage.output_tokens, usage.raw, usage.total_tokens) == (3, 4, {"x": 1}, 7)
    assert (usage.cached_input_tokens, usage.cache_write_tokens, usage.reasoning_tokens) == (None, None, None)


def test_result_usage_from_the_fake_server(server: FakeLLMServer) -> None:
    server.script(Reply(text="Hi", usage=(12, 1)))
    with llmstream.Client("openai-responses", base_url=server.base_url("openai-responses"), api_key="k") as client:
        usage = client.complete("Hi", model="m").usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens, usage.reasoning_tokens) == (12, 1, 0, 0)
