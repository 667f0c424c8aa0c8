"""OpenAI Chat Completions, as the fake server speaks it.

Stream: https://platform.openai.com/docs/api-reference/chat-streaming (role chunk,
content deltas, ``tool_calls`` deltas by index, finish chunk, a ``choices: []``
usage chunk only with ``stream_options.include_usage``, ``data: [DONE]``).
Non-streaming: https://platform.openai.com/docs/api-reference/chat/object
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from ._reply import Reply, split_words
from ._wire import CREATED, MODELS, Event, StreamContext, dump, fragments, q, text_of, usage_of


def stream(reply: Reply, ctx: StreamContext) -> Iterator[Event]:
    """Chat Completions chunks, ``data: [DONE]`` last."""
    head = b'{"id":"chatcmpl-fake-%d","object":"chat.completion.chunk","created":%d,"model":%s,"choices":[' % (
        ctx.number, CREATED, q(ctx.model))
    tail = b"]" + (b',"usage":null' if ctx.include_usage else b"") + b"}"

    def chunk(delta: bytes, finish: bytes = b"null") -> bytes:
        return head + b'{"index":0,"delta":' + delta + b',"logprobs":null,"finish_reason":' + finish + b"}" + tail

    yield Event(chunk(b'{"role":"assistant","content":""}'))
    for piece in split_words(reply.thinking or ""):
        yield Event(chunk(b'{"reasoning_content":' + q(piece) + b"}"))
    pre = head + b'{"index":0,"delta":{"content":'
    post = b'},"logprobs":null,"finish_reason":null}' + tail
    streamed = 0
    for token in ctx.tokens():
        streamed += 1
        yield Event(pre + q(token) + post, tokens=1)
    for index, (name, arguments) in enumerate(reply.tool_calls):
        call_id = b'"call_fake_%d_%d"' % (ctx.number, index)
        yield Event(chunk(b'{"tool_calls":[{"index":%d,"id":%s,"type":"function","function":{"name":%s,"arguments":""}}]}'
                          % (index, call_id, q(name))))
        for fragment in fragments(arguments):
            yield Event(chunk(b'{"tool_calls":[{"index":%d,"function":{"arguments":%s}}]}' % (index, q(fragment))))
    finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
    yield Event(chunk(b"{}", q(finish)))
    if ctx.include_usage:
        prompt, completion = usage_of(reply, streamed)
        yield Event(head + b'],"usage":' + dump(usage(prompt, completion)) + b"}")
    yield Event(b"[DONE]", end=True)


def usage(prompt: int, completion: int) -> Dict[str, Any]:
    """The ``usage`` object, with the detail sub-objects the API always sends."""
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def complete(reply: Reply, ctx: StreamContext) -> Dict[str, Any]:
    """The non-streaming answer: a ``chat.completion`` object."""
    text, count = text_of(ctx)
    message: Dict[str, Any] = {"role": "assistant", "content": text if text or not reply.tool_calls else None,
                               "refusal": None, "annotations": []}
    if reply.thinking:
        message["reasoning_content"] = reply.thinking  # as DeepSeek, vLLM and others send it
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": f"call_fake_{ctx.number}_{n}", "type": "function",
             "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}
            for n, (name, arguments) in enumerate(reply.tool_calls)]
    finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
    return {"id": f"chatcmpl-fake-{ctx.number}", "object": "chat.completion", "created": CREATED, "model": ctx.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": usage(*usage_of(reply, count)), "service_tier": "default", "system_fingerprint": "fp_fake"}


def error_events(ctx: StreamContext, error_type: Optional[str], message: Optional[str],
                 next_sequence: int) -> List[Event]:
    """The in-stream error chunk."""
    text = message or "The server had an error while processing your request. Sorry about that!"
    return [Event(dump({"error": {"message": text, "type": error_type or "server_error", "param": None,
                                  "code": None}}))]


_TYPES: Dict[int, Tuple[str, Optional[str]]] = {
    401: ("invalid_request_error", "invalid_api_key"), 429: ("requests", "rate_limit_exceeded")}


def error_body(status: int, message: str, error_type: Optional[str]) -> Dict[str, Any]:
    """The body of a non-2xx answer (OpenAI's and the Responses API's)."""
    default = _TYPES.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    kind, code = (error_type, None) if error_type else default
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def catalog(headers: Mapping[str, str]) -> Dict[str, Any]:
    """``GET /v1/models``: the model list."""
    return {"object": "list", "data": [{"id": name, "object": "model", "created": CREATED, "owned_by": "llmstream"}
                                       for name in MODELS["openai"]]}


def check_turns(body: Mapping[str, Any], had_reasoning: Callable[[str], bool]) -> Optional[str]:
    """The 400 message for a ``tool`` message that answers no ``tool_calls`` id of an earlier assistant message, or None."""
    return _chat(body.get("messages"))


def _chat(messages: Any) -> Optional[str]:
    if not isinstance(messages, list):
        return None
    calls: List[str] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        if message.get("role") == "assistant":
            for call in message.get("tool_calls") or ():
                if isinstance(call, dict):
                    calls.append(str(call.get("id")))
        elif message.get("role") == "tool" and message.get("tool_call_id") not in calls:
            return (f"Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
                    f"with 'tool_calls'. (messages[{i}])")
    return None
