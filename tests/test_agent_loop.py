"""Agent loops round-trip: stream, run the tool, send ``result.message`` back, per provider.

The fake server signs thinking (Anthropic ``signature``, Responses reasoning
``encrypted_content``) and, like the real APIs, answers 400 to a next request
whose assistant turn was altered: a signature missing or changed, a function
call without its reasoning item, a tool result without its call.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Dict, List

import pytest

import llmstream
from llmstream import BadRequestError
from llmstream._events import OutputItem, Retrying, ToolCall
from llmstream.testing import FakeLLMServer, Reply

USER = {"role": "user", "content": "Weather in Paris?"}
THINKING = "The user wants the weather: call get_weather."
FIRST = Reply(text="", thinking=THINKING, tool_calls=[("get_weather", {"city": "Paris"})])
SECOND = Reply(text="Sunny, 21 C.")


def client(server: FakeLLMServer, provider: str) -> llmstream.Client:
    return llmstream.Client(provider=provider, base_url=server.base_url(provider), api_key="sk-test",
                            retry=llmstream.Retry(max_attempts=1))


def tool_results(provider: str, call: ToolCall) -> List[Dict[str, Any]]:
    """The tool's answer, in the provider's request format."""
    output = json.dumps({"sky": "sunny", "celsius": 21})
    if provider == "anthropic":
        return [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": output}]}]
    if provider == "openai-responses":
        return [{"type": "function_call_output", "call_id": call.id, "output": output}]
    if provider == "ollama":
        return [{"role": "tool", "content": output, "tool_name": call.name}]
    return [{"role": "tool", "tool_call_id": call.id, "content": output}]


@pytest.mark.parametrize("provider", ["anthropic", "openai", "openai-responses", "ollama"])
def test_two_turn_tool_loop(server: FakeLLMServer, provider: str) -> None:
    server.script(FIRST, SECOND)
    with client(server, provider) as c:
        first = c.complete(messages=[USER], model="m")
        (call,) = first.tool_calls
        assert (call.name, call.arguments) == ("get_weather", {"city": "Paris"})
        conversation = [USER, *first.messages, *tool_results(provider, call)]
        second = c.complete(messages=conversation, model="m")
    assert second.text == "Sunny, 21 C."
    sent = server.requests[-1].json
    key = "input" if provider == "openai-responses" else "messages"
    assert sent[key] == json.loads(json.dumps(conversation))  # sent back exactly as built


def test_anthropic_message_keeps_the_signed_thinking_block(server: FakeLLMServer) -> None:
    server.script(FIRST)
    with client(server, "anthropic") as c:
        result = c.complete(messages=[USER], model="m")
    thinking, tool_use = result.message["content"]
    assert result.message["role"] == "assistant"
    assert (thinking["type"], thinking["thinking"]) == ("thinking", THINKING)
    assert thinking["signature"].startswith("fakesig_")
    assert tool_use == {"type": "tool_use", "id": "toolu_fake_1_0", "name": "get_weather", "input": {"city": "Paris"}}
    assert result.messages == (result.message,)


def test_anthropic_message_with_text_between_blocks(server: FakeLLMServer) -> None:
    server.script(Reply(text="Let me check.", thinking=THINKING, tool_calls=[("f", {})]))
    with client(server, "anthropic") as c:
        result = c.complete(messages=[USER], model="m")
    assert [b["type"] for b in result.message["content"]] == ["thinking", "text", "tool_use"]
    assert result.message["content"][1] == {"type": "text", "text": "Let me check."}


@pytest.mark.parametrize(("alter", "message"), [
    pytest.param(lambda blocks: blocks[0].update(signature=blocks[0]["signature"][:-1] + "x"),
                 "messages.1.content.0: Invalid `signature` in `thinking` block", id="altered-signature"),
    pytest.param(lambda blocks: blocks[0].pop("signature"),
                 "messages.1.content.0.thinking.signature: Field required", id="missing-signature"),
    pytest.param(lambda blocks: blocks[0].update(thinking=blocks[0]["thinking"] + "!"),
                 "messages.1.content.0: Invalid `signature` in `thinking` block", id="altered-thinking"),
    pytest.param(lambda blocks: blocks.pop(1),
                 "messages.2.content.0: unexpected `tool_use_id` found in `tool_result` blocks: toolu_fake_1_0. "
                 "Each `tool_result` block must have a corresponding `tool_use` block in the previous message.",
                 id="tool-use-dropped"),
])
def test_anthropic_altered_turn_is_refused(server: FakeLLMServer, alter: Any, message: str) -> None:
    server.script(FIRST, SECOND)
    with client(server, "anthropic") as c:
        first = c.complete(messages=[USER], model="m")
        turn = copy.deepcopy(first.message)
        alter(turn["content"])
        with pytest.raises(BadRequestError) as caught:
            c.complete(messages=[USER, turn, *tool_results("anthropic", first.tool_calls[0])], model="m")
    assert caught.value.status_code == 400
    assert str(caught.value.message).endswith(message)


def test_responses_function_call_without_its_reasoning_item_is_refused(server: FakeLLMServer) -> None:
    server.script(FIRST, SECOND)
    with client(server, "openai-responses") as c:
        first = c.complete(messages=[USER], model="m")
        assert [item["type"] for item in first.message] == ["reasoning", "function_call"]
        assert first.message[0]["encrypted_content"].startswith("fakesig_")
        without = [item for item in first.message if item["type"] != "reasoning"]
        with pytest.raises(BadRequestError) as caught:
            c.complete(messages=[USER, *without, *tool_results("openai-responses", first.tool_calls[0])], model="m")
    assert str(caught.value.message).endswith(
        "Item 'fc_fake_1_0' of type 'function_call' was provided without its required 'reasoning' item: 'rs_fake_1'.")


def test_responses_altered_encrypted_content_is_refused(server: FakeLLMServer) -> None:
    server.script(FIRST, SECOND)
    with client(server, "openai-responses") as c:
        first = c.complete(messages=[USER], model="m")
        items = copy.deepcopy(first.message)
        items[0]["encrypted_content"] += "x"
        with pytest.raises(BadRequestError) as caught:
            c.complete(messages=[USER, *items, *tool_results("openai-responses", first.tool_calls[0])], model="m")
    assert str(caught.value.message).endswith("The encrypted content for item rs_fake_1 could not be verified.")


def test_chat_tool_result_without_the_assistant_tool_calls_is_refused(server: FakeLLMServer) -> None:
    server.script(FIRST, SECOND)
    with client(server, "openai") as c:
        first = c.complete(messages=[USER], model="m")
        assert first.message == {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_fake_1_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
        with pytest.raises(BadRequestError) as caught:
            c.complete(messages=[USER, *tool_results("openai", first.tool_calls[0])], model="m")
    assert "must be a response to a preceeding message with 'tool_calls'" in str(caught.value.message)


def test_replayed_attempt_replaces_the_failed_attempts_signed_blocks(server: FakeLLMServer) -> None:
    # The first attempt breaks after its thinking block and some text; the replay
    # signs its own blocks: the turn holds the replay's, once.
    server.script(Reply(text="Let me check the weather.", thinking=THINKING, close_after_tokens=2),
                  Reply(text="Let me check the weather.", thinking=THINKING))
    with llmstream.Client(provider="anthropic", base_url=server.base_url("anthropic"), api_key="k",
                          retry=llmstream.Retry(max_attempts=2, resume="replay", initial_delay=0.01)) as c:
        with c.stream(messages=[USER], model="m") as s:
            events = list(s.events())
            result = s.result
    retry = [e for e in events if isinstance(e, Retrying)]
    assert [r.resume for r in retry] == ["replay"]
    assert len([e for e in events if isinstance(e, OutputItem)]) == 3  # thinking; then thinking, text again
    assert [b["type"] for b in result.message["content"]] == ["thinking", "text"]
    assert result.message["content"][1]["text"] == "Let me check the weather."


def body_bytes(server: FakeLLMServer, provider: str, reply: Reply) -> bytes:
    """The body the fake server streams for ``reply`` (to cut a later copy of it at a chosen byte)."""
    import requests

    server.script(reply)
    path = {"anthropic": "/v1/messages", "openai-responses": "/v1/responses"}[provider]
    with requests.post(server.url + path, json={"model": "m", "stream": True, "messages": [USER], "input": [USER]},
                       timeout=10) as response:
        return response.content


@pytest.mark.parametrize(("provider", "marker"), [
    ("anthropic", b"event: message_delta"),
    ("openai-responses", b"event: response.completed"),
])
def test_replay_after_a_tool_call_keeps_the_callers_tool_ids(server: FakeLLMServer, provider: str, marker: bytes) -> None:
    # The first attempt breaks after the whole tool call was delivered; the replay
    # has its own call ids, but the caller holds the first ones and answers with
    # them: the turn sent back must carry those, and the loop must go on.
    reply = Reply(text="", thinking=THINKING, tool_calls=[("get_weather", {"city": "Paris"})])
    cut = body_bytes(server, provider, reply).index(marker)
    server.script(Reply(text="", thinking=THINKING, tool_calls=[("get_weather", {"city": "Paris"})], close_after_bytes=cut),
                  reply, SECOND)
    with llmstream.Client(provider=provider, base_url=server.base_url(provider), api_key="k",
                          retry=llmstream.Retry(max_attempts=2, resume="replay", initial_delay=0.01)) as c:
        first = c.complete(messages=[USER], model="m")
        assert first.attempts == 2
        (call,) = first.tool_calls
        assert call.id.endswith("_2_0")  # the first attempt was request 1 here: body_bytes made it
        second = c.complete(messages=[USER, *first.messages, *tool_results(provider, call)], model="m")
    assert second.text == "Sunny, 21 C."


THINKING_ON = {"thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 2048}


def test_anthropic_redacted_thinking_round_trips(server: FakeLLMServer) -> None:
    server.script(Reply(text="", thinking=THINKING, redacted_thinking=True, tool_calls=[("get_weather", {"city": "Paris"})]),
                  SECOND)
    with client(server, "anthropic") as c:
        first = c.complete(messages=[USER], model="m", **THINKING_ON)
        assert [b["type"] for b in first.message["content"]] == ["redacted_thinking", "thinking", "tool_use"]
        second = c.complete(messages=[USER, first.message, *tool_results("anthropic", first.tool_calls[0])],
                            model="m", **THINKING_ON)
    assert second.text == "Sunny, 21 C."


@pytest.mark.parametrize(("alter", "message"), [
    pytest.param(lambda blocks: blocks[0].update(data=blocks[0]["data"].replace(".", "x.", 1)),
                 "messages.1.content.0: Invalid `data` in `redacted_thinking` block", id="altered-redacted-data"),
    pytest.param(lambda blocks: blocks.__delitem__(slice(0, 2)),
                 "messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found `tool_use`. "
                 "When `thinking` is enabled, a final `assistant` message must start with a thinking block "
                 "(preceeding the lastmost set of `tool_use` and `tool_result` blocks).", id="thinking-dropped"),
])
def test_anthropic_thinking_on_altered_or_dropped_is_refused(server: FakeLLMServer, alter: Any, message: str) -> None:
    server.script(Reply(text="", thinking=THINKING, redacted_thinking=True, tool_calls=[("get_weather", {"city": "Paris"})]),
                  SECOND)
    with client(server, "anthropic") as c:
        first = c.complete(messages=[USER], model="m", **THINKING_ON)
        turn = copy.deepcopy(first.message)
        alter(turn["content"])
        with pytest.raises(BadRequestError) as caught:
            c.complete(messages=[USER, turn, *tool_results("anthropic", first.tool_calls[0])], model="m", **THINKING_ON)
    assert str(caught.value.message).endswith(message)
