"""Google Gemini (AI Studio and Vertex AI) ``streamGenerateContent?alt=sse``: request and stream decoder.

Contract
--------
Spec: https://ai.google.dev/api/generate-content#method:-models.streamgeneratecontent
(the ``GenerateContentResponse`` object) and https://ai.google.dev/gemini-api/docs/thinking
(``thought`` parts, ``thoughtSignature``); Vertex AI:
https://cloud.google.com/vertex-ai/generative-ai/docs/reference/rest/v1/projects.locations.publishers.models/streamGenerateContent

Strategy: each SSE ``data:`` block is one whole ``GenerateContentResponse``::

    data: {"candidates": [{"content": {"role": "model", "parts": [{"text": "The"}]}, "index": 0}],
           "usageMetadata": {...}, "modelVersion": "...", "responseId": "..."}

Parts are delivered whole: ``text`` parts become :class:`TextDelta`, parts
with ``thought: true`` :class:`ThinkingDelta`, ``functionCall`` parts a
:class:`ToolCallDelta` carrying all the arguments and then the
:class:`ToolCall` (the same two steps as the providers that stream arguments).
A ``thoughtSignature`` is kept on the event of its part (``ThinkingDelta`` or
``ToolCall``; on a text part, an empty ``ThinkingDelta`` carrying only the
signature goes before the text) so an agent loop can send it back.

The turn (``StreamResult.message``, see ``_turn.py``): an :class:`OutputItem`
per part the decoder closes, in the request format -- unsigned text parts in
a row are one ``{"text": ...}`` part (``text_key="text"``: the text is not
copied per token), unsigned thought parts in a row one ``{"text": ...,
"thought": true}`` part; a part with a ``thoughtSignature`` (text, thought or
``functionCall``) is its own item, the part exactly as it came (Google: never
merge a signed part with another). A text or thought run closes at the next
part of another kind and at the finish. After a replay (``Retry(resume="replay")``)
that broke past a signed text part, that part takes the text up to the break
(the repeated text is matched before the caller sees it, so where the part
ended in it is unknown, see ``_turn.py``): the turn's text is exact, once, and
its signature is the replay's, but the split between that part and the next differs.

End of stream: there is no ``[DONE]``. The chunk with a ``finishReason`` (or
a blocked prompt: ``promptFeedback.blockReason`` and no candidates) ends the
answer; the end of the body after it is the end. A body that ends before is
``IncompleteStreamError``.

A failure mid-stream is written as the error object itself, outside any
``data:`` line (the framing is ``"sse+json"``, see ``_sse_json``): it raises
:class:`ProviderError` whose ``type`` is the error's ``status``
(``UNAVAILABLE``...), retryable for 429/500/503/504 (``RESOURCE_EXHAUSTED``,
``INTERNAL``, ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``).

Invariants:
  * only candidate 0 is delivered (``candidateCount > 1`` is not supported);
  * ``usageMetadata`` is cumulative: the last one seen is reported, once, with
    the finish (and again for a usage-only chunk after it);
  * content filter outcomes are distinguishable: a blocked prompt gives
    ``ContentFilter(source="prompt", blocked=True, reason=blockReason)`` and
    ``Finish("PROMPT_BLOCKED")``; a finish for ``SAFETY``, ``RECITATION``,
    ``PROHIBITED_CONTENT``, ``BLOCKLIST``, ``SPII``... gives
    ``ContentFilter(source="completion", blocked=True, reason=...)`` and
    ``Finish`` with that reason;
  * every field is checked (``_shape``) before use, a whole chunk before it
    changes any state.

Never: touch a socket, thread, clock or logger; deliver a part twice.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import quote

from .._events import ContentFilter, Event, Finish, OutputItem, TextDelta, ThinkingDelta, ToolCall, ToolCallDelta, Usage
from .._exceptions import IncompleteStreamError, MalformedStreamError, ProviderError
from .._fastjson import loads as fast_loads
from ._base import BaseProvider, BearerToken, Message, RequestSpec, ServerSentEvent, Turn, drop_none
from ._shape import expect, json_type, optional, token_count

__all__ = ["GeminiProvider", "VertexProvider", "GeminiDecoder", "error_from_object", "to_contents"]

_WHERE = "Gemini chunk"
_EXCERPT = 80
#: Error statuses (google.rpc.Code names) and HTTP codes worth another attempt.
RETRYABLE = frozenset({"RESOURCE_EXHAUSTED", "INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "429", "500", "503", "504"})
#: Finish reasons that mean a filter stopped the answer.
FILTERED = frozenset({"SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_SAFETY",
                      "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION"})
#: The ``Finish.reason`` of a prompt the API refused to answer (``promptFeedback.blockReason``).
PROMPT_BLOCKED = "PROMPT_BLOCKED"
_ROLES = {"assistant": "model", "user": "user", "model": "model", "tool": "user", "function": "user"}


def error_from_object(obj: Any) -> Optional[ProviderError]:
    """Read ``{"error": {"code", "message", "status"}}`` (or a list holding one), or None.

    ``type`` is the ``status`` (``"UNAVAILABLE"``), or the ``code`` as text when no status came.
    """
    if isinstance(obj, list) and len(obj) == 1:
        obj = obj[0]  # the non-SSE stream (a JSON array) wraps its error the same way
    if not isinstance(obj, dict) or "error" not in obj:
        return None
    error = obj["error"]
    if not isinstance(error, dict):
        return ProviderError(str(error) or "the server reported an error in the stream")
    message = error.get("message")
    if not isinstance(message, str) or not message:
        message = "the server reported an error in the stream"
    status, code = error.get("status"), error.get("code")
    kind = status if isinstance(status, str) and status else (str(code) if code is not None else None)
    return ProviderError(message, type=kind)


def to_contents(messages: List[Message]) -> Tuple[Optional[Dict[str, Any]], List[Dict[str, Any]]]:
    """(``systemInstruction``, ``contents``) from chat-style or Gemini-style messages.

    ``{"role": "user"|"assistant"|"system", "content": "text"}`` is converted
    (``assistant`` -> ``model``, system messages -> ``systemInstruction``); a
    message that already has ``parts`` is sent as it is (its role mapped the same way).
    """
    system: List[Dict[str, Any]] = []
    contents: List[Dict[str, Any]] = []
    for message in messages:
        role = message.get("role", "user")
        if role == "system":
            content = message.get("content")
            system.extend(message["parts"] if "parts" in message else [{"text": content if isinstance(content, str) else json.dumps(content)}])
            continue
        if "parts" in message:
            converted = {**message, "role": _ROLES.get(role, role)}
        else:
            content = message.get("content")
            parts = [{"text": content}] if isinstance(content, str) else list(content or [])
            converted = {"role": _ROLES.get(role, role), "parts": parts}
        contents.append(converted)
    return ({"parts": system} if system else None), contents


class _Chunk:
    """One checked ``GenerateContentResponse``."""

    __slots__ = ("parts", "finish", "candidate", "usage", "feedback")

    def __init__(self) -> None:
        self.parts: List[Tuple[str, Any, Optional[str], Dict[str, Any]]] = []  # (kind, value, signature, part)
        self.finish: Optional[str] = None
        self.candidate: Dict[str, Any] = {}
        self.usage: Optional[Usage] = None
        self.feedback: Optional[Dict[str, Any]] = None


class GeminiDecoder:
    """Decodes one ``streamGenerateContent?alt=sse`` stream: messages in, unified events out.

    Messages are :class:`ServerSentEvent` (a ``data:`` block) or a parsed JSON
    value written outside ``data:`` (an error object), as ``_sse_json`` frames them.
    """

    def __init__(self) -> None:
        self._finished = False
        self._usage: Optional[Usage] = None
        self._calls = 0
        # The part being gathered for the turn (``OutputItem``): unsigned text parts
        # in a row are one part (its text is the caller's, never copied here), unsigned
        # thought parts in a row another; at most one of the two is open.
        self._text_open = False
        self._thought: Optional[List[str]] = None

    @property
    def finished(self) -> bool:
        """True once a ``finishReason`` (or a blocked prompt) was seen."""
        return self._finished

    def feed(self, message: Any) -> List[Event]:
        """Decode one message; raises ``ProviderError`` for an error object, ``MalformedStreamError`` for a foreign shape."""
        if isinstance(message, ServerSentEvent):
            data = message.data
            if not data.strip():
                return []
            try:
                obj = fast_loads(data)
            except ValueError:
                raise MalformedStreamError(f"invalid JSON in stream data: {data[:_EXCERPT]!r}") from None
        else:
            obj = message
        error = error_from_object(obj)
        if error is not None:
            raise error
        if not isinstance(message, ServerSentEvent):
            raise MalformedStreamError(f"{_WHERE}: a JSON value outside a data: line that is not an error: {json.dumps(obj)[:_EXCERPT]!r}")
        return self._chunk(obj)

    def close(self) -> List[Event]:
        """End of input: ``IncompleteStreamError`` unless a ``finishReason`` came."""
        if not self._finished:
            raise IncompleteStreamError("the Gemini stream ended before a finishReason: the answer may be cut short")
        return []

    def _chunk(self, obj: Any) -> List[Event]:
        chunk = self._check(obj)
        out: List[Event] = []
        if chunk.usage is not None:
            self._usage = chunk.usage
        if self._finished:
            # Nothing is delivered after the finish; a later usage figure still counts.
            return [chunk.usage] if chunk.usage is not None else []
        for kind, value, signature, part in chunk.parts:
            if kind == "text" and signature is None:
                if value:
                    # The per-token path: one test, no copy of the text.
                    if not self._text_open:
                        self._close(out)
                        self._text_open = True
                    out.append(TextDelta(value))
            elif kind == "text":
                # A signed part goes back as it came: never merged with another.
                self._close(out)
                out.append(ThinkingDelta("", signature=signature))
                if value:
                    out.append(TextDelta(value))
                out.append(OutputItem(part, text_key="text"))
            elif kind == "thought":
                if signature is None:
                    if self._thought is None:
                        self._close(out)
                        self._thought = []
                    self._thought.append(value)
                    out.append(ThinkingDelta(value))
                else:
                    self._close(out)
                    out.append(ThinkingDelta(value, signature=signature))
                    out.append(OutputItem(part))
            else:
                self._close(out)
                name, args, call_id = value
                raw = json.dumps(args, ensure_ascii=False)
                index, self._calls = self._calls, self._calls + 1
                out.append(ToolCallDelta(index, call_id, name, raw))
                out.append(ToolCall(index, call_id, name, args, raw, signature=signature))
                out.append(OutputItem(part))
        if chunk.feedback is not None and chunk.feedback.get("blockReason") is not None and not chunk.candidate:
            self._finished = True
            self._close(out)
            out.append(ContentFilter("prompt", str(chunk.feedback["blockReason"]), True, chunk.feedback))
            if self._usage is not None:
                out.append(self._usage)
            out.append(Finish(PROMPT_BLOCKED))
        elif chunk.finish is not None:
            self._finished = True
            self._close(out)
            if chunk.finish in FILTERED:
                out.append(ContentFilter("completion", chunk.finish, True, chunk.candidate.get("safetyRatings")))
            if self._usage is not None:
                out.append(self._usage)
            out.append(Finish(chunk.finish))
        return out

    def _close(self, out: List[Event]) -> None:
        """Emit the open text or thought part as an ``OutputItem`` (the text part takes the text delivered since)."""
        if self._text_open:
            self._text_open = False
            out.append(OutputItem({"text": ""}, text_key="text"))
        elif self._thought is not None:
            out.append(OutputItem({"text": "".join(self._thought), "thought": True}))
            self._thought = None

    def _check(self, obj: Any) -> _Chunk:
        if not isinstance(obj, dict):
            raise MalformedStreamError(f"{_WHERE}: expected an object, got {json_type(obj)}")
        chunk = _Chunk()
        candidates = optional(obj, "candidates", list, _WHERE) or []
        for i, value in enumerate(candidates):
            candidate = expect(value, dict, f"candidates[{i}]", _WHERE)
            if (optional(candidate, "index", int, _WHERE, f"candidates[{i}].") or 0) == 0:
                chunk.candidate = candidate
                break
        candidate = chunk.candidate
        if candidate:
            chunk.finish = optional(candidate, "finishReason", str, _WHERE, "candidates[0].")
            content = optional(candidate, "content", dict, _WHERE, "candidates[0].") or {}
            for j, value in enumerate(optional(content, "parts", list, _WHERE, "candidates[0].content.") or ()):
                chunk.parts.append(self._part(value, f"candidates[0].content.parts[{j}]"))
        chunk.feedback = optional(obj, "promptFeedback", dict, _WHERE)
        if chunk.feedback is not None:
            optional(chunk.feedback, "blockReason", str, _WHERE, "promptFeedback.")
        usage = optional(obj, "usageMetadata", dict, _WHERE)
        if usage is not None:
            # promptTokenCount includes the cached content; thoughts are counted
            # apart from the candidates but billed as output, and Usage's
            # output_tokens includes reasoning: candidates + thoughts.
            candidate_tokens = token_count(usage, "candidatesTokenCount", _WHERE, "usageMetadata.")
            thought_tokens = token_count(usage, "thoughtsTokenCount", _WHERE, "usageMetadata.")
            chunk.usage = Usage(
                input_tokens=token_count(usage, "promptTokenCount", _WHERE, "usageMetadata."),
                output_tokens=(None if candidate_tokens is None and thought_tokens is None
                               else (candidate_tokens or 0) + (thought_tokens or 0)),
                raw=usage,
                cached_input_tokens=token_count(usage, "cachedContentTokenCount", _WHERE, "usageMetadata."),
                reasoning_tokens=thought_tokens,
            )
            token_count(usage, "totalTokenCount", _WHERE, "usageMetadata.")
        return chunk

    @staticmethod
    def _part(value: Any, name: str) -> Tuple[str, Any, Optional[str], Dict[str, Any]]:
        part = expect(value, dict, name, _WHERE)
        signature = optional(part, "thoughtSignature", str, _WHERE, name + ".")
        call = optional(part, "functionCall", dict, _WHERE, name + ".")
        if call is not None:
            fname = optional(call, "name", str, _WHERE, name + ".functionCall.")
            if not fname:
                raise MalformedStreamError(f'{_WHERE}: expected "{name}.functionCall.name" to be a non-empty string')
            args = optional(call, "args", dict, _WHERE, name + ".functionCall.") or {}
            call_id = optional(call, "id", str, _WHERE, name + ".functionCall.") or ""
            return "call", (fname, args, call_id), signature, part
        text = optional(part, "text", str, _WHERE, name + ".") or ""
        thought = optional(part, "thought", bool, _WHERE, name + ".")
        return ("thought" if thought else "text"), text, signature, part


class GeminiProvider(BaseProvider):
    """The Gemini API of Google AI Studio (``generativelanguage.googleapis.com``).

    ``base_url`` is the host, as ``google-genai``'s ``http_options.base_url``
    (and ``GOOGLE_GEMINI_BASE_URL``); the key goes in ``x-goog-api-key``. A
    token callable (OAuth) is sent as ``Authorization: Bearer`` instead.
    """

    name = "gemini"
    framing = "sse+json"
    api_key_env: Optional[str] = "GEMINI_API_KEY"
    base_url_env: Optional[str] = "GOOGLE_GEMINI_BASE_URL"
    default_base_url = "https://generativelanguage.googleapis.com"
    requires_api_key = True
    env_vars = ("GOOGLE_API_KEY", "GEMINI_API_KEY", "GOOGLE_GEMINI_BASE_URL")
    default_model = "gemini-2.5-flash"
    fake_format = "gemini"
    otel_name = "gcp.gemini"
    #: ``Retry(resume="auto")`` replays: Gemini has neither event ids nor an assistant prefill.
    supports_continue = False
    api_version = "v1beta"
    output_limit_keys = ("maxOutputTokens",)
    settings_key = "generationConfig"

    def api_key_from_env(self, environ: Mapping[str, str]) -> Optional[str]:
        """``GOOGLE_API_KEY``, else ``GEMINI_API_KEY`` (``google-genai``'s order)."""
        return environ.get("GOOGLE_API_KEY") or environ.get("GEMINI_API_KEY") or None

    def headers(self, api_key: Optional[str]) -> Dict[str, str]:
        """JSON body, SSE answer, and the key (``x-goog-api-key``, or a bearer token)."""
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if isinstance(api_key, BearerToken):
            headers["Authorization"] = f"Bearer {api_key}"
        elif api_key:
            headers["x-goog-api-key"] = api_key
        return headers

    def model_path(self, model: str, params: Dict[str, Any]) -> str:
        """The path of the model's resource (``/v1beta/models/{model}``)."""
        model = model[len("models/"):] if model.startswith("models/") else model
        return f"/{self.api_version}/models/{quote(model, safe='')}"

    def resolve_base_url(self, base_url: str, params: Dict[str, Any]) -> str:
        """The base URL to use (Vertex derives it from the location)."""
        return self.normalize_base_url(base_url or self.default_base_url)

    def build_request(
        self,
        *,
        base_url: str,
        api_key: Optional[str],
        model: str,
        messages: List[Message],
        params: Mapping[str, Any],
    ) -> RequestSpec:
        """Build ``POST {base}{model path}:streamGenerateContent?alt=sse``.

        ``messages`` become ``contents`` (and ``systemInstruction``, see
        :func:`to_contents`); ``params`` go into the body unchanged
        (``generationConfig``, ``tools``, ``safetySettings``...), a None value removes a key.
        """
        options = dict(params)
        path = self.model_path(model, options)
        url = f"{self.resolve_base_url(base_url, options)}{path}:streamGenerateContent?alt=sse"
        system, contents = to_contents(messages)
        body: Dict[str, Any] = {"contents": contents}
        if system is not None:
            body["systemInstruction"] = system
        body.update(options)
        return RequestSpec(method="POST", url=url, headers=self.headers(api_key), json=drop_none(body))

    def new_decoder(self) -> GeminiDecoder:
        """Return a fresh decoder for one stream."""
        return GeminiDecoder()

    def assistant_message(self, turn: Turn) -> Dict[str, Any]:
        """The assistant turn as Gemini ``contents`` entry: ``{"role": "model", "parts": [...]}``.

        The parts the decoder emitted as items (signatures exactly as they
        came) when there are any; otherwise a text part and one ``functionCall`` part per call, each call with the
        ``thoughtSignature`` it came with (Gemini refuses a function call
        turn sent back without it).
        """
        if turn.items:
            return {"role": "model", "parts": [dict(item) for item in turn.items]}
        parts: List[Dict[str, Any]] = [{"text": turn.text}] if turn.text else []
        for call in turn.tool_calls:
            part: Dict[str, Any] = {"functionCall": {"name": call.name, "args": call.arguments or {}}}
            if call.signature is not None:
                part["thoughtSignature"] = call.signature
            parts.append(part)
        return {"role": "model", "parts": parts}

    def error_from_body(self, body: str) -> Optional[ProviderError]:
        """Parse ``{"error": {"code", "message", "status"}}`` from a non-2xx body, or return None."""
        try:
            return error_from_object(fast_loads(body))
        except ValueError:
            return None

    def is_retryable(self, error: ProviderError) -> bool:
        """True for ``RESOURCE_EXHAUSTED``/``INTERNAL``/``UNAVAILABLE``/``DEADLINE_EXCEEDED`` (429, 500, 503, 504)."""
        return error.type in RETRYABLE


class VertexProvider(GeminiProvider):
    """Gemini on Vertex AI: ``{base}/v1/projects/{project}/locations/{location}/publishers/google/models/{model}``.

    Authentication is a bearer token: pass ``api_key=`` the token, or a
    callable returning a fresh one (called before each stream), e.g.
    ``google.auth``'s credentials refreshed. ``project`` and ``location`` are
    call options (never sent in the body), defaulting from
    ``GOOGLE_CLOUD_PROJECT`` and ``GOOGLE_CLOUD_LOCATION`` as ``google-genai``
    reads them (location ``global`` when unset). The base URL defaults to
    ``https://{location}-aiplatform.googleapis.com`` (``https://aiplatform.googleapis.com``
    for ``global``), or ``GOOGLE_VERTEX_BASE_URL``.
    """

    call_options = ("project", "location")

    name = "vertex"
    api_key_env: Optional[str] = None
    base_url_env: Optional[str] = "GOOGLE_VERTEX_BASE_URL"
    default_base_url = ""
    env_vars = ("GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION", "GOOGLE_VERTEX_BASE_URL")
    fake_format = "gemini"
    otel_name = "gcp.vertex_ai"
    api_version = "v1"

    def api_key_from_env(self, environ: Mapping[str, str]) -> Optional[str]:
        """None: Vertex AI takes a bearer token from the caller (``api_key=`` a token or a callable)."""
        return None

    def params_from_env(self, environ: Mapping[str, str]) -> Dict[str, Any]:
        """``project`` and ``location`` from ``GOOGLE_CLOUD_PROJECT`` and ``GOOGLE_CLOUD_LOCATION``."""
        found = {"project": environ.get("GOOGLE_CLOUD_PROJECT"), "location": environ.get("GOOGLE_CLOUD_LOCATION")}
        return {k: v for k, v in found.items() if v}

    def headers(self, api_key: Optional[str]) -> Dict[str, str]:
        """JSON body, SSE answer, and the token as ``Authorization: Bearer``."""
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return headers

    def model_path(self, model: str, params: Dict[str, Any]) -> str:
        """``/v1/projects/{project}/locations/{location}/publishers/google/models/{model}``; a full resource name is kept."""
        project, location = params.pop("project", None), params.get("location") or "global"
        if model.startswith("projects/"):
            return f"/{self.api_version}/{model}"
        if not project:
            raise ValueError("provider='vertex' needs a project: pass project=... or set GOOGLE_CLOUD_PROJECT")
        model = model.split("/")[-1]
        return (f"/{self.api_version}/projects/{quote(str(project), safe='')}/locations/{quote(str(location), safe='')}"
                f"/publishers/google/models/{quote(model, safe='')}")

    def resolve_base_url(self, base_url: str, params: Dict[str, Any]) -> str:
        """``base_url`` as given, else derived from the location."""
        location = str(params.pop("location", None) or "global")
        if base_url:
            return self.normalize_base_url(base_url)
        return "https://aiplatform.googleapis.com" if location == "global" else f"https://{location}-aiplatform.googleapis.com"
