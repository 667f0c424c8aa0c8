"""Ollama ``/api/chat``: the streaming request and the decoder of its JSON lines.

Spec: https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion

Strategy: the body is newline-delimited JSON (``application/x-ndjson``), one
object per line; ``llmstream._jsonl`` parses the lines and this decoder reads
the objects::

    {"model": ..., "message": {"role": "assistant", "content": "The", "thinking": ...}, "done": false}
    {"model": ..., "message": {"role": "assistant", "content": "", "tool_calls": [...]}, "done": false}
    {"model": ..., "message": {...}, "done": true, "done_reason": "stop",
     "prompt_eval_count": 26, "eval_count": 282, "total_duration": ..., ...}

or, when the server fails mid-stream, ``{"error": "..."}`` in place of the rest.

Invariants:
  * ``done: true`` is the only end marker: ``close()`` before it raises
    ``IncompleteStreamError``.
  * Ollama sends each tool call whole (``arguments`` already an object), so a
    call gives one ``ToolCallDelta`` carrying all its arguments, then its
    ``ToolCall``: the same two-step shape as the providers that stream them.
  * Every field read is checked (``_shape``): a wrong type is a
    ``MalformedStreamError`` naming the field (``"content": 5`` is not
    delivered as text); token counts are bounded.

Never: import IO modules, log, or guess at text the server did not send.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .._events import Event, Finish, TextDelta, ThinkingDelta, ToolCall, ToolCallDelta, Usage
from .._exceptions import (
    APIConnectionError, IncompleteStreamError, MalformedStreamError, NotFoundError, ProviderError, StreamTimeoutError,
)
from .._fastjson import loads as fast_loads
from ._base import BaseProvider, Message, RequestSpec, Turn, drop_none
from ._shape import malformed, optional, token_count

__all__ = ["OllamaProvider", "OllamaDecoder"]

DEFAULT_PORT = 11434
#: The fields of the final object that measure the run; they become ``Usage.raw``.
USAGE_FIELDS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)
_EXCERPT = 80
_WHERE = "Ollama stream line"


class OllamaProvider(BaseProvider):
    """A local (or remote) Ollama server's native chat API.

    The base URL is the host, as ``OLLAMA_HOST`` gives it to the ``ollama``
    client: with or without a scheme or port (``localhost``, ``0.0.0.0:11434``,
    ``:8080``, ``https://ollama.example.com``). The API key is optional (a
    bare local server needs none); when set it is sent as a bearer token, as
    for ollama.com.

    Usage::

        provider = OllamaProvider()
        spec = provider.build_request(base_url=provider.normalize_base_url(os.environ.get("OLLAMA_HOST", "")),
                                      api_key=None, model="llama3.2", messages=messages, params={})
        decoder = StreamDecoder(provider.new_decoder(), framing=provider.framing)
    """

    name = "ollama"
    framing = "jsonl"
    api_key_env: Optional[str] = "OLLAMA_API_KEY"
    base_url_env: Optional[str] = "OLLAMA_HOST"
    default_base_url = "http://localhost:11434"
    requires_api_key = False
    #: /api/chat continues a final assistant message (the chat template leaves
    #: it open), so resume="continue" works; but it depends on the model's
    #: template, so it is not guaranteed and resume="auto" replays first.
    supports_continue = True
    env_vars = ("OLLAMA_HOST", "OLLAMA_API_KEY")
    default_model = "llama3.2"
    fake_format = "ollama"
    otel_name = "ollama"
    output_limit_keys = ("num_predict",)  # Ollama's output limit, in options like every sampling setting
    settings_key = "options"

    def hint(self, error: BaseException, *, base_url: Optional[str], model: Optional[str],
             environ: Mapping[str, str]) -> Optional[str]:
        """Start the server when it is unreachable; pull the model when it is not found."""
        unreachable = isinstance(error, APIConnectionError) or (
            isinstance(error, StreamTimeoutError) and error.kind == "connect")
        if unreachable:
            where = base_url or environ.get("OLLAMA_HOST") or "localhost:11434"
            return (f"is Ollama running at {where}? Start it (`ollama serve`, or the Ollama app) and pull the model "
                    f"(`ollama pull {self.default_model}`), or point OLLAMA_HOST or --base-url at it")
        if isinstance(error, NotFoundError):
            return f"pull the model first: `ollama pull {model or self.default_model}` (`ollama list` shows the ones you have)"
        return None

    def normalize_base_url(self, base_url: str) -> str:
        """Turn an ``OLLAMA_HOST`` value into a base URL, the way the ``ollama`` client does.

        Rules (from ``ollama-python``'s ``_parse_host``): no scheme means
        ``http``; no port means 11434 without a scheme, else the scheme's
        default (80, 443); no host means ``127.0.0.1``; a path is kept; the
        trailing slash goes. ``0.0.0.0`` is kept as given, as the client does
        (it reaches the local server on Linux and macOS).

        Examples: ``"localhost"`` -> ``"http://localhost:11434"``,
        ``":8080"`` -> ``"http://127.0.0.1:8080"``,
        ``"https://example.com/"`` -> ``"https://example.com:443"``.
        """
        scheme, sep, hostport = base_url.strip().partition("://")
        port = DEFAULT_PORT
        if not sep:
            scheme, hostport = "http", base_url.strip()
        elif scheme == "http":
            port = 80
        elif scheme == "https":
            port = 443
        split = urllib.parse.urlsplit(f"{scheme}://{hostport}")
        host = split.hostname or "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"  # urlsplit drops the brackets of an IPv6 literal
        url = f"{scheme}://{host}:{split.port or port}"
        path = split.path.strip("/")
        return f"{url}/{path}" if path else url

    def build_request(
        self,
        *,
        base_url: str,
        api_key: Optional[str],
        model: str,
        messages: List[Message],
        params: Mapping[str, Any],
    ) -> RequestSpec:
        """Build the streaming ``POST {base_url}/api/chat`` request.

        ``params`` override the body's keys (``options``, ``tools``, ``think``,
        ``format``, ``keep_alive``...); a ``None`` value removes one.
        """
        body: Dict[str, Any] = {"model": model, "messages": list(messages), "stream": True}
        body.update(params)
        headers = {"Content-Type": "application/json", "Accept": "application/x-ndjson"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        url = self.normalize_base_url(base_url) + "/api/chat"
        return RequestSpec(method="POST", url=url, headers=headers, json=drop_none(body))

    def continue_request(self, spec: RequestSpec, delivered_text: str) -> RequestSpec:
        """Return a copy of ``spec`` asking the model to continue ``delivered_text``.

        The delivered text becomes the final assistant message, which Ollama's
        chat endpoint continues (a prefill). If the messages already end with
        an assistant message of text, the delivered text extends it, since the
        model was continuing it. With nothing delivered there is nothing to
        continue: ``spec`` itself is returned.

        Raises:
            ValueError: ``spec`` has no JSON body with ``messages``.
        """
        if not delivered_text:
            return spec
        if spec.json is None or not isinstance(spec.json.get("messages"), list):
            raise ValueError("continue_request needs the original /api/chat request, with its messages")
        messages = list(spec.json["messages"])
        last = messages[-1] if messages else None
        if isinstance(last, Mapping) and last.get("role") == "assistant" and isinstance(last.get("content"), str):
            messages[-1] = {**last, "content": last["content"] + delivered_text}
        else:
            messages.append({"role": "assistant", "content": delivered_text})
        return spec.replace(json={**spec.json, "messages": messages})

    def new_decoder(self) -> OllamaDecoder:
        """Return a fresh decoder for one stream."""
        return OllamaDecoder()

    def error_from_body(self, body: str) -> Optional[ProviderError]:
        """Parse ``{"error": "..."}``; None if the body is not that."""
        try:
            obj = fast_loads(body)
        except ValueError:  # not JSON, or nested too deeply to be an error object
            return None
        if not isinstance(obj, dict) or not obj.get("error"):
            return None
        return _provider_error(obj["error"])

    def is_retryable(self, error: ProviderError) -> bool:
        """False: Ollama's in-stream errors (model failed to load, ran out of memory...) carry no type
        telling a passing condition from a permanent one, and the HTTP status already covers overload."""
        return False

    def assistant_message(self, turn: Turn) -> Dict[str, Any]:
        """The turn as an ``/api/chat`` message: ``content`` and ``tool_calls`` with object arguments."""
        message: Dict[str, Any] = {"role": "assistant", "content": turn.text}
        if turn.tool_calls:
            message["tool_calls"] = [
                {"function": {"name": c.name, "arguments": c.arguments if isinstance(c.arguments, dict) else {}}}
                for c in turn.tool_calls
            ]
        return message


def _provider_error(error: Any) -> ProviderError:
    if isinstance(error, dict):  # not what Ollama sends, but what some proxies in front of it do
        kind = error.get("type")
        return ProviderError(str(error.get("message") or error), type=kind if isinstance(kind, str) else None)
    return ProviderError(str(error))


class OllamaDecoder:
    """Per-stream state machine: Ollama's parsed JSON objects in, unified events out.

    Raises (from ``feed`` or ``close``; staying failed is
    :class:`~llmstream._providers._base.StreamDecoder`'s job):
        ProviderError: an ``{"error": ...}`` object.
        MalformedStreamError: a line that is not a JSON object of the expected shape.
        IncompleteStreamError: ``close()`` before ``done: true``.
    """

    def __init__(self) -> None:
        self._finished = False
        self._next_tool_index = 0
        #: The ``model`` of the final line (observability); Ollama gives no answer id.
        self.response_id: Optional[str] = None
        self.response_model: Optional[str] = None

    @property
    def finished(self) -> bool:
        """True once the object with ``done: true`` was seen."""
        return self._finished

    def feed(self, message: Any) -> List[Event]:
        """Decode one parsed JSON object; return the unified events it produces."""
        if self._finished:
            return []  # nothing follows done: true
        return self._decode(message)

    def close(self) -> List[Event]:
        """End of input: raise ``IncompleteStreamError`` unless ``done: true`` was seen."""
        if not self._finished:
            raise IncompleteStreamError('the Ollama stream ended before its "done": true object')
        return []

    def _decode(self, obj: Any) -> List[Event]:
        if obj.__class__ is dict and obj.get("done") is False and "error" not in obj:
            message = obj.get("message")
            if message.__class__ is dict and "tool_calls" not in message:
                content, thinking = message.get("content"), message.get("thinking")
                if content.__class__ is str and (thinking is None or thinking.__class__ is str):
                    # The hot path (a token), every field it reads checked; anything else goes below.
                    out: List[Event] = [ThinkingDelta(thinking)] if thinking else []
                    if content:
                        out.append(TextDelta(content))
                    return out
        return self._decode_checked(obj)

    def _decode_checked(self, obj: Any) -> List[Event]:
        if not isinstance(obj, dict):
            raise MalformedStreamError(f"Ollama stream line is not a JSON object: {_excerpt(obj)}")
        if obj.get("error"):
            raise _provider_error(obj["error"])
        # Check the whole line before acting on it: a bad line changes no state.
        message = optional(obj, "message", dict, _WHERE) or {}
        thinking = optional(message, "thinking", str, _WHERE, "message.")
        content = optional(message, "content", str, _WHERE, "message.")
        calls = [_check_call(c, f"message.tool_calls[{i}]") for i, c in enumerate(optional(message, "tool_calls", list, _WHERE, "message.") or ())]
        done = optional(obj, "done", bool, _WHERE)
        end = self._end(obj) if done else []
        out: List[Event] = []
        # Thinking comes before the answer it leads to, so emit it first.
        if thinking:
            out.append(ThinkingDelta(thinking))
        if content:
            out.append(TextDelta(content))
        for call in calls:
            out.extend(self._tool_call(*call))
        if done:
            self._finished = True
            model = obj.get("model")
            if isinstance(model, str) and 0 < len(model) <= 256:
                self.response_model = model
            out.extend(end)
        return out

    @staticmethod
    def _end(obj: Dict[str, Any]) -> List[Event]:
        """The Usage and Finish of the final object (``done: true``)."""
        raw = {k: obj[k] for k in USAGE_FIELDS if k in obj}
        usage = Usage(input_tokens=token_count(raw, "prompt_eval_count", _WHERE), output_tokens=token_count(raw, "eval_count", _WHERE), raw=raw)
        return [usage, Finish(optional(obj, "done_reason", str, _WHERE) or "stop")]

    def _tool_call(self, call_id: str, name: str, arguments: Any, raw: str) -> Tuple[ToolCallDelta, ToolCall]:
        index = self._next_tool_index
        self._next_tool_index += 1
        return ToolCallDelta(index, call_id, name, raw), ToolCall(index, call_id, name, arguments, raw)


def _check_call(call: Any, name: str) -> Tuple[str, str, Any, str]:
    """A tool call as (id, function name, parsed arguments or None, raw arguments), every field checked."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise MalformedStreamError(f"Ollama tool call without a function name: {_excerpt(call)}")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        # Ollama sends an object; an OpenAI-style string (some proxies) is parsed here.
        raw = arguments
        try:
            arguments = fast_loads(raw) if raw else {}
        except ValueError:  # not JSON, or nested too deeply: the raw text is kept
            arguments = None
    elif isinstance(arguments, dict):
        raw = json.dumps(arguments, ensure_ascii=False)
    else:
        raise malformed(_WHERE, name + ".function.arguments", "an object", arguments)
    # Recent servers give each call an id; older ones none ("" then, as ToolCall documents).
    call_id = optional(call, "id", str, _WHERE, name + ".") or ""
    return call_id, function["name"], arguments, raw


def _excerpt(obj: Any) -> str:
    text = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False, default=repr)
    return repr(text[:_EXCERPT] + ("..." if len(text) > _EXCERPT else ""))
