"""The assistant's turn, gathered from a stream's events, for ``StreamResult.message``.

Contract
--------
An agent loop sends the assistant's turn back with the tool results:
``messages + [result.message] + tool_results``. The turn must be in the
provider's own request format and keep what the provider signed (Anthropic
thinking ``signature``, ``redacted_thinking`` data, Responses reasoning
items): the real APIs answer 400 to a thinking block whose signature is
missing or altered.

Strategy: decoders emit :class:`~llmstream._events.OutputItem` when they
close a block or item; :class:`TurnRecorder` keeps them in order with the
length of the text delivered when each arrived. The text itself is not
copied per token (the consumer keeps it once): an item whose ``text_key`` is
set receives, at the end, the text delivered since the previous item. Each
provider turns the resulting :class:`Turn` into its message
(``Provider.assistant_message``).

Retries: the turn is the one the caller was shown. Items of an attempt that
failed are kept when the next attempt goes on from where it stopped
(``last-event-id``, ``continue``: the server does not repeat them) and
dropped when it starts again (``replay``, or a fresh start): the new
attempt's items (with new signatures) replace them. A ``Reset`` drops them
too, as it drops the text. A replay's repeated text is matched and not shown
again, so an item that closes inside it has no known position: a non-text
item there is put at the turn's start (where signed thinking and reasoning
sit); a text block that closed wholly inside the repeated text is the one
case this does not place exactly (its text goes to the next text block).

Adding a provider: its decoder emits an ``OutputItem`` per block or part it
closes, in the request format (a Gemini ``parts`` entry with its
``thoughtSignature``, ``text_key="text"`` for a text part), and the provider
implements ``assistant_message(turn)`` (for Gemini, ``{"role": "model",
"parts": list(turn.items)}``). Nothing here changes.

Sans-IO: no sockets, threads or clocks.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

from ._events import OutputItem, Reset, Retrying, ToolCall

__all__ = ["Turn", "TurnRecorder", "as_messages"]

#: Resume strategies whose next attempt does not repeat the items already received.
_GOES_ON = frozenset({"last-event-id", "continue"})


class Turn:
    """What the assistant's turn was made of, for a provider's ``assistant_message``.

    Attributes:
        text: the whole answer text, as delivered.
        tool_calls: the complete tool calls, in order.
        items: the provider's own blocks or items, in order, text filled in
            (empty for providers that emit none: Chat Completions, Ollama).
    """

    __slots__ = ("text", "tool_calls", "items")

    # A plain slotted class, not a dataclass: ``import llmstream`` stays clear of
    # ``dataclasses`` (see ``_record.py``).
    def __init__(self, text: str, tool_calls: Tuple[ToolCall, ...] = (),
                 items: Tuple[Mapping[str, Any], ...] = ()) -> None:
        self.text = text
        self.tool_calls = tool_calls
        self.items = items


class TurnRecorder:
    """Keeps a stream's :class:`OutputItem` events (and what a retry or Reset does to them)."""

    __slots__ = ("_items", "_replay_at")

    def __init__(self) -> None:
        self._items: List[Tuple[int, OutputItem]] = []
        # The text length when a replay began, while the replay has not gone past it.
        self._replay_at: Optional[int] = None

    def record(self, event: Any, text_length: int) -> None:
        """Take note of one non-text event; ``text_length`` is the text delivered before it."""
        cls = event.__class__
        if cls is OutputItem:
            if self._replay_at is not None:
                if text_length > self._replay_at:
                    self._replay_at = None
                elif event.text_key is None:
                    # A replay's repeated text is matched and swallowed before the
                    # caller sees it, so where this item sat in it is unknown; signed
                    # blocks (thinking, reasoning) come first in a turn: put it there.
                    text_length = 0
            self._items.append((text_length, event))
        elif cls is Reset or (cls is Retrying and event.resume not in _GOES_ON):
            self._items.clear()
            self._replay_at = text_length if cls is Retrying and event.resume == "replay" else None

    def turn(self, text: str, tool_calls: Tuple[ToolCall, ...]) -> Turn:
        """The turn, with each text-taking item given the text delivered since the item before it."""
        items: List[Mapping[str, Any]] = []
        start = 0
        for end, event in self._items:
            item: Mapping[str, Any] = event.item
            if event.text_key is not None:
                filled: Dict[str, Any] = dict(item)
                filled[event.text_key] = text[start:end]
                item = filled
            items.append(item)
            start = end
        return Turn(text=text, tool_calls=tool_calls, items=tuple(items))


def as_messages(message: Any) -> Tuple[Mapping[str, Any], ...]:
    """A provider's ``assistant_message`` result as the items to append to the conversation."""
    if isinstance(message, list):
        return tuple(message)
    return (message,)
