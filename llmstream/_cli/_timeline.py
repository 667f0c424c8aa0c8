"""The debug report's timeline: every event with its time, long runs of deltas collapsed.

Strategy: :class:`Timeline` records events as the caller receives them, with
the milliseconds since the stream started. Deltas (text, thinking, tool-call
fragments) can number millions, so they are not all kept: the first
:data:`HEAD` deltas of the stream are, and each *run* of consecutive deltas
keeps only its last :data:`RUN_TAIL`. That is enough to print, at the end,
every delta when there are at most :data:`COLLAPSE_ABOVE`, and otherwise the
first :data:`HEAD` and the last :data:`TAIL` with ``... N more text deltas ...``
in place of the rest; every other event (retries, usage, finish...) is always
shown where it happened. Memory stays bounded by the number of non-delta
events, whatever the length of the answer.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, List, Optional, Tuple, Union

from .._events import Event, Finish, OutputItem, Reset, Retrying, TextDelta, ThinkingDelta, ToolCall, ToolCallDelta, Usage
from ._session import one_line

__all__ = ["Timeline", "describe", "short", "COLLAPSE_ABOVE", "HEAD", "TAIL"]

#: Deltas shown at the start and at the end of a long stream.
HEAD = 20
TAIL = 20
#: Streams with more deltas than this have their middle collapsed.
COLLAPSE_ABOVE = 50
#: Deltas a run keeps: enough for the last TAIL, and for every delta past HEAD when nothing is collapsed.
RUN_TAIL = COLLAPSE_ABOVE - HEAD
#: Characters of a text shown before it is cut.
TEXT_WIDTH = 40

_DELTAS = (TextDelta, ThinkingDelta, ToolCallDelta)
_LABELS = {TextDelta: "text deltas", ThinkingDelta: "thinking deltas", ToolCallDelta: "tool-call deltas"}

Entry = Tuple[float, Union[Event, str]]


def short(text: str) -> str:
    """``repr`` of ``text``, cut to a sane width with its full length said."""
    if len(text) <= TEXT_WIDTH:
        return repr(text)
    return f"{text[:TEXT_WIDTH]!r}... ({len(text)} chars)"


def item_kind(item: Any) -> Any:
    """An output item's kind: its ``type``, else (a part without one) its first key but a signature, or ``thought``."""
    if item.get("type") is not None:
        return item["type"]
    if item.get("thought") is True:
        return "thought"
    return next((key for key in item if key != "thoughtSignature"), None)


def describe(event: Union[Event, str]) -> str:
    """One line for one event (a ``str`` is a line of the CLI's own, such as the end)."""
    if isinstance(event, str):
        return event
    if isinstance(event, (TextDelta, ThinkingDelta)):
        return f"{type(event).__name__} {short(event.text)}"
    if isinstance(event, ToolCallDelta):
        first = "" if event.id is None and event.name is None else f" id={event.id!r} name={event.name!r}"
        return f"ToolCallDelta index={event.index}{first} arguments={short(event.arguments)}"
    if isinstance(event, ToolCall):
        return f"ToolCall index={event.index} id={event.id!r} name={event.name!r} arguments={short(event.raw_arguments)}"
    if isinstance(event, Retrying):
        cause = event.cause
        return (f"Retrying attempt={event.attempt} delay={event.delay * 1000:.0f} ms "
                f"cause={type(cause).__name__}: {one_line(str(cause))}")
    if isinstance(event, Reset):
        return f"Reset attempt={event.attempt} discarded {len(event.discarded_text)} chars"
    if isinstance(event, Usage):
        return f"Usage input_tokens={event.input_tokens} output_tokens={event.output_tokens}"
    if isinstance(event, Finish):
        return f"Finish reason={event.reason!r}"
    if isinstance(event, OutputItem):  # the block's content (a signature, whole texts) is not shown
        return f"OutputItem type={str(item_kind(event.item))[:40]!r}"
    return repr(event)  # an event this CLI does not know yet


@dataclass
class _Run:
    """Consecutive deltas: where they start among all deltas, how many, which kinds, the last few."""

    start: int
    count: int = 0
    kinds: "Counter[type]" = field(default_factory=Counter)
    tail: Deque[Entry] = field(default_factory=lambda: deque(maxlen=RUN_TAIL))


class Timeline:
    """Events with the time they reached the caller, relative to the start.

    Args:
        start: the stream's start on ``clock`` (default: now).
        clock: the monotonic clock (injected by tests).
    """

    def __init__(self, start: Optional[float] = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._start = clock() if start is None else start
        self._items: List[Union[_Run, Entry]] = []
        self._head: List[Entry] = []
        self.deltas = 0

    def add(self, event: Union[Event, str]) -> None:
        """Record an event (or a line of the CLI's own) now."""
        entry = (self._clock() - self._start, event)
        if not isinstance(event, _DELTAS):
            self._items.append(entry)
            return
        last = self._items[-1] if self._items else None
        run = last if isinstance(last, _Run) else _Run(start=self.deltas)
        if run is not last:
            self._items.append(run)
        if self.deltas < HEAD:
            self._head.append(entry)
        run.count += 1
        run.kinds[type(event)] += 1
        run.tail.append(entry)
        self.deltas += 1

    def lines(self) -> List[str]:
        """The timeline, one line per event: ``    12.3 ms  TextDelta 'Hello'``."""
        out: List[str] = []
        for item in self._items:
            entries = self._shown(item) if isinstance(item, _Run) else [item]
            out.extend(e if isinstance(e, str) else f"{e[0] * 1000:10.1f} ms  {describe(e[1])}" for e in entries)
        return out

    def _shown(self, run: _Run) -> List[Union[Entry, str]]:
        # Deltas are numbered over the whole stream; this run holds [start, end).
        start, end = run.start, run.start + run.count
        head: List[Entry] = self._head[start:min(end, HEAD)]
        rest_start = max(start, HEAD)
        suffix_start = rest_start if self.deltas <= COLLAPSE_ABOVE else max(rest_start, self.deltas - TAIL)
        # Past HEAD, every shown delta is among the run's last RUN_TAIL (see the module docstring).
        tail = list(run.tail)
        offset = end - len(tail)
        suffix = [tail[i - offset] for i in range(suffix_start, end)]
        if suffix_start <= rest_start:
            return [*head, *suffix]
        hidden = Counter(run.kinds)
        for _, event in head + suffix:
            hidden[type(event)] -= 1
        counts = ", ".join(f"{n} more {_LABELS[kind]}" for kind, n in hidden.items() if n)
        return [*head, f"{'':13}... {counts} ...", *suffix]
