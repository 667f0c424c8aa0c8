"""Tests for llmstream._providers.openai_responses: requests, cursor resume and the stream decoder."""

from __future__ import annotations

import json
from typing import Any, Dict, List

import pytest

from helpers import feed_all_ways, load_fixture
from llmstream._events import Finish, OutputItem, TextDelta, ThinkingDelta, ToolCall, ToolCallDelta, Usage
from llmstream._exceptions import IncompleteStreamError, MalformedStreamError, ProviderError
from llmstream._providers._base import RequestSpec, StreamDecoder
from llmstream._providers.openai_responses import OpenAIResponsesDecoder, OpenAIResponsesProvider
from llmstream.sse import ServerSentEvent

PROVIDER = OpenAIResponsesProvider()
USER = {"role": "user", "content": "Hello"}
RESPONSE_ID = "resp_68b1f0c2a9e48190b3d6a4e1c07f5e2d0b9a8c7d6e5f4a3b"
HAPPY = [TextDelta("Ça va"), TextDelta(" — "), TextDelta("日本語"), TextDelta(" 🎉")]


def make_decoder() -> StreamDecoder:
    return StreamDecoder(PROVIDER.new_decoder(), framing=PROVIDER.framing)


def decode_all(name: str) -> List[Any]:
    return feed_all_ways(make_decoder, load_fixture("openai_responses", name))


def decode(name: str) -> List[Any]:
    """The fixture's events but the OutputItems (checked apart, by test_fixture_output_items)."""
    return [e for e in decode_all(name) if not isinstance(e, OutputItem)]


def usage(input_tokens: int, output_tokens: int, reasoning: int = 0) -> Usage:
    raw = {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }
    return Usage(input_tokens=input_tokens, output_tokens=output_tokens, raw=raw,
                 cached_input_tokens=0, reasoning_tokens=reasoning)


def event(type: str, seq: int, **fields: Any) -> ServerSentEvent:
    return ServerSentEvent(event=type, data=json.dumps({"type": type, "sequence_number": seq, **fields}))


# -- recorded streams ---------------------------------------------------------

FIXTURES = [
    pytest.param("happy_text.txt", [*HAPPY, usage(14, 9), Finish("stop")], id="happy-non-ascii"),
    pytest.param(
        "function_calls_parallel.txt",
        [
            ToolCallDelta(0, "call_Rk0Xw2pLm9QvT", "get_weather", ""),
            ToolCallDelta(0, None, None, '{"ci'),
            ToolCallDelta(0, None, None, 'ty": "Par'),
            ToolCallDelta(0, None, None, 'is"}'),
            ToolCall(0, "call_Rk0Xw2pLm9QvT", "get_weather", {"city": "Paris"}, '{"city": "Paris"}'),
            ToolCallDelta(1, "call_Rk1Xw2pLm9QvT", "get_time", ""),
            ToolCallDelta(1, None, None, '{"tz": '),
            ToolCallDelta(1, None, None, '"Europe/Paris"}'),
            ToolCall(1, "call_Rk1Xw2pLm9QvT", "get_time", {"tz": "Europe/Paris"}, '{"tz": "Europe/Paris"}'),
            usage(71, 46),
            Finish("tool_calls"),
        ],
        id="two-parallel-function-calls",
    ),
    pytest.param(
        "reasoning_summary.txt",
        [
            ThinkingDelta("**Adding"),
            ThinkingDelta(" numbers**"),
            ThinkingDelta("\n\n2 + 2 = 4."),
            TextDelta("4"),
            usage(13, 75, 64),
            Finish("stop"),
        ],
        id="reasoning-summary",
    ),
    pytest.param(
        "incomplete_max_tokens.txt",
        [TextDelta("Once upon"), TextDelta(" a time"), usage(11, 4), Finish("max_output_tokens")],
        id="incomplete-max-output-tokens",
    ),
    pytest.param("no_space.txt", [TextDelta("Ça"), TextDelta(" marche"), usage(9, 2), Finish("stop")], id="no-space-no-event-lines"),
    pytest.param("crlf.txt", [TextDelta("line one\n"), TextDelta("line two"), usage(5, 6), Finish("stop")], id="crlf-line-endings"),
    pytest.param("done_after_completed.txt", [TextDelta("Hi"), usage(3, 1), Finish("stop")], id="done-after-completed-ignored"),
]


@pytest.mark.parametrize("name, expected", FIXTURES)
def test_fixture(name: str, expected: List[Any]) -> None:
    assert decode(name) == expected


@pytest.mark.parametrize(
    "name, error, message, kind",
    [
        pytest.param("failed.txt", ProviderError, "The model failed to generate a response.", "server_error", id="response-failed"),
        pytest.param(
            "error_event.txt",
            ProviderError,
            "Rate limit reached for gpt-4.1-mini on tokens per min (TPM).",
            "rate_limit_exceeded",
            id="error-event",
        ),
        pytest.param(
            "truncated.txt",
            IncompleteStreamError,
            "stream ended before response.completed: the answer may be cut short",
            None,
            id="truncated-between-events",
        ),
        pytest.param(
            "truncated_mid_json.txt",
            IncompleteStreamError,
            "stream ended before response.completed: the answer may be cut short",
            None,
            id="truncated-mid-json",
        ),
    ],
)
def test_fixture_fails(name: str, error: type, message: str, kind: Any) -> None:
    with pytest.raises(error) as info:
        decode(name)
    assert type(info.value) is error
    assert str(info.value) == message
    assert getattr(info.value, "type", None) == kind


def test_truncated_delivers_text_before_failing() -> None:
    decoder = make_decoder()
    assert decoder.feed(load_fixture("openai_responses", "truncated.txt")) == [TextDelta("Ça va"), TextDelta(" — ")]
    assert not decoder.finished
    with pytest.raises(IncompleteStreamError):
        decoder.close()


def test_cursor_properties() -> None:
    decoder = PROVIDER.new_decoder()
    assert (decoder.response_id, decoder.last_sequence_number) == (None, None)
    stream = StreamDecoder(decoder, framing="sse")
    stream.feed(load_fixture("openai_responses", "truncated.txt"))
    assert (decoder.response_id, decoder.last_sequence_number) == (RESPONSE_ID, 5)


def test_resume_delivers_each_piece_once() -> None:
    first = PROVIDER.new_decoder()
    stream = StreamDecoder(first, framing="sse")
    events = stream.feed(load_fixture("openai_responses", "resume_first.txt"))
    with pytest.raises(IncompleteStreamError):
        stream.close()
    assert first.last_sequence_number == 6
    # the second connection replays sequence number 6 once more: it must be dropped
    second = feed_all_ways(lambda: StreamDecoder(first.resumed(), framing="sse"), load_fixture("openai_responses", "resume_second.txt"))
    items = [e for e in events + second if isinstance(e, OutputItem)]
    assert [e for e in events + second if not isinstance(e, OutputItem)] == [*HAPPY, usage(14, 9), Finish("stop")]
    assert [item.item["type"] for item in items] == ["message"]  # once, though the server replayed an event


def test_resume_continues_a_function_call() -> None:
    decoder = OpenAIResponsesDecoder()
    item = {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "f", "arguments": ""}
    decoder.feed(event("response.output_item.added", 0, output_index=0, item=item))
    decoder.feed(event("response.function_call_arguments.delta", 1, item_id="fc_1", output_index=0, delta='{"a"'))
    resumed = decoder.resumed()
    assert resumed.feed(event("response.function_call_arguments.delta", 1, item_id="fc_1", output_index=0, delta='{"a"')) == []
    assert resumed.feed(event("response.function_call_arguments.delta", 2, item_id="fc_1", output_index=0, delta=": 1}")) == [
        ToolCallDelta(0, None, None, ": 1}")
    ]
    assert resumed.feed(event("response.completed", 3, response={"usage": None})) == [
        ToolCall(0, "call_1", "f", {"a": 1}, '{"a": 1}'),
        Finish("tool_calls"),
    ]
    assert resumed.finished and resumed.last_sequence_number == 3
    assert decoder.last_sequence_number == 1  # the original is untouched


def test_output_item_done_completes_a_call_once() -> None:
    decoder = OpenAIResponsesDecoder()
    item = {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "f", "arguments": ""}
    assert decoder.feed(event("response.output_item.added", 0, output_index=0, item=item)) == [ToolCallDelta(0, "call_1", "f", "")]
    done = dict(item, arguments='{"x": [1]}', status="completed")
    assert decoder.feed(event("response.output_item.done", 1, output_index=0, item=done)) == [
        ToolCall(0, "call_1", "f", {"x": [1]}, '{"x": [1]}'),
        OutputItem(done),  # as it came: it goes back in result.message
    ]
    assert decoder.feed(event("response.function_call_arguments.done", 2, item_id="fc_1", output_index=0, arguments='{"x": [1]}')) == []


def test_arguments_for_an_unannounced_item_are_kept() -> None:
    decoder = OpenAIResponsesDecoder()
    assert decoder.feed(event("response.function_call_arguments.delta", 0, item_id="fc_9", delta="{}")) == [ToolCallDelta(0, None, None, "{}")]
    assert decoder.feed(event("response.completed", 1, response={})) == [ToolCall(0, "", "", {}, "{}"), Finish("tool_calls")]


def test_incomplete_with_cut_short_call_and_no_reason() -> None:
    decoder = OpenAIResponsesDecoder()
    item = {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "f", "arguments": '{"q": "ab'}
    decoder.feed(event("response.output_item.added", 0, output_index=0, item=item))
    assert decoder.feed(event("response.incomplete", 1, response={"incomplete_details": None, "usage": None})) == [
        ToolCall(0, "call_1", "f", None, '{"q": "ab'),
        Finish("incomplete"),
    ]


def test_type_from_sse_event_name_when_missing_in_data() -> None:
    decoder = OpenAIResponsesDecoder()
    assert decoder.feed(ServerSentEvent(event="response.output_text.delta", data='{"delta": "x"}')) == [TextDelta("x")]
    assert decoder.feed(ServerSentEvent(event="response.incomplete", data='{"response": {"incomplete_details": {"reason": "content_filter"}}}')) == [
        Finish("content_filter")
    ]
    assert decoder.finished


def test_unknown_and_ignored_events() -> None:
    decoder = OpenAIResponsesDecoder()
    assert decoder.feed(event("response.refusal.delta", 0, delta="no")) == []
    assert decoder.feed(event("response.some_future_event", 1, anything=[1])) == []
    assert decoder.feed(event("response.output_text.delta", 2, delta="")) == []
    assert decoder.last_sequence_number == 2


def test_sequence_numbers_are_not_deduplicated_outside_resume() -> None:
    # Compatible servers may repeat or omit sequence numbers; only a resumed
    # decoder drops events by their number.
    decoder = OpenAIResponsesDecoder()
    assert decoder.feed(event("response.output_text.delta", 0, delta="a")) == [TextDelta("a")]
    assert decoder.feed(event("response.output_text.delta", 0, delta="b")) == [TextDelta("b")]


@pytest.mark.parametrize(
    "data, message",
    [
        pytest.param("{oops", "invalid JSON in stream data: '{oops'", id="invalid-json"),
        pytest.param('"text"', "stream data is not a JSON object: '\"text\"'", id="not-an-object"),
        pytest.param(
            '{"type": "response.output_item.added", "item": 3}',
            "OpenAI Responses 'response.output_item.added' event: expected \"item\" to be an object, got integer",
            id="wrong-shape",
        ),
        pytest.param('{"type": ["x"]}', 'OpenAI Responses event: expected "type" to be a string, got list', id="unhashable-type"),
    ],
)
def test_malformed(data: str, message: str) -> None:
    with pytest.raises(MalformedStreamError) as info:
        OpenAIResponsesDecoder().feed(ServerSentEvent(data=data))
    assert str(info.value) == message


@pytest.mark.parametrize(
    "data, error, message",
    [
        pytest.param("{oops", MalformedStreamError, "invalid JSON in stream data: '{oops'", id="malformed"),
        pytest.param('{"type": "error", "code": null, "message": "boom"}', ProviderError, "boom", id="provider-error"),
    ],
)
def test_decoder_stays_failed(data: str, error: type, message: str) -> None:
    decoder = make_decoder()
    with pytest.raises(error):
        decoder.feed(b"data: " + data.encode() + b"\n\n")
    ok = event("response.output_text.delta", 1, delta="ok")
    for call in (lambda: decoder.feed(f"event: {ok.event}\ndata: {ok.data}\n\n".encode()), decoder.close):
        with pytest.raises(error) as info:
            call()
        assert type(info.value) is error
        assert str(info.value) == message
    assert not decoder.finished


def test_nested_error_event() -> None:
    data = '{"type": "error", "error": {"message": "overloaded", "type": "server_error"}}'
    with pytest.raises(ProviderError) as info:
        OpenAIResponsesDecoder().feed(ServerSentEvent(event="error", data=data))
    assert (str(info.value), info.value.type) == ("overloaded", "server_error")


# -- requests -------------------------------------------------------------------


def test_build_request() -> None:
    spec = PROVIDER.build_request(base_url="https://api.openai.com/v1/", api_key="sk-test", model="gpt-4.1-mini", messages=[USER], params={})
    assert spec == RequestSpec(
        method="POST",
        url="https://api.openai.com/v1/responses",
        headers={"Content-Type": "application/json", "Accept": "text/event-stream", "Authorization": "Bearer sk-test"},
        json={"model": "gpt-4.1-mini", "input": [USER], "stream": True},
    )
    assert dict(spec.headers) == {"Content-Type": "application/json", "Accept": "text/event-stream", "Authorization": "Bearer sk-test"}


@pytest.mark.parametrize(
    "params, expected",
    [
        pytest.param({"max_output_tokens": 64, "background": True}, {"max_output_tokens": 64, "background": True}, id="pass-through"),
        pytest.param({"instructions": None}, {}, id="none-for-absent-key"),
        pytest.param({"input": "plain text"}, {"input": "plain text"}, id="override-input"),
    ],
)
def test_build_request_params(params: Dict[str, Any], expected: Dict[str, Any]) -> None:
    spec = PROVIDER.build_request(base_url="https://api.openai.com/v1", api_key=None, model="m", messages=[USER], params=params)
    assert spec.json == {"model": "m", "input": [USER], "stream": True, **expected}
    assert "Authorization" not in spec.headers


def test_resume_request() -> None:
    spec = PROVIDER.build_request(base_url="https://api.openai.com/v1", api_key="sk-test", model="m", messages=[USER], params={"background": True})
    resume = PROVIDER.resume_request(spec, RESPONSE_ID, 42)
    assert resume == RequestSpec(
        method="GET",
        url=f"https://api.openai.com/v1/responses/{RESPONSE_ID}?stream=true&starting_after=42",
        headers={"Accept": "text/event-stream", "Authorization": "Bearer sk-test"},
        json=None,
    )
    assert dict(resume.headers) == {"Accept": "text/event-stream", "Authorization": "Bearer sk-test"}


def test_resume_request_quotes_the_id() -> None:
    spec = PROVIDER.build_request(base_url="http://x/v1", api_key=None, model="m", messages=[USER], params={})
    assert PROVIDER.resume_request(spec, "a/b c", 0).url == "http://x/v1/responses/a%2Fb%20c?stream=true&starting_after=0"


def test_resume_request_needs_a_responses_request() -> None:
    with pytest.raises(ValueError, match="needs the original POST .../responses request"):
        PROVIDER.resume_request(RequestSpec(method="POST", url="http://x/v1/chat/completions", headers={}), "r", 1)


def test_provider_attributes_and_errors() -> None:
    assert (PROVIDER.name, PROVIDER.framing, PROVIDER.api_key_env, PROVIDER.base_url_env) == (
        "openai-responses",
        "sse",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
    )
    assert (PROVIDER.default_base_url, PROVIDER.requires_api_key) == ("https://api.openai.com/v1", True)
    error = PROVIDER.error_from_body('{"error": {"message": "No such model", "type": "invalid_request_error", "code": "model_not_found"}}')
    assert isinstance(error, ProviderError)
    assert (str(error), error.type) == ("No such model", "invalid_request_error")
    assert PROVIDER.error_from_body("Bad Gateway") is None
    assert PROVIDER.is_retryable(ProviderError("x", type="server_error"))
    assert not PROVIDER.is_retryable(ProviderError("x", type="invalid_prompt"))


@pytest.mark.parametrize(("name", "kinds"), [
    ("happy_text.txt", ["message"]),
    ("function_calls_parallel.txt", ["function_call", "function_call"]),
    ("reasoning_summary.txt", ["reasoning", "message"]),
    ("incomplete_max_tokens.txt", ["message"]),
])
def test_fixture_output_items(name: str, kinds: List[str]) -> None:
    # Every response.output_item.done gives its item whole, in order, for result.message.
    items = [e for e in decode_all(name) if isinstance(e, OutputItem)]
    assert [item.item["type"] for item in items] == kinds
    assert all(item.text_key is None for item in items)  # the server repeats the text in the item


def test_reasoning_item_keeps_encrypted_content() -> None:
    decoder = OpenAIResponsesDecoder()
    item = {"id": "rs_1", "type": "reasoning", "summary": [], "encrypted_content": "gAAAAB..."}
    assert decoder.feed(event("response.output_item.done", 0, output_index=0, item=item)) == [OutputItem(item)]
