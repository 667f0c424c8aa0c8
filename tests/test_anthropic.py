"""Tests for llmstream._providers.anthropic: request building and the stream decoder."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import pytest

from helpers import feed_all_ways, load_fixture
from llmstream._events import Finish, OutputItem, TextDelta, ThinkingDelta, ToolCall, ToolCallDelta, Usage
from llmstream._exceptions import IncompleteStreamError, MalformedStreamError, ProviderError, StreamError
from llmstream._providers._base import RequestSpec, StreamDecoder
from llmstream._providers.anthropic import AnthropicDecoder, AnthropicProvider
from llmstream.sse import ServerSentEvent

PROVIDER = AnthropicProvider()
USER = {"role": "user", "content": "Hello"}


def make_decoder() -> StreamDecoder:
    return StreamDecoder(PROVIDER.new_decoder(), framing=PROVIDER.framing)


def decode(name: str) -> List[Any]:
    return feed_all_ways(make_decoder, load_fixture("anthropic", name))


def start_usage(input_tokens: int, output_tokens: int) -> Usage:
    raw = {"input_tokens": input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": output_tokens}
    return Usage(input_tokens=input_tokens, output_tokens=output_tokens, raw=raw, cached_input_tokens=0, cache_write_tokens=0)


TEXT_ITEM = OutputItem({"type": "text", "text": ""}, text_key="text")


def final_usage(input_tokens: int, output_tokens: int) -> Usage:
    # message_delta's cumulative usage, merged over message_start's
    return start_usage(input_tokens, output_tokens)


# -- recorded streams ---------------------------------------------------------

FIXTURES = [
    pytest.param(
        "text.txt",
        [
            start_usage(25, 1),
            TextDelta("Ça va"),
            TextDelta(" — 日本"),
            TextDelta("語 🎉"),
            TEXT_ITEM,
            final_usage(25, 15),
            Finish("end_turn"),
        ],
        id="text-non-ascii-with-ping",
    ),
    pytest.param(
        "tool_use.txt",
        [
            start_usage(472, 2),
            TextDelta("Okay, let me check."),
            TEXT_ITEM,
            ToolCallDelta(0, "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather", ""),
            ToolCallDelta(0, None, None, '{"location": "San Fra'),
            ToolCallDelta(0, None, None, 'ncisco, CA", "unit": "fahr'),
            ToolCallDelta(0, None, None, 'enheit"}'),
            ToolCall(
                0,
                "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                "get_weather",
                {"location": "San Francisco, CA", "unit": "fahrenheit"},
                '{"location": "San Francisco, CA", "unit": "fahrenheit"}',
            ),
            OutputItem({"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather",
                        "input": {"location": "San Francisco, CA", "unit": "fahrenheit"}}),
            # a tool without arguments streams no input_json_delta: arguments {}
            ToolCallDelta(1, "toolu_02Ab3cD4eF5gH6iJ7kL8mN9o", "get_time", ""),
            ToolCall(1, "toolu_02Ab3cD4eF5gH6iJ7kL8mN9o", "get_time", {}, ""),
            OutputItem({"type": "tool_use", "id": "toolu_02Ab3cD4eF5gH6iJ7kL8mN9o", "name": "get_time", "input": {}}),
            final_usage(472, 89),
            Finish("tool_use"),
        ],
        id="tool-use-json-split-mid-token",
    ),
    pytest.param(
        "thinking.txt",
        [
            start_usage(36, 4),
            ThinkingDelta("Let me solve this step by step:\n\n1. First break down 27 * 453"),
            ThinkingDelta("\n2. 453 = 400 + 50 + 3"),
            # the signature_delta is kept: the block goes back signed (result.message)
            OutputItem({"type": "thinking",
                        "thinking": "Let me solve this step by step:\n\n1. First break down 27 * 453\n2. 453 = 400 + 50 + 3",
                        "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"}),
            TextDelta("27 * 453 = 12,231"),
            TEXT_ITEM,
            final_usage(36, 180),
            Finish("end_turn"),
        ],
        id="thinking-signature-kept",
    ),
    pytest.param(
        "pings_and_unknown_events.txt",
        [start_usage(10, 1), TextDelta("Hi"), TextDelta("!"), TEXT_ITEM, final_usage(10, 3), Finish("end_turn")],
        id="pings-and-unknown-types-ignored",
    ),
    pytest.param(
        "max_tokens.txt",
        [
            start_usage(30, 1),
            TextDelta("Calling the tool:"),
            TEXT_ITEM,
            ToolCallDelta(0, "toolu_03Zz", "write_file", ""),
            ToolCallDelta(0, None, None, '{"path": "notes.txt", "content": "Once upon'),
            ToolCall(0, "toolu_03Zz", "write_file", None, '{"path": "notes.txt", "content": "Once upon'),
            # arguments cut short are no object: the block goes back with an empty input
            OutputItem({"type": "tool_use", "id": "toolu_03Zz", "name": "write_file", "input": {}}),
            final_usage(30, 64),
            Finish("max_tokens"),
        ],
        id="max-tokens-cuts-tool-arguments",
    ),
]


@pytest.mark.parametrize(("name", "expected"), FIXTURES)
def test_fixture_events(name: str, expected: List[Any]) -> None:
    assert decode(name) == expected


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        pytest.param("overloaded_error.txt", ProviderError, "Overloaded", id="overloaded-error-event"),
        pytest.param(
            "truncated_mid_json.txt",
            IncompleteStreamError,
            "the Anthropic stream ended before its message_stop event",
            id="truncated-mid-json",
        ),
        pytest.param(
            "missing_message_stop.txt",
            IncompleteStreamError,
            "the Anthropic stream ended before its message_stop event",
            id="missing-message-stop",
        ),
        pytest.param(
            "invalid_json.txt",
            MalformedStreamError,
            "invalid JSON in Anthropic 'content_block_delta' event: "
            + repr('{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"oop...'),
            id="invalid-json",
        ),
    ],
)
def test_fixture_errors(name: str, error: type, message: str) -> None:
    with pytest.raises(error) as info:
        decode(name)
    assert type(info.value) is error
    assert str(info.value) == message


def events_before_error(name: str) -> Tuple[List[Any], StreamError]:
    """Feed a fixture one byte at a time: the events delivered before it failed, and the error."""
    decoder, out = make_decoder(), []
    data = load_fixture("anthropic", name)
    try:
        for i in range(len(data)):
            out.extend(decoder.feed(data[i : i + 1]))
        decoder.close()
    except StreamError as exc:
        return out, exc
    raise AssertionError(f"{name} did not fail")


def test_overloaded_error_after_text() -> None:
    events, error = events_before_error("overloaded_error.txt")
    assert events == [start_usage(25, 1), TextDelta("Par")]
    assert isinstance(error, ProviderError)
    assert error.type == "overloaded_error"
    assert PROVIDER.is_retryable(error)


def test_missing_message_stop_delivers_everything_first() -> None:
    events, error = events_before_error("missing_message_stop.txt")
    assert events == [start_usage(25, 1), TextDelta("Hello"), TEXT_ITEM, final_usage(25, 2)]
    assert isinstance(error, IncompleteStreamError)


# -- the decoder on single events ---------------------------------------------


def sse(event: str, data: str) -> ServerSentEvent:
    return ServerSentEvent(event=event, data=data)


def test_json_type_wins_over_sse_event_name() -> None:
    decoder = AnthropicDecoder()
    data = '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}'
    assert decoder.feed(sse("message", data)) == [TextDelta("x")]


def test_sse_event_name_is_the_fallback_type() -> None:
    decoder = AnthropicDecoder()
    assert decoder.feed(sse("message_stop", "{}")) == [Finish("unknown")]
    assert decoder.finished


def test_message_stop_without_stop_reason_is_unknown() -> None:
    decoder = AnthropicDecoder()
    assert decoder.feed(sse("message_stop", '{"type":"message_stop"}')) == [Finish("unknown")]
    assert decoder.close() == []


def test_text_block_start_carrying_text_is_delivered() -> None:
    decoder = AnthropicDecoder()
    data = '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":"Hi"}}'
    assert decoder.feed(sse("content_block_start", data)) == [TextDelta("Hi")]


def test_message_delta_input_tokens_override_message_start() -> None:
    decoder = AnthropicDecoder()
    decoder.feed(sse("message_start", '{"type":"message_start","message":{"usage":{"input_tokens":5,"output_tokens":1}}}'))
    data = '{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":7,"output_tokens":9}}'
    assert decoder.feed(sse("message_delta", data)) == [
        Usage(input_tokens=7, output_tokens=9, raw={"input_tokens": 7, "output_tokens": 9})
    ]


def test_input_json_delta_of_a_server_tool_is_no_tool_call_but_goes_back_whole() -> None:
    decoder = AnthropicDecoder()
    start = '{"type":"content_block_start","index":0,"content_block":{"type":"server_tool_use","id":"srvtoolu_1","name":"web_search"}}'
    delta = '{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\\"q\\": 1}"}}'
    assert decoder.feed(sse("content_block_start", start)) == []
    assert decoder.feed(sse("content_block_delta", delta)) == []
    assert decoder.feed(sse("content_block_stop", '{"type":"content_block_stop","index":0}')) == [
        OutputItem({"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"q": 1}})
    ]


def test_events_after_message_stop_are_ignored() -> None:
    decoder = AnthropicDecoder()
    decoder.feed(sse("message_stop", '{"type":"message_stop"}'))
    assert decoder.feed(sse("ping", '{"type":"ping"}')) == []
    assert decoder.close() == []


@pytest.mark.parametrize(
    ("event", "data", "message"),
    [
        pytest.param("ping", "[1, 2]", "Anthropic 'ping' event is not a JSON object: '[1, 2]'", id="not-an-object"),
        pytest.param(
            "content_block_delta",
            '{"type":"content_block_delta","delta":{"type":"text_delta","text":"x"}}',
            'Anthropic \'content_block_delta\' event: expected "index" to be an integer, but it is missing',
            id="missing-index",
        ),
        pytest.param(
            "content_block_delta",
            '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":5}}',
            'Anthropic \'content_block_delta\' event: expected "delta.text" to be a string, got integer',
            id="text-not-a-string",
        ),
        pytest.param(
            "content_block_delta",
            "x" * 100,
            "invalid JSON in Anthropic 'content_block_delta' event: " + repr("x" * 80 + "..."),
            id="long-excerpt-cut",
        ),
    ],
)
def test_malformed_events(event: str, data: str, message: str) -> None:
    decoder = AnthropicDecoder()
    with pytest.raises(MalformedStreamError) as info:
        decoder.feed(sse(event, data))
    assert str(info.value) == message


def sse_bytes(event: str, data: str) -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


def test_decoder_stays_failed_after_provider_error() -> None:
    decoder = make_decoder()
    error = '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    with pytest.raises(ProviderError, match="^Overloaded$"):
        decoder.feed(sse_bytes("error", error))
    # even a valid event, and even the end marker, cannot revive it
    with pytest.raises(ProviderError, match="^Overloaded$"):
        decoder.feed(sse_bytes("message_stop", '{"type":"message_stop"}'))
    with pytest.raises(ProviderError, match="^Overloaded$"):
        decoder.close()
    assert not decoder.finished


def test_decoder_stays_failed_after_incomplete() -> None:
    decoder = make_decoder()
    with pytest.raises(IncompleteStreamError):
        decoder.close()
    with pytest.raises(IncompleteStreamError):
        decoder.feed(sse_bytes("message_stop", '{"type":"message_stop"}'))
    with pytest.raises(IncompleteStreamError):
        decoder.close()


def test_decoder_stays_failed_after_malformed() -> None:
    decoder = make_decoder()
    with pytest.raises(MalformedStreamError):
        decoder.feed(sse_bytes("ping", "{"))
    with pytest.raises(MalformedStreamError):
        decoder.feed(sse_bytes("ping", '{"type":"ping"}'))


# -- request building ---------------------------------------------------------


def build(messages: List[Dict[str, Any]], api_key: Any = "sk-ant-test", **params: Any) -> RequestSpec:
    return PROVIDER.build_request(
        base_url="https://api.anthropic.com", api_key=api_key, model="claude-sonnet-4-5", messages=messages, params=params
    )


def test_provider_attributes() -> None:
    assert (PROVIDER.name, PROVIDER.framing, PROVIDER.api_key_env, PROVIDER.base_url_env) == (
        "anthropic",
        "sse",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
    )
    assert PROVIDER.default_base_url == "https://api.anthropic.com"
    assert PROVIDER.requires_api_key is True
    assert PROVIDER.supports_continue == "prefill"  # guaranteed: auto continues before it replays


def test_build_request_exact() -> None:
    spec = build([USER])
    assert spec.method == "POST"
    assert spec.url == "https://api.anthropic.com/v1/messages"
    assert dict(spec.headers) == {
        "x-api-key": "sk-ant-test",
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
        "accept": "text/event-stream",
    }
    assert spec.json == {"model": "claude-sonnet-4-5", "messages": [USER], "max_tokens": 1024, "stream": True}


def test_build_request_does_not_repr_the_key() -> None:
    assert "sk-ant-test" not in repr(build([USER]))


@pytest.mark.parametrize(
    ("base_url", "url"),
    [
        pytest.param("https://api.anthropic.com/", "https://api.anthropic.com/v1/messages", id="trailing-slash"),
        pytest.param("http://127.0.0.1:8080/proxy", "http://127.0.0.1:8080/proxy/v1/messages", id="with-path"),
    ],
)
def test_build_request_base_url(base_url: str, url: str) -> None:
    spec = PROVIDER.build_request(base_url=base_url, api_key="k", model="m", messages=[USER], params={})
    assert spec.url == url


def test_build_request_without_key_sends_no_key_header() -> None:
    assert "x-api-key" not in build([USER], api_key=None).headers


def test_params_override_and_none_removes() -> None:
    spec = build([USER], max_tokens=None, temperature=0.5, stream=True, top_k=None)
    assert spec.json == {"model": "claude-sonnet-4-5", "messages": [USER], "stream": True, "temperature": 0.5}
    assert build([USER], max_tokens=64).json["max_tokens"] == 64  # type: ignore[index]


def test_system_messages_move_to_the_system_field() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        USER,
        {"role": "system", "content": "Answer in French."},
    ]
    body = build(messages).json
    assert body is not None
    assert body["system"] == "Be brief.\n\nAnswer in French."
    assert body["messages"] == [USER]


def test_system_blocks_are_kept_as_blocks() -> None:
    blocks = [{"type": "text", "text": "Long context", "cache_control": {"type": "ephemeral"}}]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "system", "content": blocks}, USER]
    body = build(messages).json
    assert body is not None
    assert body["system"] == [{"type": "text", "text": "Be brief."}] + blocks


def test_system_param_is_passed_through() -> None:
    body = build([USER], system="Be brief.").json
    assert body is not None and body["system"] == "Be brief."


@pytest.mark.parametrize("value", [pytest.param("Be kind.", id="string"), pytest.param(None, id="none")])
def test_system_twice_is_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="got a system prompt twice"):
        build([{"role": "system", "content": "Be brief."}, USER], system=value)


def test_build_request_does_not_mutate_messages() -> None:
    messages = [{"role": "system", "content": "Be brief."}, USER]
    build(messages)
    assert messages == [{"role": "system", "content": "Be brief."}, USER]


# -- error bodies and retryability --------------------------------------------


def test_error_from_body() -> None:
    body = '{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}'
    error = PROVIDER.error_from_body(body)
    assert isinstance(error, ProviderError)
    assert (str(error), error.type) == ("max_tokens: Field required", "invalid_request_error")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("<html>502 Bad Gateway</html>", id="not-json"),
        pytest.param('{"message": "nope"}', id="no-error-object"),
        pytest.param('["error"]', id="not-an-object"),
    ],
)
def test_error_from_body_not_an_anthropic_error(body: str) -> None:
    assert PROVIDER.error_from_body(body) is None


@pytest.mark.parametrize(
    ("error_type", "retryable"),
    [
        pytest.param("overloaded_error", True, id="overloaded"),
        pytest.param("api_error", True, id="api"),
        pytest.param("rate_limit_error", True, id="rate-limit"),
        pytest.param("invalid_request_error", False, id="invalid-request"),
        pytest.param("authentication_error", False, id="authentication"),
        pytest.param(None, False, id="no-type"),
    ],
)
def test_is_retryable(error_type: Any, retryable: bool) -> None:
    assert PROVIDER.is_retryable(ProviderError("x", type=error_type)) is retryable


# -- continue (assistant prefill) ---------------------------------------------


@pytest.mark.parametrize(
    ("delivered", "prefill", "held_back"),
    [
        pytest.param("Hello", "Hello", "", id="no-whitespace"),
        pytest.param("Hello, ", "Hello,", " ", id="space"),
        pytest.param("Line one\n\n", "Line one", "\n\n", id="newlines"),
        pytest.param(" \n", "", " \n", id="only-whitespace"),
    ],
)
def test_split_prefill(delivered: str, prefill: str, held_back: str) -> None:
    assert PROVIDER.split_prefill(delivered) == (prefill, held_back)


def test_continue_request_appends_the_prefill() -> None:
    spec = build([USER], temperature=0)
    resumed = PROVIDER.continue_request(spec, "The capital is ")
    assert resumed.json is not None
    assert resumed.json["messages"] == [USER, {"role": "assistant", "content": "The capital is"}]
    assert {k: v for k, v in resumed.json.items() if k != "messages"} == {
        k: v for k, v in spec.json.items() if k != "messages"  # type: ignore[union-attr]
    }
    assert (resumed.url, dict(resumed.headers)) == (spec.url, dict(spec.headers))
    assert spec.json["messages"] == [USER]  # type: ignore[index]  # the original is untouched


def test_continue_request_extends_an_existing_prefill() -> None:
    spec = build([USER, {"role": "assistant", "content": "{"}])
    resumed = PROVIDER.continue_request(spec, '"name": ')
    assert resumed.json is not None
    assert resumed.json["messages"] == [USER, {"role": "assistant", "content": '{"name":'}]


@pytest.mark.parametrize("delivered", [pytest.param("", id="empty"), pytest.param("  \n", id="whitespace")])
def test_continue_request_with_nothing_to_prefill_is_unchanged(delivered: str) -> None:
    spec = build([USER])
    assert PROVIDER.continue_request(spec, delivered) is spec


# -- agent loops: the turn as content blocks (issue 12) --------------------------------------


def test_redacted_thinking_and_cache_usage_kept() -> None:
    events = decode("redacted_thinking_cache.txt")
    items = [e.item for e in events if isinstance(e, OutputItem)]
    assert items == [
        {"type": "redacted_thinking",
         "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpPkNRj2YfWXGmKDxH4mPnZ5sQ7vB8URv2XqcQSR6zPtMfIhhvJKgg="},
        {"type": "thinking", "thinking": "I need the weather.", "signature": "ErUBCkYIBRgCIkD1zT9f"},
        {"type": "tool_use", "id": "toolu_01Hq8Wm3Kx", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    usage = [e for e in events if isinstance(e, Usage)][-1]
    # As Anthropic reports it: input_tokens excludes cache reads and writes.
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens, usage.output_tokens) == (21, 12040, 1890, 74)


def test_assistant_message_from_the_turn() -> None:
    from llmstream._turn import TurnRecorder

    recorder = TurnRecorder()
    events = decode("redacted_thinking_cache.txt")
    for event in events:
        recorder.record(event, 0)
    calls = tuple(e for e in events if isinstance(e, ToolCall))
    message = PROVIDER.assistant_message(recorder.turn("", calls))
    assert message["role"] == "assistant"
    assert [b["type"] for b in message["content"]] == ["redacted_thinking", "thinking", "tool_use"]


def test_assistant_message_text_blocks_take_the_delivered_text() -> None:
    from llmstream._turn import TurnRecorder

    recorder = TurnRecorder()
    text = OutputItem({"type": "text", "text": ""}, text_key="text")
    tool = OutputItem({"type": "tool_use", "id": "t", "name": "f", "input": {}})
    recorder.record(text, 4)
    recorder.record(tool, 4)
    recorder.record(text, 8)
    recorder.record(OutputItem({"type": "text", "text": ""}, text_key="text"), 8)  # an empty block: left out
    message = PROVIDER.assistant_message(recorder.turn("Hi. Done", ()))
    assert message["content"] == [{"type": "text", "text": "Hi. "}, tool.item, {"type": "text", "text": "Done"}]
