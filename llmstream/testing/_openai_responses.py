"""OpenAI Responses, as the fake server speaks it.

Stream: https://platform.openai.com/docs/api-reference/responses-streaming (typed
events with a 0-based ``sequence_number``, ending with ``response.completed`` /
``response.incomplete``; no ``[DONE]``). Non-streaming and every ``response``
inside an event: https://platform.openai.com/docs/api-reference/responses/object,
complete enough for the openai SDK's ``Response.model_validate``.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from ._reply import Reply, split_words
from ._turns import sign
from . import _openai_chat
from ._wire import CREATED, Event, StreamContext, chain, dump, fragments, q, text_of, usage_of


#: Request fields the API echoes in its ``response`` object, with the value it shows when they were not sent.
_ECHOED: Mapping[str, Any] = {
    "instructions": None, "max_output_tokens": None, "max_tool_calls": None, "metadata": {},
    "parallel_tool_calls": True, "previous_response_id": None, "reasoning": {"effort": None, "summary": None},
    "service_tier": "default", "store": True, "temperature": 1.0, "text": {"format": {"type": "text"}},
    "tool_choice": "auto", "tools": [], "top_logprobs": 0, "top_p": 1.0, "truncation": "disabled", "user": None,
}


def _response(ctx: StreamContext, status: str, output: List[Any], usage: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    # Every field of the documented object, so the openai SDK's strict validation accepts it.
    echoed = {name: ctx.body.get(name, default) if ctx.body.get(name) is not None else default
              for name, default in _ECHOED.items()}
    return {"id": f"resp_fake_{ctx.number}", "object": "response", "created_at": CREATED, "status": status,
            "background": False, "error": None, "incomplete_details": None, "model": ctx.model, "output": output,
            **echoed, "usage": usage}


def _usage(inp: int, out: int) -> Dict[str, Any]:
    # cache_write_tokens: required by the openai SDK's ResponseUsage model (openai 3.x).
    return {"input_tokens": inp, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": out, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": inp + out}


class _Seq:
    """The Responses ``sequence_number``: 0 for ``response.created``, +1 per event."""

    def __init__(self) -> None:
        self.value = -1

    def event(self, kind: str, **fields: Any) -> Event:
        self.value += 1
        return Event(dump({"type": kind, "sequence_number": self.value, **fields}), kind.encode())


def _responses_reasoning(seq: _Seq, ctx: StreamContext, thinking: str, index: int) -> Iterator[Event]:
    item = {"id": f"rs_fake_{ctx.number}", "type": "reasoning", "summary": [],
            "encrypted_content": sign(f"rs_fake_{ctx.number}")}
    where = {"item_id": item["id"], "output_index": index}
    yield seq.event("response.output_item.added", output_index=index, item=item)
    yield seq.event("response.reasoning_summary_part.added", **where, summary_index=0,
                    part={"type": "summary_text", "text": ""})
    for piece in split_words(thinking):
        yield seq.event("response.reasoning_summary_text.delta", **where, summary_index=0, delta=piece)
    part = {"type": "summary_text", "text": thinking}
    yield seq.event("response.reasoning_summary_text.done", **where, summary_index=0, text=thinking)
    yield seq.event("response.reasoning_summary_part.done", **where, summary_index=0, part=part)
    yield seq.event("response.output_item.done", output_index=index, item={**item, "summary": [part]})


def _responses_message(seq: _Seq, ctx: StreamContext, tokens: Iterator[str], index: int,
                       parts: List[str]) -> Iterator[Event]:
    item_id = f"msg_fake_{ctx.number}"
    item = {"id": item_id, "type": "message", "status": "in_progress", "content": [], "role": "assistant"}
    where = {"item_id": item_id, "output_index": index, "content_index": 0}
    yield seq.event("response.output_item.added", output_index=index, item=item)
    yield seq.event("response.content_part.added", **where,
                    part={"type": "output_text", "annotations": [], "logprobs": [], "text": ""})
    pre = b'{"type":"response.output_text.delta","sequence_number":%d,"item_id":"' + item_id.encode()
    pre += b'","output_index":%d,"content_index":0,"delta":' % index
    for token in tokens:
        parts.append(token)
        seq.value += 1
        yield Event(pre % seq.value + q(token) + b',"logprobs":[]}', b"response.output_text.delta", 1)
    text = "".join(parts)
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    yield seq.event("response.output_text.done", **where, text=text, logprobs=[])
    yield seq.event("response.content_part.done", **where, part=part)
    yield seq.event("response.output_item.done", output_index=index,
                    item={**item, "status": "completed", "content": [part]})


def _responses_call(seq: _Seq, ctx: StreamContext, call: Tuple[str, Any], number: int, index: int) -> Iterator[Event]:
    name, arguments = call
    item = {"id": f"fc_fake_{ctx.number}_{number}", "type": "function_call", "status": "in_progress",
            "arguments": "", "call_id": f"call_fake_{ctx.number}_{number}", "name": name}
    yield seq.event("response.output_item.added", output_index=index, item=item)
    for fragment in fragments(arguments):
        yield seq.event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                        delta=fragment)
    text = json.dumps(arguments, ensure_ascii=False)
    yield seq.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                    name=name, arguments=text)
    yield seq.event("response.output_item.done", output_index=index,
                    item={**item, "status": "completed", "arguments": text})


def stream(reply: Reply, ctx: StreamContext) -> Iterator[Event]:
    """Responses API events, ``response.completed`` (or ``response.incomplete``) last."""
    seq = _Seq()
    yield seq.event("response.created", response=_response(ctx, "in_progress", [], None))
    yield seq.event("response.in_progress", response=_response(ctx, "in_progress", [], None))
    index = 0
    if reply.thinking:
        yield from _responses_reasoning(seq, ctx, reply.thinking, index)
        index += 1
    tokens = ctx.tokens()
    first = next(tokens, None)
    parts: List[str] = []
    if first is not None:
        yield from _responses_message(seq, ctx, chain(first, tokens), index, parts)
        index += 1
    for number, call in enumerate(reply.tool_calls):
        yield from _responses_call(seq, ctx, call, number, index + number)
    inp, out = usage_of(reply, len(parts))
    usage = _usage(inp, out)
    output = _responses_output(reply, ctx, "".join(parts))
    if reply.finish_reason in (None, "completed", "stop", "tool_calls"):
        final = seq.event("response.completed", response=_response(ctx, "completed", output, usage))
    else:
        response = _response(ctx, "incomplete", output, usage)
        response["incomplete_details"] = {"reason": reply.finish_reason}
        final = seq.event("response.incomplete", response=response)
    yield final._replace(end=True)


def _responses_output(reply: Reply, ctx: StreamContext, text: str) -> List[Any]:
    output: List[Any] = []
    if reply.thinking:
        output.append({"id": f"rs_fake_{ctx.number}", "type": "reasoning",
                       "summary": [{"type": "summary_text", "text": reply.thinking}],
                       "encrypted_content": sign(f"rs_fake_{ctx.number}")})
    if text:
        output.append({"id": f"msg_fake_{ctx.number}", "type": "message", "status": "completed", "role": "assistant",
                       "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}]})
    for number, (name, arguments) in enumerate(reply.tool_calls):
        output.append({"id": f"fc_fake_{ctx.number}_{number}", "type": "function_call", "status": "completed",
                       "arguments": json.dumps(arguments, ensure_ascii=False),
                       "call_id": f"call_fake_{ctx.number}_{number}", "name": name})
    return output


def complete(reply: Reply, ctx: StreamContext) -> Dict[str, Any]:
    """The non-streaming answer: the ``response`` object ``response.completed`` carries."""
    text, count = text_of(ctx)
    response = _response(ctx, "completed", _responses_output(reply, ctx, text), _usage(*usage_of(reply, count)))
    if reply.finish_reason not in (None, "completed", "stop", "tool_calls"):
        response.update(status="incomplete", incomplete_details={"reason": reply.finish_reason})
    return response


def error_events(ctx: StreamContext, error_type: Optional[str], message: Optional[str],
                 next_sequence: int) -> List[Event]:
    """The ``error`` event and ``response.failed``, numbered from ``next_sequence``."""
    text = message or "The server had an error while processing your request. Sorry about that!"
    kind = error_type or "server_error"
    seq = _Seq()
    seq.value = next_sequence - 1
    failed = _response(ctx, "failed", [], None)
    failed["error"] = {"code": kind, "message": text}
    return [seq.event("error", code=kind, message=text, param=None), seq.event("response.failed", response=failed)]


error_body = _openai_chat.error_body
catalog = _openai_chat.catalog


def check_turns(body: Mapping[str, Any], had_reasoning: Callable[[str], bool]) -> Optional[str]:
    """The 400 message for output items sent back altered, or None.

    A ``function_call_output`` without its ``function_call``; a function call
    of a response that reasoned, sent back without that reasoning item before
    it; a reasoning item whose ``encrypted_content`` does not verify.
    """
    return _responses(body.get("input"), had_reasoning)


def _responses(items: Any, had_reasoning: Callable[[str], bool]) -> Optional[str]:
    if not isinstance(items, list):
        return None
    reasoning: Dict[str, bool] = {}
    calls: List[str] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        item_id = str(item.get("id", ""))
        if kind == "reasoning":
            content = item.get("encrypted_content")
            if content is not None and not hmac.compare_digest(str(content), sign(item_id)):
                return f"The encrypted content for item {item_id} could not be verified."
            reasoning[item_id] = True
        elif kind == "function_call":
            calls.append(str(item.get("call_id")))
            # fc_fake_{N}_{k} came from response N; rs_fake_{N} is its reasoning item.
            parts = item_id.split("_")
            if len(parts) == 4 and parts[:2] == ["fc", "fake"]:
                needed = f"rs_fake_{parts[2]}"
                if had_reasoning(f"resp_fake_{parts[2]}") and needed not in reasoning:
                    return (f"Item '{item_id}' of type 'function_call' was provided without its required "
                            f"'reasoning' item: '{needed}'.")
        elif kind == "function_call_output" and item.get("call_id") not in calls:
            return f"No tool call found for function call output with call_id {item.get('call_id')}."
    return None
