"""The official openai, anthropic and ollama Python clients run unchanged against the fake server.

Non-streaming and streaming calls, tool calls, the model lists and Anthropic's
token count: what an app calls besides the stream. Responses objects are also
checked with the openai SDK's strict validation (``model_validate``), which the
SDK itself skips when it parses a response.
"""

from __future__ import annotations

import json
from typing import Any, Iterator, List

import pytest
import requests

from llmstream.testing import DEFAULT_TEXT, FakeLLMServer, Reply
from llmstream.testing._turns import sign

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")
ollama = pytest.importorskip("ollama")

from openai.types.chat import ChatCompletion, ChatCompletionChunk  # noqa: E402
from openai.types.responses import Response  # noqa: E402

WEATHER = ("get_weather", {"city": "Paris"})
MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def openai_client(server: FakeLLMServer) -> Iterator[Any]:
    with openai.OpenAI(base_url=server.base_url("openai"), api_key="test", max_retries=0) as client:
        yield client


@pytest.fixture
def anthropic_client(server: FakeLLMServer) -> Iterator[Any]:
    with anthropic.Anthropic(base_url=server.base_url("anthropic"), api_key="test", max_retries=0) as client:
        yield client


@pytest.fixture
def ollama_client(server: FakeLLMServer) -> Iterator[Any]:
    client = ollama.Client(host=server.base_url("ollama"))
    yield client
    client._client.close()  # the ollama client has no close() of its own


# -- OpenAI chat completions ------------------------------------------------------------------------


def test_openai_chat_non_streaming(server: FakeLLMServer, openai_client: Any) -> None:
    server.script(Reply(text="Paris.", usage=(9, 2)))
    completion = openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert server.requests[0].json.get("stream") is None  # the SDK leaves "stream" out
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Paris."
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (9, 2, 11)
    assert completion.usage.prompt_tokens_details.cached_tokens == 0
    assert completion.usage.completion_tokens_details.reasoning_tokens == 0
    ChatCompletion.model_validate(completion.model_dump())


def test_openai_chat_non_streaming_tool_call(server: FakeLLMServer, openai_client: Any) -> None:
    server.script(Reply(text="", tool_calls=[WEATHER]))
    completion = openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=False)
    choice = completion.choices[0]
    assert (choice.finish_reason, choice.message.content) == ("tool_calls", None)
    [call] = choice.message.tool_calls
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("call_fake_1_0", *WEATHER)


def test_openai_chat_streaming(server: FakeLLMServer, openai_client: Any) -> None:
    chunks = list(openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                                         stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == DEFAULT_TEXT
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == 0
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk.model_dump())


def test_openai_models(server: FakeLLMServer, openai_client: Any) -> None:
    assert "gpt-4o-mini" in [m.id for m in openai_client.models.list()]
    assert openai_client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError):
        openai_client.models.retrieve("no-such-model")
    assert not [r for r in server.requests if r.method == "POST"]  # the script is untouched


# -- OpenAI Responses --------------------------------------------------------------------------------


def test_responses_non_streaming_passes_strict_validation(server: FakeLLMServer, openai_client: Any) -> None:
    server.script(Reply(text="Paris.", thinking="Capital of France.", tool_calls=[WEATHER]))
    response = openai_client.responses.create(model="gpt-4o-mini", input="Hi", instructions="Be brief.",
                                              temperature=0.5)
    assert response.output_text == "Paris."
    assert (response.status, response.instructions, response.temperature) == ("completed", "Be brief.", 0.5)
    assert [item.type for item in response.output] == ["reasoning", "message", "function_call"]
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    raw = requests.post(server.base_url("openai") + "/responses", json={"model": "m", "input": "Hi"}, timeout=10)
    Response.model_validate(raw.json())  # strict: every required field present with the right type


def test_responses_streaming_every_response_passes_strict_validation(server: FakeLLMServer,
                                                                     openai_client: Any) -> None:
    with openai_client.responses.stream(model="gpt-4o-mini", input="Hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert final.output_text == DEFAULT_TEXT
    assert events[-1].type == "response.completed"
    for event in events:
        if hasattr(event, "response"):
            Response.model_validate(event.response.model_dump())


def test_responses_retrieve(server: FakeLLMServer, openai_client: Any) -> None:
    server.script(Reply(text="Paris."))
    created = openai_client.responses.create(model="gpt-4o-mini", input="Hi")
    retrieved = openai_client.responses.retrieve(created.id)
    assert (retrieved.id, retrieved.output_text, retrieved.status) == (created.id, "Paris.", "completed")


def test_responses_incomplete(server: FakeLLMServer, openai_client: Any) -> None:
    server.script(Reply(text="Par", finish_reason="max_output_tokens"))
    response = openai_client.responses.create(model="gpt-4o-mini", input="Hi")
    assert (response.status, response.incomplete_details.reason, response.output_text) == (
        "incomplete", "max_output_tokens", "Par")


# -- Anthropic ----------------------------------------------------------------------------------------


def test_anthropic_non_streaming(server: FakeLLMServer, anthropic_client: Any) -> None:
    server.script(Reply(text="Paris.", thinking="Easy.", tool_calls=[WEATHER], usage=(9, 4)))
    message = anthropic_client.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=MESSAGES)
    assert [block.type for block in message.content] == ["thinking", "text", "tool_use"]
    # Signed as the fake server signs thinking (an agent loop sends it back verified).
    assert (message.content[0].thinking, message.content[0].signature) == ("Easy.", sign("Easy."))
    assert message.content[1].text == "Paris."
    assert (message.content[2].name, message.content[2].input) == WEATHER
    assert (message.stop_reason, message.usage.input_tokens, message.usage.output_tokens) == ("tool_use", 9, 4)
    assert (message.usage.cache_read_input_tokens, message.usage.cache_creation_input_tokens) == (0, 0)


def test_anthropic_streaming(server: FakeLLMServer, anthropic_client: Any) -> None:
    with anthropic_client.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == DEFAULT_TEXT
    assert (final.content[0].text, final.stop_reason) == (DEFAULT_TEXT, "end_turn")


def test_anthropic_count_tokens_and_models(server: FakeLLMServer, anthropic_client: Any) -> None:
    counted = anthropic_client.messages.count_tokens(model="claude-sonnet-4-5", messages=MESSAGES)
    assert counted.input_tokens > 0
    assert "claude-sonnet-4-5" in [m.id for m in anthropic_client.models.list()]
    assert anthropic_client.models.retrieve("claude-sonnet-4-5").display_name == "claude-sonnet-4-5"


def test_anthropic_error_is_the_sdk_error(server: FakeLLMServer, anthropic_client: Any) -> None:
    server.script(Reply(status=529, error="Overloaded"))
    with pytest.raises(anthropic.APIStatusError) as caught:
        anthropic_client.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=MESSAGES)
    assert caught.value.status_code == 529 and caught.value.body["error"]["type"] == "overloaded_error"


# -- Ollama --------------------------------------------------------------------------------------------


def test_ollama_non_streaming(server: FakeLLMServer, ollama_client: Any) -> None:
    server.script(Reply(text="Paris.", tool_calls=[WEATHER], usage=(9, 2)))
    answer = ollama_client.chat(model="llama3.2", messages=MESSAGES)  # stream=False by default in the client
    assert server.requests[0].json["stream"] is False
    assert (answer.message.content, answer.done, answer.done_reason) == ("Paris.", True, "stop")
    [call] = answer.message.tool_calls
    assert (call.function.name, dict(call.function.arguments)) == WEATHER
    assert (answer.prompt_eval_count, answer.eval_count) == (9, 2)


def test_ollama_streaming(server: FakeLLMServer, ollama_client: Any) -> None:
    parts = list(ollama_client.chat(model="llama3.2", messages=MESSAGES, stream=True))
    assert "".join(p.message.content for p in parts) == DEFAULT_TEXT
    assert parts[-1].done is True


def test_ollama_list(server: FakeLLMServer, ollama_client: Any) -> None:
    assert "llama3.2:latest" in [m.model for m in ollama_client.list().models]


def test_ollama_without_stream_field_streams_as_the_real_server(server: FakeLLMServer) -> None:
    body = {"model": "llama3.2", "messages": MESSAGES}
    lines = requests.post(server.base_url("ollama") + "/api/chat", json=body, timeout=10).text.splitlines()
    assert len(lines) > 2 and json.loads(lines[-1])["done"] is True


# -- faults on a non-streaming answer ---------------------------------------------------------------


def test_non_streaming_cut_body_is_an_sdk_connection_error(server: FakeLLMServer, openai_client: Any) -> None:
    server.script(Reply(close_after_bytes=20))
    with pytest.raises(openai.APIConnectionError):
        openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


# -- the raw wire, validated strictly against the SDKs' own models --------------------------------


def _sse_payloads(body: bytes) -> List[Any]:
    return [json.loads(line[6:]) for line in body.decode().splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


@pytest.mark.parametrize("reply", [
    pytest.param(Reply(), id="text"),
    pytest.param(Reply(text="Sure.", thinking="Hmm.", tool_calls=[WEATHER]), id="thinking-and-tool-call"),
    pytest.param(Reply(text="Par", finish_reason="max_output_tokens"), id="incomplete"),
])
def test_every_stream_event_passes_strict_validation(server: FakeLLMServer, reply: Reply) -> None:
    from anthropic.types import RawMessageStreamEvent
    from openai.types.responses import ResponseStreamEvent
    from pydantic import TypeAdapter

    checks = [("openai", "/chat/completions", TypeAdapter(ChatCompletionChunk), {"stream_options": {"include_usage": True}}),
              ("openai-responses", "/responses", TypeAdapter(ResponseStreamEvent), {}),
              ("anthropic", "/v1/messages", TypeAdapter(RawMessageStreamEvent), {"max_tokens": 100})]
    for provider, path, adapter, extra in checks:
        if reply.finish_reason == "max_output_tokens" and provider != "openai-responses":
            continue  # the Responses API's own reason; chat and Messages have theirs
        server.script(reply)
        body = {"model": "m", "stream": True, "messages": MESSAGES, "input": "Hi", **extra}
        raw = requests.post(server.base_url(provider) + path, json=body, timeout=10).content
        events = _sse_payloads(raw)
        assert events, provider
        for event in events:
            if event.get("type") != "ping":  # the SDK skips pings before validating: not in its union
                adapter.validate_python(event)  # raises on a missing or mistyped field


@pytest.mark.parametrize("reply", [
    pytest.param(Reply(), id="text"),
    pytest.param(Reply(text="", thinking="Hmm.", tool_calls=[WEATHER]), id="tool-call-only"),
])
def test_every_non_streaming_answer_passes_strict_validation(server: FakeLLMServer, reply: Reply) -> None:
    from anthropic.types import Message

    checks = [("openai", "/chat/completions", ChatCompletion, {}), ("openai-responses", "/responses", Response, {}),
              ("anthropic", "/v1/messages", Message, {"max_tokens": 100})]
    for provider, path, model, extra in checks:
        server.script(reply)
        body = {"model": "m", "messages": MESSAGES, "input": "Hi", **extra}
        model.model_validate(requests.post(server.base_url(provider) + path, json=body, timeout=10).json())
