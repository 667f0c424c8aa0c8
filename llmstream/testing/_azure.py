"""Azure OpenAI, as the fake server speaks it: OpenAI chat chunks plus Azure's content filter annotations.

Its row in ``_formats.FORMATS`` is ``"azure"``; the provider module declares ``fake_format = "azure"``.

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
from typing import Any, Dict, Iterator, Optional

from . import _openai_chat
from ._reply import Reply
from ._wire import Event, StreamContext, dump as _dump

__all__ = ["stream", "complete", "route", "error_events", "error_body", "catalog", "PATH"]
_DEPLOYMENT = re.compile(r"^/openai/deployments/(?P<model>[^/]+)/chat/completions$")
PATH = "/openai/v1/chat/completions"  # the v1 API; deployments: route()
_SAFE = {"filtered": False, "severity": "safe"}
_PROMPT_FILTER = [{"prompt_index": 0, "content_filter_results": {
    "hate": _SAFE, "jailbreak": {"filtered": False, "detected": False}, "self_harm": _SAFE, "sexual": _SAFE,
    "violence": _SAFE}}]
_FILTERED = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": {"filtered": True, "severity": "high"}}


def route(path: str) -> Optional[Dict[str, str]]:
    """The deployment named by the path (``{}`` for the v1 path, whose body names the model), or None."""
    if path == PATH:
        return {}
    match = _DEPLOYMENT.match(path)
    return {"model": match["model"]} if match else None


def stream(reply: Reply, ctx: StreamContext) -> Iterator[Event]:
    """The prompt filter chunk, then OpenAI chat chunks (the finish one annotated when the filter cut the answer)."""
    yield Event(_dump({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                       "prompt_filter_results": _PROMPT_FILTER}))
    for event in _openai_chat.stream(reply, ctx):
        if b'"finish_reason":"content_filter"' in event.data:
            chunk = json.loads(event.data)
            for choice in chunk["choices"]:
                choice["content_filter_results"] = _FILTERED
            event = event._replace(data=_dump(chunk))
        yield event


def complete(reply: Reply, ctx: StreamContext) -> Dict[str, Any]:
    """The non-streaming answer: OpenAI's, with the prompt's filter results."""
    return {**_openai_chat.complete(reply, ctx), "prompt_filter_results": _PROMPT_FILTER}


def environment(url: str, key: str) -> Dict[str, str]:
    """What points ``openai.AzureOpenAI`` and llmstream at the server at ``url``."""
    return {"AZURE_OPENAI_ENDPOINT": url, "AZURE_OPENAI_API_KEY": key, "OPENAI_API_VERSION": "2024-10-21"}


# Errors and the model list are OpenAI's.
error_events = _openai_chat.error_events
error_body = _openai_chat.error_body
catalog = _openai_chat.catalog
