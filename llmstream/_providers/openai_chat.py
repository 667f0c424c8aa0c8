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
  * ``delta.content`` may be a list of parts (Mistral): ``{"type": "text",
    "text"}`` parts are text, ``{"type": "thinking", "thinking": [parts]}``
    parts are thinking; other part types are ignored.
  * Usage under ``x_groq.usage`` (Groq) counts when the chunk has no ``usage``.
  * An error chunk's numeric ``code`` (OpenRouter) becomes the error's type
    (``"429"``); 408, 409, 429, 529 and 5xx are retryable, 402/403 are not.
  * With ``think_tags=True`` (the ``openai-think`` provider), ``<think>...</think>``
    inside the text becomes ThinkingDelta (``_think.ThinkTagSplitter``,
    split-safe); off by default, because the tags may be meant literally.
  * ``result.message`` is ``{"role": "assistant", "content", "tool_calls"}``
    (:meth:`OpenAIChatProvider.assistant_message`); reasoning is not sent back
    (DeepSeek refuses ``reasoning_content`` in input messages).

Never: touch a socket, thread, clock or logger; deliver a piece twice.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .._events import Event, Finish, TextDelta, ThinkingDelta, ToolCall, ToolCallDelta, Usage
from .._exceptions import IncompleteStreamError, MalformedStreamError, ProviderError
from .._fastjson import loads as fast_loads
from .._record import unfrozen_twin
from ._base import BaseProvider, Message, RequestSpec, ServerSentEvent, Turn, drop_none
from ._shape import expect, json_type, malformed, optional, token_count
from ._think import ThinkTagSplitter

__all__ = ["OpenAIChatProvider", "OpenAIChatDecoder", "ThinkTagsDecoder"]

_UnfrozenTextDelta: Any = unfrozen_twin(TextDelta)

#: In-stream error types worth another attempt. OpenAI reports rate limits with
#: ``type`` "requests" or "tokens" and ``code`` "rate_limit_exceeded"; the
#: others are the usual server-side words of OpenAI and compatible servers.
#: ``insufficient_quota`` (also a 429) is deliberately absent: waiting won't fix it.
_RETRYABLE_TYPES = frozenset(
    {"server_error", "rate_limit_exceeded", "rate_limit_error", "requests", "tokens", "overloaded_error", "service_unavailable", "timeout"}
)

#: Numeric error codes (OpenRouter's mid-stream ``{"error": {"code": 429}}``, which
#: mirror HTTP statuses) worth another attempt: timeout, rate limit, server side.
#: 402 (out of credits) and 403 (moderation) are not: the same request fails again.
_RETRYABLE_CODES = frozenset({"408", "409", "429", "529"})

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

    # Slotted: one per attempt, hundreds at once (issue 17).
    __slots__ = ("finished", "_finish_reason", "_calls", "_last_index", "response_id", "response_model")

    def __init__(self) -> None:
        #: True once ``[DONE]`` was seen (or ``close()`` accepted a finish reason
        #: instead). An attribute, not a property: it is read at every read (issue 17).
        self.finished = False
        self._finish_reason: Optional[str] = None
        self._calls: Dict[int, _PendingCall] = {}
        self._last_index = -1
        #: The chunk ``id`` and ``model`` (observability), read on the general path only:
        #: the first chunk (the role) and the last (finish reason, usage) take it.
        self.response_id: Optional[str] = None
        self.response_model: Optional[str] = None

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
        if self.finished:
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
                and (index := choice.get("index", 0)).__class__ is int
                and index == 0
                and chunk.get("usage") is None
            ):
                if not content:
                    return []
                event = _UnfrozenTextDelta()  # TextDelta(content), built as unfrozen_twin says (issue 17)
                event.text = content
                event.__class__ = TextDelta
                return [event]
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
        if self.finished:
            return []
        if self._finish_reason is None:
            raise IncompleteStreamError("stream ended before [DONE]: the answer may be cut short")
        self.finished = True
        return []

    # -- general path -----------------------------------------------------

    def _not_json(self, message: ServerSentEvent) -> List[Event]:
        data = message.data.strip()
        if data == "[DONE]":
            out = self._complete_calls()
            self.finished = True
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
        prefix = "usage."
        if usage is None:
            # Groq reports usage in its own extension object on the last chunk.
            groq = optional(chunk, "x_groq", dict, _WHERE)
            usage = optional(groq, "usage", dict, _WHERE, "x_groq.") if groq is not None else None
            prefix = "x_groq.usage."
            if usage is None:
                return None
        return chat_usage(usage, prefix)

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
        raw_content = delta.get("content")
        content: Optional[str]
        if raw_content.__class__ is list:
            parts_thinking, content = _content_parts(raw_content, prefix + "content")
            thinking = (thinking or "") + parts_thinking
        else:
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


class ThinkTagsDecoder(OpenAIChatDecoder):
    """A Chat Completions decoder that turns inline ``<think>...</think>`` into ThinkingDelta.

    A subclass, so that the plain decoder's per-token path does not pay for
    the option: the text events of each chunk go through
    :class:`~llmstream._providers._think.ThinkTagSplitter`, which holds back
    only a possible partial tag. What it holds is handed over before the end
    of the answer (a ``ToolCall``, the ``Finish``, ``[DONE]``, ``close()``).
    A stream that breaks loses at most that partial tag (under 8 characters)
    from ``partial_text``; a retry regenerates it.
    """

    __slots__ = ("_think",)

    def __init__(self) -> None:
        super().__init__()
        self._think = ThinkTagSplitter()

    def feed(self, message: ServerSentEvent) -> List[Event]:
        """Decode one SSE event, with the ``<think>`` spans of its text as ThinkingDelta."""
        events = super().feed(message)
        return self._split(events, end=self.finished) if events or self.finished else events

    def close(self) -> List[Event]:
        """Signal end of input (see :meth:`OpenAIChatDecoder.close`), handing over held-back text."""
        return self._split(super().close(), end=True)

    def _split(self, events: List[Event], end: bool) -> List[Event]:
        out: List[Event] = []
        for event in events:
            cls = event.__class__
            if cls is TextDelta:
                out.extend(self._think.feed(event.text))  # type: ignore[union-attr]
                continue
            if cls is ToolCall or cls is Finish:
                out.extend(self._think.close())  # the answer's text is over
            out.append(event)
        if end:
            out.extend(self._think.close())
        return out


def _content_parts(parts: List[Any], name: str) -> Tuple[str, str]:
    """Mistral's list-of-parts ``delta.content`` as (thinking, text), every part checked.

    Text parts are ``{"type": "text", "text"}``; a thinking part is
    ``{"type": "thinking", "thinking": [{"type": "text", "text"}...]}``.
    Other part types (references, images...) carry no answer text: ignored.
    """
    thinking: List[str] = []
    text: List[str] = []
    for i, value in enumerate(parts):
        where = f"{name}[{i}]"
        part = expect(value, dict, where, _WHERE)
        kind = optional(part, "type", str, _WHERE, where + ".")
        if kind == "text":
            text.append(optional(part, "text", str, _WHERE, where + ".") or "")
        elif kind == "thinking":
            inner = optional(part, "thinking", list, _WHERE, where + ".") or ()
            for j, piece in enumerate(inner):
                sub = expect(piece, dict, f"{where}.thinking[{j}]", _WHERE)
                if optional(sub, "type", str, _WHERE, f"{where}.thinking[{j}].") in (None, "text"):
                    thinking.append(optional(sub, "text", str, _WHERE, f"{where}.thinking[{j}].") or "")
    return "".join(thinking), "".join(text)


def _details(usage: Mapping[str, Any], key: str, prefix: str) -> Mapping[str, Any]:
    return optional(usage, key, dict, _WHERE, prefix) or {}


def chat_usage(usage: Mapping[str, Any], prefix: str = "usage.") -> Usage:
    """A Chat Completions usage object as :class:`Usage`, with the cache and reasoning details normalized.

    Cached input: ``prompt_tokens_details.cached_tokens`` (OpenAI, Groq,
    OpenRouter), else DeepSeek's ``prompt_cache_hit_tokens``. Cache writes:
    ``prompt_tokens_details.cache_write_tokens`` (OpenRouter). Reasoning:
    ``completion_tokens_details.reasoning_tokens``.
    """
    prompt = _details(usage, "prompt_tokens_details", prefix)
    completion = _details(usage, "completion_tokens_details", prefix)
    cached = token_count(prompt, "cached_tokens", _WHERE, prefix + "prompt_tokens_details.")
    if cached is None:
        cached = token_count(usage, "prompt_cache_hit_tokens", _WHERE, prefix)
    return Usage(
        input_tokens=token_count(usage, "prompt_tokens", _WHERE, prefix),
        output_tokens=token_count(usage, "completion_tokens", _WHERE, prefix),
        raw=usage,
        cached_input_tokens=cached,
        cache_write_tokens=token_count(prompt, "cache_write_tokens", _WHERE, prefix + "prompt_tokens_details."),
        reasoning_tokens=token_count(completion, "reasoning_tokens", _WHERE, prefix + "completion_tokens_details."),
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

    def __init__(self, *, think_tags: bool = False, name: Optional[str] = None) -> None:
        if name is not None:  # else the class's own (a subclass, as Azure, keeps its name)
            self.name = name
        #: Turn inline ``<think>...</think>`` into ThinkingDelta (see the module contract).
        self.think_tags = think_tags

    def new_decoder(self) -> OpenAIChatDecoder:
        """Return a fresh decoder for one stream (:class:`ThinkTagsDecoder` with ``think_tags``)."""
        return ThinkTagsDecoder() if self.think_tags else OpenAIChatDecoder()

    def assistant_message(self, turn: Turn) -> Dict[str, Any]:
        """The assistant turn as a Chat Completions message: ``content`` and ``tool_calls``.

        ``content`` is None when the turn is only tool calls (as the API
        answers it). A call's ``arguments`` are sent as the model wrote them.
        """
        message: Dict[str, Any] = {"role": "assistant", "content": turn.text or None}
        if turn.tool_calls:
            message["tool_calls"] = [
                {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.raw_arguments}}
                for call in turn.tool_calls
            ]
        return message

    def error_from_body(self, body: str) -> Optional[ProviderError]:
        """Parse ``{"error": {"message", "type", "code"}}`` from a non-2xx body, or return None."""
        try:
            obj = fast_loads(body)
        except ValueError:  # not JSON, or nested too deeply to be an error object
            return None
        return error_from_object(obj)

    def is_retryable(self, error: ProviderError) -> bool:
        """True for server errors and rate limits (by type, or by numeric code); False for the rest."""
        kind = error.type
        if kind is None:
            return False
        return kind in _RETRYABLE_TYPES or kind in _RETRYABLE_CODES or (len(kind) == 3 and kind[0] == "5" and kind.isdigit())


def _short_str(value: Any) -> Optional[str]:
    """An id or model name for telemetry: a string of reasonable length, else None."""
    return value if isinstance(value, str) and 0 < len(value) <= 256 else None


class OpenAIThinkTagsProvider(OpenAIChatProvider):
    """``provider="openai-think"``: an OpenAI-compatible server whose model writes its reasoning inline.

    The text between ``<think>`` and ``</think>`` comes as ThinkingDelta (see
    :class:`ThinkTagsDecoder`); everything else is :class:`OpenAIChatProvider`.
    """

    def __init__(self) -> None:
        super().__init__(think_tags=True, name="openai-think")
