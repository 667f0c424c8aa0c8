"""Exactly-once delivery across retries: what was delivered, and what to skip.

Strategy: the worker passes every batch of events through :meth:`Resumer.filter`
before queueing it, so the resumer knows exactly what the caller has been
handed. When an attempt fails after delivering content, :meth:`next_request`
picks how to continue (design.md, "Resume: exactly once"):

  * ``replay``: send the original request again and hold back the new answer
    until it has gone past the delivered text; if it diverges, emit ``Reset``.
  * ``never``: give up with the attempt's error (``partial_text`` set by the
    consumer).

Sans-IO: no sockets, threads or clocks; the worker drives it.
"""

from __future__ import annotations

from typing import Any, List, Optional

from ._events import CONTENT_EVENTS, Event, Reset, TextDelta
from ._exceptions import StreamError
from ._providers._base import Provider, RequestSpec

__all__ = ["Resumer"]


class Resumer:
    """Bookkeeping of one stream's delivered content, across its attempts."""

    def __init__(self, provider: Provider, spec: RequestSpec, mode: str) -> None:
        self._provider = provider
        self._spec = spec
        self._mode = mode
        self._delivered: List[str] = []
        self._delivered_content = False
        self._attempt = 0
        # Text of the current attempt still to be matched against what was delivered.
        self._skip: Optional[str] = None
        self._skip_source = ""

    @property
    def delivered_text(self) -> str:
        """All text handed to the caller so far, over every attempt."""
        return "".join(self._delivered)

    def start_attempt(self, decoder: Any) -> None:
        """Called when an attempt's response is open, with its decoder."""
        self._attempt += 1

    def next_request(self, error: StreamError) -> RequestSpec:
        """The request for the next attempt, or raise when it cannot resume."""
        if not self._delivered_content:
            return self._spec
        if self._mode == "never":
            raise error
        text = self.delivered_text
        self._skip = text
        self._skip_source = text
        return self._spec

    def filter(self, events: List[Event]) -> List[Event]:
        """Drop what the caller already has; record what passes."""
        if self._skip is not None:
            events = self._filter_replay(events)
        for event in events:
            if isinstance(event, TextDelta):
                self._delivered.append(event.text)
                self._delivered_content = True
            elif isinstance(event, CONTENT_EVENTS):
                self._delivered_content = True
        return events

    def _filter_replay(self, events: List[Event]) -> List[Event]:
        out: List[Event] = []
        for event in events:
            skip = self._skip
            if skip is None or not isinstance(event, TextDelta):
                out.append(event)
                continue
            text = event.text
            if skip.startswith(text):
                self._skip = skip[len(text):] or None
                continue
            if text.startswith(skip):
                self._skip = None
                out.append(TextDelta(text[len(skip):]))
                continue
            # The new answer diverges from what the caller already has.
            self._skip = None
            discarded = "".join(self._delivered)
            self._delivered.clear()
            out.append(Reset(attempt=self._attempt, discarded_text=discarded))
            out.append(event)
        return out
