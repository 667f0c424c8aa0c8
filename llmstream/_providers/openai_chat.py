"""OpenAI Chat Completions (and every OpenAI-compatible server): request and stream decoder.

Contract
--------
Spec: https://platform.openai.com/docs/api-reference/chat-streaming (the
``chat.completion.chunk`` object), and the official SDK's reading of it
(``openai/_streaming.py``: ``[DONE]`` ends the stream, a chunk with an
``error`` key is an error).

Strategy: one SSE event carries one JSON chunk. ``feed`` tries the 99% shape
first -- one choice, index 0, a delta holding only ``content``, no
``finish_reason`` and no ``usage`` -- and returns one :class:`TextDelta`
without building anything else; every other chunk goes through the general
path. ``[DONE]`` is not JSON, so it is recognised only after the parser
has refused it: the end marker costs nothing on the hot path.

Invariants:
  * Only choice index 0 is delivered. ``n > 1`` is not supported: the chunks
    of other choices are ignored rather than interleaved into one text.
  * A tool call's fragments are assembled by their ``index``; its
    :class:`ToolCall` is emitted when the call is complete (at
    ``finish_reason``, or at ``[DONE]`` if no finish reason came), before the
    :class:`Finish` it completes.
  * ``Finish`` is emitted once, for the first ``finish_reason``.
  * After ``[DONE]`` every further message is ignored.
  * Every field is checked (``_shape``) before it is used, and a whole chunk
    before it changes any state: a wrong type is a ``MalformedStreamError``
    naming the field (``expected "choices" to be a list, got string``).
    ``null`` is accepted wherever a field is optional (``content: null`` on
    tool-call deltas, ``finish_reason: null``); token counts are bounded.

Deliberate deviations, each tested:
  * A stream that ends cleanly after a ``finish_reason`` but without
    ``[DONE]`` is complete: several OpenAI-compatible servers never send
    ``[DONE]``, and the finish reason already says the model stopped. Only
    the trailing usage chunk can be missing then.
  * ``delta.reasoning_content`` (DeepSeek, vLLM <= 0.9) and ``delta.reasoning``
    (newer vLLM, OpenRouter) become :class:`ThinkingDelta`.
  * An SSE event whose data is blank, or is not JSON on an event type other
    than ``message`` (a vendor keep-alive), is ignored; but non-JSON data on
    an ``error`` event is a :class:`ProviderError`.
  * ``delta.refusal`` is not text of the answer and is not delivered.

Never: touch a socket, thread, clock or logger; deliver a piece twice.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .._events import Event, Finish, TextDelta, ThinkingDelta, ToolCall, ToolCallDelta, Usage
from .._exceptions import IncompleteStreamError, MalformedStreamError, ProviderError
from .._fastjson import loads as fast_loads
from ._base import BaseProvider, Message, RequestSpec, ServerSentEvent, drop_none
from ._shape import expect, json_type, malformed, optional, token_count

__all__ = ["OpenAIChatProvider", "OpenAIChatDecoder"]

#: In-stream error types worth another attempt. OpenAI reports rate limits with
#: ``type`` "requests" or "tokens" and ``code`` "rate_limit_exceeded"; the
#: others are the usual server-side words of OpenAI and compatible servers.
#: ``insufficient_quota`` (also a 429) is deliberately absent: waiting won't fix it.
_RETRYABLE_TYPES = frozenset(
    {"server_error", "rate_limit_exceeded", "rate_limit_error", "requests", "tokens", "overloaded_error", "service_unavailable", "timeout"}
)

_EXCERPT = 80
_WHERE = "OpenAI chat chunk"


def excerpt(data: str) -> str:
    """Return the start of ``data``, short enough for an error message."""
    return data if len(data) <= _EXCERPT else data[:_EXCERPT] + "..."


def error_from_object(obj: Any) -> Optional[ProviderError]:
    """Read an OpenAI-style error object, or return None if ``obj`` is not one.

    Accepts ``{"error": {"message", "type", "code"}}`` (OpenAI), ``{"error":
    "text"}`` and vLLM's bare ``{"object": "error", "message", "type"}``.
    ``type`` falls back to ``code`` when a server gives only a code. Fields of
    other types are shown as they are: the stream fails either way.
    """
    if not isinstance(obj, dict):
        return None
    error = obj.get("error")
    if not error:
        if obj.get("object") != "error":
            return None
        error = obj
    if isinstance(error, str):
        return ProviderError(error)
    if not isinstance(error, dict):
        return ProviderError(str(error))
    message = error.get("message")
    if not isinstance(message, str) or not message:
        message = "the server reported an error in the stream"
    kind = error.get("type") or error.get("code")
    return ProviderError(message, type=None if kind is None else str(kind))


def tool_call(index: int, call_id: str, name: str, raw: str) -> ToolCall:
    """Build a complete :class:`ToolCall`; ``arguments`` is None when ``raw`` is not valid JSON.

    Empty arguments mean a function called without any (some servers send ""
    rather than "{}"), so they parse as ``{}``, as for the other providers.
    Arguments nested too deeply to parse count as not valid JSON (the raw
    text is kept), like arguments cut short.
    """
    if not raw:
        return ToolCall(index=index, id=call_id, name=name, arguments={}, raw_arguments=raw)
    try:
        arguments = fast_loads(raw)
    except ValueError:  # JSONDecodeError or JSONNestingError
        arguments = None
    return ToolCall(index=index, id=call_id, name=name, arguments=arguments, raw_arguments=raw)


class _PendingCall:
    """The fragments of one tool call received so far."""

    __slots__ = ("id", "name", "parts")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.parts: List[str] = []


#: One checked tool-call fragment: index (None when the server omits it), id, name, arguments.
_Fragment = Tuple[Optional[int], str, str, str]


class OpenAIChatDecoder:
    """Decodes one Chat Completions stream: ``ServerSentEvent`` in, unified events out.

    Usage::

        decoder = OpenAIChatDecoder()
        events = decoder.feed(ServerSentEvent(data='{"choices": [...]}'))
        events = decoder.close()   # IncompleteStreamError if [DONE] never came

    A chunk is checked whole before it changes any state, so a malformed one
    leaves the decoder as it was. Staying failed after an error is
    :class:`~llmstream._providers._base.StreamDecoder`'s job.
    """

    def __init__(self) -> None:
        self._done = False
        self._finish_reason: Optional[str] = None
        self._calls: Dict[int, _PendingCall] = {}
        self._last_index = -1
        #: The chunk ``id`` and ``model`` (observability), read on the general path only:
        #: the first chunk (the role) and the last (finish reason, usage) take it.
        self.response_id: Optional[str] = None
        self.response_model: Optional[str] = None

    @property
    def finished(self) -> bool:
        """True once ``[DONE]`` was seen (or ``close()`` accepted a finish reason instead)."""
        return self._done

    @property
    def finish_reason(self) -> Optional[str]:
        """The first ``finish_reason`` seen, or None."""
        return self._finish_reason

    def feed(self, message: ServerSentEvent) -> List[Event]:
        """Decode one SSE event.

        Raises:
            ProviderError: the chunk is an ``{"error": ...}`` object.
            MalformedStreamError: the data is not JSON (nor ``[DONE]``) or not
                a chunk of the documented shape.
        """
        if self._done:
            return []
        data = message.data
        try:
            chunk = fast_loads(data)
        except ValueError:
            return self._not_json(message)
        # The hot path: {"choices": [{"index": 0, "delta": {"content": "..."},
        # "finish_reason": null}], ...}. Each step either matches exactly or
        # falls through to the general path, which checks every shape.
        try:
            choices = chunk["choices"]
            choice = choices[0]
            delta = choice["delta"]
            content = delta["content"]
            if (
                content.__class__ is str
                and len(delta) == 1
                and len(choices) == 1
                and choice.get("finish_reason") is None
                and choice.get("index", 0).__class__ is int
                and choice.get("index", 0) == 0
                and chunk.get("usage") is None
            ):
                return [TextDelta(content)] if content else []
        except (KeyError, IndexError, TypeError, AttributeError):
            pass  # not the hot shape (or not a chunk at all): the general path says which
        return self._chunk(chunk)

    def close(self) -> List[Event]:
        """Signal end of input.

        A stream that ended after a ``finish_reason`` without ``[DONE]`` is
        accepted as complete (see the module contract) and returns [].

        Raises:
            IncompleteStreamError: neither ``[DONE]`` nor a ``finish_reason`` came.
        """
        if self._done:
            return []
        if self._finish_reason is None:
            raise IncompleteStreamError("stream ended before [DONE]: the answer may be cut short")
        self._done = True
        return []

    # -- general path -----------------------------------------------------

    def _not_json(self, message: ServerSentEvent) -> List[Event]:
        data = message.data.strip()
        if data == "[DONE]":
            out = self._complete_calls()
            self._done = True
            return out
        if message.event == "error":
            # An SSE error event whose data is plain text, not an error object.
            raise ProviderError(excerpt(data) or "the server reported an error in the stream")
        if not data or message.event != "message":
            return []
        raise MalformedStreamError(f"invalid JSON in stream data: {excerpt(message.data)!r}")

    def _chunk(self, chunk: Any) -> List[Event]:
        error = error_from_object(chunk)
        if error is not None:
            raise error
        if not isinstance(chunk, dict):
            raise MalformedStreamError(f"{_WHERE}: expected an object, got {json_type(chunk)}")
        # Check everything first, then act: a bad chunk changes no state.
        choices = [self._check_choice(c, i) for i, c in enumerate(optional(chunk, "choices", list, _WHERE) or ())]
        usage = self._usage(chunk)
        if self.response_id is None:
            self.response_id = _short_str(chunk.get("id"))
            self.response_model = _short_str(chunk.get("model"))
        out: List[Event] = []
        for choice in choices:
            if choice is not None:
                self._choice(*choice, out)
        if usage is not None:
            out.append(usage)
        return out

    @staticmethod
    def _usage(chunk: Mapping[str, Any]) -> Optional[Usage]:
        usage = optional(chunk, "usage", dict, _WHERE)
        if usage is None:
            return None
        return Usage(
            input_tokens=token_count(usage, "prompt_tokens", _WHERE, "usage."),
            output_tokens=token_count(usage, "completion_tokens", _WHERE, "usage."),
            raw=usage,
        )

    @staticmethod
    def _check_choice(value: Any, i: int) -> Optional[Tuple[str, str, List[_Fragment], Optional[str]]]:
        """A choice as (thinking, content, tool fragments, finish reason), or None for n > 1's other choices."""
        name = f"choices[{i}]"
        choice = expect(value, dict, name, _WHERE)
        if (optional(choice, "index", int, _WHERE, name + ".") or 0) != 0:
            return None
        reason = optional(choice, "finish_reason", str, _WHERE, name + ".")
        delta = optional(choice, "delta", dict, _WHERE, name + ".") or {}
        prefix = name + ".delta."
        # delta.content is null on tool-call deltas; refusal (not read) is not answer text.
        thinking = optional(delta, "reasoning_content", str, _WHERE, prefix) or optional(delta, "reasoning", str, _WHERE, prefix)
        content = optional(delta, "content", str, _WHERE, prefix)
        fragments = optional(delta, "tool_calls", list, _WHERE, prefix) or ()
        calls = [_check_fragment(f, f"{prefix}tool_calls[{j}]") for j, f in enumerate(fragments)]
        return thinking or "", content or "", calls, reason

    def _choice(self, thinking: str, content: str, calls: List[_Fragment], reason: Optional[str], out: List[Event]) -> None:
        if thinking:
            out.append(ThinkingDelta(thinking))
        if content:
            out.append(TextDelta(content))
        for fragment in calls:
            self._tool_fragment(fragment, out)
        if reason is not None and self._finish_reason is None:
            out.extend(self._complete_calls())
            self._finish_reason = reason
            out.append(Finish(reason))

    def _tool_fragment(self, fragment: _Fragment, out: List[Event]) -> None:
        given_index, fragment_id, fragment_name, arguments = fragment
        index = self._tool_index(given_index, fragment_id)
        call = self._calls.get(index)
        first = call is None
        if call is None:
            call = self._calls[index] = _PendingCall()
        # id and name are reported where they first appear; servers that repeat
        # them on every fragment must not get them concatenated or re-announced.
        new_id = fragment_id if not call.id else ""
        new_name = fragment_name if not call.name else ""
        call.id = call.id or new_id
        call.name = call.name or new_name
        if arguments:
            call.parts.append(arguments)
        if first or new_id or new_name or arguments:
            out.append(ToolCallDelta(index=index, id=new_id or None, name=new_name or None, arguments=arguments))
        self._last_index = index

    def _tool_index(self, index: Optional[int], new_id: str) -> int:
        if index is not None:
            return index
        # Some compatible servers omit ``index`` and send each call whole: a
        # fragment with a new id starts the next call, any other continues the last.
        last = self._calls.get(self._last_index)
        if last is None or (new_id and new_id != last.id):
            return max(self._calls, default=-1) + 1
        return self._last_index

    def _complete_calls(self) -> List[Event]:
        calls, self._calls = self._calls, {}
        return [tool_call(i, calls[i].id, calls[i].name, "".join(calls[i].parts)) for i in sorted(calls)]


def _check_fragment(value: Any, name: str) -> _Fragment:
    """A tool-call fragment as (index, id, name, arguments text), every field checked."""
    fragment = expect(value, dict, name, _WHERE)
    index = optional(fragment, "index", int, _WHERE, name + ".")
    if index is not None and index < 0:
        raise MalformedStreamError(f'{_WHERE}: expected "{name}.index" to be a non-negative integer, got {index}')
    function = optional(fragment, "function", dict, _WHERE, name + ".") or {}
    prefix = name + ".function."
    arguments = function.get("arguments")
    if isinstance(arguments, dict):
        arguments = json.dumps(arguments)  # a server that sends an object, not its JSON text
    elif arguments is not None and not isinstance(arguments, str):
        raise malformed(_WHERE, prefix + "arguments", "a string", arguments)
    return (
        index,
        optional(fragment, "id", str, _WHERE, name + ".") or "",
        optional(function, "name", str, _WHERE, prefix) or "",
        arguments or "",
    )


class OpenAIChatProvider(BaseProvider):
    """OpenAI Chat Completions, and any server that speaks it (vLLM, llama.cpp, DeepSeek, Groq...).

    ``base_url`` includes the version, as in the official SDK:
    ``https://api.openai.com/v1``.
    """

    name = "openai"
    framing = "sse"
    api_key_env: Optional[str] = "OPENAI_API_KEY"
    base_url_env: Optional[str] = "OPENAI_BASE_URL"
    default_base_url = "https://api.openai.com/v1"
    requires_api_key = True
    env_vars: Tuple[str, ...] = ("OPENAI_API_KEY", "OPENAI_BASE_URL")
    default_model = "gpt-4o-mini"
    output_limit_keys: Tuple[str, ...] = ("max_tokens", "max_completion_tokens")
    fake_format = "openai"
    otel_name = "openai"
    #: Whether :meth:`continue_request` can be used (servers implementing vLLM's
    #: ``continue_final_message``; :meth:`continue_allowed` rules out the official host).
    supports_continue = True

    def continue_allowed(self, base_url: str) -> bool:
        """False for OpenAI's own API, which has no assistant prefill; compatible servers (vLLM...) have one."""
        return "api.openai.com" not in base_url

    def normalize_base_url(self, base_url: str) -> str:
        """Return ``base_url`` without its trailing slash (``/v1`` is kept as given)."""
        return base_url.rstrip("/")

    def headers(self, api_key: Optional[str]) -> Dict[str, str]:
        """Request headers: JSON body, SSE answer, and the bearer key when there is one."""
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return headers

    def build_request(
        self,
        *,
        base_url: str,
        api_key: Optional[str],
        model: str,
        messages: List[Message],
        params: Mapping[str, Any],
    ) -> RequestSpec:
        """Build ``POST {base_url}/chat/completions`` with ``stream`` and usage reporting on.

        ``params`` override the defaults; a None value removes a key (for
        example ``stream_options=None`` for a server that rejects it).
        """
        body: Dict[str, Any] = {
            "model": model,
            "messages": list(messages),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        body.update(params)
        url = f"{self.normalize_base_url(base_url)}/chat/completions"
        return RequestSpec(method="POST", url=url, headers=self.headers(api_key), json=drop_none(body))

    def continue_request(self, spec: RequestSpec, delivered_text: str) -> RequestSpec:
        """Return a copy of ``spec`` asking the server to continue ``delivered_text``.

        The messages gain a final assistant message holding the delivered text,
        and the body sets ``continue_final_message: true`` and
        ``add_generation_prompt: false`` (vLLM's and compatible servers'
        continuation of a final assistant message). With nothing delivered
        there is nothing to continue: ``spec`` itself is returned.

        Raises:
            ValueError: ``spec`` has no JSON body with ``messages``.
        """
        if not delivered_text:
            return spec
        if spec.json is None or not isinstance(spec.json.get("messages"), list):
            raise ValueError("continue_request needs the original chat request, with its messages")
        body = dict(spec.json)
        body["messages"] = [*spec.json["messages"], {"role": "assistant", "content": delivered_text}]
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
        return spec.replace(json=body)

    def new_decoder(self) -> OpenAIChatDecoder:
        """Return a fresh decoder for one stream."""
        return OpenAIChatDecoder()

    def error_from_body(self, body: str) -> Optional[ProviderError]:
        """Parse ``{"error": {"message", "type", "code"}}`` from a non-2xx body, or return None."""
        try:
            obj = fast_loads(body)
        except ValueError:  # not JSON, or nested too deeply to be an error object
            return None
        return error_from_object(obj)

    def is_retryable(self, error: ProviderError) -> bool:
        """True for server errors and rate limits; False for invalid requests and unknown types."""
        return error.type in _RETRYABLE_TYPES


def _short_str(value: Any) -> Optional[str]:
    """An id or model name for telemetry: a string of reasonable length, else None."""
    return value if isinstance(value, str) and 0 < len(value) <= 256 else None
