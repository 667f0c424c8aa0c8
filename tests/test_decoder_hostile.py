"""Hostile JSON against every provider decoder: wrong types, deep nesting, absurd numbers.

Each bad message is fed in the same bytes right after a valid one: the valid
event must be delivered, then the exact MalformedStreamError raised (and
raised again: the decoder stays failed).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, List, Tuple

import pytest

from llmstream import RateLimit
from llmstream._events import Event, Finish, OutputItem, StreamMetrics, StreamReport, TextDelta, ToolCall, ToolCallDelta, Usage
from llmstream._exceptions import MalformedStreamError, StreamError
from llmstream._fastjson import JSONNestingError, MAX_DEPTH, loads
from llmstream._flow import RateLimiter
from llmstream._monitor import Monitor
from llmstream._providers import PROVIDERS
from llmstream._providers._base import StreamDecoder

DEEP = "[" * 100_000
TOO_DEEP_VALUE = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
COUNT = "a token count (a whole number from 0 to 1000000000)"

#: One valid text message per provider, and the event it gives.
GOOD = {
    "openai": '{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}',
    "openai-think": '{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}',
    "openai-responses": '{"type":"response.output_text.delta","sequence_number":1,"delta":"Hi"}',
    "anthropic": '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}',
    "ollama": '{"message":{"role":"assistant","content":"Hi"},"done":false}',
    "gemini": '{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},"index":0}]}',
    "vertex": '{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},"index":0}]}',
    "azure": '{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null,"content_filter_results":{}}]}',
}


def frame(provider: str, *messages: str) -> bytes:
    """The messages as the provider's framing sends them."""
    if PROVIDERS[provider].framing == "jsonl":
        return b"".join(m.encode() + b"\n" for m in messages)
    return b"".join(b"data: " + m.encode() + b"\n\n" for m in messages)


def decoder_for(provider: str) -> StreamDecoder:
    return StreamDecoder(PROVIDERS[provider].new_decoder(), framing=PROVIDERS[provider].framing)


def good_then_bad(provider: str, bad: str) -> Tuple[List[Event], StreamError]:
    """Feed a valid message and ``bad`` in one piece: the events delivered, and the error after them."""
    decoder = decoder_for(provider)
    events = decoder.feed(frame(provider, GOOD[provider], bad))
    assert events == [TextDelta("Hi")]
    with pytest.raises(StreamError) as first:
        decoder.close()
    with pytest.raises(StreamError) as again:  # stays failed
        decoder.feed(frame(provider, GOOD[provider]))
    assert (type(again.value), str(again.value)) == (type(first.value), str(first.value))
    return events, first.value


def decode(provider: str, *messages: str) -> List[Event]:
    decoder = decoder_for(provider)
    return decoder.feed(frame(provider, *messages))


def chat(**choice: Any) -> str:
    return json.dumps({"choices": [{"index": 0, **choice}]})


def resp(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, "sequence_number": 2, **fields})


def ant(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields})


W_CHAT = "OpenAI chat chunk: "
W_ANT = "Anthropic 'content_block_delta' event: "

WRONG_TYPES = [
    # -- OpenAI chat
    pytest.param("openai", '"x"', W_CHAT + "expected an object, got string", id="chat-chunk-string"),
    pytest.param("openai", '{"choices": "x"}', W_CHAT + 'expected "choices" to be a list, got string', id="chat-choices-string"),
    pytest.param("openai", '{"choices": [5]}', W_CHAT + 'expected "choices[0]" to be an object, got integer', id="chat-choice-int"),
    pytest.param("openai", chat(delta=[]), W_CHAT + 'expected "choices[0].delta" to be an object, got list', id="chat-delta-list"),
    pytest.param("openai", chat(delta={"content": 5}), W_CHAT + 'expected "choices[0].delta.content" to be a string, got integer', id="chat-content-int"),
    pytest.param("openai", chat(delta={"reasoning_content": {}}), W_CHAT + 'expected "choices[0].delta.reasoning_content" to be a string, got object', id="chat-reasoning-object"),
    pytest.param("openai", chat(delta={}, finish_reason=1), W_CHAT + 'expected "choices[0].finish_reason" to be a string, got integer', id="chat-finish-int"),
    pytest.param("openai", '{"choices": [{"index": true, "delta": {}}]}', W_CHAT + 'expected "choices[0].index" to be an integer, got boolean', id="chat-index-bool"),
    pytest.param("openai", chat(delta={"tool_calls": {}}), W_CHAT + 'expected "choices[0].delta.tool_calls" to be a list, got object', id="chat-tool-calls-object"),
    pytest.param("openai", chat(delta={"tool_calls": ["f"]}), W_CHAT + 'expected "choices[0].delta.tool_calls[0]" to be an object, got string', id="chat-tool-call-string"),
    pytest.param("openai", chat(delta={"tool_calls": [{"index": -1}]}), W_CHAT + 'expected "choices[0].delta.tool_calls[0].index" to be a non-negative integer, got -1', id="chat-tool-index-negative"),
    pytest.param("openai", chat(delta={"tool_calls": [{"function": "f"}]}), W_CHAT + 'expected "choices[0].delta.tool_calls[0].function" to be an object, got string', id="chat-function-string"),
    pytest.param("openai", chat(delta={"tool_calls": [{"function": {"name": 1}}]}), W_CHAT + 'expected "choices[0].delta.tool_calls[0].function.name" to be a string, got integer', id="chat-name-int"),
    pytest.param("openai", chat(delta={"tool_calls": [{"function": {"arguments": 5}}]}), W_CHAT + 'expected "choices[0].delta.tool_calls[0].function.arguments" to be a string, got integer', id="chat-arguments-int"),
    pytest.param("openai", chat(delta={"tool_calls": [{"id": ["x"]}]}), W_CHAT + 'expected "choices[0].delta.tool_calls[0].id" to be a string, got list', id="chat-id-list"),
    pytest.param("openai", '{"choices": [], "usage": "lots"}', W_CHAT + 'expected "usage" to be an object, got string', id="chat-usage-string"),
    pytest.param("openai", '{"choices": [], "usage": {"completion_tokens": 1e999}}', W_CHAT + f'expected "usage.completion_tokens" to be {COUNT}, got inf', id="chat-usage-inf"),
    pytest.param("openai", '{"choices": [], "usage": {"prompt_tokens": -1}}', W_CHAT + f'expected "usage.prompt_tokens" to be {COUNT}, got -1', id="chat-usage-negative"),
    pytest.param("openai", '{"choices": [], "usage": {"prompt_tokens": 1000000001}}', W_CHAT + f'expected "usage.prompt_tokens" to be {COUNT}, got 1000000001', id="chat-usage-huge"),
    pytest.param("openai", '{"choices": [], "usage": {"prompt_tokens": 2.5}}', W_CHAT + f'expected "usage.prompt_tokens" to be {COUNT}, got 2.5', id="chat-usage-fraction"),
    pytest.param("openai", '{"choices": [], "usage": {"prompt_tokens": "12"}}', W_CHAT + f'expected "usage.prompt_tokens" to be {COUNT}, got string', id="chat-usage-string-count"),
    pytest.param("openai", '{"choices": [], "usage": {"prompt_tokens": true}}', W_CHAT + f'expected "usage.prompt_tokens" to be {COUNT}, got boolean', id="chat-usage-bool"),
    # -- OpenAI-compatible quirks (issue 12): Mistral parts, Groq usage, cache and reasoning counts
    pytest.param("openai", chat(delta={"content": [{"type": "text", "text": []}]}), W_CHAT + 'expected "choices[0].delta.content[0].text" to be a string, got list', id="chat-part-text-list"),
    pytest.param("openai", chat(delta={"content": [7]}), W_CHAT + 'expected "choices[0].delta.content[0]" to be an object, got integer', id="chat-part-int"),
    pytest.param("openai", chat(delta={"content": [{"type": "thinking", "thinking": [{"text": 1}]}]}), W_CHAT + 'expected "choices[0].delta.content[0].thinking[0].text" to be a string, got integer', id="chat-part-thinking-int"),
    pytest.param("openai", '{"choices": [], "x_groq": {"usage": "lots"}}', W_CHAT + 'expected "x_groq.usage" to be an object, got string', id="chat-groq-usage-string"),
    pytest.param("openai", '{"choices": [], "x_groq": {"usage": {"prompt_tokens": 1e999}}}', W_CHAT + f'expected "x_groq.usage.prompt_tokens" to be {COUNT}, got inf', id="chat-groq-usage-inf"),
    pytest.param("openai", '{"choices": [], "usage": {"prompt_tokens_details": {"cached_tokens": -3}}}', W_CHAT + f'expected "usage.prompt_tokens_details.cached_tokens" to be {COUNT}, got -3', id="chat-cached-negative"),
    pytest.param("openai", '{"choices": [], "usage": {"prompt_cache_hit_tokens": 1e999}}', W_CHAT + f'expected "usage.prompt_cache_hit_tokens" to be {COUNT}, got inf', id="chat-deepseek-cache-inf"),
    pytest.param("openai", '{"choices": [], "usage": {"completion_tokens_details": {"reasoning_tokens": "9"}}}', W_CHAT + f'expected "usage.completion_tokens_details.reasoning_tokens" to be {COUNT}, got string', id="chat-reasoning-string"),
    pytest.param("openai", '{"choices": [], "usage": {"prompt_tokens_details": []}}', W_CHAT + 'expected "usage.prompt_tokens_details" to be an object, got list', id="chat-details-list"),
    pytest.param("openai-responses", '{"type": "response.completed", "response": {"usage": {"input_tokens_details": {"cached_tokens": 1e999}}}}', f"OpenAI Responses 'response.completed' event: expected \"response.usage.input_tokens_details.cached_tokens\" to be {COUNT}, got inf", id="resp-cached-inf"),
    pytest.param("openai-responses", resp("response.output_item.done", item="x"), "OpenAI Responses 'response.output_item.done' event: expected \"item\" to be an object, got string", id="resp-item-done-string"),
    pytest.param("anthropic", '{"type": "message_start", "message": {"usage": {"cache_read_input_tokens": -1}}}', f"Anthropic 'message_start' event: expected \"message.usage.cache_read_input_tokens\" to be {COUNT}, got -1", id="ant-cache-read-negative"),
    pytest.param("anthropic", ant("content_block_delta", index=0, delta={"type": "signature_delta", "signature": 5}), W_ANT + 'expected "delta.signature" to be a string, got integer', id="ant-signature-int"),
    pytest.param("anthropic", ant("content_block_start", index=0, content_block={"type": "thinking", "signature": []}), "Anthropic 'content_block_start' event: expected \"content_block.signature\" to be a string, got list", id="ant-start-signature-list"),
    pytest.param("anthropic", ant("content_block_start", index=0, content_block={"type": "redacted_thinking", "data": 5}), "Anthropic 'content_block_start' event: expected \"content_block.data\" to be a string, got integer", id="ant-redacted-data-int"),
    # -- OpenAI Responses
    pytest.param("openai-responses", '{"type": ["x"]}', 'OpenAI Responses event: expected "type" to be a string, got list', id="resp-type-list"),
    pytest.param("openai-responses", '{"type": "x", "sequence_number": "3"}', 'OpenAI Responses event: expected "sequence_number" to be an integer, got string', id="resp-seq-string"),
    pytest.param("openai-responses", resp("response.output_text.delta", delta=5), "OpenAI Responses 'response.output_text.delta' event: expected \"delta\" to be a string, got integer", id="resp-text-int"),
    pytest.param("openai-responses", resp("response.reasoning_text.delta", delta=[]), "OpenAI Responses 'response.reasoning_text.delta' event: expected \"delta\" to be a string, got list", id="resp-thinking-list"),
    pytest.param("openai-responses", resp("response.created", response="r"), "OpenAI Responses 'response.created' event: expected \"response\" to be an object, got string", id="resp-created-string"),
    pytest.param("openai-responses", resp("response.output_item.added", item="x"), "OpenAI Responses 'response.output_item.added' event: expected \"item\" to be an object, got string", id="resp-item-string"),
    pytest.param("openai-responses", resp("response.output_item.added", item={"type": "function_call", "name": 3}), "OpenAI Responses 'response.output_item.added' event: expected \"item.name\" to be a string, got integer", id="resp-item-name-int"),
    pytest.param("openai-responses", resp("response.function_call_arguments.delta", item_id="i", delta={}), "OpenAI Responses 'response.function_call_arguments.delta' event: expected \"delta\" to be a string, got object", id="resp-arguments-object"),
    pytest.param("openai-responses", resp("response.function_call_arguments.delta", item_id=7, delta="x"), "OpenAI Responses 'response.function_call_arguments.delta' event: expected \"item_id\" to be a string, got integer", id="resp-item-id-int"),
    pytest.param("openai-responses", resp("response.completed", response={"usage": "lots"}), "OpenAI Responses 'response.completed' event: expected \"response.usage\" to be an object, got string", id="resp-usage-string"),
    pytest.param("openai-responses", '{"type": "response.completed", "response": {"usage": {"output_tokens": 1e999}}}', f"OpenAI Responses 'response.completed' event: expected \"response.usage.output_tokens\" to be {COUNT}, got inf", id="resp-usage-inf"),
    pytest.param("openai-responses", resp("response.incomplete", response={"incomplete_details": {"reason": 1}}), "OpenAI Responses 'response.incomplete' event: expected \"response.incomplete_details.reason\" to be a string, got integer", id="resp-reason-int"),
    pytest.param("openai-responses", resp("response.failed", response=[]), "OpenAI Responses 'response.failed' event: expected \"response\" to be an object, got list", id="resp-failed-list"),
    # -- Anthropic
    pytest.param("anthropic", '{"type": 5}', "Anthropic 'message' event: expected \"type\" to be a string, got integer", id="ant-type-int"),
    pytest.param("anthropic", ant("message_start", message="m"), "Anthropic 'message_start' event: expected \"message\" to be an object, got string", id="ant-message-string"),
    pytest.param("anthropic", ant("message_start", message={"usage": []}), "Anthropic 'message_start' event: expected \"message.usage\" to be an object, got list", id="ant-usage-list"),
    pytest.param("anthropic", '{"type": "message_start", "message": {"usage": {"input_tokens": 1e999}}}', f"Anthropic 'message_start' event: expected \"message.usage.input_tokens\" to be {COUNT}, got inf", id="ant-usage-inf"),
    pytest.param("anthropic", ant("content_block_start", index="0", content_block={}), "Anthropic 'content_block_start' event: expected \"index\" to be an integer, got string", id="ant-index-string"),
    pytest.param("anthropic", ant("content_block_start", index=0, content_block={"type": "text", "text": 5}), "Anthropic 'content_block_start' event: expected \"content_block.text\" to be a string, got integer", id="ant-block-text-int"),
    pytest.param("anthropic", ant("content_block_start", index=0, content_block={"type": "tool_use", "id": 1, "name": "f"}), "Anthropic 'content_block_start' event: expected \"content_block.id\" to be a string, got integer", id="ant-tool-id-int"),
    pytest.param("anthropic", ant("content_block_delta", index=0, delta=None), W_ANT + 'expected "delta" to be an object, got null', id="ant-delta-null"),
    pytest.param("anthropic", ant("content_block_delta", index=0, delta={"type": 1}), W_ANT + 'expected "delta.type" to be a string, got integer', id="ant-delta-type-int"),
    pytest.param("anthropic", ant("content_block_delta", index=0, delta={"type": "text_delta", "text": 5}), W_ANT + 'expected "delta.text" to be a string, got integer', id="ant-text-int"),
    pytest.param("anthropic", ant("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": None}), W_ANT + 'expected "delta.thinking" to be a string, got null', id="ant-thinking-null"),
    pytest.param("anthropic", ant("message_delta", delta="d"), "Anthropic 'message_delta' event: expected \"delta\" to be an object, got string", id="ant-message-delta-string"),
    pytest.param("anthropic", ant("message_delta", delta={"stop_reason": 1}), "Anthropic 'message_delta' event: expected \"delta.stop_reason\" to be a string, got integer", id="ant-stop-reason-int"),
    pytest.param("anthropic", '{"type": "message_delta", "usage": {"output_tokens": 1e999}}', f"Anthropic 'message_delta' event: expected \"usage.output_tokens\" to be {COUNT}, got inf", id="ant-delta-usage-inf"),
    # -- Ollama
    pytest.param("ollama", '{"message": "hi"}', 'Ollama stream line: expected "message" to be an object, got string', id="ollama-message-string"),
    pytest.param("ollama", '{"message": {"content": 5}}', 'Ollama stream line: expected "message.content" to be a string, got integer', id="ollama-content-int"),
    pytest.param("ollama", '{"message": {"thinking": []}}', 'Ollama stream line: expected "message.thinking" to be a string, got list', id="ollama-thinking-list"),
    pytest.param("ollama", '{"message": {"tool_calls": {}}}', 'Ollama stream line: expected "message.tool_calls" to be a list, got object', id="ollama-tool-calls-object"),
    pytest.param("ollama", '{"message": {"tool_calls": [{"function": {"name": "f", "arguments": 5}}]}}', 'Ollama stream line: expected "message.tool_calls[0].function.arguments" to be an object, got integer', id="ollama-arguments-int"),
    pytest.param("ollama", '{"message": {"tool_calls": [{"id": 5, "function": {"name": "f"}}]}}', 'Ollama stream line: expected "message.tool_calls[0].id" to be a string, got integer', id="ollama-id-int"),
    pytest.param("ollama", '{"done": "yes"}', 'Ollama stream line: expected "done" to be a boolean, got string', id="ollama-done-string"),
    pytest.param("ollama", '{"done": true, "done_reason": 1}', 'Ollama stream line: expected "done_reason" to be a string, got integer', id="ollama-done-reason-int"),
    pytest.param("ollama", '{"done": true, "eval_count": 1e999}', f'Ollama stream line: expected "eval_count" to be {COUNT}, got inf', id="ollama-eval-inf"),
    pytest.param("gemini", '{"candidates": [{"content": {"parts": "x"}, "index": 0}]}', 'Gemini chunk: expected "candidates[0].content.parts" to be a list, got string', id="gemini-parts-string"),
    pytest.param("gemini", '{"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": []}}]}, "index": 0}]}', 'Gemini chunk: expected "candidates[0].content.parts[0].functionCall.args" to be an object, got list', id="gemini-args-list"),
    pytest.param("gemini", '{"usageMetadata": {"candidatesTokenCount": -1}}', f'Gemini chunk: expected "usageMetadata.candidatesTokenCount" to be {COUNT}, got -1', id="gemini-count-negative"),
    pytest.param("gemini", '{"promptFeedback": {"blockReason": 3}}', 'Gemini chunk: expected "promptFeedback.blockReason" to be a string, got integer', id="gemini-block-reason-int"),
    pytest.param("vertex", '{"candidates": [{"index": "0"}]}', 'Gemini chunk: expected "candidates[0].index" to be an integer, got string', id="vertex-index-string"),
    pytest.param("azure", '{"choices": [], "prompt_filter_results": "x"}', 'Azure OpenAI chunk: expected "prompt_filter_results" to be a list, got string', id="azure-prompt-filter-string"),
    pytest.param("azure", '{"choices": [{"index": 0, "delta": {"content": 5}}]}', 'OpenAI chat chunk: expected "choices[0].delta.content" to be a string, got integer', id="azure-content-int"),
    pytest.param("ollama", '{"done": true, "prompt_eval_count": -1}', f'Ollama stream line: expected "prompt_eval_count" to be {COUNT}, got -1', id="ollama-prompt-negative"),
]


@pytest.mark.parametrize("provider, bad, message", WRONG_TYPES)
def test_wrong_type_is_malformed_after_the_events_before_it(provider: str, bad: str, message: str) -> None:
    _, error = good_then_bad(provider, bad)
    assert type(error) is MalformedStreamError
    assert str(error) == message


@pytest.mark.parametrize(
    "provider, messages, expected",
    [
        pytest.param("openai", [chat(delta={"content": None, "tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": ""}}]}, finish_reason=None)],
                     [ToolCallDelta(0, "c", "f", "")], id="chat-content-null-on-tool-delta"),
        pytest.param("openai", [chat(delta=None, finish_reason=None), '{"choices": null, "usage": null}'], [], id="chat-nulls"),
        pytest.param("openai", ['{"choices": [], "usage": {"prompt_tokens": 12.0, "completion_tokens": 3}}'],
                     [Usage(12, 3, {"prompt_tokens": 12.0, "completion_tokens": 3})], id="chat-integral-float-count"),
        pytest.param("openai", ['{"choices": [], "usage": {"prompt_tokens": 1000000000, "completion_tokens": 0}}'],
                     [Usage(10**9, 0, {"prompt_tokens": 10**9, "completion_tokens": 0})], id="chat-count-at-bound"),
        pytest.param("anthropic", [ant("message_delta", delta={"stop_reason": None}, usage={"output_tokens": 7})],
                     [Usage(None, 7, {"output_tokens": 7})], id="ant-stop-reason-null"),
        pytest.param("ollama", ['{"message": {"role": "assistant", "content": null}, "done": false}'], [], id="ollama-content-null"),
    ],
)
def test_documented_nulls_and_whole_floats_are_accepted(provider: str, messages: List[str], expected: List[Event]) -> None:
    assert decode(provider, *messages) == expected


# -- deep nesting -------------------------------------------------------------------


@pytest.mark.parametrize(
    "provider, message",
    [
        pytest.param("openai", "invalid JSON in stream data: '" + "[" * 80 + "...'", id="openai"),
        pytest.param("openai-responses", "invalid JSON in stream data: '" + "[" * 80 + "...'", id="openai-responses"),
        pytest.param("anthropic", "invalid JSON in Anthropic 'message' event: " + repr("[" * 80 + "..."), id="anthropic"),
        pytest.param("gemini", "invalid JSON in stream data: '" + "[" * 80 + "'", id="gemini"),
        pytest.param("azure", "invalid JSON in stream data: '" + "[" * 80 + "...'", id="azure"),
        pytest.param("ollama", "invalid JSON on line 2: " + repr("[" * 80) + f" (JSON nested deeper than {MAX_DEPTH} levels)", id="ollama"),
    ],
)
@pytest.mark.parametrize("bad", [pytest.param(DEEP, id="100000-deep"), pytest.param(TOO_DEEP_VALUE, id="one-over-the-limit")])
def test_deep_data_line_is_malformed(provider: str, message: str, bad: str) -> None:
    _, error = good_then_bad(provider, bad)
    assert type(error) is MalformedStreamError
    assert str(error) == message


def test_depth_limit_is_exact_and_strings_do_not_count() -> None:
    at_limit = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert loads(at_limit) == json.loads(at_limit)
    assert loads(json.dumps({"a": "[" * 10_000})) == {"a": "[" * 10_000}
    assert loads(json.dumps([[]] * 10_000)) == [[]] * 10_000  # many brackets, shallow
    with pytest.raises(JSONNestingError, match=f"^JSON nested deeper than {MAX_DEPTH} levels$"):
        loads(TOO_DEEP_VALUE)
    with pytest.raises(JSONNestingError):
        loads(" " + DEEP)  # the json.loads fallback path too


def deep_arguments_stream(provider: str) -> Tuple[List[str], List[Event]]:
    """A tool call whose arguments are 100000 '[': the messages, and the events expected."""
    call = ToolCall(0, "c", "f", None, DEEP)
    if provider in ("gemini", "vertex"):
        # Gemini sends arguments as an object inside the chunk: a deep string in it is kept as text.
        args = {"s": DEEP}
        raw = json.dumps(args)
        line = json.dumps({"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": args}}]}, "index": 0}]})
        return [line], [ToolCallDelta(0, "", "f", raw), ToolCall(0, "", "f", args, raw),
                        OutputItem({"functionCall": {"name": "f", "args": args}})]
    if provider in ("openai", "azure", "openai-think"):
        fragment = {"index": 0, "id": "c", "function": {"name": "f", "arguments": DEEP}}
        return [chat(delta={"tool_calls": [fragment]}), chat(delta={}, finish_reason="tool_calls")], \
            [ToolCallDelta(0, "c", "f", DEEP), call, Finish("tool_calls")]
    if provider == "openai-responses":
        item = {"type": "function_call", "id": "i", "call_id": "c", "name": "f"}
        return [resp("response.output_item.added", item=item), resp("response.function_call_arguments.done", item_id="i", arguments=DEEP)], \
            [ToolCallDelta(0, "c", "f", ""), call]
    if provider == "anthropic":
        return [ant("content_block_start", index=0, content_block={"type": "tool_use", "id": "c", "name": "f"}),
                ant("content_block_delta", index=0, delta={"type": "input_json_delta", "partial_json": DEEP}),
                ant("content_block_stop", index=0)], [ToolCallDelta(0, "c", "f", ""), ToolCallDelta(0, None, None, DEEP), call,
                                                      OutputItem({"type": "tool_use", "id": "c", "name": "f", "input": {}})]
    line = json.dumps({"message": {"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": DEEP}}]}, "done": False})
    return [line], [ToolCallDelta(0, "c", "f", DEEP), call]


@pytest.mark.parametrize("provider", sorted(GOOD))
def test_deep_tool_arguments_are_kept_raw_not_parsed(provider: str) -> None:
    messages, expected = deep_arguments_stream(provider)
    assert decode(provider, *messages) == expected


@pytest.mark.parametrize("provider", sorted(GOOD))
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(DEEP, id="deep"),
        pytest.param('{"error": ' + TOO_DEEP_VALUE + "}", id="deep-inside-error"),
        pytest.param('{"error": {"message": ' + TOO_DEEP_VALUE + "}}", id="deep-message"),
        pytest.param(" " + DEEP, id="deep-after-whitespace"),
    ],
)
def test_deep_error_body_is_not_an_error_object(provider: str, body: str) -> None:
    assert PROVIDERS[provider].error_from_body(body) is None


# -- the safety net in StreamDecoder --------------------------------------------------


class _BuggyDecoder:
    """A provider decoder with a missing check: the second message hits a TypeError."""

    finished = False

    def __init__(self) -> None:
        self.seen = 0

    def feed(self, message: Any) -> List[Event]:
        self.seen += 1
        if self.seen == 2:
            return [TextDelta(None + "x")]  # type: ignore[operator]
        return [TextDelta("a")]

    def close(self) -> List[Event]:
        return []


def test_unexpected_decoder_error_becomes_malformed_after_the_events_before_it() -> None:
    decoder = StreamDecoder(_BuggyDecoder(), framing="jsonl")
    assert decoder.feed(b"1\n2\n3\n") == [TextDelta("a")]
    kept = decoder.error  # what the worker raises once the events are delivered
    assert type(kept) is MalformedStreamError
    assert type(kept.__cause__) is TypeError  # chained, as ``raise ... from exc``
    with pytest.raises(MalformedStreamError) as info:
        decoder.close()
    assert str(info.value) == str(kept) == (
        "the stream's data has a shape the decoder does not handle "
        "(TypeError: unsupported operand type(s) for +: 'NoneType' and 'str')"
    )
    assert info.value.__cause__ is kept  # raised again as a copy chained to the original
    with pytest.raises(MalformedStreamError) as again:
        decoder.feed(b"4\n")
    assert str(again.value) == str(info.value)


def test_unexpected_decoder_error_with_nothing_before_it_raises_at_once() -> None:
    buggy = _BuggyDecoder()
    buggy.seen = 1
    decoder = StreamDecoder(buggy, framing="jsonl")
    with pytest.raises(MalformedStreamError) as info:
        decoder.feed(b"2\n")
    assert type(info.value.__cause__) is TypeError
    with pytest.raises(MalformedStreamError):
        decoder.close()


# -- second line of defence: the rate limiter and the monitor -------------------------


@pytest.mark.parametrize("tokens", [float("inf"), float("-inf"), float("nan")])
def test_rate_limiter_ignores_non_finite_corrections(tokens: float) -> None:
    limiter = RateLimiter(RateLimit(tokens_per_minute=60_000))
    limiter.correct(tokens)
    # With -inf tokens in the bucket this would wait until the deadline and raise.
    assert limiter.acquire(1.0, threading.Event(), time.monotonic() + 1.0) == pytest.approx(0.0, abs=0.05)


def test_monitor_ignores_non_finite_token_counts() -> None:
    monitor = Monitor()
    for tokens in (float("inf"), 5):
        monitor.stream_started()
        metrics = StreamMetrics(output_tokens=tokens)  # type: ignore[arg-type]
        monitor.stream_ended(StreamReport(provider="openai", base_url="http://x", model="m", outcome="finished", error=None, metrics=metrics))
    assert monitor.snapshot().output_tokens == 5
