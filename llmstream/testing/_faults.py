"""The fault vocabulary: turn a provider's events into a write plan, with the reply's faults in it.

Strategy: :func:`plan` walks the formatter's events once, numbers them
(1-based, the SSE ``id``), encodes each, and yields the bytes to send,
interleaved with two instructions for the writer: :class:`Pause` (stall for a
while) and :class:`Abort` (close the connection now, abruptly). Everything a
fault needs to know about *positions* lives here; everything about *bytes and
sockets* (grouping, splits, drip, pacing, close-after-N-bytes) lives in the
writer.

Position rules (documented on :class:`Reply` too):
  * token faults fire right after the event that carries the N-th text token;
    N=0 fires right before the event carrying the first one. A reply with
    fewer tokens never fires them.
  * several faults at the same N run as: stall, error event, close.
  * ``Last-Event-ID: K`` (or a Responses ``starting_after``) skips events 1..K;
    skipped events count no tokens, so a resumed stream's faults count the
    tokens it actually sends.
  * keep-alives and the oversized line are not events: they have no id and
    shift no numbering.

Must never: touch a socket or a clock (the writer does), or materialise the
event list (streams can be millions of events long).
"""

from __future__ import annotations

from typing import Generator, Iterator, List, NamedTuple, Tuple, Union

from ._formats import Event, StreamContext, encoder, error_events, keepalive, oversized
from ._reply import Reply

__all__ = ["Abort", "Pause", "PlanItem", "plan"]


class Pause(NamedTuple):
    """Stop writing for ``seconds`` (``inf``: until the server stops or the client leaves)."""

    seconds: float


class Abort(NamedTuple):
    """Close the connection now, without finishing the HTTP framing."""

    reason: str


PlanItem = Union[bytes, Pause, Abort]

# Token-position faults, in the order they run when they share a position.
_STALL, _ERROR, _CLOSE = 0, 1, 2


def _token_faults(reply: Reply) -> List[Tuple[int, int]]:
    faults = []
    if reply.stall_after_tokens is not None:
        faults.append((reply.stall_after_tokens[0], _STALL))
    if reply.error_event_at is not None:
        faults.append((reply.error_event_at, _ERROR))
    if reply.close_after_tokens is not None:
        faults.append((reply.close_after_tokens, _CLOSE))
    return sorted(faults)


def _malformed(event: Event) -> Event:
    # A strict prefix of a JSON object or array is never valid JSON; cut on a
    # character boundary so the fault is about JSON, not about UTF-8.
    text = event.data.decode("utf-8")
    return event._replace(data=text[: max(1, len(text) // 2)].encode("utf-8"))


class _Planner:
    """State of one plan: event numbering, token count, pending faults."""

    def __init__(self, reply: Reply, ctx: StreamContext, skip_through: int) -> None:
        le = reply.line_ending.encode()
        self.reply = reply
        self.ctx = ctx
        self.skip_through = skip_through
        self.encode = encoder(ctx.provider, le, reply.event_ids, reply.event_id_prefix)
        self.keepalive = keepalive(ctx.provider, le) if reply.keepalive_every else b""
        self.oversized = (oversized(ctx.provider, reply.oversized_line, le, ctx.model)
                          if reply.oversized_line else b"")
        self.faults = _token_faults(reply)
        self.index = 0  # number of the last event produced (sent or skipped)
        self.sent = 0
        self.tokens = 0

    def fire(self) -> Generator[PlanItem, None, bool]:
        """Yield the actions of every fault due at the current token count; return True to end the stream."""
        while self.faults and self.faults[0][0] <= self.tokens:
            _, kind = self.faults.pop(0)
            if kind == _STALL:
                yield Pause(self.reply.stall_after_tokens[1])  # type: ignore[index]
            elif kind == _ERROR:
                # The provider reports the error in-band, then ends the body
                # cleanly: no end marker, but valid HTTP framing.
                for event in error_events(self.ctx, self.reply.error_event_type, self.reply.error,
                                          next_sequence=self.index):
                    self.index += 1
                    yield self.encode(event, self.index)
                return True
            else:
                yield Abort(f"close after {self.tokens} tokens")
                return True
        return False

    def send(self, event: Event) -> Iterator[PlanItem]:
        """Yield the bytes of one event (plus a keep-alive if one is due)."""
        if self.index == self.reply.malformed_at:
            event = _malformed(event)
        self.sent += 1
        yield self.encode(event, self.index)
        if self.keepalive and not event.end and self.sent % self.reply.keepalive_every == 0:
            yield self.keepalive


def plan(events: Iterator[Event], reply: Reply, ctx: StreamContext, skip_through: int = 0) -> Iterator[PlanItem]:
    """Yield the write plan of one streamed reply.

    Args:
        events: the formatter's events, lazily.
        reply: the reply, for its fault and framing fields.
        ctx: the stream context (provider, model, request number).
        skip_through: the last event id the client already has (0: none).

    Yields:
        ``bytes`` to send, ``Pause`` or ``Abort``. The plan simply ends after
        an in-stream error event: the body then ends cleanly.
    """
    state = _Planner(reply, ctx, skip_through)
    for event in events:
        state.index += 1
        if state.index <= skip_through:
            continue
        if event.end and state.oversized:
            yield state.oversized  # the reply had no text token: put it before the end marker
            state.oversized = b""
        if event.end and reply.omit_end_marker:
            continue
        if event.tokens:
            if state.faults and state.faults[0][0] == 0 and state.tokens == 0:
                if (yield from state.fire()):
                    return
            state.tokens += event.tokens
        yield from state.send(event)
        if event.tokens:
            if state.oversized:
                yield state.oversized
                state.oversized = b""
            if state.faults and state.faults[0][0] <= state.tokens:
                if (yield from state.fire()):
                    return
