"""The output length guard: cut an answer at ``max_output_chars`` characters.

Strategy: count the characters of content as it is handed to the caller
(text, thinking and tool-call arguments together). The event that would pass
the limit is cut to fit (text, thinking) or dropped whole (a tool-call
fragment: half a call's JSON would help no one), and a
``Finish("max_output_chars")`` ends the answer. A ``Reset`` starts the count
again, since the caller discards the old answer.

Never: IO, clocks or threads. The worker closes the socket when this says the
limit was reached.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from ._events import Finish, Reset, TextDelta, ThinkingDelta, ToolCallDelta

__all__ = ["OutputGuard", "FINISH_REASON"]

#: The finish reason of an answer cut by the guard.
FINISH_REASON = "max_output_chars"


class OutputGuard:
    """Counts delivered output characters and cuts the answer at ``limit``."""

    __slots__ = ("limit", "chars")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chars = 0

    def filter(self, events: List[Any]) -> Tuple[List[Any], bool]:
        """Keep events up to the limit; True when the limit was passed (the answer ends here)."""
        limit = self.limit
        kept: List[Any] = []
        for event in events:
            cls = event.__class__
            if cls is Reset:
                self.chars = 0
            elif cls is TextDelta or cls is ThinkingDelta or cls is ToolCallDelta:
                text = event.arguments if cls is ToolCallDelta else event.text
                room = limit - self.chars
                if len(text) > room:
                    if room > 0 and cls is not ToolCallDelta:
                        kept.append(TextDelta(text[:room]) if cls is TextDelta else ThinkingDelta(text[:room]))
                    self.chars = limit
                    kept.append(Finish(FINISH_REASON))
                    return kept, True
                self.chars += len(text)
            kept.append(event)
        return kept, False
