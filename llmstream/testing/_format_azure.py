"""The fake server's Azure OpenAI format: OpenAI chat chunks plus Azure's content filter annotations.

Found by name (see ``_plugins``); the provider module declares ``fake_format = "azure"``.

Routes: ``POST /openai/deployments/{deployment}/chat/completions?api-version=...``
(the classic path, what ``openai.AzureOpenAI`` calls) and
``POST /openai/v1/chat/completions`` (the v1 API). The stream is the OpenAI
chat format (``_formats.openai_chat``, model = the deployment), with what
Azure adds (https://learn.microsoft.com/azure/ai-foundry/openai/concepts/content-filter):

  * a first chunk with ``"choices": []`` and ``prompt_filter_results``
    (nothing filtered);
  * ``Reply(finish_reason="content_filter")``: the finish chunk carries
    ``content_filter_results`` with ``violence`` filtered, as Azure cuts an
    answer mid-stream.

Errors and keep-alives are OpenAI's.

Must never: import ``llmstream``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Dict, Iterator, List, Optional

from ._formats import Event, StreamContext, _dump, encoder, error_body, error_events, keepalive, oversized, openai_chat
from ._plugins import FakeFormat
from ._reply import Reply

__all__ = ["FORMAT"]

_OPENAI = "openai"  # the built-in format this one extends
_DEPLOYMENT = re.compile(r"^/openai/deployments/(?P<model>[^/]+)/chat/completions$")
_V1 = "/openai/v1/chat/completions"
_SAFE = {"filtered": False, "severity": "safe"}
_PROMPT_FILTER = [{"prompt_index": 0, "content_filter_results": {
    "hate": _SAFE, "jailbreak": {"filtered": False, "detected": False}, "self_harm": _SAFE, "sexual": _SAFE,
    "violence": _SAFE}}]
_FILTERED = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": {"filtered": True, "severity": "high"}}


def route(path: str) -> Optional[Dict[str, str]]:
    """The deployment named by the path (``{}`` for the v1 path, whose body names the model), or None."""
    if path == _V1:
        return {}
    match = _DEPLOYMENT.match(path)
    return {"model": match["model"]} if match else None


def azure(reply: Reply, ctx: StreamContext) -> Iterator[Event]:
    """The prompt filter chunk, then OpenAI chat chunks (the finish one annotated when the filter cut the answer)."""
    yield Event(_dump({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                       "prompt_filter_results": _PROMPT_FILTER}))
    for event in openai_chat(reply, ctx):
        if b'"finish_reason":"content_filter"' in event.data:
            chunk = json.loads(event.data)
            for choice in chunk["choices"]:
                choice["content_filter_results"] = _FILTERED
            event = event._replace(data=_dump(chunk))
        yield event


def _same(fn: Callable[..., Any]) -> Callable[..., Any]:
    return lambda *args: fn(_OPENAI, *args)


def _error_events(ctx: StreamContext, error_type: Optional[str], message: Optional[str], next_sequence: int) -> List[Event]:
    return error_events(StreamContext(_OPENAI, ctx.model, ctx.number, ctx.include_usage, ctx.tokens),
                        error_type, message, next_sequence)


FORMAT = FakeFormat(
    name="azure",
    content_type="text/event-stream; charset=utf-8",
    formatter=azure,
    route=route,
    error_body=_same(error_body),
    error_events=_error_events,
    encoder=_same(encoder),
    keepalive=_same(keepalive),
    oversized=_same(oversized),
    base_path="",
)
