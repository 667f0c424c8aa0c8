"""Tests of llmstream.testing, the fake LLM server, through real HTTP on 127.0.0.1.

The engine is not involved: requests (``stream=True``, ``resp.raw.read1``) and
raw sockets read what the server sends, so these tests pin the wire bytes the
rest of the project's tests rely on. Every wait is bounded; nothing sleeps to
synchronise (threads are joined, requests are awaited with
``wait_for_requests``).
"""

from __future__ import annotations

import errno
import gc
import io
import json
import logging
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
import requests

from llmstream.testing import DEFAULT_TEXT, FakeLLMServer, RecordedRequest, Reply, serve
from llmstream.testing._cli import DEFAULT_INTERVAL, parse_args
from llmstream.testing._faults import plan
from llmstream.testing._formats import FORMATTERS, StreamContext

pytestmark = pytest.mark.timeout(60)

PATHS = {
    "openai": "/v1/chat/completions",
    "openai-responses": "/v1/responses",
    "anthropic": "/v1/messages",
    "ollama": "/api/chat",
}
PROVIDERS = [pytest.param(name, id=name) for name in PATHS]
SSE_PROVIDERS = [pytest.param(name, id=name) for name in PATHS if name != "ollama"]
CHAT = '{"id":"chatcmpl-fake-1","object":"chat.completion.chunk","created":1735689600,"model":"gpt-test","choices":['
OLLAMA = '{"model":"llama-test","created_at":"2025-01-01T00:00:00Z","message":{"role":"assistant","content":'


# --- helpers -------------------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as fake:
        yield fake


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as sess:
        yield sess


def _body(provider: str, **extra: Any) -> Dict[str, Any]:
    model = "llama-test" if provider == "ollama" else "gpt-test"
    body: Dict[str, Any] = {"model": model, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    body.update(extra)
    return body


def fetch(server: FakeLLMServer, session: requests.Session, provider: str, *,
          headers: Optional[Dict[str, str]] = None, **extra: Any) -> Tuple[requests.Response, bytes, Optional[Exception]]:
    """POST a streaming request; return the response, every body byte received, and the read error if any."""
    url = server.url + PATHS[provider]
    with session.post(url, json=_body(provider, **extra), headers=headers, stream=True, timeout=10) as resp:
        data, error = read_all(resp)
    return resp, data, error


def read_all(resp: requests.Response) -> Tuple[bytes, Optional[Exception]]:
    chunks = []
    try:
        while True:
            chunk = resp.raw.read1(65536)
            if not chunk:
                return b"".join(chunks), None
            chunks.append(chunk)
    except Exception as exc:  # the connection broke: return what came before
        return b"".join(chunks), exc


def raw_request(server: FakeLLMServer, provider: str, headers: str = "", **extra: Any) -> Tuple[bytes, bytes]:
    """Send one request on a raw socket (Connection: close); return (head, body) exactly as received."""
    payload = json.dumps(_body(provider, **extra)).encode()
    request = (f"POST {PATHS[provider]} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(payload)}\r\nConnection: close\r\n{headers}\r\n").encode() + payload
    received = []
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            received.append(data)
    head, _, body = b"".join(received).partition(b"\r\n\r\n")
    return head, body


def dechunk(body: bytes) -> Tuple[List[bytes], bool]:
    """Split a chunked body into its chunks; the flag says whether the 0-chunk ended it."""
    chunks = []
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return chunks, True
        chunks.append(rest[:size])
        body = rest[size + 2:]
    return chunks, False


def blocks(data: bytes) -> List[bytes]:
    """SSE blocks (LF line endings), each with its terminating blank line."""
    return [part + b"\n\n" for part in data.split(b"\n\n") if part]


def frames(provider: str, data: bytes) -> List[Tuple[str, str, Any]]:
    """Parse a body into (event name, id, parsed JSON or raw string) per event; comments dropped."""
    if provider == "ollama":
        return [("", "", json.loads(line)) for line in data.decode().splitlines() if line]
    out = []
    for block in data.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "data" in fields:
            payload = fields["data"]
            out.append((fields.get("event", ""), fields.get("id", ""),
                        payload if payload == "[DONE]" else json.loads(payload)))
    return out


def text_of(provider: str, data: bytes) -> str:
    """Reassemble the answer text from a body, the way a client would."""
    return "".join(deltas_of(provider, data))


def deltas_of(provider: str, data: bytes) -> List[str]:
    """The text deltas of a body, in order (empty ones included)."""
    parts = []
    for name, _, obj in frames(provider, data):
        if provider == "openai" and isinstance(obj, dict) and obj.get("choices"):
            parts.append(obj["choices"][0]["delta"].get("content") or "")
        elif provider == "openai-responses" and name == "response.output_text.delta":
            parts.append(obj["delta"])
        elif provider == "anthropic" and name == "content_block_delta" and obj["delta"]["type"] == "text_delta":
            parts.append(obj["delta"]["text"])
        elif provider == "ollama" and "message" in obj:
            parts.append(obj["message"]["content"])
    return parts


def tool_calls_of(provider: str, data: bytes) -> List[Tuple[str, Any]]:
    """Reassemble (name, arguments) pairs from a body."""
    names: Dict[int, str] = {}
    args: Dict[int, str] = {}
    for name, _, obj in frames(provider, data):
        if provider == "openai" and isinstance(obj, dict) and obj.get("choices"):
            for call in obj["choices"][0]["delta"].get("tool_calls", []):
                if "name" in call["function"]:
                    names[call["index"]] = call["function"]["name"]
                args[call["index"]] = args.get(call["index"], "") + call["function"]["arguments"]
        elif provider == "openai-responses" and name == "response.output_item.added" \
                and obj["item"]["type"] == "function_call":
            names[obj["output_index"]] = obj["item"]["name"]
        elif provider == "openai-responses" and name == "response.function_call_arguments.delta":
            args[obj["output_index"]] = args.get(obj["output_index"], "") + obj["delta"]
        elif provider == "anthropic" and name == "content_block_start" and obj["content_block"]["type"] == "tool_use":
            names[obj["index"]] = obj["content_block"]["name"]
        elif provider == "anthropic" and name == "content_block_delta" and obj["delta"]["type"] == "input_json_delta":
            args[obj["index"]] = args.get(obj["index"], "") + obj["delta"]["partial_json"]
        elif provider == "ollama" and obj.get("message", {}).get("tool_calls"):
            for call in obj["message"]["tool_calls"]:
                names[len(names)] = call["function"]["name"]
                args[len(args)] = json.dumps(call["function"]["arguments"])
    return [(names[key], json.loads(args[key])) for key in sorted(names)]


def renumber(data: bytes) -> bytes:
    """Give every fake id the first request's number (``msg_fake_3`` -> ``msg_fake_1``)."""
    return re.sub(rb"(fake[-_])\d+", rb"\g<1>1", data)


def handler_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if re.fullmatch(r"llmstream-fake-server-\d+", t.name)]


# --- exact wire format -------------------------------------------------------------------------------------


def test_openai_chat_exact_bytes(server: FakeLLMServer, session: requests.Session) -> None:
    server.script(Reply(text="Hi there", event_ids=True))
    resp, data, error = fetch(server, session, "openai")
    assert (resp.status_code, resp.headers["Content-Type"], error) == (200, "text/event-stream; charset=utf-8", None)
    assert data.decode() == (
        f'id: 1\ndata: {CHAT}{{"index":0,"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}]}}\n\n'
        f'id: 2\ndata: {CHAT}{{"index":0,"delta":{{"content":"Hi"}},"logprobs":null,"finish_reason":null}}]}}\n\n'
        f'id: 3\ndata: {CHAT}{{"index":0,"delta":{{"content":" there"}},"logprobs":null,"finish_reason":null}}]}}\n\n'
        f'id: 4\ndata: {CHAT}{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"stop"}}]}}\n\n'
        'id: 5\ndata: [DONE]\n\n'
    )


def test_openai_chat_include_usage_adds_usage_chunk(server: FakeLLMServer, session: requests.Session) -> None:
    server.script(Reply(text="Hi there"))
    _, data, _ = fetch(server, session, "openai", stream_options={"include_usage": True})
    events = frames("openai", data)
    assert [obj["usage"] for _, _, obj in events[:-2]] == [None] * 4
    assert events[-2][2] == json.loads(
        f'{CHAT}],"usage":{{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14,'
        '"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},'
        '"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,'
        '"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}')
    assert events[-1][2] == "[DONE]"


def test_anthropic_exact_bytes(server: FakeLLMServer, session: requests.Session) -> None:
    server.script(Reply(text="Hi there", event_ids=True))
    resp, data, _ = fetch(server, session, "anthropic")
    assert resp.headers["request-id"] == "req_fake"
    assert data.decode() == (
        'event: message_start\nid: 1\ndata: {"type":"message_start","message":{"id":"msg_fake_1","type":"message",'
        '"role":"assistant","model":"gpt-test","content":[],"stop_reason":null,"stop_sequence":null,'
        '"usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,'
        '"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0},"output_tokens":1,'
        '"service_tier":"standard"}}}\n\n'
        'event: ping\nid: 2\ndata: {"type":"ping"}\n\n'
        'event: content_block_start\nid: 3\ndata: {"type":"content_block_start","index":0,'
        '"content_block":{"type":"text","text":""}}\n\n'
        'event: content_block_delta\nid: 4\ndata: {"type":"content_block_delta","index":0,'
        '"delta":{"type":"text_delta","text":"Hi"}}\n\n'
        'event: content_block_delta\nid: 5\ndata: {"type":"content_block_delta","index":0,'
        '"delta":{"type":"text_delta","text":" there"}}\n\n'
        'event: content_block_stop\nid: 6\ndata: {"type":"content_block_stop","index":0}\n\n'
        'event: message_delta\nid: 7\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
        '"stop_sequence":null},"usage":{"output_tokens":2}}\n\n'
        'event: message_stop\nid: 8\ndata: {"type":"message_stop"}\n\n'
    )


def test_ollama_exact_bytes(server: FakeLLMServer, session: requests.Session) -> None:
    server.script(Reply(text="Hi there"))
    resp, data, _ = fetch(server, session, "ollama")
    assert resp.headers["Content-Type"] == "application/x-ndjson"
    assert data.decode() == (
        f'{OLLAMA}"Hi"}},"done":false}}\n'
        f'{OLLAMA}" there"}},"done":false}}\n'
        f'{OLLAMA}""}},"done_reason":"stop","done":true,"total_duration":5000000,"load_duration":1000000,'
        '"prompt_eval_count":12,"prompt_eval_duration":1000000,"eval_count":2,"eval_duration":3000000}\n'
    )


def test_responses_exact_frames(server: FakeLLMServer, session: requests.Session) -> None:
    server.script(Reply(text="Hi there", event_ids=True))
    _, data, _ = fetch(server, session, "openai-responses")
    assert blocks(data)[5] == (
        b'event: response.output_text.delta\nid: 6\ndata: {"type":"response.output_text.delta","sequence_number":5,'
        b'"item_id":"msg_fake_1","output_index":0,"content_index":0,"delta":" there","logprobs":[]}\n\n')
    response = {"id": "resp_fake_1", "object": "response", "created_at": 1735689600, "status": "in_progress",
                "background": False, "error": None, "incomplete_details": None, "model": "gpt-test", "output": [],
                "instructions": None, "max_output_tokens": None, "max_tool_calls": None, "metadata": {},
                "parallel_tool_calls": True, "previous_response_id": None,
                "reasoning": {"effort": None, "summary": None}, "service_tier": "default", "store": True,
                "temperature": 1.0, "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
                "top_logprobs": 0, "top_p": 1.0, "truncation": "disabled", "user": None, "usage": None}
    item = {"id": "msg_fake_1", "type": "message", "status": "in_progress", "content": [], "role": "assistant"}
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": "Hi there"}
    where = {"item_id": "msg_fake_1", "output_index": 0, "content_index": 0}
    done_item = {**item, "status": "completed", "content": [part]}
    usage = {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0}, "output_tokens": 2,
             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 14}
    expected = [
        ("response.created", {"response": response}),
        ("response.in_progress", {"response": response}),
        ("response.output_item.added", {"output_index": 0, "item": item}),
        ("response.content_part.added", {**where, "part": {**part, "text": ""}}),
        ("response.output_text.delta", {**where, "delta": "Hi", "logprobs": []}),
        ("response.output_text.delta", {**where, "delta": " there", "logprobs": []}),
        ("response.output_text.done", {**where, "text": "Hi there", "logprobs": []}),
        ("response.content_part.done", {**where, "part": part}),
        ("response.output_item.done", {"output_index": 0, "item": done_item}),
        ("response.completed", {"response": {**response, "status": "completed", "usage": usage, "output": [
            {"id": "msg_fake_1", "type": "message", "status": "completed", "role": "assistant", "content": [part]}]}}),
    ]
    assert frames("openai-responses", data) == [
        (name, str(seq + 1), {"type": name, "sequence_number": seq, **fields})
        for seq, (name, fields) in enumerate(expected)]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_default_reply_streams_default_text(server: FakeLLMServer, session: requests.Session, provider: str) -> None:
    _, data, error = fetch(server, session, provider)
    assert (text_of(provider, data), error) == (DEFAULT_TEXT, None)


def test_default_text_has_multibyte_characters() -> None:
    assert {len(c.encode()) for c in DEFAULT_TEXT} == {1, 2, 3, 4}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_calls_reassemble(server: FakeLLMServer, session: requests.Session, provider: str) -> None:
    calls = [("get_weather", {"city": "Paris", "unit": "celsius"}), ("get_time", {"tz": "Europe/Paris"})]
    server.script(Reply(text="Let me check.", tool_calls=calls))
    _, data, _ = fetch(server, session, provider)
    assert tool_calls_of(provider, data) == calls
    assert text_of(provider, data) == "Let me check."


@pytest.mark.parametrize(("provider", "finish"), [
    pytest.param("openai", ("finish_reason", "tool_calls"), id="openai"),
    pytest.param("anthropic", ("stop_reason", "tool_use"), id="anthropic"),
    pytest.param("ollama", ("done_reason", "stop"), id="ollama"),
])
def test_tool_calls_finish_reason(server: FakeLLMServer, session: requests.Session, provider: str,
                                  finish: Tuple[str, str]) -> None:
    server.script(Reply(text="", tool_calls=[("f", {})]))
    _, data, _ = fetch(server, session, provider)
    assert finish[1] in [found for _, _, obj in frames(provider, data) for found in _values(obj, finish[0])]


def _values(obj: Any, key: str) -> Iterator[Any]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                yield v
            yield from _values(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from _values(v, key)


def test_openai_tool_call_arguments_come_in_fragments(server: FakeLLMServer, session: requests.Session) -> None:
    server.script(Reply(text="", tool_calls=[("f", {"city": "Paris"})]))
    _, data, _ = fetch(server, session, "openai")
    deltas = [obj["choices"][0]["delta"] for _, _, obj in frames("openai", data)[1:-2]]
    assert deltas == [
        {"tool_calls": [{"index": 0, "id": "call_fake_1_0", "type": "function",
                         "function": {"name": "f", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]},
    ]


@pytest.mark.parametrize(("provider", "path"), [
    pytest.param("openai", ["choices", 0, "delta", "reasoning_content"], id="openai"),
    pytest.param("anthropic", ["delta", "thinking"], id="anthropic"),
    pytest.param("ollama", ["message", "thinking"], id="ollama"),
    pytest.param("openai-responses", ["delta"], id="openai-responses"),
])
def test_thinking(server: FakeLLMServer, session: requests.Session, provider: str, path: List[Any]) -> None:
    server.script(Reply(text="Answer", thinking="Let me think"))
    _, data, _ = fetch(server, session, provider)
    pieces = []
    for name, _, obj in frames(provider, data):
        if provider == "openai-responses" and name != "response.reasoning_summary_text.delta":
            continue
        try:
            for key in path:
                obj = obj[key]
        except (KeyError, IndexError, TypeError):
            continue
        pieces.append(obj)
    assert ("".join(pieces), text_of(provider, data)) == ("Let me think", "Answer")


@pytest.mark.parametrize(("provider", "found"), [
    pytest.param("openai", {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12,
                            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                          "accepted_prediction_tokens": 0,
                                                          "rejected_prediction_tokens": 0}}, id="openai"),
    pytest.param("anthropic", {"output_tokens": 7}, id="anthropic"),
    pytest.param("openai-responses", {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                                      "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 0},
                                      "total_tokens": 12}, id="openai-responses"),
])
def test_usage(server: FakeLLMServer, session: requests.Session, provider: str, found: Dict[str, int]) -> None:
    server.script(Reply(text="Hi", usage=(5, 7)))
    _, data, _ = fetch(server, session, provider, stream_options={"include_usage": True})
    usages = [u for _, _, obj in frames(provider, data) for u in _values(obj, "usage") if u]
    assert usages[-1] == found
    if provider == "anthropic":
        assert usages[0] == {"input_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                             "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                             "output_tokens": 1, "service_tier": "standard"}


def test_ollama_usage_counts(server: FakeLLMServer, session: requests.Session) -> None:
    server.script(Reply(text="Hi", usage=(5, 7)))
    _, data, _ = fetch(server, session, "ollama")
    final = frames("ollama", data)[-1][2]
    assert (final["prompt_eval_count"], final["eval_count"], final["done"]) == (5, 7, True)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_explicit_tokens_are_the_deltas(server: FakeLLMServer, session: requests.Session, provider: str) -> None:
    server.script(Reply(tokens=["Pa", "ris", " é", "🎉"]))
    _, data, _ = fetch(server, session, provider)
    assert [d for d in deltas_of(provider, data) if d] == ["Pa", "ris", " é", "🎉"]


# --- faults ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("tokens", [pytest.param(0, id="0"), pytest.param(2, id="2"), pytest.param(4, id="all")])
def test_close_after_tokens(server: FakeLLMServer, session: requests.Session, provider: str, tokens: int) -> None:
    server.script(Reply(text="A B C D"), Reply(text="A B C D", close_after_tokens=tokens))
    _, clean, _ = fetch(server, session, provider)
    _, data, error = fetch(server, session, provider)
    units = clean.splitlines(keepends=True) if provider == "ollama" else blocks(clean)
    token_units = [i for i, unit in enumerate(units) if any(deltas_of(provider, unit))]
    cut = token_units[tokens - 1] + 1 if tokens else token_units[0]
    assert renumber(data) == b"".join(units[:cut])
    assert text_of(provider, data) == "A B C D"[: max(0, 2 * tokens - 1)]
    assert isinstance(error, requests.packages.urllib3.exceptions.ProtocolError)  # type: ignore[attr-defined]


@pytest.mark.parametrize("chunked", [pytest.param(True, id="chunked"), pytest.param(False, id="unchunked")])
@pytest.mark.parametrize("cut", [pytest.param(60, id="inside-json"), pytest.param(None, id="inside-utf8-char")])
def test_close_after_bytes(server: FakeLLMServer, session: requests.Session, chunked: bool, cut: Optional[int]) -> None:
    server.script(Reply(text="日本語"))
    _, clean, _ = fetch(server, session, "ollama")
    limit = cut if cut is not None else clean.index("本".encode()) + 1
    server.script(Reply(text="日本語", close_after_bytes=limit, chunked=chunked))
    _, data, error = fetch(server, session, "ollama")
    assert data == clean[:limit]
    assert (error is not None) == chunked  # unchunked: the close *is* the end of the body


def test_close_after_bytes_zero_sends_headers_only(server: FakeLLMServer) -> None:
    server.script(Reply(close_after_bytes=0))
    head, body = raw_request(server, "openai")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b""


def test_stall_before_first_byte(server: FakeLLMServer, session: requests.Session) -> None:
    server.script(Reply(text="Hi", stall_before_first_byte=0.3, event_ids=True))
    with session.post(server.url + PATHS["openai"], json=_body("openai"), stream=True, timeout=10) as resp:
        headers_at = time.monotonic()
        first = resp.raw.read1(65536)
        waited = time.monotonic() - headers_at
    assert first.startswith(b"id: 1\n")
    assert 0.25 <= waited < 3.0


def test_stall_after_tokens(server: FakeLLMServer, session: requests.Session) -> None:
    server.script(Reply(text="A B C", stall_after_tokens=(2, 0.3)))
    with session.post(server.url + PATHS["ollama"], json=_body("ollama"), stream=True, timeout=10) as resp:
        received = b""
        while received.count(b"\n") < 2:
            received += resp.raw.read1(65536)
        before = time.monotonic()
        rest, error = read_all(resp)
        waited = time.monotonic() - before
    assert text_of("ollama", received) == "A B" and text_of("ollama", rest) == " C" and error is None
    assert 0.25 <= waited < 3.0


def test_infinite_stall_ends_when_the_client_leaves(server: FakeLLMServer, session: requests.Session) -> None:
    server.script(Reply(stall_before_first_byte=float("inf")))
    with session.post(server.url + PATHS["openai"], json=_body("openai"), stream=True, timeout=10) as resp:
        assert (resp.status_code, server.active_connections) == (200, 1)
        [thread] = handler_threads()
    session.close()
    thread.join(5)
    assert (thread.is_alive(), server.active_connections) == (False, 0)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_malformed_at(server: FakeLLMServer, session: requests.Session, provider: str) -> None:
    server.script(Reply(text="A B C", event_ids=False), Reply(text="A B C", malformed_at=2, event_ids=False))
    clean_units = _data_units(provider, fetch(server, session, provider)[1])
    _, data, error = fetch(server, session, provider)
    units = _data_units(provider, renumber(data))
    assert ([i for i, unit in enumerate(units) if not _is_json(unit)], error) == ([1], None)
    assert units[1] == clean_units[1][: len(units[1])] and 0 < len(units[1]) < len(clean_units[1])
    assert units[:1] + units[2:] == clean_units[:1] + clean_units[2:]


def _data_units(provider: str, data: bytes) -> List[bytes]:
    if provider == "ollama":
        return data.splitlines()
    return [block[block.index(b"data: ") + 6:-2] for block in blocks(data)]


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return data == b"[DONE]"
    return True


@pytest.mark.parametrize(("provider", "marker"), [
    pytest.param("openai", b"[DONE]", id="openai"),
    pytest.param("openai-responses", b"response.completed", id="openai-responses"),
    pytest.param("anthropic", b"message_stop", id="anthropic"),
    pytest.param("ollama", b'"done":true', id="ollama"),
])
def test_omit_end_marker(server: FakeLLMServer, session: requests.Session, provider: str, marker: bytes) -> None:
    server.script(Reply(text="A B"), Reply(text="A B", omit_end_marker=True))
    _, clean, _ = fetch(server, session, provider)
    _, data, error = fetch(server, session, provider)
    assert marker in clean and marker not in data
    assert error is None and clean.startswith(renumber(data)) and text_of(provider, data) == "A B"


@pytest.mark.parametrize(("provider", "expected"), [
    pytest.param("openai", [("", "3", {"error": {"message": "Boom", "type": "server_error", "param": None,
                                                 "code": None}})], id="openai"),
    pytest.param("anthropic", [("error", "5", {"type": "error", "error": {"type": "overloaded_error",
                                                                         "message": "Boom"}})], id="anthropic"),
    pytest.param("ollama", [("", "", {"error": "Boom"})], id="ollama"),
])
def test_error_event(server: FakeLLMServer, session: requests.Session, provider: str, expected: List[Any]) -> None:
    server.script(Reply(text="A B C", error_event_at=1, error="Boom", event_ids=True))
    _, data, error = fetch(server, session, provider)
    assert (frames(provider, data)[-1:], text_of(provider, data), error) == (expected, "A", None)


def test_responses_error_event_then_failed(server: FakeLLMServer, session: requests.Session) -> None:
    server.script(Reply(text="A B C", error_event_at=1, error_event_type="rate_limit_exceeded", error="Slow down",
                          event_ids=True))
    _, data, _ = fetch(server, session, "openai-responses")
    (_, error_id, error_event), (_, failed_id, failed) = frames("openai-responses", data)[-2:]
    assert error_event == {"type": "error", "sequence_number": 5, "code": "rate_limit_exceeded",
                           "message": "Slow down", "param": None}
    assert (failed["type"], failed["sequence_number"], failed["response"]["status"], failed["response"]["error"]) == (
        "response.failed", 6, "failed", {"code": "rate_limit_exceeded", "message": "Slow down"})
    assert (error_id, failed_id) == ("6", "7")


@pytest.mark.parametrize(("provider", "body"), [
    pytest.param("openai", {"error": {"message": "Slow down", "type": "requests", "param": None,
                                      "code": "rate_limit_exceeded"}}, id="openai"),
    pytest.param("anthropic", {"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down"}},
                 id="anthropic"),
    pytest.param("ollama", {"error": "Slow down"}, id="ollama"),
])
def test_error_status_body_and_headers(server: FakeLLMServer, session: requests.Session, provider: str,
                                       body: Dict[str, Any]) -> None:
    server.script(Reply(status=429, error="Slow down", headers={"Retry-After": "1", "retry-after-ms": "250"}))
    resp, data, _ = fetch(server, session, provider)
    assert (resp.status_code, resp.headers["Retry-After"], resp.headers["retry-after-ms"]) == (429, "1", "250")
    assert (resp.headers["Content-Type"], resp.headers["Content-Length"]) == ("application/json", str(len(data)))
    assert data == json.dumps(body, separators=(",", ":")).encode()


@pytest.mark.parametrize(("status", "error_type", "body"), [
    pytest.param(529, None, b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}', id="529"),
    pytest.param(500, None, b'{"type":"error","error":{"type":"api_error","message":"Internal Server Error"}}',
                 id="500"),
    pytest.param(413, "request_too_large", b'{"type":"error","error":{"type":"request_too_large",'
                                           b'"message":"Request Entity Too Large"}}', id="413-typed"),
])
def test_anthropic_error_defaults(server: FakeLLMServer, status: int, error_type: Optional[str], body: bytes) -> None:
    server.script(Reply(status=status, error_type=error_type, headers={"x-should-retry": "false"}))
    head, data = raw_request(server, "anthropic")
    reason = json.loads(body)["error"]["message"]
    assert head.split(b"\r\n")[0] == f"HTTP/1.1 {status} {reason}".encode()
    assert b"\r\nx-should-retry: false" in head and data == body


def test_error_reply_keeps_the_connection_alive(server: FakeLLMServer, session: requests.Session) -> None:
    server.script(Reply(status=503), Reply(text="ok"))
    assert fetch(server, session, "openai")[0].status_code == 503
    assert text_of("openai", fetch(server, session, "openai")[1]) == "ok"
    assert len(handler_threads()) == 1


def test_wrong_content_type(server: FakeLLMServer, session: requests.Session) -> None:
    server.script(Reply(content_type="text/html; charset=utf-8", raw_body=b"<html><body>Gateway</body></html>"))
    resp, data, error = fetch(server, session, "openai")
    assert (resp.status_code, resp.headers["Content-Type"], data, error) == (
        200, "text/html; charset=utf-8", b"<html><body>Gateway</body></html>", None)


def test_raw_body_error_status(server: FakeLLMServer, session: requests.Session) -> None:
    server.script(Reply(status=502, content_type="text/html", raw_body=b"<h1>Bad gateway</h1>"))
    resp, data, _ = fetch(server, session, "anthropic")
    assert (resp.status_code, resp.headers["Content-Type"], data) == (502, "text/html", b"<h1>Bad gateway</h1>")


def test_oversized_line_sse(server: FakeLLMServer, session: requests.Session) -> None:
    server.script(Reply(text="A B", oversized_line=100_000))
    _, data, _ = fetch(server, session, "openai")
    lines = data.split(b"\n")
    [big] = [line for line in lines if len(line) > 1000]
    assert (len(big), big[:3], text_of("openai", data)) == (100_000, b":xx", "A B")
    assert data.index(big) > data.index(b'"content":"A"') and data.index(big) < data.index(b'"content":" B"')


def test_oversized_line_ollama(server: FakeLLMServer, session: requests.Session) -> None:
    server.script(Reply(text="A B", oversized_line=5000))
    _, data, _ = fetch(server, session, "ollama")
    lines = data.split(b"\n")
    assert [len(line) for line in lines if len(line) > 1000] == [5000]
    assert text_of("ollama", data) == "A B"


def test_refuse_prefill(server: FakeLLMServer, session: requests.Session) -> None:
    server.script(Reply(refuse_prefill=True), Reply(text="fine", refuse_prefill=True))
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "The"}]
    resp, data, _ = fetch(server, session, "anthropic", messages=messages)
    assert resp.status_code == 400
    assert json.loads(data) == {"type": "error", "error": {"type": "invalid_request_error", "message": (
        "This model does not support assistant message prefill. The conversation must end with a user message.")}}
    assert text_of("anthropic", fetch(server, session, "anthropic")[1]) == "fine"


# --- framing ------------------------------------------------------------------------------------------------------


def test_chunked_one_chunk_per_event(server: FakeLLMServer) -> None:
    server.script(Reply(text="A B C"))
    head, body = raw_request(server, "ollama")
    chunks, terminated = dechunk(body)
    assert b"\r\nTransfer-Encoding: chunked" in head and terminated
    assert [text_of("ollama", chunk) for chunk in chunks] == ["A", " B", " C", ""]


def test_events_per_write_groups_events(server: FakeLLMServer) -> None:
    server.script(Reply(text="A B C D E", events_per_write=4))
    _, body = raw_request(server, "ollama")
    chunks, _ = dechunk(body)
    assert [chunk.count(b"\n") for chunk in chunks] == [4, 2]


def test_drip_writes_one_byte_per_chunk(server: FakeLLMServer) -> None:
    server.script(Reply(text="é!", drip=True))
    _, body = raw_request(server, "ollama")
    chunks, terminated = dechunk(body)
    assert terminated and {len(chunk) for chunk in chunks} == {1}
    assert text_of("ollama", b"".join(chunks)) == "é!"


def test_split_seed_is_random_but_reproducible(server: FakeLLMServer) -> None:
    server.script(Reply(text="A B C"), Reply(text="A B C", split_seed=7), Reply(text="A B C", split_seed=7))
    whole, _ = dechunk(raw_request(server, "openai")[1])
    split_a, _ = dechunk(raw_request(server, "openai")[1])
    split_b, _ = dechunk(raw_request(server, "openai")[1])
    assert [len(c) for c in split_a] == [len(c) for c in split_b]
    assert max(len(c) for c in split_a) <= 32 and len(split_a) > 3 * len(whole)
    assert renumber(b"".join(split_a)) == b"".join(whole)


def test_unchunked_body_ends_at_close(server: FakeLLMServer) -> None:
    server.script(Reply(text="A B"), Reply(text="A B", chunked=False))
    _, chunked_body = raw_request(server, "anthropic")
    head, body = raw_request(server, "anthropic")
    assert b"Transfer-Encoding" not in head and b"Content-Length" not in head
    assert b"\r\nConnection: close" in head
    assert renumber(body) == b"".join(dechunk(chunked_body)[0])


@pytest.mark.parametrize("ending", [pytest.param("\r\n", id="crlf"), pytest.param("\r", id="cr")])
@pytest.mark.parametrize("provider", [pytest.param("anthropic", id="anthropic"), pytest.param("ollama", id="ollama")])
def test_line_endings(server: FakeLLMServer, session: requests.Session, provider: str, ending: str) -> None:
    server.script(Reply(text="A B"), Reply(text="A B", line_ending=ending))
    _, clean, _ = fetch(server, session, provider)
    _, data, _ = fetch(server, session, provider)
    assert renumber(data) == clean.replace(b"\n", ending.encode())


@pytest.mark.parametrize(("provider", "keepalive"), [
    pytest.param("openai", b": keep-alive\n\n", id="openai"),
    pytest.param("openai-responses", b": keep-alive\n\n", id="openai-responses"),
    pytest.param("anthropic", b'event: ping\ndata: {"type": "ping"}\n\n', id="anthropic"),
])
def test_keepalive_every(server: FakeLLMServer, session: requests.Session, provider: str, keepalive: bytes) -> None:
    server.script(Reply(text="A B C"), Reply(text="A B C", keepalive_every=2))
    _, clean, _ = fetch(server, session, provider)
    _, data, _ = fetch(server, session, provider)
    events = blocks(clean)
    # Never after the end marker: nothing follows it.
    expected = b"".join(event + (keepalive if i % 2 == 1 and i < len(events) - 1 else b"")
                        for i, event in enumerate(events))
    assert renumber(data) == expected


def test_keepalive_is_a_no_op_for_ollama(server: FakeLLMServer, session: requests.Session) -> None:
    server.script(Reply(text="A B C", keepalive_every=1))
    _, data, _ = fetch(server, session, "ollama")
    assert len(data.splitlines()) == 4


def test_event_ids_off(server: FakeLLMServer, session: requests.Session) -> None:
    server.script(Reply(text="A", event_ids=False))
    _, data, _ = fetch(server, session, "anthropic")
    assert b"id: " not in data and data.startswith(b"event: message_start\ndata: {")


def test_interval_paces_writes(server: FakeLLMServer, session: requests.Session) -> None:
    server.script(Reply(token_count=20, interval=0.01))
    start = time.monotonic()
    _, data, _ = fetch(server, session, "ollama")
    elapsed = time.monotonic() - start
    assert len(data.splitlines()) == 21
    assert 0.19 <= elapsed < 5.0


def test_keep_alive_reuses_one_connection(server: FakeLLMServer, session: requests.Session) -> None:
    for provider in PATHS:
        assert fetch(server, session, provider)[2] is None
    assert len(handler_threads()) == 1


# --- resume emulation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", SSE_PROVIDERS)
def test_last_event_id_sends_the_rest(server: FakeLLMServer, session: requests.Session, provider: str) -> None:
    server.script(Reply(text="A B C D"), Reply(text="A B C D"))
    _, clean, _ = fetch(server, session, provider)
    _, data, _ = fetch(server, session, provider, headers={"Last-Event-ID": "4"})
    assert renumber(data) == b"".join(blocks(clean)[4:])


def test_last_event_id_then_faults_count_sent_tokens(server: FakeLLMServer, session: requests.Session) -> None:
    server.script(Reply(text="A B C D", close_after_tokens=1))
    _, data, error = fetch(server, session, "openai", headers={"Last-Event-ID": "2"})
    assert (text_of("openai", data), error is not None) == (" B", True)


def test_ollama_ignores_last_event_id(server: FakeLLMServer, session: requests.Session) -> None:
    server.script(Reply(text="A B C D"))
    _, data, _ = fetch(server, session, "ollama", headers={"Last-Event-ID": "2"})
    assert text_of("ollama", data) == "A B C D"


@pytest.mark.parametrize(("provider", "extra", "prefill", "text"), [
    pytest.param("anthropic", {}, "Paris is", " the capital.", id="anthropic"),
    pytest.param("anthropic", {}, [{"type": "text", "text": "Paris"}], " is the capital.", id="anthropic-blocks"),
    pytest.param("anthropic", {}, "Par", "is is the capital.", id="mid-token"),
    pytest.param("ollama", {}, "Paris is", " the capital.", id="ollama"),
    pytest.param("openai", {"continue_final_message": True}, "Paris is", " the capital.", id="openai-continue"),
    pytest.param("openai", {}, "Paris is", "Paris is the capital.", id="openai-no-continue"),
    pytest.param("anthropic", {}, "London", "Paris is the capital.", id="ignored-prefill"),
    pytest.param("anthropic", {}, "Paris is the capital.", "", id="whole-text"),
])
def test_prefill_continuation(server: FakeLLMServer, session: requests.Session, provider: str,
                              extra: Dict[str, Any], prefill: Any, text: str) -> None:
    server.script(Reply(text="Paris is the capital."))
    messages = [{"role": "user", "content": "Capital?"}, {"role": "assistant", "content": prefill}]
    _, data, _ = fetch(server, session, provider, messages=messages, **extra)
    assert text_of(provider, data) == text


def test_prefill_continuation_of_a_lazy_stream(server: FakeLLMServer, session: requests.Session) -> None:
    server.script(Reply(token_count=5))
    messages = [{"role": "user", "content": "Count"}, {"role": "assistant", "content": "tok0 tok1 to"}]
    _, data, _ = fetch(server, session, "anthropic", messages=messages)
    assert text_of("anthropic", data) == "k2 tok3 tok4"


def test_responses_get_resume(server: FakeLLMServer, session: requests.Session) -> None:
    server.script(Reply(text="A B C D"), Reply(text="A B C D", close_after_tokens=2))
    _, clean, _ = fetch(server, session, "openai-responses")
    _, broken, error = fetch(server, session, "openai-responses")
    assert error is not None and text_of("openai-responses", broken) == "A B"
    last_seq = frames("openai-responses", broken)[-1][2]["sequence_number"]
    url = f"{server.url}/v1/responses/resp_fake_2?stream=true&starting_after={last_seq}"
    with session.get(url, stream=True, timeout=10) as resp:
        rest, rest_error = read_all(resp)
    assert (resp.status_code, rest_error) == (200, None)
    assert renumber(broken + rest) == clean
    assert len(server.requests) == 3 and server.requests[2].query == {"stream": "true", "starting_after": "5"}


@pytest.mark.parametrize(("path", "status"), [
    pytest.param("/v1/responses/resp_nope?stream=true", 404, id="unknown-id"),
    pytest.param("/v1/responses/resp_fake_1?stream=true&starting_after=x", 400, id="bad-cursor"),
])
def test_responses_get_errors(server: FakeLLMServer, session: requests.Session, path: str, status: int) -> None:
    fetch(server, session, "openai-responses")
    with session.get(server.url + path, timeout=10) as resp:
        assert (resp.status_code, sorted(resp.json()["error"])) == (status, ["code", "message", "param", "type"])


def test_responses_get_without_stream_is_the_stored_response(server: FakeLLMServer, session: requests.Session) -> None:
    fetch(server, session, "openai-responses")
    with session.get(server.url + "/v1/responses/resp_fake_1", timeout=10) as resp:
        stored = resp.json()
    assert (resp.status_code, stored["id"], stored["status"]) == (200, "resp_fake_1", "completed")
    assert stored["output"][0]["content"][0]["text"] == DEFAULT_TEXT


# --- routing -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), [
    pytest.param("/v1/nope", {"error": {"message": "Unknown request URL: POST /v1/nope", "type": "invalid_request_error",
                                        "param": None, "code": None}}, id="openai-style"),
    pytest.param("/v1/messages/nope", {"type": "error", "error": {
        "type": "not_found_error", "message": "Unknown request URL: POST /v1/messages/nope"}}, id="anthropic-style"),
    pytest.param("/api/nope", {"error": "Unknown request URL: POST /api/nope"}, id="ollama-style"),
])
def test_unknown_path_is_404(server: FakeLLMServer, session: requests.Session, path: str, body: Any) -> None:
    with session.post(server.url + path, json={}, timeout=10) as resp:
        assert (resp.status_code, resp.json()) == (404, body)


@pytest.mark.parametrize("provider", ["openai", "anthropic", "openai-responses"])
def test_sse_ids_only_when_asked(server: FakeLLMServer, session: requests.Session, provider: str) -> None:
    # As the real APIs: no id lines by default.
    server.script(Reply(text="Hi there"), Reply(text="Hi there", event_ids=True))
    plain, with_ids = fetch(server, session, provider)[1], fetch(server, session, provider)[1]
    assert b"id: " not in plain and {i for _, i, _ in frames(provider, plain)} == {""}
    assert [i for _, i, _ in frames(provider, with_ids)] == [str(n + 1) for n in range(len(frames(provider, plain)))]


def test_wrong_method_is_405(server: FakeLLMServer, session: requests.Session) -> None:
    with session.get(server.url + "/v1/chat/completions", timeout=10) as resp:
        assert resp.status_code == 405


def test_invalid_json_body_is_400_and_logged(server: FakeLLMServer, session: requests.Session) -> None:
    with session.post(server.url + "/v1/messages", data=b"{not json", timeout=10) as resp:
        assert resp.status_code == 400
    assert server.requests[0].json is None


# --- request log, counters, lifecycle ---------------------------------------------------------------------------------


def test_request_log(server: FakeLLMServer, session: requests.Session) -> None:
    fetch(server, session, "anthropic", headers={"X-Api-Key": "secret", "anthropic-version": "2023-06-01"})
    with session.get(server.url + "/v1/responses/r1?stream=true&starting_after=3", timeout=10):
        pass
    first, second = server.wait_for_requests(2, timeout=5)
    assert isinstance(first, RecordedRequest)
    assert (first.method, first.path, first.query, first.json) == ("POST", "/v1/messages", {}, _body("anthropic"))
    assert (first.header("x-api-key"), first.header("ANTHROPIC-VERSION"), first.header("nope")) == (
        "secret", "2023-06-01", None)
    assert "secret" not in repr(first)
    assert (second.method, second.path, second.query, second.json) == (
        "GET", "/v1/responses/r1", {"stream": "true", "starting_after": "3"}, None)
    assert first.received_at <= second.received_at <= time.monotonic()


def test_requests_is_a_snapshot(server: FakeLLMServer, session: requests.Session) -> None:
    snapshot = server.requests
    fetch(server, session, "ollama")
    assert (snapshot, len(server.requests)) == ([], 1)


def test_wait_for_requests_times_out(server: FakeLLMServer) -> None:
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"^expected 1 request\(s\) within 0.2s, got 0$"):
        server.wait_for_requests(1, timeout=0.2)
    assert time.monotonic() - start < 2


def test_script_is_fifo_then_default(server: FakeLLMServer, session: requests.Session) -> None:
    server.default_reply = Reply(text="default")
    server.script(Reply(text="one"), Reply(text="two"))
    texts = [text_of("ollama", fetch(server, session, "ollama")[1]) for _ in range(4)]
    assert texts == ["one", "two", "default", "default"]


def test_concurrency_counters(server: FakeLLMServer) -> None:
    server.script(*[Reply(stall_before_first_byte=float("inf"))] * 3)
    sessions = [requests.Session() for _ in range(3)]
    try:
        responses = [s.post(server.url + PATHS["openai"], json=_body("openai"), stream=True, timeout=10)
                     for s in sessions]
        assert (server.active_connections, server.max_active_connections) == (3, 3)
        threads = handler_threads()
        for resp, sess in zip(responses, sessions):
            resp.close()
            sess.close()
        for thread in threads:
            thread.join(5)
        assert (server.active_connections, server.max_active_connections) == (0, 3)
    finally:
        for sess in sessions:
            sess.close()


def test_stop_with_a_stalled_handler_is_quick(session: requests.Session) -> None:
    server = FakeLLMServer().start()
    server.script(Reply(stall_before_first_byte=float("inf")))
    port = server.port
    with session.post(server.url + PATHS["openai"], json=_body("openai"), stream=True, timeout=10) as resp:
        start = time.monotonic()
        server.stop()
        elapsed = time.monotonic() - start
        data, error = read_all(resp)
    assert elapsed < 1.5
    assert (data, error is not None) == (b"", True)
    assert [t.name for t in threading.enumerate() if t.name.startswith("llmstream-fake-server")] == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_stop_with_a_paced_stream_and_an_idle_keepalive_connection(session: requests.Session) -> None:
    server = FakeLLMServer().start()
    fetch(server, session, "ollama")  # leaves an idle keep-alive connection in the pool
    server.script(Reply(token_count=10_000, interval=0.05))
    other = requests.Session()
    with other, other.post(server.url + PATHS["ollama"], json=_body("ollama"), stream=True, timeout=10) as resp:
        resp.raw.read1(65536)
        start = time.monotonic()
        server.stop()
        assert time.monotonic() - start < 1.5
    assert [t.name for t in threading.enumerate() if t.name.startswith("llmstream-fake-server")] == []


def test_lifecycle_errors() -> None:
    server = FakeLLMServer()
    with pytest.raises(RuntimeError, match="not started"):
        server.url
    with server:
        assert server.start() is server  # idempotent while running
        assert re.fullmatch(r"<FakeLLMServer http://127\.0\.0\.1:\d+>", repr(server))
    server.stop()  # idempotent
    with pytest.raises(RuntimeError, match="cannot restart; create a new one"):
        server.start()


def test_unstarted_server_holds_no_socket() -> None:
    FakeLLMServer().stop()
    FakeLLMServer()
    gc.collect()  # an unclosed socket would raise ResourceWarning, an error under filterwarnings=error


def test_base_urls(server: FakeLLMServer) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.url) and server.port > 0
    assert [server.base_url(p) for p in PATHS] == [server.url + "/v1", server.url + "/v1", server.url, server.url]
    assert [server.base_url(p) for p in ("gemini", "vertex", "azure")] == [server.url] * 3
    with pytest.raises(ValueError, match="unknown provider 'mistral'"):
        server.base_url("mistral")


def test_client_disconnect_is_quiet(server: FakeLLMServer, capfd: pytest.CaptureFixture[str],
                                    caplog: pytest.LogCaptureFixture) -> None:
    server.script(Reply(token_count=100_000, interval=0.001))
    caplog.set_level(logging.DEBUG, logger="llmstream.testing")
    sess = requests.Session()
    with sess, sess.post(server.url + PATHS["openai"], json=_body("openai"), stream=True, timeout=10) as resp:
        resp.raw.read1(65536)
        [thread] = handler_threads()
    thread.join(5)
    assert not thread.is_alive()
    assert capfd.readouterr().err == ""
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# --- huge lazy streams ---------------------------------------------------------------------------------------------------


def test_million_token_stream(server: FakeLLMServer, session: requests.Session) -> None:
    server.script(Reply(token_count=1_000_000, events_per_write=64))
    start = time.monotonic()
    resp, data, error = fetch(server, session, "openai")
    elapsed = time.monotonic() - start
    assert error is None and data.endswith(b"data: [DONE]\n\n")
    assert data.count(b'"content":') == 1_000_001 and b'"content":" tok999999"' in data
    assert elapsed < 30


def test_lazy_stream_is_never_materialised(server: FakeLLMServer, session: requests.Session) -> None:
    server.script(Reply(token_count=10**12, events_per_write=64))  # would take hours and terabytes if built
    with session.post(server.url + PATHS["anthropic"], json=_body("anthropic"), stream=True, timeout=10) as resp:
        received = 0
        while received < 1_000_000:
            received += len(resp.raw.read1(65536))
    assert received >= 1_000_000


@pytest.mark.parametrize("provider", [pytest.param(p, id=p) for p in ("openai", "anthropic", "ollama")])
def test_plan_memory_is_bounded(provider: str) -> None:
    reply = Reply(token_count=30_000)
    ctx = StreamContext(provider=provider, model="m", number=1, include_usage=False, tokens=reply.iter_tokens)
    tracemalloc.start()
    try:
        total = sum(len(item) for item in plan(FORMATTERS[provider](reply, ctx), reply, ctx)
                    if isinstance(item, bytes))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total > 1_000_000 and peak < 100_000


# --- Reply validation and the CLI ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    pytest.param({"text": "a", "token_count": 3}, "Reply.token_count cannot be combined with text or tokens",
                 id="count-and-text"),
    pytest.param({"text": "ab", "tokens": ["a", "c"]}, "Reply.tokens joined must equal Reply.text", id="mismatch"),
    pytest.param({"tokens": ["a", ""]}, "Reply.tokens must be non-empty strings", id="empty-token"),
    pytest.param({"status": 99}, "Reply.status must be an int from 200 to 599, got 99", id="status"),
    pytest.param({"line_ending": "\t"}, "Reply.line_ending must be one of", id="line-ending"),
    pytest.param({"events_per_write": 0}, "Reply.events_per_write must be an int >= 1 or None, got 0", id="epw"),
    pytest.param({"malformed_at": 0}, "Reply.malformed_at must be an int >= 1 or None, got 0", id="malformed"),
    pytest.param({"interval": -1.0}, "Reply.interval must be a number of seconds >= 0, got -1.0", id="interval"),
    pytest.param({"interval": float("inf")}, "Reply.interval must be finite", id="interval-inf"),
    pytest.param({"drip": True, "split_seed": 1}, "Reply.drip and Reply.split_seed both split writes", id="drip"),
    pytest.param({"stall_after_tokens": (1,)}, "Reply.stall_after_tokens must be (tokens, seconds)", id="stall"),
    pytest.param({"usage": (1, -1)}, "Reply.usage must be (input_tokens, output_tokens)", id="usage"),
    pytest.param({"tool_calls": [("f",)]}, "Reply.tool_calls items must be (name, arguments dict)", id="tools"),
    pytest.param({"headers": {"a": "b\r\nc: d"}}, "Reply.headers must map str to str without line breaks",
                 id="header-injection"),
    pytest.param({"chunked": 1}, "Reply.chunked must be True or False, got 1", id="bool"),
])
def test_reply_validation(kwargs: Dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        Reply(**kwargs)


def test_reply_normalises_and_compares() -> None:
    reply = Reply(tokens=["a", "b"], tool_calls=[["f", {"x": 1}]], stall_after_tokens=[1, 0.5])
    assert (reply.tokens, reply.tool_calls, reply.stall_after_tokens) == (("a", "b"), (("f", {"x": 1}),), (1, 0.5))
    assert Reply(text="x") == Reply(text="x") and Reply(text="x") != Reply(text="y")
    assert list(Reply(token_count=3).iter_tokens()) == ["tok0", " tok1", " tok2"]
    assert list(Reply(text="Hi  there ").iter_tokens()) == ["Hi", "  there", " "]


def test_script_rejects_non_replies(server: FakeLLMServer) -> None:
    with pytest.raises(TypeError, match="expected a llmstream.testing.Reply, got dict"):
        server.script({"text": "x"})  # type: ignore[arg-type]


def test_cli_parse_concurrency_limit() -> None:
    options = parse_args(["--max-concurrent", "4", "--limit-retry-after", "0.5"])
    assert (options.max_concurrent, options.limit_retry_after) == (4, 0.5)


def test_cli_parse_args() -> None:
    options = parse_args(["--port", "8765", "--fault", "close_after_tokens=5",
                          "--fault", "stall_before_first_byte=inf", "--fault", "stall_after_tokens=2,1.5",
                          "--fault", "chunked=false", "--text", "Hi there"])
    assert (options.host, options.port, options.max_concurrent, options.script) == ("127.0.0.1", 8765, None, ())
    assert options.reply == Reply(text="Hi there", close_after_tokens=5, stall_before_first_byte=float("inf"),
                                  stall_after_tokens=(2, 1.5), chunked=False, interval=DEFAULT_INTERVAL)


@pytest.mark.parametrize(("value", "expected"), [
    pytest.param('text=Hello, world', {"text": "Hello, world"}, id="text-with-commas"),
    pytest.param('text="a, b"', {"text": "a, b"}, id="json-string"),
    pytest.param('text=42', {"text": "42"}, id="text-field-keeps-digits"),
    pytest.param('stall_after_tokens=[2, 1.5]', {"stall_after_tokens": (2, 1.5)}, id="json-list"),
    pytest.param('tool_calls=[["get_weather", {"city": "Paris"}]]',
                 {"tool_calls": [("get_weather", {"city": "Paris"})]}, id="tool-calls-list"),
    pytest.param('tool_calls={"get_weather": {"city": "Paris, France"}}',
                 {"tool_calls": [("get_weather", {"city": "Paris, France"})]}, id="tool-calls-object"),
    pytest.param('headers={"Retry-After": "1"}', {"headers": {"Retry-After": "1"}}, id="headers-object"),
    pytest.param('usage=[5, 7]', {"usage": (5, 7)}, id="usage"),
    pytest.param('omit_end_marker=True', {"omit_end_marker": True}, id="python-bool"),
    pytest.param('raw_body="data: x"', {"raw_body": b"data: x"}, id="raw-body-bytes"),
])
def test_cli_fault_values_are_json(value: str, expected: Dict[str, Any]) -> None:
    assert parse_args(["--interval", "0", "--fault", value]).reply == Reply(interval=0, **expected)


def test_cli_unknown_field_suggests_the_nearest(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--fault", "close_after_token=5"])
    err = capsys.readouterr().err
    assert "unknown Reply field 'close_after_token' (did you mean close_after_tokens?)" in err
    assert "valid fields: text, tokens, token_count," in err and "ignore_prefill" in err


def test_cli_fault_times_break_once_then_recover(session: requests.Session) -> None:
    argv = ["--port", "0", "--fault", "status=503", "--fault-times", "1", "--interval", "0"]
    options = parse_args(argv)
    assert options.script == (Reply(status=503, interval=0),) and options.reply == Reply(interval=0)
    until = threading.Event()
    out, err = io.StringIO(), io.StringIO()
    thread = threading.Thread(target=serve, args=(argv,), kwargs={"out": out, "err": err, "until": until})
    thread.start()
    try:
        url = _wait_for_url(out)
        statuses = [session.post(url + "/v1/chat/completions", json=_body("openai"), timeout=10).status_code
                    for _ in range(3)]
        assert statuses == [503, 200, 200]
    finally:
        until.set()
        thread.join(10)
    log = err.getvalue().splitlines()
    pattern = r"\d\d:\d\d:\d\d POST /v1/chat/completions model=gpt-test stream=true"
    assert len(log) == 3 and all(re.fullmatch(pattern, line) for line in log), log


def _wait_for_url(out: io.StringIO) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        match = re.search(r"listening on (http://\S+)", out.getvalue())
        if match and "Press Ctrl+C" in out.getvalue():
            return match[1]
        time.sleep(0.01)  # the server thread prints into a StringIO: there is no event to wait on
    raise AssertionError(out.getvalue())


@pytest.mark.parametrize("argv", [
    pytest.param(["--fault", "nope=1"], id="unknown-field"),
    pytest.param(["--fault", "close_after_tokens"], id="no-value"),
    pytest.param(["--fault", "events_per_write=0"], id="invalid-value"),
    pytest.param(["--port", "99999"], id="port-out-of-range"),
    pytest.param(["--max-concurrent", "0"], id="max-concurrent-zero"),
    pytest.param(["--fault-times", "-1"], id="fault-times-negative"),
    pytest.param(["--interval", "-1"], id="interval-negative"),
])
def test_cli_rejects_bad_faults(argv: List[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        parse_args(argv)
    assert exc_info.value.code == 2 and "usage: llmstream serve-fake" in capsys.readouterr().err


def test_serve_prints_urls_and_returns(capsys: pytest.CaptureFixture[str]) -> None:
    until = threading.Event()
    until.set()
    assert serve(["--port", "0"], until=until) == 0
    lines = capsys.readouterr().out.splitlines()
    match = re.fullmatch(r"llmstream fake LLM server listening on (http://127\.0\.0\.1:\d+)", lines[0])
    assert match is not None
    assert lines[1:5] == [
        f"  openai            base_url={match[1]}/v1",
        f"  openai-responses  base_url={match[1]}/v1",
        f"  anthropic         base_url={match[1]}",
        f"  ollama            base_url={match[1]}",
    ]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery to a child differs on Windows")
def test_python_m_runs_until_ctrl_c(session: requests.Session) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "llmstream.testing", "--fault", "close_after_tokens=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().rsplit(" ", 1)[-1].strip()  # EOF (a crash) ends readline too
        with session.post(url + "/api/chat", json=_body("ollama"), stream=True, timeout=10) as resp:
            data, error = read_all(resp)
        assert (text_of("ollama", data), error is not None) == ("Hello", True)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert (proc.returncode, re.sub(r"\d\d:\d\d:\d\d ", "", err)) == (0, "POST /api/chat model=llama-test stream=true\n")


def test_a_request_received_just_before_ctrl_c_is_still_logged(session: requests.Session,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # CI once sent Ctrl+C after the answer and before the log loop woke up to print its line.
    # Here Ctrl+C lands exactly there: the request is recorded, the log loop is interrupted.
    def interrupted(self: FakeLLMServer, n: int, timeout: float = 5.0) -> List[RecordedRequest]:
        with session.post(self.url + "/api/chat", json=_body("ollama"), timeout=10) as resp:
            assert resp.status_code == 200
        raise KeyboardInterrupt

    monkeypatch.setattr(FakeLLMServer, "wait_for_requests", interrupted)
    err = io.StringIO()
    assert serve(["--port", "0"], out=io.StringIO(), err=err) == 0
    assert re.sub(r"\d\d:\d\d:\d\d ", "", err.getvalue()) == "POST /api/chat model=llama-test stream=true\n"


def test_ctrl_c_while_the_banner_is_printed_stops_cleanly_and_logs(session: requests.Session,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # A client may use the server as soon as the first line names its URL, while the rest of
    # the banner is still being printed (a loaded machine): Ctrl+C lands there, before the log loop.
    import llmstream.testing._cli as cli

    def interrupted(server: FakeLLMServer) -> Dict[str, str]:
        with session.post(server.url + "/api/chat", json=_body("ollama"), timeout=10) as resp:
            assert resp.status_code == 200
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "environment", interrupted)
    out, err = io.StringIO(), io.StringIO()
    try:
        status = serve(["--port", "0"], out=out, err=err)
    except KeyboardInterrupt:  # uncaught, it would stop the whole pytest session
        pytest.fail("Ctrl+C during the banner escaped serve()")
    assert status == 0 and "Press Ctrl+C" not in out.getvalue()
    assert re.sub(r"\d\d:\d\d:\d\d ", "", err.getvalue()) == "POST /api/chat model=llama-test stream=true\n"


def test_a_burst_of_connections_waits_in_the_listen_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    # 50 clients connect at once while the accepting thread is busy (as on a loaded machine):
    # the kernel must queue them all, not drop their SYNs (a 1 s retransmit) or reset them.
    from llmstream.testing._server import FakeHTTPServer

    held, release = threading.Event(), threading.Event()
    process_request = FakeHTTPServer.process_request

    def busy_acceptor(self: FakeHTTPServer, request: Any, client_address: Any) -> None:
        if not held.is_set():
            held.set()
            release.wait(10)
        process_request(self, request, client_address)

    monkeypatch.setattr(FakeHTTPServer, "process_request", busy_acceptor)
    body = json.dumps(_body("openai")).encode()
    request = (f"POST {PATHS['openai']} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    with FakeLLMServer() as server:
        first = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        clients = [first]
        try:
            assert held.wait(5)  # the acceptor holds the first connection and accepts no other
            for _ in range(49):
                sock = socket.socket()
                sock.setblocking(False)
                assert sock.connect_ex(("127.0.0.1", server.port)) in (0, errno.EINPROGRESS)
                clients.append(sock)
            # While nobody accepts, every handshake completes from the listen queue.
            # (A dropped SYN is retransmitted after 1 s and dropped again while the acceptor is held.)
            pending, deadline = set(clients[1:]), time.monotonic() + 5
            while pending:
                pending -= set(select.select([], list(pending), [], 0.05)[1])
                if time.monotonic() > deadline:
                    break
            assert len(pending) == 0, f"{len(pending)} of 49 connections not queued while the acceptor was busy"
            release.set()
            for sock in clients:
                sock.settimeout(10)
                sock.sendall(request)
            for sock in clients:
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"), answer[-200:]
        finally:
            release.set()
            for sock in clients:
                sock.close()


@pytest.mark.parametrize("streamed,last_write", [(True, "finish"), (False, "run")], ids=["stream", "complete"])
def test_max_concurrent_frees_the_slot_before_the_client_can_see_the_end(monkeypatch: pytest.MonkeyPatch,
                                                                        streamed: bool, last_write: str) -> None:
    # A client that read an answer to its end may send its next request at once. On a loaded
    # machine that request can arrive while the server's thread, descheduled right after its
    # answer's last write, has not yet done its bookkeeping: it is not one request too many.
    from llmstream.testing._writer import BodyWriter

    next_answered = threading.Event()
    original = getattr(BodyWriter, last_write)

    def descheduled(self: BodyWriter, *args: Any) -> Any:
        result = original(self, *args)
        next_answered.wait(5)  # this thread runs again only once the next request was answered
        return result

    monkeypatch.setattr(BodyWriter, last_write, descheduled)
    with FakeLLMServer(max_concurrent=1) as server, requests.Session() as one, requests.Session() as other:
        try:
            first = one.post(server.url + PATHS["openai"], json=_body("openai", stream=streamed), timeout=10)
            following = other.post(server.url + PATHS["openai"], json=_body("openai", stream=streamed), timeout=10)
        finally:
            next_answered.set()
        assert (first.status_code, following.status_code, server.rejected_over_limit) == (200, 200, 0), following.text
        assert first.content == following.content.replace(b"chatcmpl-fake-2", b"chatcmpl-fake-1")
