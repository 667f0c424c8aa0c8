"""Exactly-once delivery across retries: what was delivered, and how to go on.

Strategy: every batch of events passes :meth:`Resumer.filter` before the
caller is handed it (``_body.BodyReader``, in whichever thread reads the body), so the resumer knows exactly what the caller has been
handed: text, thinking, and each tool call's id, name and argument fragments.
When an attempt fails after content was delivered, :meth:`Resumer.next_request`
picks how the next attempt continues (design.md, "Resume: exactly once"):

  * ``last-event-id``: reconnect with ``Last-Event-ID`` (the Responses API:
    ``GET .../responses/{id}?starting_after=N``); the server sends only what
    follows, and the SAME provider decoder goes on decoding it, so a tool call
    cut in half is completed, not restarted. The header carries the id's UTF-8
    bytes, as browsers send it (an SSE id may be any text: ``id: résumé-€``).
    An id that cannot be a header value (leading or trailing whitespace, which
    servers strip; control characters) is not sent mangled: this way does not
    apply, and ``auto`` goes on to the next.
  * ``continue``: ask again with the delivered text as the start of the
    assistant's answer (a prefill) and deliver the continuation only. Anthropic
    refuses a prefill ending in whitespace, so that whitespace is held back
    and dropped from the continuation's start if it repeats it. A server may
    ignore the prefill and start its answer again (many OpenAI-compatible
    servers drop ``continue_final_message`` without a word): the continuation
    is held back while it repeats the delivered text's start, and an answer
    that repeats all of it is treated as a replay ("ParParis" never reaches
    the caller). The rule and its one ambiguity: ``_resume_match.ContinuationFilter``.
  * ``replay``: ask again from scratch and hold back the new answer until it
    has gone past what was delivered. If it diverges (or ends before), emit
    ``Reset`` and then the new answer from its beginning (the consumer turns
    ``Reset`` into a ``ResumeError`` for plain text iteration).
  * ``auto``: the first of those the provider and the stream allow; a server
    that refuses a resume request with a 4xx falls back to the next one. The
    order depends on whether the provider's continue is guaranteed
    (``supports_continue == PREFILL_GUARANTEED``: Anthropic's API always
    continues a prefill): then continue comes before replay. Otherwise (an
    extension the server may silently ignore: OpenAI-compatible servers,
    Ollama's chat templates) replay comes first, because a replay that does
    not match is always detected (``Reset``), while a continuation cannot
    always be told from an answer that started again.
  * ``never``: the attempt's error is raised.

Invariants: every piece of text, thinking and tool-call argument reaches the
caller once and in order, or the caller gets a ``Reset``/``ResumeError``;
never a silent duplicate. Tool calls and thinking are never continued (a
prefill cannot hold them): continue does not apply once they were delivered.

The delivered text is kept once (issue 14): the resumer appends it to the
stream's ``SharedText`` (``_textlog.py``), which ``TokenStream.text`` reads;
nothing else keeps it. With ``keep_text=False`` there is no such log, and what
each mode keeps instead is:

  * ``last-event-id`` (and the Responses cursor): nothing; the server sends
    the rest, so it works exactly as with the text.
  * ``replay``: a :class:`~._resume_match.TextDigest` (length and hashes),
    which the replayed answer is checked against; a mismatch is a
    ``ResumeError``, never a ``Reset`` (the new answer's start was not kept).
  * ``continue``: cannot work (the delivered text must be sent as the
    prefill): ``auto`` skips it, and ``resume="continue"`` raises
    ``ResumeError`` when a resume is needed.

Sans-IO: no sockets, threads or clocks; the worker drives it.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Protocol, Tuple, Union

from ._events import Event, Reset, TextDelta, ThinkingDelta, ToolCall, ToolCallDelta
from ._exceptions import APIStatusError, ProviderError, ResumeError, StreamError
from ._providers._base import PREFILL_GUARANTEED, Provider, RequestSpec, StreamDecoder
from ._resume_match import ContinuationFilter, ReplayFilter, TextDigest

__all__ = ["PREFILL_GUARANTEED", "KeptText", "Resumer", "TextLog", "last_event_id_header"]

#: Statuses that mean "the server will not resume this way", as opposed to a
#: passing failure worth retrying the same way.
_REFUSALS = frozenset({400, 404, 405, 410, 422})
_ORDER_PREFILL = ("last-event-id", "continue", "replay")
_ORDER_BEST_EFFORT = ("last-event-id", "replay", "continue")
#: RFC 9110 field-value: visible characters and obs-text (every UTF-8 byte of a
#: non-ASCII character), with spaces and tabs inside only. Checked on the bytes
#: sent, as requests does (``check_header_validity``), so nothing is refused later.
_FIELD_VALUE = re.compile(rb"[\x21-\x7e\x80-\xff](?:[\x20-\x7e\x80-\xff\t]*[\x21-\x7e\x80-\xff])?")
#: Longer ids are not sent: servers refuse header lines past a few KiB (431).
MAX_LAST_EVENT_ID_BYTES = 4096


def _order(mode: str, *, prefill_guaranteed: bool) -> Tuple[str, ...]:
    """The ways to resume, in the order tried."""
    if mode != "auto":
        return (mode,)
    return _ORDER_PREFILL if prefill_guaranteed else _ORDER_BEST_EFFORT


def last_event_id_header(event_id: str) -> Optional[bytes]:
    """The ``Last-Event-ID`` header value for an SSE id, or None if it cannot be one.

    Sent as the id's UTF-8 bytes, as browsers' ``EventSource`` does (WHATWG
    HTML: "set `Last-Event-ID`, last event ID string, encoded as UTF-8"), so
    ``id: résumé-€`` works. An id that is no valid header value (leading or
    trailing whitespace the server would strip, control characters) or is
    overlong cannot name the event: None, and the resumer goes another way.
    """
    if not event_id:
        return None
    try:
        value = event_id.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: not text any server could have sent
        return None
    if len(value) > MAX_LAST_EVENT_ID_BYTES or _FIELD_VALUE.fullmatch(value) is None:
        return None
    return value


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

    def digest(self) -> Optional[TextDigest]:
        """None: this log always keeps its text."""
        return None


class KeptText(Protocol):
    """The delivered text as the stream keeps it (``_textlog.SharedText``): the resumer writes it."""

    def append(self, text: str) -> None:
        """Add a piece at the end."""

    def extend(self, texts: List[str]) -> None:
        """Add pieces at the end."""

    def value(self) -> str:
        """The whole text."""

    def clear(self) -> None:
        """Forget the text (a ``Reset``)."""

    def digest(self) -> Optional[TextDigest]:
        """None while the text is kept; once it is not any more (``to_file()``), its digest."""


class _Call:
    """What the caller has seen of one tool call."""

    __slots__ = ("id", "name", "arguments", "completed")

    def __init__(self) -> None:
        self.id: Optional[str] = None
        self.name: Optional[str] = None
        self.arguments = TextLog()
        self.completed = False


class Resumer:
    """Bookkeeping of one stream's delivered content, and the choice of how to resume."""

    # Slotted: one per stream, hundreds at once (issue 17).
    __slots__ = ("_provider", "_spec", "_mode", "_max_line_length", "_continue_allowed", "_order", "_text",
                 "_thinking", "_calls", "_delivered_content", "_attempt", "_strategy", "_refused", "_filter",
                 "_next_decoder")

    def __init__(self, provider: Provider, spec: RequestSpec, mode: str, *, max_line_length: int,
                 continue_allowed: bool = True, text: Optional[KeptText] = None, keep_text: bool = True) -> None:
        """``text``: the stream's log of the delivered text, which this resumer fills (a
        :class:`TextLog` of its own if None); ``keep_text=False``: none is kept."""
        self._provider = provider
        self._spec = spec
        self._mode = mode
        self._max_line_length = max_line_length
        # The provider says whether its continue is guaranteed (PREFILL_GUARANTEED) or may be ignored.
        support = provider.supports_continue
        self._continue_allowed = continue_allowed and bool(support)
        self._order = _order(mode, prefill_guaranteed=support == PREFILL_GUARANTEED)
        # The stream's own log when it keeps the text (one copy for both);
        # else replay needs only a digest, and the other modes nothing.
        self._text: Union[KeptText, TextDigest, None] = text
        if not keep_text:
            self._text = TextDigest() if mode in ("auto", "replay") else None
        elif text is None:
            self._text = TextLog()
        # Made by the first thinking delta and the first tool call: most streams have neither.
        self._thinking: Optional[TextLog] = None
        self._calls: Optional[Dict[int, _Call]] = None
        self._delivered_content = False
        self._attempt = 0
        self._strategy: Optional[str] = None
        self._refused: Tuple[str, ...] = ()  # the resume strategies a server refused (rare: a tuple)
        self._filter: Optional[Union[ReplayFilter, ContinuationFilter]] = None
        self._next_decoder: Optional[StreamDecoder] = None

    @property
    def delivered_text(self) -> str:
        """The text handed to the caller so far ("" when the stream keeps no text)."""
        delivered = self._delivered()
        return delivered if isinstance(delivered, str) else ""

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
        self._filter = None
        if not self._delivered_content:
            self._strategy = None
            return self._spec
        if self._mode == "never":
            raise error
        for choice in self._order:
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
        self._refused += (self._strategy,)
        return self.next_request(error, decoder)

    def _prepare(self, choice: str, decoder: Optional[StreamDecoder], error: StreamError) -> Optional[RequestSpec]:
        if choice == "last-event-id":
            # An error event inside the stream means the generation itself
            # failed: reconnecting to the same stream would replay the failure.
            # The answer must be asked for again (continue, then replay).
            return None if isinstance(error, ProviderError) else self._prepare_cursor(decoder)
        if choice == "continue":
            return self._prepare_continue()
        kept = self._delivered()
        if kept is None:
            return None  # not reached: a mode with replay keeps at least a digest
        delivered = kept.matcher() if isinstance(kept, TextDigest) else kept
        thinking = self._thinking.value() if self._thinking is not None else ""
        self._filter = ReplayFilter(delivered, thinking, self._calls or {}, self._attempt + 1)
        return self._spec

    def _prepare_cursor(self, decoder: Optional[StreamDecoder]) -> Optional[RequestSpec]:
        if decoder is None:
            return None
        inner = decoder.resume_point()
        cursor = self._provider.cursor_request(self._spec, inner)
        if cursor is not None:
            spec, going_on = cursor
            self._next_decoder = StreamDecoder(going_on, framing=self._provider.framing,
                                               max_line_length=self._max_line_length)
            return spec
        value = last_event_id_header(decoder.last_event_id)
        if value is None:
            return None
        headers: Dict[str, Union[str, bytes]] = dict(self._spec.headers)
        headers["Last-Event-ID"] = value
        self._next_decoder = decoder.resumed_with(inner)
        return self._spec.replace(headers=headers)

    def _prepare_continue(self) -> Optional[RequestSpec]:
        text = self._delivered()
        if not isinstance(text, str):
            return None  # keep_text=False (or to_file()): there is no text to send as the prefill
        if not self._continue_allowed or not text.strip() or self._calls or (self._thinking and self._thinking.length):
            return None
        held_back = self._provider.split_prefill(text)[1]
        spec = self._provider.continue_request(self._spec, text)
        if spec is self._spec:
            return None  # nothing the provider can continue: asking again is a replay, not this
        # A continuation may be the answer starting again: it is matched against the delivered text.
        self._filter = ContinuationFilter(text, held_back, self._attempt + 1)
        return spec

    def _delivered(self) -> Union[str, TextDigest, None]:
        """The delivered text if kept, else its digest (replay only), else None."""
        text = self._text
        if text is None or isinstance(text, TextDigest):
            return text
        digest = text.digest()
        return text.value() if digest is None else digest

    def _why_not(self) -> str:
        if self._mode == "last-event-id":
            return ("the server sent no event ids (or Responses cursor) to resume from, its last id cannot be "
                    "sent as a header value, or the provider reported an error inside the stream "
                    "(reconnecting would replay it)")
        if self._mode == "continue":
            if isinstance(self._delivered(), str):
                return "the provider cannot continue this answer (tool calls or thinking were delivered, or it has no prefill)"
            return ("the stream keeps no text (keep_text=False), and a continuation must send the delivered text "
                    "as its prefill; use resume='replay' or 'last-event-id', or keep_text=True")
        return "no resume strategy applies"

    # -- the events ----------------------------------------------------------------------

    def filter(self, events: List[Event]) -> List[Event]:
        """Drop what the caller already has; record what passes.

        Returns ``events`` itself when no resumed attempt's filter is at work
        (``BodyReader.step`` counts on it), else the filter's new list.
        """
        if self._filter is not None:
            events = self._filter.filter(events)
        if len(events) == 1 and events[0].__class__ is TextDelta:
            # The hottest path: a slow stream's read, one text delta.
            self._delivered_content = True
            if self._text is not None:
                self._text.append(events[0].text)
            return events
        # The hot path: a batch of text deltas, recorded with one call.
        texts = [event.text for event in events if isinstance(event, TextDelta)]
        if texts and len(texts) == len(events):
            self._delivered_content = True
            text = self._text
            if text is not None:
                text.extend(texts)
            return events
        # Otherwise in order: text after a Reset is the new answer's, kept after the clear.
        for event in events:
            cls = event.__class__
            if cls is TextDelta:
                self._delivered_content = True
                if self._text is not None:
                    self._text.append(event.text)  # type: ignore[union-attr]
            elif cls is ThinkingDelta:
                thinking = self._thinking
                if thinking is None:
                    thinking = self._thinking = TextLog()
                thinking.append(event.text)  # type: ignore[union-attr]
                self._delivered_content = True
            elif cls is ToolCallDelta or cls is ToolCall:
                self._record_call(event)
            elif cls is Reset:
                if self._text is not None:
                    self._text.clear()
                if self._thinking is not None:
                    self._thinking.clear()
                if self._calls is not None:
                    self._calls.clear()
        return events

    def _record_call(self, event: Any) -> None:
        self._delivered_content = True
        calls = self._calls
        if calls is None:
            calls = self._calls = {}
        call = calls.setdefault(event.index, _Call())
        if isinstance(event, ToolCall):
            call.completed = True
            call.id = call.id or event.id
            call.name = call.name or event.name
            return
        call.id = call.id or event.id
        call.name = call.name or event.name
        call.arguments.append(event.arguments)
