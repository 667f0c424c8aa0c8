"""OpenAI-compatible hosts' deviations from the Chat Completions stream, each from a recorded-shape fixture.

Every fixture goes through ``feed_all_ways`` (whole, byte by byte, split at
every point): Mistral's list-of-parts content, inline ``<think>`` tags,
Groq's ``x_groq.usage``, OpenRouter's comments and numeric error codes,
DeepSeek's reasoning and cache-hit usage, tool-call deltas without ``index``.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, List

import pytest

from helpers import feed_all_ways, load_fixture
from llmstream._events import Finish, TextDelta, ThinkingDelta, ToolCall, ToolCallDelta, Usage
from llmstream._exceptions import MalformedStreamError, ProviderError
from llmstream._providers import PROVIDERS
from llmstream._providers._base import StreamDecoder
from llmstream._providers._think import ThinkTagSplitter
from llmstream._providers.openai_chat import OpenAIChatDecoder
from llmstream.sse import ServerSentEvent

CHAT = PROVIDERS["openai"]
THINK = PROVIDERS["openai-think"]


def decode(name: str, provider: Any = CHAT, folder: str = "openai_chat") -> List[Any]:
    return feed_all_ways(lambda: StreamDecoder(provider.new_decoder(), framing="sse"), load_fixture(folder, name))


def joined(events: List[Any]) -> List[Any]:
    """Adjacent deltas of one kind joined: the splitter's cuts follow the reads, the content must not."""
    out: List[Any] = []
    for kind, group in itertools.groupby(events, key=type):
        if kind in (TextDelta, ThinkingDelta):
            out.append(kind("".join(event.text for event in group)))
        else:
            out.extend(group)
    return out


def test_mistral_content_parts_text_and_thinking() -> None:
    assert decode("mistral_content_parts.txt") == [
        ThinkingDelta("Okay, the user"),
        ThinkingDelta(" wants 2+2."),
        TextDelta("2 + 2"),
        TextDelta(" = 4."),
        Finish("stop"),
        Usage(10, 32, {"prompt_tokens": 10, "total_tokens": 42, "completion_tokens": 32}),
    ]


@pytest.mark.parametrize(("parts", "message"), [
    pytest.param('[{"type": "text", "text": 5}]', '"choices[0].delta.content[0].text" to be a string, got integer', id="text-not-str"),
    pytest.param('["hi"]', '"choices[0].delta.content[0]" to be an object, got string', id="part-not-object"),
    pytest.param('[{"type": "thinking", "thinking": "x"}]', '"choices[0].delta.content[0].thinking" to be a list, got string', id="thinking-not-list"),
])
def test_mistral_content_parts_are_checked(parts: str, message: str) -> None:
    data = '{"choices": [{"index": 0, "delta": {"content": %s}}]}' % parts
    with pytest.raises(MalformedStreamError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        OpenAIChatDecoder().feed(ServerSentEvent(data=data))


def test_mistral_unknown_part_types_carry_no_text() -> None:
    data = '{"choices": [{"index": 0, "delta": {"content": [{"type": "reference", "reference_ids": [1]}, {"type": "text", "text": "a"}]}}]}'
    assert OpenAIChatDecoder().feed(ServerSentEvent(data=data)) == [TextDelta("a")]


def test_groq_usage_under_x_groq() -> None:
    events = decode("groq_x_groq_usage.txt")
    assert events[:3] == [TextDelta("Hello"), TextDelta("!"), Finish("stop")]
    usage = events[3]
    assert (usage.input_tokens, usage.output_tokens, usage.raw["queue_time"]) == (36, 3, 0.020171)
    assert len(events) == 4


def test_openrouter_comments_ignored_and_error_chunk_is_a_retryable_provider_error() -> None:
    decoder = StreamDecoder(CHAT.new_decoder(), framing="sse")
    events = decoder.feed(load_fixture("openai_chat", "openrouter_comments_error.txt"))
    assert events == [TextDelta("Once"), TextDelta(" upon")]
    with pytest.raises(ProviderError) as caught:
        decoder.close()
    assert (str(caught.value), caught.value.type) == ("Provider returned error", "502")
    assert CHAT.is_retryable(caught.value)
    with pytest.raises(ProviderError):  # the same every way the bytes are cut
        decode("openrouter_comments_error.txt")


def test_openrouter_402_is_not_retryable() -> None:
    with pytest.raises(ProviderError) as caught:
        decode("openrouter_error_402.txt")
    assert caught.value.type == "402"
    assert not CHAT.is_retryable(caught.value)


@pytest.mark.parametrize(("code", "retryable"), [
    (429, True), (408, True), (500, True), (502, True), (503, True), (529, True),
    (402, False), (403, False), (400, False), (401, False), (404, False),
])
def test_numeric_error_codes(code: int, retryable: bool) -> None:
    data = '{"error": {"code": %d, "message": "m"}, "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]}' % code
    with pytest.raises(ProviderError) as caught:
        OpenAIChatDecoder().feed(ServerSentEvent(data=data))
    assert caught.value.type == str(code)
    assert CHAT.is_retryable(caught.value) is retryable


def test_deepseek_reasoning_and_cache_hit_usage() -> None:
    events = decode("deepseek_cache_usage.txt")
    assert events[:3] == [ThinkingDelta("Simple sum."), TextDelta("4"), Finish("stop")]
    usage = events[3]
    assert (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens, usage.reasoning_tokens) == (1200, 20, 1152, 18)
    assert usage.raw["prompt_cache_miss_tokens"] == 48  # raw fields kept


def test_deepseek_cache_hit_without_prompt_tokens_details() -> None:
    data = '{"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 1, "prompt_cache_hit_tokens": 8, "prompt_cache_miss_tokens": 2}}'
    (usage,) = OpenAIChatDecoder().feed(ServerSentEvent(data=data))
    assert usage.cached_input_tokens == 8 and usage.cache_write_tokens is None


def test_tool_call_deltas_without_index() -> None:
    assert decode("tool_calls_no_index.txt") == [
        ToolCallDelta(0, "call_a1", "get_weather", '{"city":"Paris"}'),
        ToolCallDelta(1, "call_b2", "get_time", '{"tz":"CET"}'),
        ToolCall(0, "call_a1", "get_weather", {"city": "Paris"}, '{"city":"Paris"}'),
        ToolCall(1, "call_b2", "get_time", {"tz": "CET"}, '{"tz":"CET"}'),
        Finish("tool_calls"),
    ]


def test_think_tags_straddling_chunks() -> None:
    events = decode("think_tags.txt", THINK, "openai_think")
    assert joined(events) == [
        ThinkingDelta("\nThe user"),
        TextDelta("\n\n2 + 2 < 5 is true; 4."),
        Finish("stop"),
        Usage(9, 21, {"prompt_tokens": 9, "total_tokens": 30, "completion_tokens": 21}),
    ]


def test_think_tags_off_by_default_text_kept_verbatim() -> None:
    events = decode("think_tags.txt", folder="openai_think")
    assert joined(events)[0] == TextDelta("<think>\nThe user</think>\n\n2 + 2 < 5 is true; 4.")


# -- the splitter alone, at every split of every sample ------------------------------------

SAMPLES = [
    "<think>a</think>b",
    "x<think>reason</think>answer",
    "no tags at all",
    "a < b and c <th and <thinking> too",
    "<think>unclosed",
    "</think>stray close",
    "<think></think>",
    "<think>one</think>mid<think>two</think>end",
    "<<think>>x</think></think>",
    "ends with <thi",
]


def expected(text: str) -> List[Any]:
    """The reference result: a regex-free scan of the whole text at once."""
    out: List[Any] = []
    thinking = False
    while text:
        tag = "</think>" if thinking else "<think>"
        at = text.find(tag)
        piece = text if at < 0 else text[:at]
        if piece:
            out.append(ThinkingDelta(piece) if thinking else TextDelta(piece))
        if at < 0:
            break
        thinking = not thinking
        text = text[at + len(tag):]
    return out


def run(pieces: List[str]) -> List[Any]:
    splitter = ThinkTagSplitter()
    out: List[Any] = []
    for piece in pieces:
        out.extend(splitter.feed(piece))
    out.extend(splitter.close())
    return joined(out)


@pytest.mark.parametrize("text", SAMPLES)
def test_splitter_every_two_and_three_way_split(text: str) -> None:
    want = expected(text)
    assert run([text]) == want
    assert run(list(text)) == want  # one character at a time
    for i, j in itertools.combinations_with_replacement(range(len(text) + 1), 2):
        assert run([text[:i], text[i:j], text[j:]]) == want, (i, j)


def test_splitter_holds_back_only_a_possible_tag() -> None:
    splitter = ThinkTagSplitter()
    assert splitter.feed("a <b") == [TextDelta("a <b")]
    assert splitter.feed("x <th") == [TextDelta("x ")]
    assert splitter.feed("e") == [TextDelta("<the")]
    assert splitter.feed("<think") == []
    assert splitter.feed(">") == []
    assert splitter.thinking
    assert splitter.feed("r</") == [ThinkingDelta("r")]
    assert splitter.close() == [ThinkingDelta("</")]


def test_splitter_hostile_tag_fragments_stay_linear_and_lossless() -> None:
    # 120,000 pieces that each could start a tag, and tags opened and closed in
    # every piece: nothing lost, nothing held beyond a tag's length.
    pieces = ["<thi", "x<", "/think", "<think>", "a</thi", "nk>"] * 20_000
    splitter = ThinkTagSplitter()
    out: List[Any] = []
    for piece in pieces:
        out.extend(splitter.feed(piece))
        assert len(splitter._held) < len("</think>")
    out.extend(splitter.close())
    assert joined(out) == joined(expected("".join(pieces)))


def chunk(content: Any = None, finish: Any = None, **delta: Any) -> ServerSentEvent:
    if content is not None:
        delta["content"] = content
    return ServerSentEvent(data=json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}))


def test_think_decoder_hands_over_a_held_partial_tag_before_the_end() -> None:
    decoder = THINK.new_decoder()
    assert decoder.feed(chunk("a <thi")) == [TextDelta("a ")]
    # a usage chunk between the two halves does not end the text
    usage = ServerSentEvent(data='{"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}')
    assert decoder.feed(usage) == [Usage(1, 1, {"prompt_tokens": 1, "completion_tokens": 1})]
    assert decoder.feed(chunk("s")) == [TextDelta("<this")]
    assert decoder.feed(chunk(" <")) == [TextDelta(" ")]
    call = {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}]}
    assert decoder.feed(chunk(None, "tool_calls", **call)) == [
        ToolCallDelta(0, "c", "f", "{}"), TextDelta("<"), ToolCall(0, "c", "f", {}, "{}"), Finish("tool_calls")]


@pytest.mark.parametrize("end", ["[DONE]", "close"])
def test_think_decoder_flushes_at_done_and_close(end: str) -> None:
    decoder = THINK.new_decoder()
    assert decoder.feed(chunk("<think>hm</th")) == [ThinkingDelta("hm")]
    if end == "[DONE]":
        assert decoder.feed(ServerSentEvent(data="[DONE]")) == [ThinkingDelta("</th")]
        assert decoder.close() == []
    else:
        assert decoder.feed(chunk(None, "stop")) == [ThinkingDelta("</th"), Finish("stop")]
        assert decoder.close() == []
