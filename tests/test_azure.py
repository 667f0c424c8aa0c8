"""Azure OpenAI: content filter events on recorded-shape fixtures, request paths and auth, the fake server, AzureOpenAI."""

from __future__ import annotations

from typing import Any, List

import pytest

import llmstream
from helpers import feed_all_ways, load_fixture
from llmstream import ContentFilter, Finish, TextDelta, Usage
from llmstream._exceptions import AuthenticationError, MalformedStreamError, ProviderError
from llmstream._providers import PROVIDERS
from llmstream._providers._base import BearerToken, StreamDecoder
from llmstream.testing import FakeLLMServer, Reply

AZURE = PROVIDERS["azure"]
SAFE = {"filtered": False, "severity": "safe"}
CFR = {"hate": SAFE, "self_harm": SAFE, "sexual": SAFE, "violence": SAFE}
PROMPT = [{"prompt_index": 0, "content_filter_results": {**CFR, "jailbreak": {"filtered": False, "detected": False}}}]


def decode(name: str) -> List[Any]:
    return feed_all_ways(lambda: StreamDecoder(AZURE.new_decoder(), framing=AZURE.framing), load_fixture("azure", name))


def test_prompt_filter_results_first_then_text() -> None:
    assert decode("text.txt") == [
        ContentFilter("prompt", "", False, PROMPT), TextDelta("Hello"), TextDelta(" there"), Finish("stop"),
        Usage(9, 2, {"completion_tokens": 2, "prompt_tokens": 9, "total_tokens": 11}),
    ]


def test_content_filter_mid_stream_gives_the_results_before_the_finish() -> None:
    assert decode("content_filter.txt") == [
        ContentFilter("prompt", "", False, PROMPT), TextDelta("Step one:"),
        ContentFilter("completion", "content_filter", True, {**CFR, "violence": {"filtered": True, "severity": "medium"}}),
        Finish("content_filter"),
    ]


def test_a_filtered_prompt_category_is_blocked() -> None:
    data = (b'data: {"choices": [], "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": '
            b'{"jailbreak": {"filtered": true, "detected": true}}}]}\n\ndata: [DONE]\n\n')
    events = feed_all_ways(lambda: StreamDecoder(AZURE.new_decoder(), framing=AZURE.framing), data)
    assert events[0] == ContentFilter("prompt", "content_filter", True,
                                      [{"prompt_index": 0, "content_filter_results": {"jailbreak": {"filtered": True, "detected": True}}}])


@pytest.mark.parametrize(
    "data, message",
    [(b'data: {"choices": [], "prompt_filter_results": {}}\n\n',
      'Azure OpenAI chunk: expected "prompt_filter_results" to be a list, got object'),
     (b'data: {"choices": [{"index": 0, "delta": {}, "content_filter_results": []}]}\n\n',
      'Azure OpenAI chunk: expected "choices[0].content_filter_results" to be an object, got list')],
)
def test_wrong_filter_shapes_are_malformed(data: bytes, message: str) -> None:
    with pytest.raises(MalformedStreamError) as caught:
        feed_all_ways(lambda: StreamDecoder(AZURE.new_decoder(), framing=AZURE.framing), data)
    assert str(caught.value) == message


# -- requests ---------------------------------------------------------------------------------


def build(base_url: str, api_key: Any = "azkey", **params: Any) -> Any:
    return AZURE.build_request(base_url=base_url, api_key=api_key, model="my-gpt4o", messages=[{"role": "user", "content": "Hi"}],
                               params=params)


def test_classic_deployment_path_with_api_key_header() -> None:
    spec = build("https://res.openai.azure.com/", api_version="2024-10-21", max_tokens=5)
    assert spec.url == "https://res.openai.azure.com/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21"
    assert spec.headers == {"Content-Type": "application/json", "Accept": "text/event-stream", "api-key": "azkey"}
    assert spec.json == {"model": "my-gpt4o", "messages": [{"role": "user", "content": "Hi"}], "stream": True,
                         "stream_options": {"include_usage": True}, "max_tokens": 5}


@pytest.mark.parametrize(
    "base_url, version, url",
    [("https://res.openai.azure.com", "v1", "https://res.openai.azure.com/openai/v1/chat/completions"),
     ("https://res.openai.azure.com", "preview", "https://res.openai.azure.com/openai/v1/chat/completions?api-version=preview"),
     ("https://res.openai.azure.com/openai/v1/", None, "https://res.openai.azure.com/openai/v1/chat/completions")],
)
def test_v1_path(base_url: str, version: Any, url: str) -> None:
    assert build(base_url, api_version=version).url == url


def test_entra_id_token_is_a_bearer() -> None:
    spec = build("https://res.openai.azure.com", api_key=BearerToken("eyJ0"), api_version="2024-10-21")
    assert spec.headers["Authorization"] == "Bearer eyJ0" and "api-key" not in spec.headers


def test_missing_endpoint_or_version() -> None:
    with pytest.raises(ValueError, match="needs an endpoint"):
        build("", api_version="2024-10-21")
    # Without an api version, the v1 API (which needs none).
    assert build("https://res.openai.azure.com").url == "https://res.openai.azure.com/openai/v1/chat/completions"


def test_no_continue_resume_is_replay() -> None:
    assert AZURE.supports_continue is False and AZURE.continue_allowed("https://res.openai.azure.com") is False


def test_environment_as_azure_sdk_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeLLMServer() as server:
        server.script(Reply(text="env ok"), Reply(text="token ok"))
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.base_url("azure"))
        monkeypatch.setenv("AZURE_OPENAI_API_KEY", "az-env-key")
        monkeypatch.setenv("OPENAI_API_VERSION", "2024-10-21")
        assert llmstream.Client("azure").complete("Hi", model="dep-a").text == "env ok"
        request = server.requests[-1]
        assert (request.path, request.query, request.headers["api-key"]) == (
            "/openai/deployments/dep-a/chat/completions", {"api-version": "2024-10-21"}, "az-env-key")
        assert "api_version" not in request.json
        monkeypatch.delenv("AZURE_OPENAI_API_KEY")
        monkeypatch.setenv("AZURE_OPENAI_AD_TOKEN", "entra-token")
        assert llmstream.Client("azure").complete("Hi", model="dep-a").text == "token ok"
        assert server.requests[-1].headers["Authorization"] == "Bearer entra-token"


def test_token_callable_is_called_per_stream() -> None:
    calls: List[int] = []

    def token() -> str:
        calls.append(1)
        return f"tok-{len(calls)}"

    with FakeLLMServer() as server:
        server.script(Reply(text="a"), Reply(text="b"))
        client = llmstream.Client("azure", base_url=server.base_url("azure"), api_key=token)
        for _ in range(2):
            client.complete("Hi", model="dep", api_version="2024-10-21")
        assert [r.headers["Authorization"] for r in server.requests] == ["Bearer tok-1", "Bearer tok-2"]


# -- the fake server ------------------------------------------------------------------------------


def test_fake_server_content_filter_and_faults() -> None:
    with FakeLLMServer() as server:
        server.script(Reply(text="Step one: do it", finish_reason="content_filter"), Reply(status=401, error="bad key"),
                      Reply(text="Hello", error_event_at=1))
        client = llmstream.Client("azure", base_url=server.base_url("azure"), api_key="k")
        with client.stream("Hi", model="dep", api_version="2024-10-21") as s:
            events = list(s.events())
        filters = [e for e in events if isinstance(e, ContentFilter)]
        assert [(f.source, f.blocked) for f in filters] == [("prompt", False), ("completion", True)]
        assert events.index(filters[1]) + 1 == events.index(Finish("content_filter"))
        assert s.result.text == "Step one: do it" and s.result.finish_reason == "content_filter"
        with pytest.raises(AuthenticationError):
            client.complete("Hi", model="dep", api_version="2024-10-21")
        with pytest.raises(ProviderError) as caught:
            client.complete("Hi", model="dep", api_version="2024-10-21", retry=llmstream.Retry(max_attempts=1))
        assert caught.value.partial_text == "Hello"


def test_azure_openai_client_streams_from_the_fake_server() -> None:
    openai = pytest.importorskip("openai")
    with FakeLLMServer() as server:
        server.script(Reply(text="Hello from Azure"), Reply(text="Hi v1"))
        client = openai.AzureOpenAI(azure_endpoint=server.base_url("azure"), api_key="az-key", api_version="2024-10-21")
        chunks = list(client.chat.completions.create(model="my-deployment", messages=[{"role": "user", "content": "Hi"}],
                                                     stream=True, stream_options={"include_usage": True}))
        assert chunks[0].choices == [] and chunks[0].model_extra["prompt_filter_results"][0]["prompt_index"] == 0
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from Azure"
        assert chunks[-1].usage.prompt_tokens == 12
        request = server.requests[0]
        assert (request.path, request.query, request.headers["api-key"]) == (
            "/openai/deployments/my-deployment/chat/completions", {"api-version": "2024-10-21"}, "az-key")
        v1 = openai.OpenAI(base_url=server.base_url("azure") + "/openai/v1/", api_key="az-key")
        text = "".join(c.choices[0].delta.content or "" for c in v1.chat.completions.create(
            model="my-deployment", messages=[{"role": "user", "content": "Hi"}], stream=True) if c.choices)
        assert text == "Hi v1"
        client.close()
        v1.close()
