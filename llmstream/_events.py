"""Typed events a stream produces, and the result it ends with.

These are the unified vocabulary every provider decoder emits and every
consumer sees in ``TokenStream.events()``. They are frozen, slotted dataclasses:
immutable (safe to hand across threads) and cheap to build, because one is
built per token on the hot path.

Content events (they count as progress for the ``idle`` and ``first_token``
timeouts): :class:`TextDelta`, :class:`ThinkingDelta`, :class:`ToolCallDelta`,
:class:`ToolCall`. Bookkeeping events: :class:`Usage`, :class:`Finish`.
Events of the IO shell: :class:`Retrying`, :class:`Reset`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Tuple, Union

__all__ = [
    "TextDelta",
    "ThinkingDelta",
    "ToolCallDelta",
    "ToolCall",
    "Usage",
    "Finish",
    "Retrying",
    "Reset",
    "Event",
    "StreamMetrics",
    "StreamResult",
    "CONTENT_EVENTS",
]


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the answer's text, in order; concatenating them gives the answer."""

    text: str


@dataclass(frozen=True, slots=True)
class ThinkingDelta:
    """A piece of the model's visible reasoning (Anthropic ``thinking_delta``); not part of the answer text."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of a tool call as it streams.

    Attributes:
        index: position of the call in the answer (0 for the first call).
        id: the call's id, on the first fragment only (``None`` afterwards).
        name: the function's name, on the first fragment only.
        arguments: the next fragment of the JSON-encoded arguments (may be "").
    """

    index: int
    id: Optional[str]
    name: Optional[str]
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A complete tool call, emitted once all its fragments have arrived.

    Attributes:
        index: position of the call in the answer.
        id: the provider's id for the call ("" when the provider gives none, as Ollama).
        name: the function's name.
        arguments: the arguments parsed from JSON, or ``None`` if they are not
            valid JSON (for example cut short by ``max_tokens``).
        raw_arguments: the arguments exactly as the model wrote them.
    """

    index: int
    id: str
    name: str
    arguments: Any
    raw_arguments: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts reported by the provider (the latest, cumulative figures).

    Attributes:
        input_tokens: tokens in the prompt, if reported.
        output_tokens: tokens generated, if reported.
        raw: the provider's own usage object, unchanged.
    """

    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def total_tokens(self) -> Optional[int]:
        """``input_tokens + output_tokens`` when both are known."""
        if self.input_tokens is None or self.output_tokens is None:
            return None
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class Finish:
    """The model finished; ``reason`` is the provider's own word for why.

    ``"stop"``/``"end_turn"`` (natural end), ``"length"``/``"max_tokens"``
    (limit reached), ``"tool_calls"``/``"tool_use"``, ``"content_filter"``...
    """

    reason: str


@dataclass(frozen=True, slots=True)
class Retrying:
    """The stream broke or was refused and will be tried again.

    Attributes:
        attempt: the number of the attempt about to start (2 for the first retry).
        delay: seconds waited before it.
        cause: the error that caused the retry.
    """

    attempt: int
    delay: float
    cause: BaseException


@dataclass(frozen=True, slots=True)
class Reset:
    """A replayed answer did not start with the text already delivered.

    Only ``TokenStream.events()`` emits it (plain iteration raises
    ``ResumeError`` instead). Discard ``discarded_text``: the events after this
    one are the new answer from its beginning.
    """

    attempt: int
    discarded_text: str


Event = Union[TextDelta, ThinkingDelta, ToolCallDelta, ToolCall, Usage, Finish, Retrying, Reset]

#: Events that count as progress for the ``first_token`` and ``idle`` timeouts.
CONTENT_EVENTS = (TextDelta, ThinkingDelta, ToolCallDelta, ToolCall)


@dataclass(frozen=True)
class StreamMetrics:
    """Measurements of one stream (times in seconds, from ``time.monotonic``).

    Attributes:
        time_to_first_token: from the first request to the first content, or ``None``.
        duration: from the first request to the end of the stream.
        text_deltas: number of text pieces delivered.
        chunks: number of socket reads that returned data.
        bytes_received: body bytes received over all attempts.
        attempts: HTTP attempts made.
    """

    time_to_first_token: Optional[float] = None
    duration: float = 0.0
    text_deltas: int = 0
    chunks: int = 0
    bytes_received: int = 0
    attempts: int = 0


@dataclass(frozen=True)
class StreamResult:
    """What a finished stream produced.

    Attributes:
        text: the whole answer text, exactly as delivered.
        finish_reason: the provider's finish reason, or ``None``.
        usage: the last :class:`Usage` reported, or ``None``.
        tool_calls: the complete tool calls, in order.
        attempts: HTTP attempts made (1 when nothing was retried).
        metrics: timings and counts for the stream.
    """

    text: str
    finish_reason: Optional[str] = None
    usage: Optional[Usage] = None
    tool_calls: Tuple[ToolCall, ...] = ()
    attempts: int = 1
    metrics: StreamMetrics = field(default_factory=StreamMetrics)
