"""Google Gemini (AI Studio and Vertex AI ``streamGenerateContent?alt=sse``), as the fake server speaks it.

Its row in ``_formats.FORMATS`` is ``"gemini"`` (and ``"vertex"``, the same
format on Vertex AI's path); the provider module declares ``fake_format = "gemini"``.

Shape (https://ai.google.dev/api/generate-content#method:-models.streamgeneratecontent):
one ``GenerateContentResponse`` per ``data:`` block, no event names, no ids,
no ``[DONE]``::

    data: {"candidates": [{"content": {"parts": [{"text": "Hello"}], "role": "model"}, "index": 0}],
           "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 1, "totalTokenCount": 13},
           "modelVersion": "gemini-2.5-flash", "responseId": "fake-response-1"}

Thinking (``Reply.thinking``) streams as ``thought: true`` parts. Tool calls
are whole ``functionCall`` parts in one chunk.

Signatures, as Gemini 3 gives them: the first ``functionCall`` part of an
answer carries a ``thoughtSignature`` (with or without thinking); an answer
without calls that thought carries it on its first text part. A signature is
standard base64 (``google-genai`` reads it as bytes) of ``fake:{request
number}:`` and an HMAC of the part (a call's name and arguments). The next
request's ``contents`` are checked as the API checks them (:func:`check_turns`):
in the current turn (the model turns after the last user turn with text),
the first ``functionCall`` part of each model turn must carry its signature
("missing a thought_signature", 400); anywhere, a signature that does not
verify is refused ("Corrupted thought signature", 400), but for the two
values Google documents for turns that no model signed
(``skip_thought_signature_validator``, ``context_engineering_is_the_way_to_go``). The last chunk carries the
``finishReason`` (``stop``/``tool_calls`` -> ``STOP``, ``length`` ->
``MAX_TOKENS``, anything else upper-cased, e.g. ``SAFETY`` with
``safetyRatings``). ``finish_reason="blocked:SAFETY"`` sends a blocked
prompt instead: one chunk with ``promptFeedback.blockReason`` and no candidates.
The in-stream error (``Reply(error_event_at=N)``) is the error object itself,
pretty printed outside any ``data:`` line, as the API writes it.

Must never: import ``llmstream``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
from typing import Any, Dict, Iterator, List, Mapping, Optional

from ._reply import Reply, split_words
from ._turns import HadReasoning, sign
from ._wire import Event, StreamContext, dump as _dump, q as _q, text_of, usage_of as _usage

__all__ = ["stream", "complete", "error_events", "error_body", "catalog", "route", "encoder", "RAW", "check_turns",
           "part_signature"]

#: Marks an event written as it is, outside any ``data:`` line.
RAW = b"\x00raw"
_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
           429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_MODELS = ("gemini-2.5-flash", "gemini-2.5-pro", "fake-model")
_FINISH = {"stop": "STOP", "tool_calls": "STOP", "length": "MAX_TOKENS"}
_ROUTES = (
    re.compile(r"^/v1(?:beta|alpha)?/models/(?P<model>[^/:]+):streamGenerateContent$"),
    re.compile(r"^/v1/projects/[^/]+/locations/[^/]+/publishers/google/models/(?P<model>[^/:]+):streamGenerateContent$"),
)
_RATINGS = [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}]


def route(path: str) -> Optional[Dict[str, str]]:
    """The model named by a streaming path, or None for another path."""
    for pattern in _ROUTES:
        match = pattern.match(path)
        if match:
            return {"model": match["model"]}
    return None


def _tail(ctx: StreamContext) -> bytes:
    return b',"modelVersion":%s,"responseId":"fake-response-%d"}' % (_q(ctx.model), ctx.number)


def _metadata(prompt: int, output: int, thoughts: int = 0) -> bytes:
    extra = b',"thoughtsTokenCount":%d' % thoughts if thoughts else b""
    return b'"usageMetadata":{"promptTokenCount":%d,"candidatesTokenCount":%d%s,"totalTokenCount":%d}' % (
        prompt, output, extra, prompt + output + thoughts)


def _chunk(parts: List[Dict[str, Any]], ctx: StreamContext, usage: bytes, finish: Optional[Dict[str, Any]] = None) -> bytes:
    candidate: Dict[str, Any] = {"content": {"parts": parts, "role": "model"}, **(finish or {}), "index": 0}
    return b'{"candidates":[' + _dump(candidate) + b"]," + usage + _tail(ctx)


def stream(reply: Reply, ctx: StreamContext) -> Iterator[Event]:
    """``GenerateContentResponse`` chunks, the one with ``finishReason`` last."""
    prompt = reply.usage[0] if reply.usage is not None else 12
    finish = reply.finish_reason or "stop"
    if finish.startswith("blocked:"):
        feedback = {"blockReason": finish[len("blocked:"):], "safetyRatings": _RATINGS}
        yield Event(b'{"promptFeedback":' + _dump(feedback) + b"," + _metadata(prompt, 0) + _tail(ctx), end=True)
        return
    thoughts = 0
    for piece in split_words(reply.thinking or ""):
        thoughts += 1
        yield Event(_chunk([{"text": piece, "thought": True}], ctx, _metadata(prompt, 0, thoughts)))
    # The answer's one signature: on its first function call, else on its first text part after thinking.
    signature = part_signature(ctx.number, {"text": ""}) if reply.thinking and not reply.tool_calls else None
    streamed = 0
    for token in ctx.tokens():
        streamed += 1
        part: Dict[str, Any] = {"text": token}
        if signature is not None:
            part["thoughtSignature"], signature = signature, None
        if part.keys() == {"text"}:
            # The hot path: a pre-encoded template plus the token.
            yield Event(b'{"candidates":[{"content":{"parts":[{"text":' + _q(token) + b'}],"role":"model"},"index":0}],'
                        + _metadata(prompt, streamed, thoughts) + _tail(ctx), tokens=1)
        else:
            yield Event(_chunk([part], ctx, _metadata(prompt, streamed, thoughts)), tokens=1)
    if reply.tool_calls:
        yield Event(_chunk(_calls(reply, ctx), ctx, _metadata(prompt, streamed, thoughts)))
    word = _FINISH.get(finish, finish.upper())
    end: Dict[str, Any] = {"finishReason": word}
    if word in ("SAFETY", "PROHIBITED_CONTENT"):
        end["safetyRatings"] = _RATINGS
    _, output = _usage(reply, streamed)
    yield Event(_chunk([{"text": ""}], ctx, _metadata(prompt, output, thoughts), end), end=True)


def complete(reply: Reply, ctx: StreamContext) -> Dict[str, Any]:
    """The non-streaming answer (``generateContent``): one ``GenerateContentResponse``."""
    text, count = text_of(ctx)
    prompt, output = _usage(reply, count)
    parts: List[Dict[str, Any]] = [{"text": text}] if text else []
    parts += _calls(reply, ctx)
    finish = reply.finish_reason or "stop"
    return {"candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": _FINISH.get(finish, finish.upper()),
                            "index": 0}],
            "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": output, "totalTokenCount": prompt + output},
            "modelVersion": ctx.model, "responseId": f"fake-response-{ctx.number}"}


def _calls(reply: Reply, ctx: StreamContext) -> List[Dict[str, Any]]:
    """The reply's ``functionCall`` parts, the first one signed."""
    calls: List[Dict[str, Any]] = [{"functionCall": {"name": name, "args": dict(arguments)}}
                                   for name, arguments in reply.tool_calls]
    if calls:
        calls[0]["thoughtSignature"] = part_signature(ctx.number, calls[0])
    return calls


def _signed_content(part: Mapping[str, Any]) -> str:
    """What a part's signature covers: a call's name and arguments (any other part: nothing but its kind)."""
    call = part.get("functionCall")
    if isinstance(call, dict):
        return "call:" + json.dumps([call.get("name"), call.get("args") or {}], sort_keys=True, ensure_ascii=False)
    return "part"


def part_signature(number: int, part: Mapping[str, Any]) -> str:
    """The ``thoughtSignature`` the fake server gives ``part`` of its answer to request ``number``."""
    mac = bytes.fromhex(sign(f"gemini:{number}:{_signed_content(part)}")[len("fakesig_"):])
    return base64.b64encode(b"fake:%d:" % number + mac).decode("ascii")


#: The values Google documents for a model turn no model signed (a hand-written or migrated history).
UNSIGNED_OK = frozenset({"skip_thought_signature_validator", "context_engineering_is_the_way_to_go"})


def _verifies(signature: Any, part: Mapping[str, Any]) -> bool:
    if signature in UNSIGNED_OK:
        return True
    if not isinstance(signature, str):
        return False
    try:
        # Protobuf's JSON form takes standard or URL-safe base64, padded or not.
        text = signature.replace("-", "+").replace("_", "/")
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    digits, colon, _ = raw[len(b"fake:"):].partition(b":")
    if not raw.startswith(b"fake:") or not colon or not digits.isdigit():
        return False
    return hmac.compare_digest(base64.b64decode(part_signature(int(digits), part)), raw)


def check_turns(body: Mapping[str, Any], had_reasoning: HadReasoning) -> Optional[str]:
    """The 400 message for model turns sent back without their signatures or with altered ones, or None."""
    contents = body.get("contents")
    if not isinstance(contents, list):
        return None
    # The current turn: what follows the last user turn that is not only function responses.
    current = 0
    for i, content in enumerate(contents):
        parts = content.get("parts") if isinstance(content, dict) else None
        if (isinstance(content, dict) and content.get("role", "user") == "user" and isinstance(parts, list)
                and any(not (isinstance(p, dict) and "functionResponse" in p) for p in parts)):
            current = i
    for i, content in enumerate(contents):
        if not isinstance(content, dict) or content.get("role") != "model" or not isinstance(content.get("parts"), list):
            continue
        first_call = True
        for part in content["parts"]:
            if not isinstance(part, dict):
                continue
            signature = part.get("thoughtSignature")
            if signature is not None and not _verifies(signature, part):
                return "Corrupted thought signature."
            call = part.get("functionCall")
            if isinstance(call, dict):
                if first_call and signature is None and i > current:
                    return ("Function call is missing a thought_signature in functionCall parts. This is required "
                            "for tools to work correctly, and missing thought_signature may lead to degraded model "
                            f"performance. Additional data, function call `default_api:{call.get('name')}` , "
                            f"position {i + 1}. Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures "
                            "for more details.")
                first_call = False
    return None


def error_body(status: int, message: str, error_type: Optional[str]) -> Dict[str, Any]:
    """``{"error": {"code", "message", "status"}}``."""
    kind = error_type or _STATUS.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")
    return {"error": {"code": status, "message": message, "status": kind}}


def environment(url: str, key: str) -> Dict[str, str]:
    """What points ``google-genai`` and llmstream (AI Studio and Vertex AI) at the server at ``url``."""
    return {"GEMINI_API_KEY": key, "GOOGLE_GEMINI_BASE_URL": url, "GOOGLE_VERTEX_BASE_URL": url,
            "GOOGLE_CLOUD_PROJECT": "fake-project"}


def catalog(headers: Mapping[str, str]) -> Dict[str, Any]:
    """The model list, as ``GET /v1beta/models`` gives it."""
    return {"models": [{"name": f"models/{m}", "displayName": m} for m in _MODELS]}


def error_events(ctx: StreamContext, error_type: Optional[str], message: Optional[str], next_sequence: int) -> List[Event]:
    """The error object, pretty printed outside any ``data:`` line (how the API reports a mid-stream failure)."""
    kind = error_type or "UNAVAILABLE"
    code = {v: k for k, v in _STATUS.items()}.get(kind, 500)
    text = message or "The model is overloaded. Please try again later."
    body = (b'{\n  "error": {\n    "code": %d,\n    "message": %s,\n    "status": %s\n  }\n}\n'
            % (code, _q(text), _q(kind)))
    return [Event(body, RAW)]


def encoder(line_ending: bytes, ids: bool, id_prefix: str) -> Any:
    """``data:`` blocks, raw JSON for :data:`RAW` events.

    Never an ``id:`` line, whatever the reply asks: the API sends none, and
    ``google-genai`` reads any line but ``data:`` as (part of) a JSON object.
    """
    le = line_ending

    def encode(event: Event, index: int) -> bytes:
        if event.name == RAW:
            return event.data.replace(b"\n", le)
        return b"data: " + event.data + le + le
    return encode
