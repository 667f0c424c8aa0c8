"""OpenAI Responses API: request, cursor resume request and stream decoder.

Contract
--------
Spec: https://platform.openai.com/docs/api-reference/responses-streaming
(the typed events; the official SDK's ``types/responses/*_event.py``).

Strategy: every SSE event carries a JSON object whose ``type`` names it (the
SSE ``event:`` line repeats it; it is used only when ``type`` is missing, as
some compatible servers do). ``feed`` checks ``response.output_text.delta``
first -- the 99% event -- and dispatches everything else through a table.
The events this decoder uses:

  response.created                       remember ``response.id`` (for resume)
  response.output_text.delta             TextDelta
  response.reasoning_summary_text.delta  ThinkingDelta
  response.reasoning_text.delta          ThinkingDelta
  response.output_item.added             a function_call item: first ToolCallDelta (call_id, name)
  response.function_call_arguments.delta ToolCallDelta (arguments fragment)
  response.function_call_arguments.done  ToolCall (parsed arguments)
  response.output_item.done              ToolCall, if ``.done`` above did not come; then
                                         OutputItem(item) for every item type (reasoning
                                         with its encrypted_content, message, function_call...)
  response.completed                     Usage, Finish("stop" or "tool_calls"); end
  response.incomplete                    Usage, Finish(incomplete_details.reason); end
  response.failed                        ProviderError(error.message, type=error.code)
  error                                  ProviderError(message, type=code)

Every other type (``response.in_progress``, ``response.content_part.added``,
``response.output_text.done``, ``response.refusal.delta``...) is ignored, so a
new event type never breaks a stream.

Invariants:
  * ``last_sequence_number`` is the ``sequence_number`` of the last event
    decoded, and ``response_id`` the id from ``response.created``: together the
    cursor for ``GET /responses/{id}?stream=true&starting_after=N``.
  * A decoder made by :meth:`OpenAIResponsesDecoder.resumed` carries the tool
    call state over and drops any replayed event at or before the cursor, so a
    resumed stream delivers nothing twice.
  * Tool call ``index`` is the order of the function calls in the answer.
  * After ``response.completed``/``response.incomplete`` everything is ignored
    (including the ``[DONE]`` some compatible servers append).
  * Every field read is checked (``_shape``): a wrong type is a
    ``MalformedStreamError`` naming the field; token counts are bounded.

Never: touch a socket, thread, clock or logger; deliver a piece twice.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple
from urllib.parse import quote

from .._events import Event, Finish, OutputItem, TextDelta, ThinkingDelta, ToolCallDelta, Usage
from .._exceptions import IncompleteStreamError, MalformedStreamError, ProviderError
from ._base import BaseProvider, Message, ProviderDecoder, RequestSpec, ServerSentEvent, Turn, drop_none
from .._fastjson import loads as fast_loads
from ._shape import field, optional, token_count
from .openai_chat import OpenAIChatProvider, error_from_object, excerpt, tool_call

__all__ = ["OpenAIResponsesProvider", "OpenAIResponsesDecoder"]


class _FunctionCall:
    """One function call item of the answer, while its arguments stream."""

    __slots__ = ("index", "call_id", "name", "parts", "done")

    def __init__(self, index: int, call_id: str, name: str) -> None:
        self.index = index
        self.call_id = call_id
        self.name = name
        self.parts: List[str] = []
        self.done = False

    def copy(self) -> _FunctionCall:
        """Return an independent copy (for a resumed decoder)."""
        new = _FunctionCall(self.index, self.call_id, self.name)
        new.parts = list(self.parts)
        new.done = self.done
        return new


def _where(event: Mapping[str, Any]) -> str:
    # Called only on the way to an error: the event's type is already checked.
    return f"OpenAI Responses {event.get('type')!r} event"


class OpenAIResponsesDecoder:
    """Decodes one Responses API stream: ``ServerSentEvent`` in, unified events out.

    Usage::

        decoder = OpenAIResponsesDecoder()
        events = decoder.feed(ServerSentEvent(event="response.output_text.delta", data='{...}'))
        events = decoder.close()   # IncompleteStreamError if response.completed never came

    Staying failed after an error is
    :class:`~llmstream._providers._base.StreamDecoder`'s job.
    """

    def __init__(self) -> None:
        self._done = False
        self._response_id: Optional[str] = None
        #: The model that answered, from ``response.created`` (observability).
        self.response_model: Optional[str] = None
        self._last_seq: Optional[int] = None
        # Events numbered at or below this were delivered before a resume;
        # -1 (sequence numbers start at 0) drops nothing.
        self._resume_after = -1
        self._calls: Dict[str, _FunctionCall] = {}
        self._handlers: Dict[str, Callable[[Dict[str, Any]], List[Event]]] = {
            "response.created": self._created,
            "response.output_text.delta": self._text,
            "response.reasoning_summary_text.delta": self._thinking,
            "response.reasoning_text.delta": self._thinking,
            "response.output_item.added": self._item_added,
            "response.function_call_arguments.delta": self._arguments_delta,
            "response.function_call_arguments.done": self._arguments_done,
            "response.output_item.done": self._item_done,
            "response.completed": self._completed,
            "response.incomplete": self._incomplete,
            "response.failed": self._failed,
            "error": self._error_event,
        }

    @property
    def finished(self) -> bool:
        """True once ``response.completed`` or ``response.incomplete`` was seen."""
        return self._done

    @property
    def response_id(self) -> Optional[str]:
        """The response's id from ``response.created``, or None before it."""
        return self._response_id

    @property
    def last_sequence_number(self) -> Optional[int]:
        """The ``sequence_number`` of the last event decoded, or None."""
        return self._last_seq

    def resumed(self) -> OpenAIResponsesDecoder:
        """Return a decoder for the same response, resumed after :attr:`last_sequence_number`.

        It keeps the response id and the function calls seen so far, and drops
        replayed events whose ``sequence_number`` is at or before the cursor.
        """
        new = OpenAIResponsesDecoder()
        new._response_id = self._response_id
        new._last_seq = self._last_seq
        new._resume_after = -1 if self._last_seq is None else self._last_seq
        new._calls = {key: call.copy() for key, call in self._calls.items()}
        return new

    def feed(self, message: ServerSentEvent) -> List[Event]:
        """Decode one SSE event.

        Raises:
            ProviderError: an ``error`` or ``response.failed`` event.
            MalformedStreamError: the data is not a JSON object, or a field
                this decoder reads has another type than documented.
        """
        if self._done:
            return []
        data = message.data
        try:
            event = fast_loads(data)
        except ValueError:
            return self._not_json(message)
        if event.__class__ is not dict:
            raise MalformedStreamError(f"stream data is not a JSON object: {excerpt(data)!r}")
        kind = event.get("type") or message.event
        seq = event.get("sequence_number")
        if kind.__class__ is not str or (seq is not None and seq.__class__ is not int):
            self._check_header(event)
        if seq is not None:
            if seq <= self._resume_after:
                return []  # replayed by the server on resume: delivered already
            self._last_seq = seq
        if kind == "response.output_text.delta":  # the hot path
            delta = event.get("delta")
            if delta.__class__ is str:
                return [TextDelta(delta)] if delta else []
        handler = self._handlers.get(kind)
        return [] if handler is None else handler(event)

    def close(self) -> List[Event]:
        """Signal end of input.

        Raises:
            IncompleteStreamError: neither ``response.completed`` nor
                ``response.incomplete`` came.
        """
        if self._done:
            return []
        raise IncompleteStreamError("stream ended before response.completed: the answer may be cut short")

    # -- helpers ------------------------------------------------------------

    @staticmethod
    def _check_header(event: Dict[str, Any]) -> None:
        where = "OpenAI Responses event"
        optional(event, "type", str, where)
        optional(event, "sequence_number", int, where)

    @staticmethod
    def _not_json(message: ServerSentEvent) -> List[Event]:
        data = message.data.strip()
        # Compatible servers may append [DONE] or send blank keep-alives.
        if not data or data == "[DONE]":
            return []
        raise MalformedStreamError(f"invalid JSON in stream data: {excerpt(message.data)!r}")

    def _created(self, event: Dict[str, Any]) -> List[Event]:
        where = _where(event)
        response = field(event, "response", dict, where)
        response_id = optional(response, "id", str, where, "response.")
        if response_id is not None:
            self._response_id = response_id
        model = response.get("model")
        if isinstance(model, str) and 0 < len(model) <= 256:
            self.response_model = model
        return []

    @staticmethod
    def _text(event: Dict[str, Any]) -> List[Event]:
        # Reached only when the hot path in feed() did not find a string delta.
        delta = optional(event, "delta", str, _where(event))
        return [TextDelta(delta)] if delta else []

    @staticmethod
    def _thinking(event: Dict[str, Any]) -> List[Event]:
        delta = optional(event, "delta", str, _where(event))
        return [ThinkingDelta(delta)] if delta else []

    def _item_added(self, event: Dict[str, Any]) -> List[Event]:
        item = _function_call_item(event)
        if item is None:
            return []
        call_id, name, arguments = item
        call = self._register(event, call_id, name)
        arguments = arguments or ""
        if arguments:
            call.parts.append(arguments)
        return [ToolCallDelta(index=call.index, id=call.call_id or None, name=call.name or None, arguments=arguments)]

    def _register(self, event: Dict[str, Any], call_id: str, name: str) -> _FunctionCall:
        call = _FunctionCall(len(self._calls), call_id, name)
        self._calls[self._key(event)] = call
        return call

    @staticmethod
    def _key(event: Dict[str, Any]) -> str:
        # Argument events name their item by item_id; output_index is the
        # fallback for servers that omit ids.
        where = _where(event)
        item = optional(event, "item", dict, where)
        item_id = optional(item, "id", str, where, "item.") if item is not None else optional(event, "item_id", str, where)
        return item_id if item_id else f"#{optional(event, 'output_index', int, where)}"

    def _call_for(self, event: Dict[str, Any]) -> _FunctionCall:
        call = self._calls.get(self._key(event))
        if call is None:
            # Arguments for an item never announced: keep them rather than lose them.
            call = self._register(event, "", "")
        return call

    def _arguments_delta(self, event: Dict[str, Any]) -> List[Event]:
        delta = optional(event, "delta", str, _where(event))
        call = self._call_for(event)
        if not delta or call.done:
            return []
        call.parts.append(delta)
        return [ToolCallDelta(index=call.index, id=None, name=None, arguments=delta)]

    def _arguments_done(self, event: Dict[str, Any]) -> List[Event]:
        arguments = optional(event, "arguments", str, _where(event))
        return self._finish_call(self._call_for(event), arguments)

    def _item_done(self, event: Dict[str, Any]) -> List[Event]:
        # Every finished item goes back as it came in the next request's input
        # (a reasoning item keeps its id and encrypted_content): result.message.
        whole = OutputItem(field(event, "item", dict, _where(event)))
        item = _function_call_item(event)
        if item is None:
            return [whole]
        call_id, name, arguments = item
        call = self._call_for(event)
        call.call_id = call.call_id or call_id
        call.name = call.name or name
        return [*self._finish_call(call, arguments), whole]

    def _finish_call(self, call: _FunctionCall, arguments: Optional[str]) -> List[Event]:
        if call.done:
            return []
        call.done = True
        # The server's final string is authoritative; the streamed parts serve
        # when it is missing.
        raw = arguments if arguments is not None else "".join(call.parts)
        return [tool_call(call.index, call.call_id, call.name, raw)]

    def _completed(self, event: Dict[str, Any]) -> List[Event]:
        return self._end(event, "tool_calls" if self._calls else "stop")

    def _incomplete(self, event: Dict[str, Any]) -> List[Event]:
        where = _where(event)
        response = optional(event, "response", dict, where) or {}
        details = optional(response, "incomplete_details", dict, where, "response.") or {}
        return self._end(event, optional(details, "reason", str, where, "response.incomplete_details.") or "incomplete")

    def _end(self, event: Dict[str, Any], reason: str) -> List[Event]:
        """The terminal event: any call left open, then Usage and Finish."""
        where = _where(event)
        response = optional(event, "response", dict, where) or {}
        usage = optional(response, "usage", dict, where, "response.")
        counted: Optional[Usage] = None
        if usage is not None:  # checked before any state changes
            prefix = "response.usage."
            inputs = optional(usage, "input_tokens_details", dict, where, prefix) or {}
            outputs = optional(usage, "output_tokens_details", dict, where, prefix) or {}
            counted = Usage(
                input_tokens=token_count(usage, "input_tokens", where, prefix),
                output_tokens=token_count(usage, "output_tokens", where, prefix),
                raw=usage,
                cached_input_tokens=token_count(inputs, "cached_tokens", where, prefix + "input_tokens_details."),
                reasoning_tokens=token_count(outputs, "reasoning_tokens", where, prefix + "output_tokens_details."),
            )
        out: List[Event] = []
        for call in sorted(self._calls.values(), key=lambda c: c.index):
            out.extend(self._finish_call(call, None))
        if counted is not None:
            out.append(counted)
        out.append(Finish(reason))
        self._done = True
        return out

    @staticmethod
    def _failed(event: Dict[str, Any]) -> List[Event]:
        where = _where(event)
        response = optional(event, "response", dict, where) or {}
        error = optional(response, "error", dict, where, "response.") or {}
        message = error.get("message")
        code = error.get("code")
        # The stream fails either way: odd types in the error are shown, not refused.
        raise ProviderError(str(message or "the response failed"), type=None if code is None else str(code))

    @staticmethod
    def _error_event(event: Dict[str, Any]) -> List[Event]:
        if isinstance(event.get("error"), dict):
            # Some servers nest it as in Chat Completions.
            nested = error_from_object(event)
            if nested is not None:
                raise nested
        message = event.get("message") or "the server reported an error in the stream"
        code = event.get("code")
        raise ProviderError(str(message), type=None if code is None else str(code))


def _function_call_item(event: Dict[str, Any]) -> Optional[Tuple[str, str, Optional[str]]]:
    """The ``item`` of an output_item event as (call_id, name, arguments or None), if it is a function call."""
    where = _where(event)
    item = field(event, "item", dict, where)
    if optional(item, "type", str, where, "item.") != "function_call":
        return None
    return (
        optional(item, "call_id", str, where, "item.") or optional(item, "id", str, where, "item.") or "",
        optional(item, "name", str, where, "item.") or "",
        optional(item, "arguments", str, where, "item."),
    )


class OpenAIResponsesProvider(BaseProvider):
    """OpenAI Responses API (``POST /responses``), streamed.

    Shares the Chat Completions provider's environment, base URL, headers and
    error format: it is the same host and the same key.
    """

    name = "openai-responses"
    framing = "sse"
    api_key_env: Optional[str] = "OPENAI_API_KEY"
    base_url_env: Optional[str] = "OPENAI_BASE_URL"
    default_base_url = "https://api.openai.com/v1"
    requires_api_key = True
    env_vars = ("OPENAI_API_KEY", "OPENAI_BASE_URL")
    default_model = "gpt-4o-mini"
    output_limit_keys = ("max_output_tokens",)
    fake_format = "openai-responses"
    otel_name = "openai"

    _chat = OpenAIChatProvider()

    def cursor_request(self, spec: RequestSpec, decoder: ProviderDecoder) -> Optional[Tuple[RequestSpec, ProviderDecoder]]:
        """``GET .../responses/{id}?starting_after=N`` and the decoder going on, once the stream told its id and a sequence number."""
        if not isinstance(decoder, OpenAIResponsesDecoder):
            return None
        response_id, sequence = decoder.response_id, decoder.last_sequence_number
        if response_id is None or sequence is None:
            return None
        return self.resume_request(spec, response_id, sequence), decoder.resumed()

    def normalize_base_url(self, base_url: str) -> str:
        """Return ``base_url`` without its trailing slash (``/v1`` is kept as given)."""
        return base_url.rstrip("/")

    def build_request(
        self,
        *,
        base_url: str,
        api_key: Optional[str],
        model: str,
        messages: List[Message],
        params: Mapping[str, Any],
    ) -> RequestSpec:
        """Build ``POST {base_url}/responses`` with the messages as ``input`` and ``stream`` on.

        ``params`` override the defaults; a None value removes a key.
        """
        body: Dict[str, Any] = {"model": model, "input": list(messages), "stream": True}
        body.update(params)
        url = f"{self.normalize_base_url(base_url)}/responses"
        return RequestSpec(method="POST", url=url, headers=self._chat.headers(api_key), json=drop_none(body))

    def resume_request(self, spec: RequestSpec, response_id: str, sequence_number: int) -> RequestSpec:
        """Build ``GET {base_url}/responses/{id}?stream=true&starting_after=N`` from the original request.

        OpenAI replays the events after ``sequence_number`` only for responses
        created with ``background: true`` (which needs ``store``); for others
        the server refuses and the caller must fall back to another resume.
        Decode the answer with :meth:`OpenAIResponsesDecoder.resumed`.

        Raises:
            ValueError: ``spec`` is not a ``.../responses`` request.
        """
        # The caller's extra_query, if any, is kept on the resumed request.
        path, _, query = spec.url.partition("?")
        if not path.endswith("/responses"):
            raise ValueError(f"resume_request needs the original POST .../responses request, not {path!r}")
        base = path[: -len("/responses")]
        url = f"{base}/responses/{quote(response_id, safe='')}?stream=true&starting_after={int(sequence_number)}"
        if query:
            url = f"{url}&{query}"
        # Same key and Accept; no body, so no Content-Type.
        headers = {k: v for k, v in spec.headers.items() if k.lower() != "content-type"}
        return RequestSpec(method="GET", url=url, headers=headers, json=None)

    def new_decoder(self) -> OpenAIResponsesDecoder:
        """Return a fresh decoder for one stream."""
        return OpenAIResponsesDecoder()

    def error_from_body(self, body: str) -> Optional[ProviderError]:
        """Parse ``{"error": {"message", "type", "code"}}`` from a non-2xx body, or return None."""
        return self._chat.error_from_body(body)

    def is_retryable(self, error: ProviderError) -> bool:
        """True for server errors and rate limits (``server_error``, ``rate_limit_exceeded``...)."""
        return self._chat.is_retryable(error)

    def assistant_message(self, turn: Turn) -> List[Dict[str, Any]]:
        """The turn as the Responses API takes it back: its output items, in order (``input + items``).

        Reasoning items keep their ``id`` and ``encrypted_content`` (ask for it
        with ``include=["reasoning.encrypted_content"]`` when ``store`` is
        false): the API refuses a function call sent without the reasoning
        item that preceded it. A server that sent no items gets them built
        from the text and the tool calls.
        """
        items: List[Dict[str, Any]] = [dict(item) for item in turn.items]
        if items:
            # After a replay the caller's ToolCalls keep the first attempt's call ids.
            calls = [item for item in items if item.get("type") == "function_call"]
            for item, call in zip(calls, turn.tool_calls):
                item["call_id"] = call.id or item.get("call_id", "")
            return items
        if turn.text:
            items.append({"type": "message", "role": "assistant",
                          "content": [{"type": "output_text", "text": turn.text, "annotations": []}]})
        items += [{"type": "function_call", "call_id": c.id, "name": c.name, "arguments": c.raw_arguments}
                  for c in turn.tool_calls]
        return items
