"""Tests for llmstream._providers.openai_chat: request building and the stream decoder."""

from __future__ import annotations

import json
from typing import Any, Dict, List

import pytest

from helpers import feed_all_ways, load_fixture
from llmstream._events import Finish, TextDelta, ThinkingDelta, ToolCall, ToolCallDelta, Usage
from llmstream._exceptions import IncompleteStreamError, MalformedStreamError, ProviderError
from llmstream._providers._base import RequestSpec, StreamDecoder
from llmstream._providers.openai_chat import OpenAIChatDecoder, OpenAIChatProvider
from llmstream.sse import ServerSentEvent

PROVIDER = OpenAIChatProvider()
USER = {"role": "user", "content": "Hello"}


def make_decoder() -> StreamDecoder:
    return StreamDecoder(PROVIDER.new_decoder(), framing=PROVIDER.framing)


def decode(name: str) -> List[Any]:
    return feed_all_ways(make_decoder, load_fixture("openai_chat", name))


def usage(prompt: int, completion: int) -> Usage:
    raw = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    return Usage(input_tokens=prompt, output_tokens=completion, raw=raw, cached_input_tokens=0, reasoning_tokens=0)


def chunk(delta: Dict[str, Any], finish: Any = None, index: int = 0) -> ServerSentEvent:
    body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}
    return ServerSentEvent(data=json.dumps(body))


# -- recorded streams ---------------------------------------------------------

FIXTURES = [
    pytest.param(
        "happy_text.txt",
        [TextDelta("Ça va"), TextDelta(" — "), TextDelta("日本語"), TextDelta(" 🎉"), Finish("stop")],
        id="happy-non-ascii",
    ),
    pytest.param(
        "usage.txt",
        [TextDelta("Hello"), TextDelta(" 🎉"), Finish("stop"), usage(19, 3)],
        id="usage-chunk-and-escaped-surrogates",
    ),
    pytest.param(
        "tool_calls_parallel.txt",
        [
            ToolCallDelta(0, "call_7JpQm2R4aXbL0eGvN1sT8cKd", "get_weather", ""),
            ToolCallDelta(0, None, None, '{"ci'),
            ToolCallDelta(0, None, None, 'ty": "Par'),
            ToolCallDelta(0, None, None, 'is"}'),
            ToolCallDelta(1, "call_Zq93VwE5hFu2YtBn6oMi4rPx", "get_time", ""),
            ToolCallDelta(1, None, None, '{"tz": '),
            ToolCallDelta(1, None, None, '"Europe/Paris"}'),
            ToolCall(0, "call_7JpQm2R4aXbL0eGvN1sT8cKd", "get_weather", {"city": "Paris"}, '{"city": "Paris"}'),
            ToolCall(1, "call_Zq93VwE5hFu2YtBn6oMi4rPx", "get_time", {"tz": "Europe/Paris"}, '{"tz": "Europe/Paris"}'),
            Finish("tool_calls"),
            usage(82, 51),
        ],
        id="two-parallel-tool-calls",
    ),
    pytest.param(
        "finish_length.txt",
        [TextDelta("Once upon"), TextDelta(" a time"), Finish("length"), usage(12, 4)],
        id="finish-length",
    ),
    pytest.param(
        "tool_call_cut_short.txt",
        [
            ToolCallDelta(0, "call_Kd81nB3vQ0xPzR5tY7uW2mLa", "search", ""),
            ToolCallDelta(0, None, None, '{"query": "llm str'),
            ToolCall(0, "call_Kd81nB3vQ0xPzR5tY7uW2mLa", "search", None, '{"query": "llm str'),
            Finish("length"),
        ],
        id="tool-call-cut-short-arguments-none",
    ),
    pytest.param(
        "finish_no_done.txt",
        [TextDelta("Hello"), Finish("stop")],
        id="finish-reason-without-done-is-complete",
    ),
    pytest.param(
        "no_space.txt",
        [TextDelta("Ça"), TextDelta(" marche"), Finish("stop")],
        id="no-space-after-colon",
    ),
    pytest.param(
        "crlf.txt",
        [TextDelta("line one\n"), TextDelta("line two"), Finish("stop"), usage(5, 6)],
        id="crlf-line-endings",
    ),
    pytest.param(
        "reasoning_content.txt",
        [ThinkingDelta("2+2"), ThinkingDelta(" is 4."), TextDelta("4"), Finish("stop")],
        id="deepseek-reasoning-content-with-comments",
    ),
    pytest.param(
        "reasoning_field.txt",
        [ThinkingDelta("Think"), ThinkingDelta("ing."), TextDelta("Done."), Finish("stop")],
        id="vllm-reasoning-field",
    ),
    pytest.param(
        "two_choices.txt",
        [TextDelta("Yes"), TextDelta("."), Finish("stop")],
        id="n2-only-choice-0",
    ),
    pytest.param(
        "after_done.txt",
        [TextDelta("Hi"), Finish("stop")],
        id="data-after-done-ignored",
    ),
]


@pytest.mark.parametrize("name, expected", FIXTURES)
def test_fixture(name: str, expected: List[Any]) -> None:
    assert decode(name) == expected


@pytest.mark.parametrize(
    "name, error, message",
    [
        pytest.param(
            "error_chunk.txt",
            ProviderError,
            "The server had an error while processing your request. Sorry about that!",
            id="error-chunk",
        ),
        pytest.param(
            "truncated_mid_json.txt",
            IncompleteStreamError,
            "stream ended before [DONE]: the answer may be cut short",
            id="truncated-mid-json",
        ),
        pytest.param(
            "truncated_no_done.txt",
            IncompleteStreamError,
            "stream ended before [DONE]: the answer may be cut short",
            id="truncated-between-events",
        ),
        pytest.param(
            "invalid_json.txt",
            MalformedStreamError,
            "invalid JSON in stream data: "
            + repr(load_fixture("openai_chat", "invalid_json.txt").decode().split("data: ")[3][:80] + "..."),
            id="invalid-json-line",
        ),
    ],
)
def test_fixture_fails(name: str, error: type, message: str) -> None:
    with pytest.raises(error) as info:
        decode(name)
    assert type(info.value) is error
    assert str(info.value) == message


def test_error_chunk_keeps_type_and_text_before_it() -> None:
    decoder = make_decoder()
    data = load_fixture("openai_chat", "error_chunk.txt")
    head, _, tail = data.rpartition(b"data: ")
    assert decoder.feed(head) == [TextDelta("Partial")]
    with pytest.raises(ProviderError) as info:
        decoder.feed(b"data: " + tail)
    assert info.value.type == "server_error"
    assert PROVIDER.is_retryable(info.value)


def test_done_sets_finished_and_finish_reason_alone_does_not() -> None:
    decoder = OpenAIChatDecoder()
    assert decoder.feed(chunk({"content": "a"}, finish="stop")) == [TextDelta("a"), Finish("stop")]
    assert not decoder.finished
    assert decoder.feed(ServerSentEvent(data="[DONE]")) == []
    assert decoder.finished
    assert decoder.feed(chunk({"content": "late"})) == []
    assert decoder.close() == []


def test_close_after_finish_without_done_accepts() -> None:
    decoder = OpenAIChatDecoder()
    decoder.feed(chunk({"content": "a"}, finish="stop"))
    assert decoder.close() == []
    assert decoder.finished
    assert decoder.finish_reason == "stop"


@pytest.mark.parametrize("tail, finished_by_feed", [(b"data: [DONE]\n\n", True), (b"", False)])
def test_stream_decoder_finished_follows_the_provider_decoder(tail: bytes, finished_by_feed: bool) -> None:
    # StreamDecoder.finished is an attribute copied from the provider decoder's
    # after each feed and close (issue 17: no property call per read).
    decoder = StreamDecoder(OpenAIChatDecoder(), framing="sse")
    body = b'data: {"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": "stop"}]}\n\n'
    assert decoder.feed(body) == [TextDelta("a"), Finish("stop")]
    assert not decoder.finished
    decoder.feed(tail)
    assert decoder.finished is finished_by_feed
    assert decoder.close() == []  # a finish reason without [DONE] is accepted at the end
    assert decoder.finished


def test_done_completes_tool_calls_without_finish_reason() -> None:
    decoder = OpenAIChatDecoder()
    first = {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]}
    assert decoder.feed(chunk(first)) == [ToolCallDelta(0, "call_1", "f", '{"a": 1}')]
    assert decoder.feed(ServerSentEvent(data="[DONE]")) == [ToolCall(0, "call_1", "f", {"a": 1}, '{"a": 1}')]


def test_tool_call_with_repeated_id_and_name_and_empty_arguments() -> None:
    # Some compatible servers repeat id and name on every fragment and send
    # "" for a function without parameters.
    decoder = OpenAIChatDecoder()
    fragment = {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "now", "arguments": ""}}]}
    assert decoder.feed(chunk(fragment)) == [ToolCallDelta(0, "c", "now", "")]
    assert decoder.feed(chunk(fragment)) == []
    assert decoder.feed(chunk({}, finish="tool_calls")) == [ToolCall(0, "c", "now", {}, ""), Finish("tool_calls")]


def test_tool_calls_without_index_each_sent_whole() -> None:
    # e.g. Gemini's OpenAI-compatible endpoint: no "index", one fragment per call
    decoder = OpenAIChatDecoder()
    calls = [{"id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
             {"id": "b", "type": "function", "function": {"name": "g", "arguments": {"y": 2}}}]
    assert decoder.feed(chunk({"tool_calls": calls})) == [
        ToolCallDelta(0, "a", "f", '{"x": 1}'),
        ToolCallDelta(1, "b", "g", '{"y": 2}'),
    ]
    assert decoder.feed(chunk({"tool_calls": [{"function": {"arguments": ""}}]})) == []
    assert decoder.feed(chunk({}, finish="tool_calls")) == [
        ToolCall(0, "a", "f", {"x": 1}, '{"x": 1}'),
        ToolCall(1, "b", "g", {"y": 2}, '{"y": 2}'),
        Finish("tool_calls"),
    ]


def test_finish_emitted_once() -> None:
    decoder = OpenAIChatDecoder()
    assert decoder.feed(chunk({}, finish="stop")) == [Finish("stop")]
    assert decoder.feed(chunk({}, finish="stop")) == []


@pytest.mark.parametrize(
    "data",
    [pytest.param("", id="blank"), pytest.param("   ", id="whitespace")],
)
def test_blank_data_is_ignored(data: str) -> None:
    assert OpenAIChatDecoder().feed(ServerSentEvent(data=data)) == []


def test_non_json_on_other_event_type_is_ignored() -> None:
    assert OpenAIChatDecoder().feed(ServerSentEvent(event="ping", data="keep-alive")) == []


def test_plain_text_error_event() -> None:
    with pytest.raises(ProviderError) as info:
        OpenAIChatDecoder().feed(ServerSentEvent(event="error", data="Internal Server Error"))
    assert (str(info.value), info.value.type) == ("Internal Server Error", None)


@pytest.mark.parametrize(
    "data, message",
    [
        pytest.param("[1, 2]", "OpenAI chat chunk: expected an object, got list", id="array"),
        pytest.param(
            '{"choices": [{"delta": {"tool_calls": 3}}]}',
            'OpenAI chat chunk: expected "choices[0].delta.tool_calls" to be a list, got integer',
            id="bad-tool-calls",
        ),
        pytest.param("x" * 100, "invalid JSON in stream data: '" + "x" * 80 + "...'", id="long-garbage-excerpt"),
    ],
)
def test_malformed_chunks(data: str, message: str) -> None:
    with pytest.raises(MalformedStreamError) as info:
        OpenAIChatDecoder().feed(ServerSentEvent(data=data))
    assert str(info.value) == message


def sse_bytes(*data: str) -> bytes:
    return b"".join(b"data: " + d.encode() + b"\n\n" for d in data)


@pytest.mark.parametrize(
    "data, error, message",
    [
        pytest.param("{not json", MalformedStreamError, "invalid JSON in stream data: '{not json'", id="malformed"),
        pytest.param('{"error": {"message": "boom", "type": "server_error"}}', ProviderError, "boom", id="provider-error"),
    ],
)
def test_decoder_stays_failed(data: str, error: type, message: str) -> None:
    decoder = make_decoder()
    with pytest.raises(error):
        decoder.feed(sse_bytes(data))
    ok = json.dumps({"choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": None}]})
    for call in (lambda: decoder.feed(sse_bytes(ok)), lambda: decoder.feed(sse_bytes("[DONE]")), decoder.close):
        with pytest.raises(error) as info:
            call()
        assert type(info.value) is error
        assert str(info.value) == message
    assert not decoder.finished


def test_incomplete_then_stays_failed() -> None:
    decoder = make_decoder()
    decoder.feed(sse_bytes(json.dumps({"choices": [{"index": 0, "delta": {"content": "a"}}]})))
    with pytest.raises(IncompleteStreamError):
        decoder.close()
    with pytest.raises(IncompleteStreamError):
        decoder.feed(sse_bytes("[DONE]"))


def test_hot_path_shapes() -> None:
    decoder = OpenAIChatDecoder()
    # a usage: null key, as with include_usage, keeps the fast path
    with_null_usage = ServerSentEvent(data='{"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}],"usage":null}')
    assert decoder.feed(with_null_usage) == [TextDelta("a")]
    # content null / empty yields nothing
    assert decoder.feed(chunk({"content": None})) == []
    assert decoder.feed(chunk({"content": ""})) == []
    # the fast path must not swallow a finish reason or usage on the same chunk
    both = '{"choices":[{"index":0,"delta":{"content":"b"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2}}'
    assert decoder.feed(ServerSentEvent(data=both)) == [
        TextDelta("b"),
        Finish("stop"),
        Usage(1, 2, {"prompt_tokens": 1, "completion_tokens": 2}),
    ]
    # vLLM's continuous_usage_stats: usage on every content chunk
    running = '{"choices":[{"index":0,"delta":{"content":"c"},"finish_reason":null}],"usage":{"prompt_tokens":1,"completion_tokens":3}}'
    assert decoder.feed(ServerSentEvent(data=running)) == [TextDelta("c"), Usage(1, 3, {"prompt_tokens": 1, "completion_tokens": 3})]


# -- request building -----------------------------------------------------------


def test_build_request_defaults() -> None:
    spec = PROVIDER.build_request(base_url="https://api.openai.com/v1/", api_key="sk-test", model="gpt-4o-mini", messages=[USER], params={})
    assert spec == RequestSpec(
        method="POST",
        url="https://api.openai.com/v1/chat/completions",
        headers={"Content-Type": "application/json", "Accept": "text/event-stream", "Authorization": "Bearer sk-test"},
        json={"model": "gpt-4o-mini", "messages": [USER], "stream": True, "stream_options": {"include_usage": True}},
    )
    assert dict(spec.headers) == {"Content-Type": "application/json", "Accept": "text/event-stream", "Authorization": "Bearer sk-test"}


@pytest.mark.parametrize("api_key", [pytest.param(None, id="none"), pytest.param("", id="empty")])
def test_build_request_without_key_has_no_authorization(api_key: Any) -> None:
    spec = PROVIDER.build_request(base_url="http://localhost:8000/v1", api_key=api_key, model="m", messages=[USER], params={})
    assert spec.url == "http://localhost:8000/v1/chat/completions"
    assert dict(spec.headers) == {"Content-Type": "application/json", "Accept": "text/event-stream"}


@pytest.mark.parametrize(
    "params, expected",
    [
        pytest.param(
            {"temperature": 0.2, "max_tokens": 64, "tools": [{"type": "function"}]},
            {"temperature": 0.2, "max_tokens": 64, "tools": [{"type": "function"}], "stream_options": {"include_usage": True}},
            id="pass-through",
        ),
        pytest.param({"stream_options": None}, {}, id="none-removes-default"),
        pytest.param({"stream_options": {"include_usage": False}}, {"stream_options": {"include_usage": False}}, id="override"),
        pytest.param({"seed": None}, {"stream_options": {"include_usage": True}}, id="none-for-absent-key"),
    ],
)
def test_build_request_params(params: Dict[str, Any], expected: Dict[str, Any]) -> None:
    spec = PROVIDER.build_request(base_url="https://api.openai.com/v1", api_key="k", model="m", messages=[USER], params=params)
    assert spec.json == {"model": "m", "messages": [USER], "stream": True, **expected}


def test_build_request_does_not_share_the_callers_list() -> None:
    messages = [USER]
    spec = PROVIDER.build_request(base_url="https://x/v1", api_key="k", model="m", messages=messages, params={})
    messages.append({"role": "user", "content": "later"})
    assert spec.json is not None and spec.json["messages"] == [USER]


def test_provider_attributes() -> None:
    assert (PROVIDER.name, PROVIDER.framing, PROVIDER.api_key_env, PROVIDER.base_url_env) == ("openai", "sse", "OPENAI_API_KEY", "OPENAI_BASE_URL")
    assert PROVIDER.default_base_url == "https://api.openai.com/v1"
    assert PROVIDER.requires_api_key is True
    assert OpenAIChatProvider.supports_continue is True


def test_continue_request() -> None:
    spec = PROVIDER.build_request(base_url="http://vllm:8000/v1", api_key=None, model="m", messages=[USER], params={"temperature": 0})
    cont = PROVIDER.continue_request(spec, "Par")
    assert cont == RequestSpec(
        method="POST",
        url="http://vllm:8000/v1/chat/completions",
        headers=spec.headers,
        json={
            "model": "m",
            "messages": [USER, {"role": "assistant", "content": "Par"}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0,
            "continue_final_message": True,
            "add_generation_prompt": False,
        },
    )
    assert spec.json is not None and spec.json["messages"] == [USER]  # the original is untouched


def test_continue_request_with_nothing_delivered_is_unchanged() -> None:
    spec = PROVIDER.build_request(base_url="http://vllm:8000/v1", api_key=None, model="m", messages=[USER], params={})
    assert PROVIDER.continue_request(spec, "") is spec


def test_continue_request_needs_messages() -> None:
    with pytest.raises(ValueError, match="needs the original chat request"):
        PROVIDER.continue_request(RequestSpec(method="GET", url="http://x", headers={}), "a")


# -- errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, message, kind",
    [
        pytest.param(
            '{"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}',
            "Incorrect API key provided.",
            "invalid_request_error",
            id="openai",
        ),
        pytest.param(
            '{"error": {"message": "Rate limit reached", "type": null, "code": "rate_limit_exceeded"}}',
            "Rate limit reached",
            "rate_limit_exceeded",
            id="type-falls-back-to-code",
        ),
        pytest.param(
            '{"object": "error", "message": "model not found", "type": "NotFoundError", "param": null, "code": 404}',
            "model not found",
            "NotFoundError",
            id="vllm-bare",
        ),
        pytest.param('{"error": "model \\"x\\" not found"}', 'model "x" not found', None, id="string-error"),
    ],
)
def test_error_from_body(body: str, message: str, kind: Any) -> None:
    error = PROVIDER.error_from_body(body)
    assert isinstance(error, ProviderError)
    assert (str(error), error.type) == (message, kind)


@pytest.mark.parametrize(
    "body",
    [pytest.param("<html>Bad gateway</html>", id="html"), pytest.param('{"detail": "nope"}', id="other-json"), pytest.param("[]", id="array")],
)
def test_error_from_body_none(body: str) -> None:
    assert PROVIDER.error_from_body(body) is None


@pytest.mark.parametrize(
    "kind, retryable",
    [
        pytest.param("server_error", True, id="server_error"),
        pytest.param("rate_limit_exceeded", True, id="rate_limit_exceeded"),
        pytest.param("tokens", True, id="openai-tpm-limit"),
        pytest.param("invalid_request_error", False, id="invalid_request"),
        pytest.param("insufficient_quota", False, id="insufficient_quota"),
        pytest.param(None, False, id="unknown"),
    ],
)
def test_is_retryable(kind: Any, retryable: bool) -> None:
    assert PROVIDER.is_retryable(ProviderError("x", type=kind)) is retryable
