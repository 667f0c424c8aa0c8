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
    "OutputItem",
    "Finish",
    "Retrying",
    "Reset",
    "Event",
    "Distribution",
    "StreamMetrics",
    "StreamResult",
    "StreamReport",
    "AttemptReport",
    "Cost",
    "MonitorSnapshot",
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

    Every figure is as the provider reports it, ``None`` when it reports none:
    ``input_tokens`` is the provider's own prompt count (OpenAI's includes the
    cached tokens; Anthropic's ``input_tokens`` excludes cache reads and
    writes), and ``output_tokens`` includes the reasoning tokens.

    Attributes:
        input_tokens: tokens in the prompt, if reported.
        output_tokens: tokens generated, if reported.
        raw: the provider's own usage object, unchanged.
        cached_input_tokens: prompt tokens read from the provider's prompt
            cache (OpenAI ``prompt_tokens_details.cached_tokens``, DeepSeek
            ``prompt_cache_hit_tokens``, Responses
            ``input_tokens_details.cached_tokens``, Anthropic
            ``cache_read_input_tokens``).
        cache_write_tokens: prompt tokens written to the cache (Anthropic
            ``cache_creation_input_tokens``; OpenRouter
            ``prompt_tokens_details.cache_write_tokens``).
        reasoning_tokens: output tokens spent on hidden reasoning (OpenAI
            ``completion_tokens_details.reasoning_tokens``, Responses
            ``output_tokens_details.reasoning_tokens``).
    """

    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    raw: Mapping[str, Any] = field(default_factory=dict)
    cached_input_tokens: Optional[int] = None
    cache_write_tokens: Optional[int] = None
    reasoning_tokens: Optional[int] = None

    @property
    def total_tokens(self) -> Optional[int]:
        """``input_tokens + output_tokens`` when both are known."""
        if self.input_tokens is None or self.output_tokens is None:
            return None
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class OutputItem:
    """A finished piece of the assistant's turn, in the provider's own request format.

    Emitted when the provider closes a block or item: an Anthropic ``thinking``
    block with its ``signature``, a ``redacted_thinking`` block, a ``text`` or
    ``tool_use`` block; a Responses output item (``reasoning`` with its
    ``encrypted_content``, ``message``, ``function_call``...). The stream keeps
    them to build ``StreamResult.message``, so signed thinking survives an
    agent loop. Bookkeeping, not content: it does not count as progress.

    Attributes:
        item: the block or item, as the provider's API takes it back.
        text_key: when set, the key of ``item`` that receives the answer
            text delivered since the previous item (the decoder does not keep
            the text itself: that would cost on every token).
    """

    item: Mapping[str, Any]
    text_key: Optional[str] = None


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
        resume: how the next attempt goes on from what was delivered:
            ``"last-event-id"``, ``"continue"``, ``"replay"``, or ``None``
            when it starts afresh (nothing had been delivered).
    """

    attempt: int
    delay: float
    cause: BaseException
    resume: Optional[str] = None


@dataclass(frozen=True, slots=True)
class Reset:
    """A replayed answer did not start with the text already delivered.

    Only ``TokenStream.events()`` emits it (plain iteration raises
    ``ResumeError`` instead). Discard ``discarded_text``: the events after this
    one are the new answer from its beginning.
    """

    attempt: int
    discarded_text: str


Event = Union[TextDelta, ThinkingDelta, ToolCallDelta, ToolCall, Usage, OutputItem, Finish, Retrying, Reset]

#: Events that count as progress for the ``first_token`` and ``idle`` timeouts.
CONTENT_EVENTS = (TextDelta, ThinkingDelta, ToolCallDelta, ToolCall)


@dataclass(frozen=True)
class Distribution:
    """Summary of a series of measurements (seconds or bytes); ``None`` when empty.

    Percentiles come from a histogram with 2% wide buckets (exact within 2%,
    always between ``min`` and ``max``).

    Attributes:
        count: how many values were recorded.
        total: their sum.
        min, p50, p90, p99, max: the smallest value, the percentiles, the largest.
    """

    count: int = 0
    total: float = 0.0
    min: Optional[float] = None
    p50: Optional[float] = None
    p90: Optional[float] = None
    p99: Optional[float] = None
    max: Optional[float] = None

    @property
    def mean(self) -> Optional[float]:
        """``total / count``, or ``None`` when empty."""
        return self.total / self.count if self.count else None


@dataclass(frozen=True)
class StreamMetrics:
    """Measurements of one stream (times in seconds, from ``time.monotonic``).

    Attributes:
        time_to_first_token: from the start of the stream to the first content, or ``None``.
        duration: from the start of the stream to its end (or to now, while it runs).
        text_deltas: text pieces received.
        output_tokens: output tokens as the provider reported them, or ``None``.
        chunks: socket reads that returned data.
        bytes_received: body bytes received over all attempts.
        attempts: HTTP attempts made.
        errors: the type name of each error met, in order: those that were
            retried, then the final one if the stream failed.
        inter_token_gap: the waits between arrivals of content, measured in
            the worker as the bytes arrive. Content that arrives in one read
            counts once, and time the worker spent blocked on a slow caller
            is left out, so this describes the server, not the consumer.
        chunk_size: bytes per socket read.
        read_time: seconds each socket read that returned data waited.
        queued: seconds spent waiting for a slot or the rate limiter before
            the first request (``Client(max_concurrent=..., rate_limit=...)``).
        wasted_output_tokens: output tokens the provider generated (and bills)
            that the caller did not keep: those of an attempt that failed and
            was asked again from scratch (a replay or a fresh retry), and those
            a ``Reset`` discarded. Reported counts where the provider reported
            them, else text pieces. 0 when nothing was wasted.
    """

    time_to_first_token: Optional[float] = None
    duration: float = 0.0
    text_deltas: int = 0
    output_tokens: Optional[int] = None
    chunks: int = 0
    bytes_received: int = 0
    attempts: int = 0
    errors: Tuple[str, ...] = ()
    inter_token_gap: Distribution = field(default_factory=Distribution)
    chunk_size: Distribution = field(default_factory=Distribution)
    read_time: Distribution = field(default_factory=Distribution)
    queued: float = 0.0
    wasted_output_tokens: int = 0

    @property
    def tokens(self) -> int:
        """Output tokens as reported by the provider, or else the number of text pieces."""
        return self.output_tokens if self.output_tokens is not None else self.text_deltas

    @property
    def tokens_per_second(self) -> Optional[float]:
        """``tokens`` over the time from the first token to the end (generation speed), or ``None``."""
        if self.time_to_first_token is None:
            return None
        generating = self.duration - self.time_to_first_token
        return self.tokens / generating if generating > 0 and self.tokens else None

    @property
    def retries(self) -> int:
        """Attempts beyond the first."""
        return max(0, self.attempts - 1)


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
        message: the assistant's turn in the provider's own request format,
            signed thinking and tool calls included, so an agent loop can send
            ``messages + [result.message] + tool_results``: a Chat Completions
            ``{"role": "assistant", "content", "tool_calls"}``, an Anthropic
            ``{"role": "assistant", "content": [blocks]}``, an Ollama message;
            for the Responses API the list of output items
            (``input + result.message``).
        messages: the same turn as the items to append to the conversation
            whatever the provider: ``(message,)``, or the Responses items.
        cost: what the stream cost, over every attempt (a :class:`Cost`), or
            ``None`` when the client has no ``pricing`` for the model.
    """

    text: str
    finish_reason: Optional[str] = None
    usage: Optional[Usage] = None
    tool_calls: Tuple[ToolCall, ...] = ()
    attempts: int = 1
    metrics: StreamMetrics = field(default_factory=StreamMetrics)
    message: Any = None
    messages: Tuple[Mapping[str, Any], ...] = ()
    cost: Optional["Cost"] = None


@dataclass(frozen=True)
class Cost:
    """What a stream cost in US dollars, from the client's ``Pricing``, over every attempt.

    Attributes:
        total: the whole cost: ``input + cached_input + cache_write + output + reasoning``.
        input: uncached input (prompt) tokens.
        cached_input: input tokens read from the provider's cache.
        cache_write: input tokens written to the provider's cache (Anthropic).
        output: output tokens other than reasoning.
        reasoning: reasoning (thinking) output tokens.
        wasted: the part of ``total`` paid for attempts whose answer the
            caller did not keep (a failed attempt asked again from scratch, a
            replay, an answer a ``Reset`` discarded): their input and output.
        at_least: True when some tokens were not reported by the provider and
            were counted from what arrived (a stream cut by ``close()``,
            ``max_output_chars`` or a failure): the cost is at least ``total``.
        model: the model whose prices were used.
    """

    total: float
    input: float = 0.0
    cached_input: float = 0.0
    cache_write: float = 0.0
    output: float = 0.0
    reasoning: float = 0.0
    wasted: float = 0.0
    at_least: bool = False
    model: str = ""


@dataclass(frozen=True)
class AttemptReport:
    """One HTTP attempt of a stream, as the monitor's listeners see it (times from ``time.monotonic``).

    Attributes:
        number: 1 for the first attempt.
        started, ended: when it was sent and when it ended.
        resume: how it went on from the attempt before: ``None`` (a fresh
            request), ``"last-event-id"``, ``"continue"`` or ``"replay"``.
        delay: seconds waited before it (the backoff after the attempt before).
        error: the type name of the error that ended it, or ``None``.
        usage: the last :class:`Usage` reported during it, or ``None``.
        text_deltas: text pieces it delivered.
        first_content: when its first content arrived, or ``None``.
        reset: when a ``Reset`` discarded the delivered text during it, or ``None``.
        discarded_chars: how many delivered characters that ``Reset`` discarded.
        response_id: the provider's id of the answer, when it sent one.
        response_model: the model that answered, when the provider said.
    """

    number: int
    started: float
    ended: float
    resume: Optional[str] = None
    delay: float = 0.0
    error: Optional[str] = None
    usage: Optional[Usage] = None
    text_deltas: int = 0
    first_content: Optional[float] = None
    reset: Optional[float] = None
    discarded_chars: int = 0
    response_id: Optional[str] = None
    response_model: Optional[str] = None


@dataclass(frozen=True)
class StreamReport:
    """One ended stream, as the process-wide monitor and its listeners see it.

    Attributes:
        provider: the provider's name (``"openai"``...).
        base_url: the client's base URL, credentials removed.
        model: the model asked for.
        outcome: ``"finished"``, ``"failed"`` or ``"closed"`` (by the caller).
        error: the failing error's type name (``"RateLimitError"``...), or ``None``.
        metrics: the stream's final :class:`StreamMetrics`.
        attempts: each HTTP attempt, in order (:class:`AttemptReport`).
        usage: the last :class:`Usage` the caller was handed, or ``None``.
        finish_reason: the provider's finish reason, or ``None``.
        cost: the stream's :class:`Cost`, or ``None`` without pricing for the model.
        started_at: ``time.monotonic()`` at the stream's start.
    """

    provider: str
    base_url: str
    model: str
    outcome: str
    error: Optional[str]
    metrics: StreamMetrics
    attempts: Tuple[AttemptReport, ...] = ()
    usage: Optional[Usage] = None
    finish_reason: Optional[str] = None
    cost: Optional[Cost] = None
    started_at: float = 0.0


@dataclass(frozen=True)
class MonitorSnapshot:
    """Process-wide counts since the start (or the last ``monitor.reset()``).

    Attributes:
        started: streams started.
        finished, failed, closed: streams that ended each way.
        active: streams started and not ended (waiting ones included).
        waiting: streams waiting for a concurrency slot or the rate limiter.
        attempts: HTTP attempts made by ended streams.
        errors: final errors of failed streams, by type name.
        retried_errors: errors that were retried, by type name.
        output_tokens: tokens (or text pieces when not reported) of ended streams.
        bytes_received: body bytes of ended streams.
        time_to_first_token: over ended streams that received content.
        duration: over ended streams.
        circuits: each circuit breaker's state by base URL:
            ``"closed"``, ``"open"`` or ``"half-open"``.
        cost: US dollars spent by ended streams that had pricing (``Cost.total``).
        wasted_output_tokens: output tokens of ended streams that the callers
            did not keep (``StreamMetrics.wasted_output_tokens``).
    """

    started: int = 0
    finished: int = 0
    failed: int = 0
    closed: int = 0
    active: int = 0
    waiting: int = 0
    attempts: int = 0
    errors: Mapping[str, int] = field(default_factory=dict)
    retried_errors: Mapping[str, int] = field(default_factory=dict)
    output_tokens: int = 0
    bytes_received: int = 0
    time_to_first_token: Distribution = field(default_factory=Distribution)
    duration: Distribution = field(default_factory=Distribution)
    circuits: Mapping[str, str] = field(default_factory=dict)
    cost: float = 0.0
    wasted_output_tokens: int = 0

    @property
    def success_rate(self) -> Optional[float]:
        """``finished / (finished + failed)``; streams the caller closed do not count. ``None`` before any."""
        ended = self.finished + self.failed
        return self.finished / ended if ended else None
