"""Agent loops round-trip: stream, run the tool, send ``result.message`` back, per provider.

The fake server signs thinking (Anthropic ``signature``, Responses reasoning
``encrypted_content``, Gemini ``thoughtSignature``) and, like the real APIs, answers 400 to a next request
whose assistant turn was altered: a signature missing or changed, a function
call without its reasoning item, a tool result without its call.
"""

from __future__ import annotations

import base64
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


#: Gemini's format, on AI Studio's path and on Vertex AI's.
GEMINI = ("gemini", "vertex")
#: Vertex AI's project (a call option).
WHERE = {"vertex": {"project": "fake-project"}}


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
    if provider in GEMINI:
        return [{"role": "user", "parts": [{"functionResponse": {"name": call.name, "response": json.loads(output)}}]}]
    return [{"role": "tool", "tool_call_id": call.id, "content": output}]


@pytest.mark.parametrize("provider", ["anthropic", "openai", "openai-responses", "ollama", *GEMINI])
def test_two_turn_tool_loop(server: FakeLLMServer, provider: str) -> None:
    server.script(FIRST, SECOND)
    where = WHERE.get(provider, {})
    with client(server, provider) as c:
        first = c.complete(messages=[USER], model="m", **where)
        (call,) = first.tool_calls
        assert (call.name, call.arguments) == ("get_weather", {"city": "Paris"})
        conversation = [USER, *first.messages, *tool_results(provider, call)]
        second = c.complete(messages=conversation, model="m", **where)
    assert second.text == "Sunny, 21 C."
    sent = server.requests[-1].json
    if provider in GEMINI:  # the chat-style user message becomes a Gemini one; the rest goes as built
        assert sent["contents"] == [{"role": "user", "parts": [{"text": USER["content"]}]},
                                    *json.loads(json.dumps(conversation[1:]))]
        return
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


@pytest.mark.parametrize("provider", ["openai", "azure"])  # Azure: the same chat format, the same check
def test_chat_tool_result_without_the_assistant_tool_calls_is_refused(server: FakeLLMServer, provider: str) -> None:
    server.script(FIRST, SECOND)
    with client(server, provider) as c:
        first = c.complete(messages=[USER], model="m")
        assert first.message == {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_fake_1_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
        with pytest.raises(BadRequestError) as caught:
            c.complete(messages=[USER, *tool_results(provider, first.tool_calls[0])], model="m")
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


# -- Gemini: thoughtSignature ---------------------------------------------------------------------


def gemini_first_turn(server: FakeLLMServer, provider: str = "gemini", reply: Reply = FIRST) -> Any:
    server.script(reply, SECOND)
    c = client(server, provider)
    return c, c.complete(messages=[USER], model="m", **WHERE.get(provider, {}))


@pytest.mark.parametrize("provider", GEMINI)
def test_gemini_message_is_the_model_content_with_the_signature_as_it_came(server: FakeLLMServer, provider: str) -> None:
    reply = Reply(text="Let me check.", thinking=THINKING,
                  tool_calls=[("get_weather", {"city": "Paris"}), ("get_time", {"tz": "Europe/Paris"})])
    c, first = gemini_first_turn(server, provider, reply)
    with c:
        thought, text, weather, time_call = first.message["parts"]
        assert first.message["role"] == "model"
        assert thought == {"text": THINKING, "thought": True}  # the thought chunks, one part
        assert text == {"text": "Let me check."}  # the text chunks, one part
        signature = weather.pop("thoughtSignature")
        assert weather == {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
        assert time_call == {"functionCall": {"name": "get_time", "args": {"tz": "Europe/Paris"}}}  # only the first is signed
        assert first.tool_calls[0].signature == signature and base64.b64decode(signature).startswith(b"fake:1:")
        results = [{"role": "user", "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"sky": "sunny"}}},
            {"functionResponse": {"name": "get_time", "response": {"time": "10:00"}}}]}]
        weather["thoughtSignature"] = signature
        second = c.complete(messages=[USER, first.message, *results], model="m", **WHERE.get(provider, {}))
    assert second.text == "Sunny, 21 C."


def flip(signature: str) -> str:
    """The signature with one character in its middle changed (still base64)."""
    middle = len(signature) // 2
    return signature[:middle] + ("A" if signature[middle] != "A" else "B") + signature[middle + 1:]


MISSING = ("Function call is missing a thought_signature in functionCall parts. This is required for tools to work "
           "correctly, and missing thought_signature may lead to degraded model performance. Additional data, "
           "function call `default_api:get_weather` , position 2. Please refer to "
           "https://ai.google.dev/gemini-api/docs/thought-signatures for more details.")


@pytest.mark.parametrize(("alter", "message"), [
    pytest.param(lambda parts: parts[-1].pop("thoughtSignature"), MISSING, id="missing-signature"),
    pytest.param(lambda parts: parts[-1].update(thoughtSignature=flip(parts[-1]["thoughtSignature"])),
                 "Corrupted thought signature.", id="altered-signature"),
    pytest.param(lambda parts: parts[-1]["functionCall"]["args"].update(city="Lyon"),
                 "Corrupted thought signature.", id="altered-call"),
    pytest.param(lambda parts: parts[-1].update(thoughtSignature="bm90IG91cnM="),
                 "Corrupted thought signature.", id="foreign-signature"),
])
@pytest.mark.parametrize("provider", GEMINI)
def test_gemini_altered_turn_is_refused(server: FakeLLMServer, provider: str, alter: Any, message: str) -> None:
    c, first = gemini_first_turn(server, provider)
    with c:
        turn = copy.deepcopy(first.message)
        alter(turn["parts"])
        with pytest.raises(BadRequestError) as caught:
            c.complete(messages=[USER, turn, *tool_results(provider, first.tool_calls[0])], model="m",
                       **WHERE.get(provider, {}))
        assert caught.value.status_code == 400
        assert str(caught.value.message) == f"HTTP 400 Bad Request: {message}"
        # Refused before a scripted reply was used up: the turn as it came still goes through.
        second = c.complete(messages=[USER, first.message, *tool_results(provider, first.tool_calls[0])], model="m",
                            **WHERE.get(provider, {}))
    assert second.text == "Sunny, 21 C."


def test_gemini_unsigned_history_before_the_current_turn_and_documented_dummy_pass(server: FakeLLMServer) -> None:
    # As the API: only the current turn's calls must be signed; Google's documented dummy value passes.
    old_call = {"role": "model", "parts": [{"functionCall": {"name": "get_time", "args": {}}}]}
    old_result = {"role": "user", "parts": [{"functionResponse": {"name": "get_time", "response": {"t": "9"}}}]}
    dummy = {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                                         "thoughtSignature": "context_engineering_is_the_way_to_go"}]}
    server.script(SECOND, SECOND)
    with client(server, "gemini") as c:
        assert c.complete(messages=[USER, old_call, old_result, {"role": "user", "content": "And now?"}],
                          model="m").text == "Sunny, 21 C."
        assert c.complete(messages=[USER, dummy, *tool_results("gemini", ToolCall(0, "", "get_weather", {}, "{}"))],
                          model="m").text == "Sunny, 21 C."


def test_gemini_answer_without_calls_signs_its_first_text_part_after_thinking(server: FakeLLMServer) -> None:
    c, first = gemini_first_turn(server, reply=Reply(text="It is sunny today.", thinking=THINKING))
    with c:
        thought, signed, rest = first.message["parts"]
        assert thought == {"text": THINKING, "thought": True}
        assert signed["text"] == "It" and base64.b64decode(signed["thoughtSignature"]).startswith(b"fake:1:")
        assert rest == {"text": " is sunny today."}  # never merged with the signed part
        turn = copy.deepcopy(first.message)
        turn["parts"][1]["thoughtSignature"] = flip(signed["thoughtSignature"])
        with pytest.raises(BadRequestError, match="^HTTP 400 Bad Request: Corrupted thought signature.$"):
            c.complete(messages=[USER, turn, {"role": "user", "content": "Thanks"}], model="m")
        assert c.complete(messages=[USER, first.message, {"role": "user", "content": "Thanks"}], model="m").text == (
            "Sunny, 21 C.")


def gemini_body(server: FakeLLMServer, reply: Reply) -> bytes:
    import requests

    server.script(reply)
    with requests.post(server.url + "/v1beta/models/m:streamGenerateContent?alt=sse", json={"contents": []},
                       timeout=10) as response:
        return response.content


def test_gemini_replay_after_a_retry_sends_back_the_replays_signed_call_once(server: FakeLLMServer) -> None:
    # The first attempt breaks after the signed call was delivered, before the finish;
    # the replay signs its own. The caller saw the call once (the replay's copy is
    # matched, not shown again); the turn holds the replay's part, signature and all,
    # once, and goes through.
    cut = gemini_body(server, FIRST).rindex(b"data: ")
    server.script(Reply(text="", thinking=THINKING, tool_calls=[("get_weather", {"city": "Paris"})], close_after_bytes=cut),
                  FIRST, SECOND)
    with llmstream.Client(provider="gemini", base_url=server.base_url("gemini"), api_key="k",
                          retry=llmstream.Retry(max_attempts=2, resume="replay", initial_delay=0.01)) as c:
        with c.stream(messages=[USER], model="m") as s:
            events = list(s.events())
            first = s.result
        assert [e.resume for e in events if isinstance(e, Retrying)] == ["replay"]
        (shown,) = [e.signature for e in events if isinstance(e, ToolCall)]
        assert base64.b64decode(shown).startswith(b"fake:2:")  # request 1 was gemini_body's
        thought, call = first.message["parts"]
        assert thought == {"text": THINKING, "thought": True}
        signature = call.pop("thoughtSignature")
        assert call == {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
        assert base64.b64decode(signature).startswith(b"fake:3:")
        call["thoughtSignature"] = signature
        second = c.complete(messages=[USER, first.message, *tool_results("gemini", first.tool_calls[-1])], model="m")
    assert second.text == "Sunny, 21 C."


def test_gemini_replay_after_the_signed_text_part_keeps_the_text_once_and_the_replays_signature(
        server: FakeLLMServer) -> None:
    # The first attempt breaks after its signed first text part and two more tokens. The
    # replay's repeated text is matched, not shown again, so where its parts closed inside
    # it is unknown (``_turn.py``): the signed part takes the text up to the break. The turn's
    # text is still the answer, once, its signature the replay's, and the next request passes.
    answer = "It is sunny today and warm."
    server.script(Reply(text=answer, thinking=THINKING, close_after_tokens=3), Reply(text=answer, thinking=THINKING),
                  SECOND)
    with llmstream.Client(provider="gemini", base_url=server.base_url("gemini"), api_key="k",
                          retry=llmstream.Retry(max_attempts=2, resume="replay", initial_delay=0.01)) as c:
        first = c.complete(messages=[USER], model="m")
        assert (first.text, first.attempts) == (answer, 2)
        thought, signed, rest = first.message["parts"]
        assert thought == {"text": THINKING, "thought": True}
        assert signed["text"] + rest["text"] == answer and "thoughtSignature" not in rest
        assert base64.b64decode(signed["thoughtSignature"]).startswith(b"fake:2:")
        second = c.complete(messages=[USER, first.message, {"role": "user", "content": "Thanks"}], model="m")
    assert second.text == "Sunny, 21 C."
