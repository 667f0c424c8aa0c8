"""Reading one attempt's body: one socket read at a time, from whichever thread waits for it.

Strategy: :class:`BodyReader` owns what one read involves — the deadline of
the next byte, the read itself, the decoder, the metrics, and the filters that
decide what the caller is handed (exactly-once resume, ``max_output_chars``).
It is driven one :meth:`~BodyReader.step` at a time and does not know which
thread drives it: the worker reads ahead while the caller has not started
consuming, then lends the body to the caller, whose ``next()`` runs the steps
itself (see ``_attempt.py`` and ``_lending.py``). One socket wake-up per token instead of two is
what lets hundreds of slow streams share one process (issue 17).

Deadlines (design.md, Timeout):
  * until the first content, the next read waits at most until ``first_token``;
  * after content, the idle clock restarts at the *start of the step that
    follows* the step that delivered it — when the worker's ``put`` returned,
    or when the caller asked for more — so time the caller spends in its own
    loop body never counts as server idleness, and steps that deliver nothing
    (keep-alive comments, pings) never restart it;
  * ``total`` caps every wait.
A deadline that has passed while nobody read still lets bytes already
received through: the read is then a non-blocking poll, and only an empty
socket is a timeout.

IO shell: the socket is behind ``_transport.OpenResponse``; this module does
no thread coordination (that is ``_worker.py``'s, ``_lending.py``'s and ``_queue.py``'s).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, List, Optional, Tuple

from ._events import CONTENT_EVENTS, Event, Finish, Reset, TextDelta, Usage
from ._exceptions import StreamTimeoutError
from ._histogram import FOLD_EVERY
from ._output_guard import OutputGuard
from ._providers._base import StreamDecoder
from ._resume import Resumer
from ._stats import WorkerStats
from ._transport import OpenResponse

__all__ = ["BodyReader", "time_left"]

#: How long the last read waits once a deadline has passed: bytes already
#: received are taken, nothing more is waited for.
LAST_POLL = 0.001

logger = logging.getLogger("llmstream")

# Module-level names for the per-read step: one global lookup each, not a
# module's and then its attribute (issue 17).
_monotonic = time.monotonic
_INF = math.inf


def time_left(deadline: float, kind: str, total_deadline: float, now: float) -> Tuple[Optional[float], str]:
    """Seconds until the nearer of ``deadline`` and ``total_deadline`` (None: no limit), and its kind.

    Raises:
        StreamTimeoutError: the nearer deadline has passed.
    """
    if total_deadline <= deadline:
        deadline, kind = total_deadline, "total"
    if deadline == math.inf:
        return None, kind
    left = deadline - now
    if left <= 0:
        raise StreamTimeoutError(f"{kind} timeout: no content within the limit", kind=kind)
    return left, kind


def _has_content(events: List[Event]) -> bool:
    for event in events:
        if isinstance(event, CONTENT_EVENTS):
            return True
    return False


class BodyReader:
    """One attempt's body, read one step at a time by one thread at a time."""

    # Slotted: one per attempt, hundreds at once (issue 17).
    __slots__ = ("response", "decoder", "_stats", "_resumer", "_guard", "_idle", "_total_deadline", "_deadline",
                 "_kind", "_content_handed", "_sizes", "_read_times", "_gaps", "_debug", "_plain", "done", "limited")

    def __init__(
        self,
        response: OpenResponse,
        decoder: StreamDecoder,
        *,
        stats: WorkerStats,
        resumer: Resumer,
        guard: Optional[OutputGuard],
        idle: Optional[float],
        first_deadline: float,
        total_deadline: float,
    ) -> None:
        self.response = response
        self.decoder = decoder
        self._stats = stats
        self._resumer = resumer
        self._guard = guard
        self._idle = idle if idle is not None else math.inf  # inf + now is inf: no idle limit
        self._total_deadline = total_deadline
        self._deadline, self._kind = first_deadline, "first_token"
        self._content_handed = False  # the last step handed content over: restart the idle clock
        # The per-read metrics are appended to their histograms' pending lists
        # directly (a C call each, not a Python one: issue 17), folded every FOLD_EVERY reads.
        self._sizes, self._read_times, self._gaps = stats.chunk_sizes.pending, stats.read_times.pending, stats.gaps.pending
        # Whether each event is logged is decided once per attempt, not per read.
        self._debug = logger.isEnabledFor(logging.DEBUG)
        # Neither an output limit nor event logging: a lone text delta needs only the resume filter.
        self._plain = guard is None and not self._debug
        #: True once the body needs no more reads (end marker, end of input, or the output limit).
        self.done = False
        #: True when ``max_output_chars`` ended the answer: the rest of the body is not read.
        self.limited = False

    def step(self) -> List[Event]:
        """Read once (blocking until bytes, the end, or a deadline) and return the events to hand over.

        An error the decoder met after some events is raised by the next step,
        once those events were handed over.

        Raises:
            StreamError: timeouts, broken or malformed streams, provider errors.
            Cancelled: the stream was closed.
        """
        decoder = self.decoder
        if decoder.error is not None:
            raise decoder.error
        stats = self._stats
        before = _monotonic()
        if self._content_handed:
            self._content_handed = False
            stats.ready_at = before
            self._deadline = deadline = before + self._idle
            self._kind = why = "idle"
        else:
            deadline, why = self._deadline, self._kind
        # time_left(), inline (once per read): the nearer of the step's deadline and total.
        if self._total_deadline <= deadline:
            deadline, why = self._total_deadline, "total"
        left: Optional[float] = None
        if deadline != _INF:
            left = deadline - before
            if left <= 0:
                # Nobody read while the deadline passed (a caller that started
                # iterating late): what already arrived still counts, so poll
                # once; an empty socket then raises the timeout from the read.
                left = LAST_POLL
        data = self.response.read(left, why, before)
        if not data:
            events = self._deliverable(decoder.close())  # raises if the end marker is missing
            # A failure after the last events is raised by the next step.
            self.done = decoder.error is None
            return events
        arrived = _monotonic()
        sizes = self._sizes
        sizes.append(len(data))
        self._read_times.append(arrived - before)
        if len(sizes) >= FOLD_EVERY:
            stats.fold()  # the gaps too: they are at most one per read
        events = decoder.feed(data)
        if not events:
            return events
        # The usual step of a slow stream (one token) first: no loop for it.
        lone = events[0].__class__ is TextDelta and len(events) == 1
        if lone or _has_content(events):
            if stats.first_content_at is None:
                stats.first_content_at = arrived
            else:
                self._gaps.append(arrived - stats.ready_at)
            self._content_handed = True
        if decoder.finished and decoder.error is None:
            self.done = True
        if lone and self._plain:
            # _deliverable() for a slow stream's every read, inline.
            passed = self._resumer.filter(events)
            if passed is events:  # the resume filter passed it unchanged
                stats.text_deltas += 1
                return events
            return self._handed(passed)  # a replay's Reset, part of the text, or nothing
        return self._deliverable(events)

    def _deliverable(self, events: List[Any]) -> List[Event]:
        """What the caller is handed of ``events``: nothing twice, nothing past ``max_output_chars``."""
        return self._handed(self._resumer.filter(events))

    def _handed(self, events: List[Any]) -> List[Event]:
        """``events`` past the resume filter: cut at ``max_output_chars``, counted, logged."""
        if not events:
            return events
        if self._guard is not None:
            events, limited = self._guard.filter(events)
            if limited:
                logger.info("max_output_chars=%d reached: the stream ends here", self._guard.limit)
                self.done = self.limited = True
        stats = self._stats
        if len(events) == 1 and events[0].__class__ is TextDelta:
            stats.text_deltas += 1  # a slow stream's every read: no loop
        else:
            for event in events:
                cls = event.__class__
                if cls is TextDelta:
                    stats.text_deltas += 1
                elif cls is Usage or cls is Finish or cls is Reset:
                    stats.note(event)  # bookkeeping events only: nothing more per text token
        if self._debug:
            for event in events:
                logger.debug("event %r", event)
        return events
