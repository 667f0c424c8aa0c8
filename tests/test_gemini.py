"""Gemini (AI Studio) and Vertex AI: decoder on recorded-shape fixtures, requests, errors, the fake server, google-genai."""

from __future__ import annotations

import base64
import json
from typing import Any, List

import pytest

import llmstream
from helpers import feed_all_ways, load_fixture
from llmstream import ContentFilter, Finish, OutputItem, TextDelta, ThinkingDelta, ToolCall, ToolCallDelta, Usage
from llmstream._exceptions import (
    IncompleteStreamError, MalformedStreamError, ProviderError, RateLimitError, ServerError, StreamError,
)
from llmstream._providers import PROVIDERS
from llmstream._providers._base import BearerToken, RequestSpec, StreamDecoder
from llmstream._retry import is_retryable
from llmstream.testing import FakeLLMServer, Reply

GEMINI = PROVIDERS["gemini"]
VERTEX = PROVIDERS["vertex"]
#: The unsigned text part, closed by the finish: it takes the text delivered since the previous item.
TEXT_PART = OutputItem({"text": ""}, text_key="text")
FAST = llmstream.Retry(max_attempts=3, initial_delay=0.01, max_delay=0.02)


def decode(name: str) -> List[Any]:
    return feed_all_ways(lambda: StreamDecoder(GEMINI.new_decoder(), framing=GEMINI.framing), load_fixture("gemini", name))


def usage(p: int, o: int, t: int = 0) -> Usage:
    raw = {"promptTokenCount": p, "candidatesTokenCount": o}
    if t:
        raw["thoughtsTokenCount"] = t
    raw["totalTokenCount"] = p + o + t
    raw["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": p}]  # type: ignore[assignment]
    # Thoughts are billed as output: output_tokens includes them, as for every provider.
    return Usage(p, o + t, raw, reasoning_tokens=t or None)


# -- the decoder, on fixtures of the API's exact shape, split at every point --------------------


def test_text_crlf_last_usage_and_signature_on_a_text_part() -> None:
    assert decode("text.txt") == [
        TextDelta("The capital"), TextDelta(" of France is Paris"),
        OutputItem({"text": ""}, text_key="text"),  # the unsigned run, closed by the signed part
        ThinkingDelta("", signature="CiQB0e2Kb0vA=="), TextDelta("."),
        OutputItem({"text": ".", "thoughtSignature": "CiQB0e2Kb0vA=="}, text_key="text"),  # as it came
        usage(8, 8), Finish("STOP"),
    ]


def test_thought_parts_are_thinking_and_the_signature_is_kept() -> None:
    assert decode("thinking.txt") == [
        ThinkingDelta("**Weighing the question**\n"), ThinkingDelta("It is Paris."),
        OutputItem({"text": "**Weighing the question**\nIt is Paris.", "thought": True}),  # one part for the run
        ThinkingDelta("", signature="EjQKMgEMOdbHsig=="), TextDelta("Paris"),
        OutputItem({"text": "Paris", "thoughtSignature": "EjQKMgEMOdbHsig=="}, text_key="text"),
        TextDelta("."), OutputItem({"text": ""}, text_key="text"),
        usage(10, 2, 61), Finish("STOP"),
    ]


def test_whole_function_calls_with_their_signature() -> None:
    weather = '{"city": "Paris", "unit": "celsius"}'
    assert decode("function_call.txt") == [
        ToolCallDelta(0, "", "get_weather", weather),
        ToolCall(0, "", "get_weather", {"city": "Paris", "unit": "celsius"}, weather, signature="CtgBAVSoXO4="),
        OutputItem({"functionCall": {"name": "get_weather", "args": {"city": "Paris", "unit": "celsius"}},
                    "thoughtSignature": "CtgBAVSoXO4="}),
        ToolCallDelta(1, "", "get_time", '{"tz": "Europe/Paris"}'),
        ToolCall(1, "", "get_time", {"tz": "Europe/Paris"}, '{"tz": "Europe/Paris"}'),
        OutputItem({"functionCall": {"name": "get_time", "args": {"tz": "Europe/Paris"}}}),
        usage(51, 25), Finish("STOP"),
    ]


def test_safety_finish_is_a_blocked_completion() -> None:
    ratings = [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True},
               {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"}]
    assert decode("safety.txt") == [
        TextDelta("Here is how"), TEXT_PART, ContentFilter("completion", "SAFETY", True, ratings), usage(9, 3), Finish("SAFETY"),
    ]


def test_recitation_finish_is_told_apart_from_safety() -> None:
    assert decode("recitation.txt") == [
        TextDelta("It was the best of times"), TEXT_PART, ContentFilter("completion", "RECITATION", True, None), usage(9, 6),
        Finish("RECITATION"),
    ]


def test_blocked_prompt_has_no_candidates() -> None:
    assert decode("prompt_blocked.txt") == [
        ContentFilter("prompt", "PROHIBITED_CONTENT", True, {"blockReason": "PROHIBITED_CONTENT"}),
        Usage(7, None, {"promptTokenCount": 7, "totalTokenCount": 7}), Finish("PROMPT_BLOCKED"),
    ]


def test_max_tokens() -> None:
    assert decode("max_tokens.txt") == [TextDelta("One, two"), TextDelta(", three"), TEXT_PART, usage(5, 5), Finish("MAX_TOKENS")]


def test_error_object_outside_data_lines_is_a_retryable_provider_error() -> None:
    with pytest.raises(ProviderError) as caught:
        decode("error_mid_stream.txt")
    assert str(caught.value) == "The model is overloaded. Please try again later."
    assert caught.value.type == "UNAVAILABLE"
    assert GEMINI.is_retryable(caught.value)
    assert is_retryable(caught.value, GEMINI)
    # The text before it is delivered first.
    decoder = StreamDecoder(GEMINI.new_decoder(), framing=GEMINI.framing)
    assert decoder.feed(load_fixture("gemini", "error_mid_stream.txt")) == [TextDelta("The capital")]
    with pytest.raises(ProviderError):
        decoder.close()


@pytest.mark.parametrize("name", ["truncated.txt", "truncated_mid_json.txt"])
def test_no_finish_reason_is_incomplete(name: str) -> None:
    with pytest.raises(IncompleteStreamError):
        decode(name)


def test_error_object_cut_off_is_incomplete_not_silent() -> None:
    data = b'data: {"candidates":[{"content":{"parts":[{"text":"a"}]},"index":0}]}\n\n{\n  "error": {\n    "code": 503,\n'
    with pytest.raises(IncompleteStreamError, match="inside a JSON object"):
        feed_all_ways(lambda: StreamDecoder(GEMINI.new_decoder(), framing=GEMINI.framing), data)


@pytest.mark.parametrize(
    "status, code, retryable",
    [("RESOURCE_EXHAUSTED", 429, True), ("INTERNAL", 500, True), ("UNAVAILABLE", 503, True),
     ("INVALID_ARGUMENT", 400, False), ("PERMISSION_DENIED", 403, False), (None, 503, True), (None, 400, False)],
)
def test_retryable_statuses(status: Any, code: int, retryable: bool) -> None:
    error = {"code": code, "message": "m"}
    if status:
        error["status"] = status
    raw = ("data: " + json.dumps({"candidates": [{"content": {"parts": [{"text": "a"}]}, "index": 0}]}) + "\n\n"
           + json.dumps({"error": error}, indent=2) + "\n").encode()
    with pytest.raises(ProviderError) as caught:
        feed_all_ways(lambda: StreamDecoder(GEMINI.new_decoder(), framing=GEMINI.framing), raw)
    assert caught.value.type == (status or str(code))
    assert GEMINI.is_retryable(caught.value) is retryable


def test_error_inside_a_data_line_too() -> None:
    raw = b'data: {"error": {"code": 429, "message": "Resource exhausted", "status": "RESOURCE_EXHAUSTED"}}\n\n'
    with pytest.raises(ProviderError, match="^Resource exhausted$"):
        feed_all_ways(lambda: StreamDecoder(GEMINI.new_decoder(), framing=GEMINI.framing), raw)


@pytest.mark.parametrize(
    "data, message",
    [
        (b'data: {"candidates": {}}\n\n', 'Gemini chunk: expected "candidates" to be a list, got object'),
        (b'data: {"candidates": [{"content": {"parts": [{"text": 5}]}}]}\n\n',
         'Gemini chunk: expected "candidates[0].content.parts[0].text" to be a string, got integer'),
        (b'data: {"candidates": [{"content": {"parts": [{"text": "a", "thought": "yes"}]}}]}\n\n',
         'Gemini chunk: expected "candidates[0].content.parts[0].thought" to be a boolean, got string'),
        (b'data: {"candidates": [{"content": {"parts": [{"functionCall": {"args": {}}}]}}]}\n\n',
         'Gemini chunk: expected "candidates[0].content.parts[0].functionCall.name" to be a non-empty string'),
        (b'data: {"candidates": [{"finishReason": 1}]}\n\n',
         'Gemini chunk: expected "candidates[0].finishReason" to be a string, got integer'),
        (b'data: {"usageMetadata": {"promptTokenCount": 1e999}}\n\n',
         'Gemini chunk: expected "usageMetadata.promptTokenCount" to be a token count (a whole number from 0 to 1000000000), got inf'),
        (b'data: {"candidates": [{"content": {"parts": [{"text": "a", "thoughtSignature": 7}]}}]}\n\n',
         'Gemini chunk: expected "candidates[0].content.parts[0].thoughtSignature" to be a string, got integer'),
        (b"data: not json\n\n", "invalid JSON in stream data: 'not json'"),
        (b'{"candidates": []}\n', "Gemini chunk: a JSON value outside a data: line that is not an error: '{\"candidates\": []}'"),
    ],
)
def test_wrong_shapes_are_malformed(data: bytes, message: str) -> None:
    with pytest.raises(MalformedStreamError) as caught:
        feed_all_ways(lambda: StreamDecoder(GEMINI.new_decoder(), framing=GEMINI.framing), data)
    assert str(caught.value) == message


def test_only_candidate_zero_and_nothing_after_the_finish() -> None:
    chunks = [
        {"candidates": [{"content": {"parts": [{"text": "b"}]}, "index": 1}, {"content": {"parts": [{"text": "a"}]}, "index": 0}]},
        {"candidates": [{"content": {"parts": [{"text": ""}]}, "finishReason": "STOP", "index": 0}]},
        {"candidates": [{"content": {"parts": [{"text": "late"}]}, "index": 0}], "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 2}},
    ]
    data = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    assert feed_all_ways(lambda: StreamDecoder(GEMINI.new_decoder(), framing=GEMINI.framing), data) == [
        TextDelta("a"), TEXT_PART, Finish("STOP"), Usage(1, 2, {"promptTokenCount": 1, "candidatesTokenCount": 2})]


def test_bare_json_text_is_bounded() -> None:
    decoder = StreamDecoder(GEMINI.new_decoder(), framing=GEMINI.framing, max_line_length=100)
    with pytest.raises(MalformedStreamError, match="longer than 100 bytes"):
        decoder.feed(b"{\n" + (b'  "x": "' + b"y" * 40 + b'",\n') * 3)


# -- requests -----------------------------------------------------------------------------


def test_ai_studio_request() -> None:
    spec = GEMINI.build_request(
        base_url="https://generativelanguage.googleapis.com/", api_key="AIza-test", model="models/gemini-2.5-flash",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello"}, {"role": "user", "parts": [{"text": "Again"}]}],
        params={"generationConfig": {"maxOutputTokens": 64}, "safetySettings": None})
    assert spec == RequestSpec(
        method="POST",
        url="https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        headers={"Content-Type": "application/json", "Accept": "text/event-stream", "x-goog-api-key": "AIza-test"},
        json={"contents": [{"role": "user", "parts": [{"text": "Hi"}]}, {"role": "model", "parts": [{"text": "Hello"}]},
                           {"role": "user", "parts": [{"text": "Again"}]}],
              "systemInstruction": {"parts": [{"text": "Be brief."}]}, "generationConfig": {"maxOutputTokens": 64}})
    assert GEMINI.output_limit(spec.json) == 64
    assert GEMINI.limit_params(10) == {"generationConfig": {"maxOutputTokens": 10}}


def test_ai_studio_bearer_token() -> None:
    spec = GEMINI.build_request(base_url="http://x", api_key=BearerToken("ya29.t"), model="m", messages=[], params={})
    assert spec.headers["Authorization"] == "Bearer ya29.t" and "x-goog-api-key" not in spec.headers


@pytest.mark.parametrize(
    "env, key",
    [({"GEMINI_API_KEY": "g"}, "g"), ({"GOOGLE_API_KEY": "o"}, "o"), ({"GEMINI_API_KEY": "g", "GOOGLE_API_KEY": "o"}, "o"), ({}, None)],
)
def test_api_key_env_in_google_genai_order(env: Any, key: Any) -> None:
    assert GEMINI.api_key_from_env(env) == key


def test_client_reads_the_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_GEMINI_BASE_URL", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", "AIza-from-env")
    with FakeLLMServer() as server:
        server.script(Reply(text="ok"))
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url("gemini"))
        assert llmstream.Client("gemini").complete("Hi").text == "ok"
        assert server.requests[-1].headers["x-goog-api-key"] == "AIza-from-env"
        assert server.requests[-1].path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
        assert server.requests[-1].query == {"alt": "sse"}


def test_vertex_request_and_refreshing_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "my-proj")
    monkeypatch.setenv("GOOGLE_CLOUD_LOCATION", "europe-west4")
    monkeypatch.delenv("GOOGLE_VERTEX_BASE_URL", raising=False)
    tokens = iter(["tok-1", "tok-2"])
    with FakeLLMServer() as server:
        server.script(Reply(text="one"), Reply(text="two"))
        client = llmstream.Client("vertex", base_url=server.base_url("vertex"), api_key=lambda: next(tokens))
        assert client.complete("Hi", model="gemini-2.5-pro").text == "one"
        assert client.complete("Hi", model="gemini-2.5-pro").text == "two"
        first, second = server.requests
        assert first.path == "/v1/projects/my-proj/locations/europe-west4/publishers/google/models/gemini-2.5-pro:streamGenerateContent"
        assert (first.headers["Authorization"], second.headers["Authorization"]) == ("Bearer tok-1", "Bearer tok-2")
        assert "project" not in first.json and "location" not in first.json


def test_vertex_default_host_and_missing_project(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = VERTEX.build_request(base_url="", api_key="t", model="gemini-2.5-flash", messages=[],
                                params={"project": "p", "location": "us-central1"})
    assert spec.url == ("https://us-central1-aiplatform.googleapis.com/v1/projects/p/locations/us-central1"
                        "/publishers/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
    assert VERTEX.build_request(base_url="", api_key="t", model="m", messages=[], params={"project": "p"}).url.startswith(
        "https://aiplatform.googleapis.com/v1/projects/p/locations/global/")
    with pytest.raises(ValueError, match="needs a project"):
        VERTEX.build_request(base_url="", api_key="t", model="m", messages=[], params={})
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    with pytest.raises(ValueError, match="no API key for provider 'vertex'"):
        llmstream.Client("vertex")


@pytest.mark.parametrize(
    "body, error",
    [('{"error": {"code": 429, "message": "Quota", "status": "RESOURCE_EXHAUSTED"}}', ("Quota", "RESOURCE_EXHAUSTED")),
     ('[{"error": {"code": 500, "message": "Internal", "status": "INTERNAL"}}]', ("Internal", "INTERNAL")),
     ("<html>", None), ('{"message": "x"}', None)],
)
def test_error_from_body(body: str, error: Any) -> None:
    found = GEMINI.error_from_body(body)
    assert (None if found is None else (str(found), found.type)) == error


# -- end to end on the fake server ---------------------------------------------------------------


@pytest.mark.parametrize("status, cls", [(429, RateLimitError), (503, ServerError)])
def test_error_status_classes(status: int, cls: type) -> None:
    with FakeLLMServer() as server:
        server.script(Reply(status=status, error="nope"))
        client = llmstream.Client("gemini", base_url=server.base_url("gemini"), api_key="k")
        with pytest.raises(cls) as caught:
            client.complete("Hi", retry=llmstream.Retry(max_attempts=1))
        assert json.loads(caught.value.body)["error"]["status"] == {429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}[status]


def test_mid_stream_error_is_retried_and_replayed_exactly_once() -> None:
    text = "Paris is the capital of France."
    with FakeLLMServer() as server:
        server.script(Reply(text=text, error_event_at=3), Reply(text=text))
        client = llmstream.Client("gemini", base_url=server.base_url("gemini"), api_key="k", retry=FAST)
        with client.stream("Hi") as s:
            pieces = list(s)
        assert "".join(pieces) == text
        assert s.result.attempts == 2 and s.result.finish_reason == "STOP"


def test_mid_stream_error_without_retries_is_a_provider_error_with_partial_text() -> None:
    with FakeLLMServer() as server:
        server.script(Reply(text="Paris is the capital", error_event_at=2))
        client = llmstream.Client("gemini", base_url=server.base_url("gemini"), api_key="k")
        with pytest.raises(ProviderError) as caught:
            client.complete("Hi", retry=llmstream.Retry(max_attempts=1))
        assert caught.value.partial_text == "Paris is"
        assert caught.value.type == "UNAVAILABLE"


def test_resume_continue_is_refused_replay_is_the_way() -> None:
    with FakeLLMServer() as server:
        server.script(Reply(text="a b c d", close_after_tokens=2))
        client = llmstream.Client("gemini", base_url=server.base_url("gemini"), api_key="k")
        with pytest.raises(llmstream.ResumeError) as caught:
            client.complete("Hi", retry=llmstream.Retry(max_attempts=3, initial_delay=0.01, resume="continue"))
        assert caught.value.partial_text == "a b"
        assert len(server.requests) == 1


def test_cut_connection_is_incomplete() -> None:
    with FakeLLMServer() as server:
        server.script(Reply(text="a b c d", close_after_tokens=2))
        client = llmstream.Client("gemini", base_url=server.base_url("gemini"), api_key="k")
        with pytest.raises(IncompleteStreamError) as caught:
            client.complete("Hi", retry=llmstream.Retry(max_attempts=1))
        assert caught.value.partial_text == "a b"


def test_fake_server_blocked_prompt_and_safety() -> None:
    with FakeLLMServer() as server:
        server.script(Reply(finish_reason="blocked:SAFETY"), Reply(text="How to", finish_reason="SAFETY"))
        client = llmstream.Client("gemini", base_url=server.base_url("gemini"), api_key="k")
        with client.stream("Hi") as s:
            events = [e for e in s.events() if isinstance(e, (ContentFilter, Finish))]
        assert [(type(e).__name__, getattr(e, "source", None), e.reason) for e in events] == [
            ("ContentFilter", "prompt", "SAFETY"), ("Finish", None, "PROMPT_BLOCKED")]
        with client.stream("Hi") as s:
            events = [e for e in s.events() if isinstance(e, (ContentFilter, Finish))]
        assert [(type(e).__name__, getattr(e, "source", None), e.reason) for e in events] == [
            ("ContentFilter", "completion", "SAFETY"), ("Finish", None, "SAFETY")]
        assert s.result.text == "How to"


# -- the official client against the fake server -------------------------------------------------


def test_google_genai_streams_from_the_fake_server() -> None:
    genai = pytest.importorskip("google.genai")
    from google.genai import errors, types

    with FakeLLMServer() as server:
        server.script(Reply(text="Hello from the fake", thinking="Let me think"), Reply(text="Hello", error_event_at=1))
        client = genai.Client(api_key="AIza-test", http_options=types.HttpOptions(base_url=server.base_url("gemini")))
        chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="Hi"))
        text = "".join(p.text for c in chunks for p in c.candidates[0].content.parts if p.text and not p.thought)
        thoughts = "".join(p.text for c in chunks for p in c.candidates[0].content.parts if p.text and p.thought)
        assert (text, thoughts) == ("Hello from the fake", "Let me think")
        assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
        assert chunks[-1].usage_metadata.prompt_token_count == 12
        assert server.requests[0].headers["x-goog-api-key"] == "AIza-test"
        # The mid-stream error object is read by google-genai as the API's own: a ServerError 503.
        with pytest.raises(errors.ServerError) as caught:
            for _ in client.models.generate_content_stream(model="gemini-2.5-flash", contents="Hi"):
                pass
        assert caught.value.code == 503
        client.close()


def test_stream_error_classes_are_stream_errors() -> None:
    assert issubclass(ProviderError, StreamError)


def test_google_genai_sends_the_fake_servers_signed_call_back_and_is_accepted() -> None:
    # google-genai reads a thoughtSignature as bytes (base64) and writes it back
    # re-encoded: the fake's signatures must survive that, as the API's do.
    genai = pytest.importorskip("google.genai")
    from google.genai import errors, types

    with FakeLLMServer() as server:
        server.script(Reply(text="", thinking="Need the weather", tool_calls=[("get_weather", {"city": "Paris"})]),
                      Reply(text="Sunny."), Reply(text="unused"))
        client = genai.Client(api_key="AIza-test", http_options=types.HttpOptions(base_url=server.base_url("gemini")))
        user = types.Content(role="user", parts=[types.Part(text="Weather in Paris?")])
        chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents=[user]))
        parts = [p for c in chunks for p in (c.candidates[0].content.parts or []) if p.function_call or p.thought]
        call = next(p for p in parts if p.function_call)
        assert call.thought_signature is not None and call.thought_signature.startswith(b"fake:1:")
        model = types.Content(role="model", parts=parts)
        answer = types.Content(role="user", parts=[types.Part.from_function_response(
            name="get_weather", response={"sky": "sunny"})])
        second = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents=[user, model, answer]))
        assert "".join(p.text or "" for c in second for p in c.candidates[0].content.parts) == "Sunny."
        sent = server.requests[-1].json["contents"][1]["parts"][-1]
        # It writes URL-safe base64 (the server streamed standard base64): the same bytes, another string.
        assert sent["thoughtSignature"] != base64.b64encode(call.thought_signature).decode()
        assert base64.urlsafe_b64decode(sent["thoughtSignature"]) == call.thought_signature
        # The same turn with the signature altered is refused as the API refuses it.
        call.thought_signature = call.thought_signature[:-1] + bytes([call.thought_signature[-1] ^ 1])
        with pytest.raises(errors.ClientError) as caught:
            list(client.models.generate_content_stream(model="gemini-2.5-flash", contents=[user, model, answer]))
        assert (caught.value.code, caught.value.message) == (400, "Corrupted thought signature.")
        client.close()
