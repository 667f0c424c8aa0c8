"""Tests for llmstream._providers.ollama: OLLAMA_HOST forms, request building and the decoder."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest

from helpers import feed_all_ways, load_fixture
from llmstream._events import Finish, TextDelta, ThinkingDelta, ToolCall, ToolCallDelta, Usage
from llmstream._exceptions import IncompleteStreamError, MalformedStreamError, ProviderError
from llmstream._providers._base import RequestSpec, StreamDecoder
from llmstream._providers.ollama import OllamaDecoder, OllamaProvider

PROVIDER = OllamaProvider()
USER = {"role": "user", "content": "Hello"}


def make_decoder() -> StreamDecoder:
    return StreamDecoder(PROVIDER.new_decoder(), framing=PROVIDER.framing)


def decode(name: str) -> List[Any]:
    return feed_all_ways(make_decoder, load_fixture("ollama", name))


def usage(prompt_eval_count: int = 26, eval_count: int = 282) -> Usage:
    raw = {
        "total_duration": 4883583458,
        "load_duration": 1334875,
        "prompt_eval_count": prompt_eval_count,
        "prompt_eval_duration": 342546000,
        "eval_count": eval_count,
        "eval_duration": 4535599000,
    }
    return Usage(input_tokens=prompt_eval_count, output_tokens=eval_count, raw=raw)


# -- recorded streams ---------------------------------------------------------

WEATHER_ARGS = '{"format": "celsius", "location": "Paris, FR"}'


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param(
            "text.txt",
            [TextDelta("Ça va"), TextDelta(" — 日本"), TextDelta("語 🎉"), usage(), Finish("stop")],
            id="text-non-ascii",
        ),
        pytest.param(
            "tool_calls.txt",
            [
                ToolCallDelta(0, "call_k3v9x2", "get_current_weather", WEATHER_ARGS),
                ToolCall(0, "call_k3v9x2", "get_current_weather", {"format": "celsius", "location": "Paris, FR"}, WEATHER_ARGS),
                # an older server sends no id: "" as ToolCall documents
                ToolCallDelta(1, "", "get_time", "{}"),
                ToolCall(1, "", "get_time", {}, "{}"),
                usage(122, 33),
                Finish("stop"),
            ],
            id="tool-calls",
        ),
        pytest.param(
            "thinking.txt",
            [ThinkingDelta("The user"), ThinkingDelta(" asks for 2+2."), TextDelta("4"), usage(18, 12), Finish("stop")],
            id="thinking",
        ),
        pytest.param(
            "length.txt",
            [TextDelta("Once"), TextDelta(" upon"), TextDelta(" a"), usage(26, 3), Finish("length")],
            id="done-reason-length",
        ),
        pytest.param(
            "blank_lines.txt",
            [TextDelta("Hello"), TextDelta(" world"), usage(), Finish("stop")],
            id="blank-lines-skipped",
        ),
    ],
)
def test_fixture_events(name: str, expected: List[Any]) -> None:
    assert decode(name) == expected


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        pytest.param(
            "error_line.txt",
            ProviderError,
            "an error was encountered while running the model: unexpected EOF",
            id="error-line",
        ),
        pytest.param(
            "truncated_at_line_end.txt",
            IncompleteStreamError,
            'the Ollama stream ended before its "done": true object',
            id="truncated-at-line-end",
        ),
        # A line cut off by the end of input is a truncated stream (retryable),
        # not a wrong protocol: StreamDecoder.close() reports it as incomplete.
        pytest.param(
            "truncated_mid_json.txt",
            IncompleteStreamError,
            "stream ended mid-message: invalid JSON on line 2: '{\"model\":\"llama3.2\",\"created_at\":\"2025-0' "
            "(Unterminated string starting at: line 1 column 34 (char 33))",
            id="truncated-mid-json",
        ),
    ],
)
def test_fixture_errors(name: str, error: type, message: str) -> None:
    with pytest.raises(error) as info:
        decode(name)
    assert type(info.value) is error
    assert str(info.value) == message


def test_error_line_after_text() -> None:
    decoder, out = make_decoder(), []
    data = load_fixture("ollama", "error_line.txt")
    with pytest.raises(ProviderError) as info:
        for i in range(len(data)):
            out.extend(decoder.feed(data[i : i + 1]))
    assert out == [TextDelta("Par"), TextDelta("is")]
    assert info.value.type is None
    assert not PROVIDER.is_retryable(info.value)


# -- the decoder on single objects --------------------------------------------


def test_thinking_comes_before_content_in_one_object() -> None:
    obj = {"message": {"role": "assistant", "content": "A", "thinking": "T"}, "done": False}
    assert OllamaDecoder().feed(obj) == [ThinkingDelta("T"), TextDelta("A")]


def test_empty_content_gives_no_event() -> None:
    assert OllamaDecoder().feed({"message": {"role": "assistant", "content": ""}, "done": False}) == []


def test_done_without_counts_or_reason() -> None:
    decoder = OllamaDecoder()
    assert decoder.feed({"message": {"role": "assistant", "content": "x"}, "done": True}) == [
        TextDelta("x"),
        Usage(input_tokens=None, output_tokens=None, raw={}),
        Finish("stop"),
    ]
    assert decoder.finished
    assert decoder.close() == []


def test_objects_after_done_are_ignored() -> None:
    decoder = OllamaDecoder()
    decoder.feed({"done": True, "done_reason": "stop"})
    assert decoder.feed({"message": {"content": "late"}, "done": False}) == []


def test_tool_call_arguments_as_a_json_string() -> None:
    # what an OpenAI-style proxy in front of Ollama sends
    call = {"function": {"name": "f", "arguments": '{"a": 1}'}}
    assert OllamaDecoder().feed({"message": {"tool_calls": [call]}, "done": False}) == [
        ToolCallDelta(0, "", "f", '{"a": 1}'),
        ToolCall(0, "", "f", {"a": 1}, '{"a": 1}'),
    ]


def test_tool_call_index_counts_across_objects() -> None:
    decoder = OllamaDecoder()
    call = {"function": {"index": 0, "name": "f", "arguments": {"é": "ü"}}}
    decoder.feed({"message": {"tool_calls": [call]}, "done": False})
    assert decoder.feed({"message": {"tool_calls": [call]}, "done": False}) == [
        ToolCallDelta(1, "", "f", '{"é": "ü"}'),
        ToolCall(1, "", "f", {"é": "ü"}, '{"é": "ü"}'),
    ]


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        pytest.param([1], "Ollama stream line is not a JSON object: '[1]'", id="not-an-object"),
        pytest.param({"message": "hi"}, 'Ollama stream line: expected "message" to be an object, got string', id="message-not-object"),
        pytest.param(
            {"message": {"tool_calls": [{"function": {"arguments": {}}}]}},
            "Ollama tool call without a function name: " + repr('{"function": {"arguments": {}}}'),
            id="tool-call-without-name",
        ),
    ],
)
def test_malformed_objects(obj: Any, message: str) -> None:
    with pytest.raises(MalformedStreamError) as info:
        OllamaDecoder().feed(obj)
    assert str(info.value) == message


def test_decoder_stays_failed_after_error_line() -> None:
    decoder = make_decoder()
    with pytest.raises(ProviderError, match="^out of memory$"):
        decoder.feed(b'{"error": "out of memory"}\n')
    with pytest.raises(ProviderError, match="^out of memory$"):
        decoder.feed(b'{"done": true}\n')
    with pytest.raises(ProviderError, match="^out of memory$"):
        decoder.close()
    assert not decoder.finished


def test_decoder_stays_failed_after_incomplete() -> None:
    decoder = make_decoder()
    with pytest.raises(IncompleteStreamError):
        decoder.close()
    with pytest.raises(IncompleteStreamError):
        decoder.feed(b'{"done": true}\n')


# -- OLLAMA_HOST forms --------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "base_url"),
    [
        # the cases of ollama-python's _parse_host doctest
        pytest.param("", "http://127.0.0.1:11434", id="empty"),
        pytest.param("1.2.3.4", "http://1.2.3.4:11434", id="ip"),
        pytest.param(":56789", "http://127.0.0.1:56789", id="port-only"),
        pytest.param("1.2.3.4:56789", "http://1.2.3.4:56789", id="ip-port"),
        pytest.param("http://1.2.3.4", "http://1.2.3.4:80", id="http-ip"),
        pytest.param("https://1.2.3.4", "https://1.2.3.4:443", id="https-ip"),
        pytest.param("https://1.2.3.4:56789", "https://1.2.3.4:56789", id="https-ip-port"),
        pytest.param("example.com", "http://example.com:11434", id="name"),
        pytest.param("example.com:56789", "http://example.com:56789", id="name-port"),
        pytest.param("https://example.com", "https://example.com:443", id="https-name"),
        pytest.param("example.com/", "http://example.com:11434", id="trailing-slash"),
        pytest.param("example.com:56789/path/", "http://example.com:56789/path", id="path"),
        pytest.param("[0001:002:003:0004::1]", "http://[0001:002:003:0004::1]:11434", id="ipv6"),
        pytest.param("[::1]:56789/", "http://[::1]:56789", id="ipv6-port"),
        # the forms users set for the server, reused by the client
        pytest.param("localhost:11434", "http://localhost:11434", id="localhost-port"),
        pytest.param("0.0.0.0:11434", "http://0.0.0.0:11434", id="bind-all"),
        pytest.param("0.0.0.0", "http://0.0.0.0:11434", id="bind-all-no-port"),
        pytest.param("http://localhost:11434/", "http://localhost:11434", id="default-with-slash"),
        pytest.param(" localhost ", "http://localhost:11434", id="surrounding-spaces"),
    ],
)
def test_normalize_base_url(host: str, base_url: str) -> None:
    assert PROVIDER.normalize_base_url(host) == base_url


def test_default_base_url_is_already_normal() -> None:
    assert PROVIDER.normalize_base_url(PROVIDER.default_base_url) == PROVIDER.default_base_url


# -- request building ---------------------------------------------------------


def build(messages: List[Dict[str, Any]], api_key: Any = None, base_url: str = "localhost", **params: Any) -> RequestSpec:
    return PROVIDER.build_request(base_url=base_url, api_key=api_key, model="llama3.2", messages=messages, params=params)


def test_provider_attributes() -> None:
    assert (PROVIDER.name, PROVIDER.framing, PROVIDER.api_key_env, PROVIDER.base_url_env) == (
        "ollama",
        "jsonl",
        "OLLAMA_API_KEY",
        "OLLAMA_HOST",
    )
    assert PROVIDER.default_base_url == "http://localhost:11434"
    assert PROVIDER.requires_api_key is False


def test_build_request_exact() -> None:
    spec = build([{"role": "system", "content": "Be brief."}, USER])
    assert spec.method == "POST"
    assert spec.url == "http://localhost:11434/api/chat"
    assert dict(spec.headers) == {"Content-Type": "application/json", "Accept": "application/x-ndjson"}
    # Ollama takes system messages in "messages" as they are
    assert spec.json == {
        "model": "llama3.2",
        "messages": [{"role": "system", "content": "Be brief."}, USER],
        "stream": True,
    }


def test_build_request_with_key_sends_bearer() -> None:
    spec = build([USER], api_key="olk-test", base_url="https://ollama.com")
    assert spec.url == "https://ollama.com:443/api/chat"
    assert spec.headers["Authorization"] == "Bearer olk-test"
    assert "olk-test" not in repr(spec)


def test_params_override_and_none_removes() -> None:
    spec = build([USER], options={"temperature": 0}, think=True, keep_alive=None, stream=None)
    assert spec.json == {"model": "llama3.2", "messages": [USER], "options": {"temperature": 0}, "think": True}


# -- error bodies -------------------------------------------------------------


def test_error_from_body() -> None:
    error = PROVIDER.error_from_body('{"error":"model \\"llama9\\" not found, try pulling it first"}')
    assert isinstance(error, ProviderError)
    assert (str(error), error.type) == ('model "llama9" not found, try pulling it first', None)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("404 page not found", id="not-json"),
        pytest.param('{"status": "ok"}', id="no-error"),
        pytest.param('{"error": ""}', id="empty-error"),
    ],
)
def test_error_from_body_not_an_ollama_error(body: str) -> None:
    assert PROVIDER.error_from_body(body) is None
