"""Ollama ``/api/chat``, as the fake server speaks it.

https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion
(JSON lines, the last one ``"done": true`` with ``done_reason`` and counts; a
non-streaming answer is that last line with the whole message in it).
"""

from __future__ import annotations

import hashlib
from typing import Any, Dict, Iterator, List, Mapping, Optional

from ._reply import Reply, split_words
from ._wire import CREATED_AT, MODELS, Event, StreamContext, dump, q, text_of, usage_of


def stream(reply: Reply, ctx: StreamContext) -> Iterator[Event]:
    """JSON lines, the ``"done": true`` line last."""
    head = b'{"model":%s,"created_at":"%s","message":{"role":"assistant","content":' % (q(ctx.model), CREATED_AT.encode())
    for piece in split_words(reply.thinking or ""):
        yield Event(head + b'"","thinking":' + q(piece) + b'},"done":false}')
    streamed = 0
    for token in ctx.tokens():
        streamed += 1
        yield Event(head + q(token) + b'},"done":false}', tokens=1)
    for number, (name, arguments) in enumerate(reply.tool_calls):
        call = _call(ctx, number, name, arguments)
        yield Event(head + b'"","tool_calls":[' + dump(call) + b']},"done":false}')
    inp, out = usage_of(reply, streamed)
    yield Event(head + b'""},' + dump(_final(reply, inp, out))[1:], end=True)


def _final(reply: Reply, inp: int, out: int) -> Dict[str, Any]:
    return {"done_reason": reply.finish_reason or "stop", "done": True, "total_duration": 5_000_000,
             "load_duration": 1_000_000, "prompt_eval_count": inp, "prompt_eval_duration": 1_000_000,
             "eval_count": out, "eval_duration": 3_000_000}



def _call(ctx: StreamContext, number: int, name: str, arguments: Any) -> Dict[str, Any]:
    return {"id": f"call_fake_{ctx.number}_{number}",
            "function": {"index": number, "name": name, "arguments": dict(arguments)}}


def complete(reply: Reply, ctx: StreamContext) -> Dict[str, Any]:
    """The non-streaming answer (``"stream": false``): the final line, with the whole message."""
    text, count = text_of(ctx)
    message: Dict[str, Any] = {"role": "assistant", "content": text}
    if reply.thinking:
        message["thinking"] = reply.thinking
    if reply.tool_calls:
        message["tool_calls"] = [_call(ctx, n, name, args) for n, (name, args) in enumerate(reply.tool_calls)]
    return {"model": ctx.model, "created_at": CREATED_AT, "message": message, **_final(reply, *usage_of(reply, count))}


def error_events(ctx: StreamContext, error_type: Optional[str], message: Optional[str],
                 next_sequence: int) -> List[Event]:
    """The in-stream error line: ``{"error": "..."}``."""
    text = message or "The server had an error while processing your request. Sorry about that!"
    return [Event(dump({"error": text}))]


def error_body(status: int, message: str, error_type: Optional[str]) -> Dict[str, Any]:
    """The body of a non-2xx answer."""
    return {"error": message}


def catalog(headers: Mapping[str, str]) -> Dict[str, Any]:
    """``GET /api/tags``: the local models."""
    return {"models": [{
        "name": name, "model": name, "modified_at": CREATED_AT, "size": 2_019_393_189,
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                    "parameter_size": "3.2B", "quantization_level": "Q4_K_M"},
    } for name in MODELS["ollama"]]}


def tags(body: Any, headers: Mapping[str, str]) -> Dict[str, Any]:
    """``GET /api/tags``."""
    return catalog(headers)
