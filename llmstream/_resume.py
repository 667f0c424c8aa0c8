"""Exactly-once delivery across retries: what was delivered, and how to go on.

Strategy: the worker passes every batch of events through :meth:`Resumer.filter`
before queueing it, so the resumer knows exactly what the caller has been
handed: text, thinking, and each tool call's id, name and argument fragments.
When an attempt fails after content was delivered, :meth:`Resumer.next_request`
picks how the next attempt continues (design.md, "Resume: exactly once"):

  * ``last-event-id``: reconnect with ``Last-Event-ID`` (the Responses API:
    ``GET .../responses/{id}?starting_after=N``); the server sends only what
    follows, and the SAME provider decoder goes on decoding it, so a tool call
    cut in half is completed, not restarted.
  * ``continue``: ask again with the delivered text as the start of the
    assistant's answer (a prefill) and deliver the continuation only. Anthropic
    refuses a prefill ending in whitespace, so that whitespace is held back
    and dropped from the continuation's start if it repeats it.
  * ``replay``: ask again from scratch and hold back the new answer until it
    has gone past what was delivered. If it diverges, emit ``Reset`` and then
    the new answer from its beginning (the consumer turns ``Reset`` into a
    ``ResumeError`` for plain text iteration).
  * ``auto``: the first of those the provider and the stream allow; a server
    that refuses a resume request with a 4xx falls back to the next one.
  * ``never``: the attempt's error is raised.

Invariants: every piece of text, thinking and tool-call argument reaches the
caller once and in order; a replay is matched by offset (``startswith(x, pos)``),
never by slicing, so a long answer is matched in linear time.

Sans-IO: no sockets, threads or clocks; the worker drives it.
"""

from __future__ import annotations


import dataclasses
from typing import Any, Dict, List, Optional

from ._events import Event, Reset, TextDelta, ThinkingDelta, ToolCall, ToolCallDelta
from ._exceptions import APIStatusError, ProviderError, ResumeError, StreamError
from ._providers._base import Provider, RequestSpec, StreamDecoder

__all__ = ["Resumer", "TextLog"]

#: Statuses that mean "the server will not resume this way", as opposed to a
#: passing failure worth retrying the same way.
_REFUSALS = frozenset({400, 404, 405, 410, 422})
_ORDER = ("last-event-id", "continue", "replay")


class TextLog:
    """Text kept compactly: pieces are joined every 4096, so memory stays near the text's size."""

    __slots__ = ("_blocks", "_parts", "length")

    def __init__(self) -> None:
        self._blocks: List[str] = []
        self._parts: List[str] = []
        self.length = 0

    def append(self, text: str) -> None:
        """Add a piece at the end."""
        self._parts.append(text)
        self.length += len(text)
        if len(self._parts) >= 4096:
            self._blocks.append("".join(self._parts))
            self._parts.clear()

    def extend(self, texts: List[str]) -> None:
        """Add pieces at the end."""
        self._parts.extend(texts)
        self.length += sum(map(len, texts))
        if len(self._parts) >= 4096:
            self._blocks.append("".join(self._parts))
            self._parts.clear()

    def value(self) -> str:
        """The whole text."""
        return "".join(self._blocks) + "".join(self._parts)

    def clear(self) -> None:
        """Forget everything."""
        self._blocks.clear()
        self._parts.clear()
        self.length = 0


class _Call:
    """What the caller has seen of one tool call."""

    __slots__ = ("id", "name", "arguments", "completed")

    def __init__(self) -> None:
        self.id: Optional[str] = None
        self.name: Optional[str] = None
        self.arguments = TextLog()
        self.completed = False


class _Matcher:
    """Offset into delivered text that a replayed stream must repeat."""

    __slots__ = ("text", "pos")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def match(self, piece: str) -> Optional[str]:
        """Consume ``piece``; return what goes past the delivered text, or None if it diverges."""
        text, pos = self.text, self.pos
        if pos >= len(text):
            return piece
        if text.startswith(piece, pos):
            self.pos = pos + len(piece)
            return ""
        rest = len(text) - pos
        if piece.startswith(text[pos:]):
            self.pos = len(text)
            return piece[rest:]
        return None

    @property
    def matched(self) -> str:
        return self.text[: self.pos]


class _Replay:
    """Holds back a replayed answer until it goes past what was delivered."""

    def __init__(self, text: str, thinking: str, calls: Dict[int, _Call], attempt: int) -> None:
        self.text = _Matcher(text)
        self.thinking = _Matcher(thinking)
        self.calls = {i: (call, _Matcher(call.arguments.value())) for i, call in calls.items()}
        self.attempt = attempt
        self.diverged = False

    def filter(self, events: List[Event]) -> List[Event]:
        out: List[Event] = []
        for event in events:
            if self.diverged:
                out.append(event)
                continue
            kept = self._one(event)
            if kept is None:
                out.extend(self._reset())
                out.append(event)
            elif kept is not _SKIP:
                out.append(kept)
        return out

    def _one(self, event: Event) -> Any:
        if isinstance(event, TextDelta):
            rest = self.text.match(event.text)
            return None if rest is None else (TextDelta(rest) if rest else _SKIP)
        if isinstance(event, ThinkingDelta):
            rest = self.thinking.match(event.text)
            return None if rest is None else (ThinkingDelta(rest) if rest else _SKIP)
        if isinstance(event, ToolCallDelta) and event.index in self.calls:
            call, matcher = self.calls[event.index]
            rest = matcher.match(event.arguments)
            if rest is None:
                return None
            if not rest:
                return _SKIP
            # The caller saw this call's id and name already: do not announce it twice.
            return ToolCallDelta(event.index, None, None, rest)
        if isinstance(event, ToolCall) and event.index in self.calls:
            call, _ = self.calls[event.index]
            if call.completed:
                return _SKIP
            # Keep the id the caller saw with the first fragments (ids differ per attempt).
            return dataclasses.replace(event, id=call.id or event.id)
        return event

    def _reset(self) -> List[Event]:
        """The new answer diverged: tell the caller, then give what it matched so far."""
        self.diverged = True
        out: List[Event] = [Reset(attempt=self.attempt, discarded_text=self.text.text)]
        if self.thinking.matched:
            out.append(ThinkingDelta(self.thinking.matched))
        if self.text.matched:
            out.append(TextDelta(self.text.matched))
        for index, (call, matcher) in sorted(self.calls.items()):
            if matcher.matched:
                out.append(ToolCallDelta(index, call.id, call.name, matcher.matched))
        return out


_SKIP: Any = object()


class Resumer:
    """Bookkeeping of one stream's delivered content, and the choice of how to resume."""

    def __init__(self, provider: Provider, spec: RequestSpec, mode: str, *, max_line_length: int,
                 continue_allowed: bool = True) -> None:
        self._provider = provider
        self._spec = spec
        self._mode = mode
        self._max_line_length = max_line_length
        self._continue_allowed = continue_allowed and bool(getattr(provider, "supports_continue", False))
        # Only replay and continue need the delivered text itself.
        self._keep_text = mode in ("auto", "continue", "replay")
        self._text = TextLog()
        self._thinking = TextLog()
        self._calls: Dict[int, _Call] = {}
        self._delivered_content = False
        self._attempt = 0
        self._strategy: Optional[str] = None
        self._refused: List[str] = []
        self._replay: Optional[_Replay] = None
        self._skip_prefix: Optional[_Matcher] = None
        self._next_decoder: Optional[StreamDecoder] = None

    @property
    def delivered_text(self) -> str:
        """The text handed to the caller so far (when the mode keeps it)."""
        return self._text.value()

    @property
    def strategy(self) -> Optional[str]:
        """How the current attempt resumed (None for a fresh start)."""
        return self._strategy

    def new_decoder(self) -> StreamDecoder:
        """The decoder for the next attempt: fresh, or continuing the last one."""
        self._attempt += 1
        decoder, self._next_decoder = self._next_decoder, None
        if decoder is None:
            decoder = StreamDecoder(self._provider.new_decoder(), framing=self._provider.framing,
                                    max_line_length=self._max_line_length)
        return decoder

    # -- choosing the next request ---------------------------------------------------

    def next_request(self, error: StreamError, decoder: Optional[StreamDecoder]) -> RequestSpec:
        """The request for the next attempt; raises ``error`` or ``ResumeError`` when it cannot resume."""
        self._replay = None
        self._skip_prefix = None
        if not self._delivered_content:
            self._strategy = None
            return self._spec
        if self._mode == "never":
            raise error
        choices = _ORDER if self._mode == "auto" else (self._mode,)
        for choice in choices:
            if choice in self._refused:
                continue
            spec = self._prepare(choice, decoder, error)
            if spec is not None:
                self._strategy = choice
                return spec
        raise ResumeError(f"cannot resume with resume={self._mode!r}: {self._why_not()} (after: {error.message})")

    def fallback(self, error: StreamError, decoder: Optional[StreamDecoder]) -> Optional[RequestSpec]:
        """After a server refused the current resume request: the next way to resume, or None."""
        if self._strategy in (None, "replay") or not isinstance(error, APIStatusError):
            return None
        if error.status_code not in _REFUSALS or self._mode != "auto":
            return None
        self._refused.append(self._strategy)
        return self.next_request(error, decoder)

    def _prepare(self, choice: str, decoder: Optional[StreamDecoder], error: StreamError) -> Optional[RequestSpec]:
        if choice == "last-event-id":
            # An error event inside the stream means the generation itself
            # failed: reconnecting to the same stream would replay the failure.
            # The answer must be asked for again (continue, then replay).
            return None if isinstance(error, ProviderError) else self._prepare_cursor(decoder)
        if choice == "continue":
            return self._prepare_continue()
        self._replay = _Replay(self._text.value(), self._thinking.value(), self._calls, self._attempt + 1)
        return self._spec

    def _prepare_cursor(self, decoder: Optional[StreamDecoder]) -> Optional[RequestSpec]:
        if decoder is None:
            return None
        inner: Any = decoder.resume_point()
        response_id = getattr(inner, "response_id", None)
        sequence = getattr(inner, "last_sequence_number", None)
        if response_id is not None and sequence is not None and hasattr(self._provider, "resume_request"):
            spec: RequestSpec = self._provider.resume_request(self._spec, response_id, sequence)
            self._next_decoder = StreamDecoder(inner.resumed(), framing="sse", max_line_length=self._max_line_length)
            return spec
        if not decoder.last_event_id:
            return None
        headers = dict(self._spec.headers)
        headers["Last-Event-ID"] = decoder.last_event_id
        self._next_decoder = decoder.resumed_with(inner)
        return dataclasses.replace(self._spec, headers=headers)

    def _prepare_continue(self) -> Optional[RequestSpec]:
        text = self._text.value()
        if not self._continue_allowed or not text.strip() or self._calls or self._thinking.length:
            return None
        split = getattr(self._provider, "split_prefill", None)
        held_back = split(text)[1] if split is not None else ""
        if held_back:
            self._skip_prefix = _Matcher(held_back)
        spec: RequestSpec = self._provider.continue_request(self._spec, text)  # type: ignore[attr-defined]
        return spec

    def _why_not(self) -> str:
        if self._mode == "last-event-id":
            return ("the server sent no event ids (or Responses cursor) to resume from, or the provider "
                    "reported an error inside the stream (reconnecting would replay it)")
        if self._mode == "continue":
            return "the provider cannot continue this answer (tool calls or thinking were delivered, or it has no prefill)"
        return "no resume strategy applies"

    # -- the events ----------------------------------------------------------------------

    def filter(self, events: List[Event]) -> List[Event]:
        """Drop what the caller already has; record what passes."""
        if self._replay is not None:
            events = self._replay.filter(events)
        if self._skip_prefix is not None:
            events = self._skip_held_back(events)
        # The hot path: a batch of text deltas, recorded with one call.
        texts = [event.text for event in events if isinstance(event, TextDelta)]
        if texts:
            self._delivered_content = True
            if self._keep_text:
                self._text.extend(texts)
            if len(texts) == len(events):
                return events
        for event in events:
            cls = event.__class__
            if cls is TextDelta:
                continue
            elif cls is ThinkingDelta:
                self._thinking.append(event.text)  # type: ignore[union-attr]
                self._delivered_content = True
            elif cls is ToolCallDelta or cls is ToolCall:
                self._record_call(event)
            elif cls is Reset:
                self._text.clear()
                self._thinking.clear()
                self._calls.clear()
        return events

    def _record_call(self, event: Any) -> None:
        self._delivered_content = True
        call = self._calls.setdefault(event.index, _Call())
        if isinstance(event, ToolCall):
            call.completed = True
            call.id = call.id or event.id
            call.name = call.name or event.name
            return
        call.id = call.id or event.id
        call.name = call.name or event.name
        call.arguments.append(event.arguments)

    def _skip_held_back(self, events: List[Event]) -> List[Event]:
        """Drop, from the continuation's start, the whitespace the prefill held back."""
        matcher = self._skip_prefix
        out: List[Event] = []
        for index, event in enumerate(events):
            if matcher is None or not isinstance(event, TextDelta):
                out.append(event)
                continue
            rest = matcher.match(event.text)
            if rest is None:
                # The continuation did not repeat the whitespace: deliver it as it is.
                matcher = None
                out.append(event)
            elif matcher.pos >= len(matcher.text):
                matcher = None
                if rest:
                    out.append(TextDelta(rest))
        self._skip_prefix = matcher
        return out


