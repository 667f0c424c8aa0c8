"""Typed events a stream produces, and the result it ends with.

These are the unified vocabulary every provider decoder emits and every
consumer sees in ``TokenStream.events()``. They are immutable, slotted value
classes (:class:`~llmstream._record.Record`: what frozen dataclasses give,
without their import cost): safe to hand across threads and cheap to build,
because one is built per token on the hot path.

Content events (they count as progress for the ``idle`` and ``first_token``
timeouts): :class:`TextDelta`, :class:`ThinkingDelta`, :class:`ToolCallDelta`,
:class:`ToolCall`. Bookkeeping events: :class:`Usage`, :class:`Finish`.
Events of the IO shell: :class:`Retrying`, :class:`Reset`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Tuple, Union

from ._record import Record, set_field

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
    "deferred_metrics",
    "ContentFilter",
    "StreamResult",
    "StreamReport",
    "AttemptReport",
    "Cost",
    "MonitorSnapshot",
    "CONTENT_EVENTS",
]


class TextDelta(Record):
    """A piece of the answer's text, in order; concatenating them gives the answer."""

    __slots__ = __match_args__ = ("text",)
    text: str

    def __init__(
        self,
        text: str,
    ) -> None:
        set_field(self, "text", text)


class ThinkingDelta(Record):
    """A piece of the model's visible reasoning (Anthropic ``thinking_delta``); not part of the answer text.

    Attributes:
        text: the reasoning text (may be "" on an event that only carries a signature).
        signature: the provider's opaque signature of the reasoning (Gemini
            ``thoughtSignature``), to send back unchanged in the next turn; None when none came.
    """

    __slots__ = __match_args__ = ("text", "signature")
    text: str
    signature: Optional[str]

    def __init__(
        self,
        text: str,
        signature: Optional[str] = None,
    ) -> None:
        set_field(self, "text", text)
        set_field(self, "signature", signature)


class ToolCallDelta(Record):
    """A fragment of a tool call as it streams.

    Attributes:
        index: position of the call in the answer (0 for the first call).
        id: the call's id, on the first fragment only (``None`` afterwards).
        name: the function's name, on the first fragment only.
        arguments: the next fragment of the JSON-encoded arguments (may be "").
    """

    __slots__ = __match_args__ = ("index", "id", "name", "arguments")
    index: int
    id: Optional[str]
    name: Optional[str]
    arguments: str

    def __init__(
        self,
        index: int,
        id: Optional[str],
        name: Optional[str],
        arguments: str,
    ) -> None:  # noqa: A002
        set_field(self, "index", index)
        set_field(self, "id", id)
        set_field(self, "name", name)
        set_field(self, "arguments", arguments)


class ToolCall(Record):
    """A complete tool call, emitted once all its fragments have arrived.

    Attributes:
        index: position of the call in the answer.
        id: the provider's id for the call ("" when the provider gives none, as Ollama).
        name: the function's name.
        arguments: the arguments parsed from JSON, or ``None`` if they are not
            valid JSON (for example cut short by ``max_tokens``).
        raw_arguments: the arguments exactly as the model wrote them.
        signature: the provider's opaque signature on the call's part (Gemini
            ``thoughtSignature``), or None.
    """

    __slots__ = __match_args__ = ("index", "id", "name", "arguments", "raw_arguments", "signature")
    index: int
    id: str
    name: str
    arguments: Any
    raw_arguments: str
    signature: Optional[str]

    def __init__(
        self,
        index: int,
        id: str,
        name: str,
        arguments: Any,
        raw_arguments: str,
        signature: Optional[str] = None,
    ) -> None:  # noqa: A002
        set_field(self, "index", index)
        set_field(self, "id", id)
        set_field(self, "name", name)
        set_field(self, "arguments", arguments)
        set_field(self, "raw_arguments", raw_arguments)
        set_field(self, "signature", signature)


class Usage(Record):
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

    __slots__ = __match_args__ = ("input_tokens", "output_tokens", "raw", "cached_input_tokens", "cache_write_tokens",
                                  "reasoning_tokens")
    input_tokens: Optional[int]
    output_tokens: Optional[int]
    raw: Mapping[str, Any]
    cached_input_tokens: Optional[int]
    cache_write_tokens: Optional[int]
    reasoning_tokens: Optional[int]

    def __init__(
        self,
        input_tokens: Optional[int] = None,
        output_tokens: Optional[int] = None,
        raw: Optional[Mapping[str, Any]] = None,
        cached_input_tokens: Optional[int] = None,
        cache_write_tokens: Optional[int] = None,
        reasoning_tokens: Optional[int] = None,
    ) -> None:
        set_field(self, "input_tokens", input_tokens)
        set_field(self, "output_tokens", output_tokens)
        set_field(self, "raw", dict() if raw is None else raw)
        set_field(self, "cached_input_tokens", cached_input_tokens)
        set_field(self, "cache_write_tokens", cache_write_tokens)
        set_field(self, "reasoning_tokens", reasoning_tokens)

    @property
    def total_tokens(self) -> Optional[int]:
        """``input_tokens + output_tokens`` when both are known."""
        if self.input_tokens is None or self.output_tokens is None:
            return None
        return self.input_tokens + self.output_tokens


class OutputItem(Record):
    """A finished piece of the assistant's turn, in the provider's own request format.

    Emitted when the provider closes a block or item: an Anthropic ``thinking``
    block with its ``signature``, a ``redacted_thinking`` block, a ``text`` or
    ``tool_use`` block; a Responses output item (``reasoning`` with its
    ``encrypted_content``, ``message``, ``function_call``...); a Gemini part
    (``{"text": ...}``, a ``thought`` part, ``functionCall``, with its ``thoughtSignature``). The stream keeps
    them to build ``StreamResult.message``, so signed thinking survives an
    agent loop. Bookkeeping, not content: it does not count as progress.

    Attributes:
        item: the block or item, as the provider's API takes it back.
        text_key: when set, the key of ``item`` that receives the answer
            text delivered since the previous item (the decoder does not keep
            the text itself: that would cost on every token).
    """

    __slots__ = __match_args__ = ("item", "text_key")
    item: Mapping[str, Any]
    text_key: Optional[str]

    def __init__(self, item: Mapping[str, Any], text_key: Optional[str] = None) -> None:
        set_field(self, "item", item)
        set_field(self, "text_key", text_key)


class Finish(Record):
    """The model finished; ``reason`` is the provider's own word for why.

    ``"stop"``/``"end_turn"`` (natural end), ``"length"``/``"max_tokens"``
    (limit reached), ``"tool_calls"``/``"tool_use"``, ``"content_filter"``...
    """

    __slots__ = __match_args__ = ("reason",)
    reason: str

    def __init__(
        self,
        reason: str,
    ) -> None:
        set_field(self, "reason", reason)


class ContentFilter(Record):
    """The provider's content filter acted or reported: the app may retract what it showed.

    Attributes:
        source: ``"prompt"`` (the request was judged: Gemini ``promptFeedback``,
            Azure ``prompt_filter_results``) or ``"completion"`` (the answer was:
            Azure ``content_filter_results``, Gemini safety ratings on a finish).
        reason: the provider's word for what happened (``"content_filter"``,
            ``"SAFETY"``, a ``blockReason``...), or ``""`` for a report that blocked nothing.
        blocked: True when the filter stopped the prompt or the answer.
        results: the provider's own filter object, unchanged.
    """

    __slots__ = __match_args__ = ("source", "reason", "blocked", "results")
    source: str
    reason: str
    blocked: bool
    results: Any

    def __init__(self, source: str, reason: str, blocked: bool, results: Any = None) -> None:
        set_field(self, "source", source)
        set_field(self, "reason", reason)
        set_field(self, "blocked", blocked)
        set_field(self, "results", results)


class Retrying(Record):
    """The stream broke or was refused and will be tried again.

    Attributes:
        attempt: the number of the attempt about to start (2 for the first retry).
        delay: seconds waited before it.
        cause: the error that caused the retry.
        resume: how the next attempt goes on from what was delivered:
            ``"last-event-id"``, ``"continue"``, ``"replay"``, or ``None``
            when it starts afresh (nothing had been delivered).
    """

    __slots__ = __match_args__ = ("attempt", "delay", "cause", "resume")
    attempt: int
    delay: float
    cause: BaseException
    resume: Optional[str]

    def __init__(
        self,
        attempt: int,
        delay: float,
        cause: BaseException,
        resume: Optional[str] = None,
    ) -> None:
        set_field(self, "attempt", attempt)
        set_field(self, "delay", delay)
        set_field(self, "cause", cause)
        set_field(self, "resume", resume)


class Reset(Record):
    """A replayed answer did not start with the text already delivered.

    Only ``TokenStream.events()`` emits it (plain iteration raises
    ``ResumeError`` instead). Discard ``discarded_text``: the events after this
    one are the new answer from its beginning.
    """

    __slots__ = __match_args__ = ("attempt", "discarded_text")
    attempt: int
    discarded_text: str

    def __init__(
        self,
        attempt: int,
        discarded_text: str,
    ) -> None:
        set_field(self, "attempt", attempt)
        set_field(self, "discarded_text", discarded_text)


Event = Union[TextDelta, ThinkingDelta, ToolCallDelta, ToolCall, Usage, OutputItem, Finish, ContentFilter, Retrying, Reset]

#: Events that count as progress for the ``first_token`` and ``idle`` timeouts.
CONTENT_EVENTS = (TextDelta, ThinkingDelta, ToolCallDelta, ToolCall)


class Distribution(Record):
    """Summary of a series of measurements (seconds or bytes); ``None`` when empty.

    Percentiles come from a histogram with 2% wide buckets (exact within 2%,
    always between ``min`` and ``max``).

    Attributes:
        count: how many values were recorded.
        total: their sum.
        min, p50, p90, p99, max: the smallest value, the percentiles, the largest.
    """

    __slots__ = __match_args__ = ("count", "total", "min", "p50", "p90", "p99", "max")
    count: int
    total: float
    min: Optional[float]
    p50: Optional[float]
    p90: Optional[float]
    p99: Optional[float]
    max: Optional[float]

    def __init__(
        self,
        count: int = 0,
        total: float = 0.0,
        min: Optional[float] = None,
        p50: Optional[float] = None,
        p90: Optional[float] = None,
        p99: Optional[float] = None,
        max: Optional[float] = None,
    ) -> None:  # noqa: A002
        set_field(self, "count", count)
        set_field(self, "total", total)
        set_field(self, "min", min)
        set_field(self, "p50", p50)
        set_field(self, "p90", p90)
        set_field(self, "p99", p99)
        set_field(self, "max", max)

    @property
    def mean(self) -> Optional[float]:
        """``total / count``, or ``None`` when empty."""
        return self.total / self.count if self.count else None

    def __bool__(self) -> bool:
        """True when something was measured: ``if metrics.chunk_gap:`` before reading its percentiles."""
        return self.count > 0


#: The empty distribution (immutable, so one serves every default).
_EMPTY = Distribution()

#: The shortest generation window (seconds) over which ``tokens_per_second`` is reported.
MIN_RATE_WINDOW = 0.05


class StreamMetrics(Record):
    """Measurements of one stream (times in seconds, from ``time.monotonic``).

    Attributes:
        time_to_first_token: from the start of the stream to the first content, or ``None``.
        duration: from the start of the stream to its end (or to now, while it runs).
        text_deltas: text pieces received.
        output_tokens: output tokens as the provider reported them, or ``None``.
        chunks: socket reads of the answer that returned data.
        bytes_received: body bytes received over all attempts (with those read
            after the end marker so that the connection can be reused).
        attempts: HTTP attempts made.
        errors: the type name of each error met, in order: those that were
            retried, then the final one if the stream failed.
        chunk_gap: the waits between socket reads that brought content
            (per chunk, not per token: pieces that arrive in one read count
            once), measured in the worker as the bytes arrive; time the worker
            spent blocked on a slow caller is left out, so this describes the
            server, not the consumer. Empty (``count == 0``, percentiles
            ``None``, falsy) when all the content came in one read.
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

    __match_args__ = (
        "time_to_first_token", "duration", "text_deltas", "output_tokens", "chunks", "bytes_received",
        "attempts", "errors", "chunk_gap", "chunk_size", "read_time", "queued", "wasted_output_tokens",
    )
    # The three distributions are properties over private slots: a stream's final
    # metrics may hold, instead of each, the function that summarises it, called
    # when it is first read (see deferred_metrics). Most streams' are never read,
    # and their percentiles were ~15-45 us of every stream's end (issue 17).
    __slots__ = (
        "time_to_first_token", "duration", "text_deltas", "output_tokens", "chunks", "bytes_received",
        "attempts", "errors", "_chunk_gap", "_chunk_size", "_read_time", "queued", "wasted_output_tokens",
    )
    time_to_first_token: Optional[float]
    duration: float
    text_deltas: int
    output_tokens: Optional[int]
    chunks: int
    bytes_received: int
    attempts: int
    errors: Tuple[str, ...]
    queued: float
    wasted_output_tokens: int

    def __init__(
        self,
        time_to_first_token: Optional[float] = None,
        duration: float = 0.0,
        text_deltas: int = 0,
        output_tokens: Optional[int] = None,
        chunks: int = 0,
        bytes_received: int = 0,
        attempts: int = 0,
        errors: Tuple[str, ...] = (),
        chunk_gap: Distribution = _EMPTY,
        chunk_size: Distribution = _EMPTY,
        read_time: Distribution = _EMPTY,
        queued: float = 0.0,
        wasted_output_tokens: int = 0,
    ) -> None:
        set_field(self, "time_to_first_token", time_to_first_token)
        set_field(self, "duration", duration)
        set_field(self, "text_deltas", text_deltas)
        set_field(self, "output_tokens", output_tokens)
        set_field(self, "chunks", chunks)
        set_field(self, "bytes_received", bytes_received)
        set_field(self, "attempts", attempts)
        set_field(self, "errors", errors)
        set_field(self, "_chunk_gap", chunk_gap)
        set_field(self, "_chunk_size", chunk_size)
        set_field(self, "_read_time", read_time)
        set_field(self, "queued", queued)
        set_field(self, "wasted_output_tokens", wasted_output_tokens)

    @property
    def chunk_gap(self) -> Distribution:
        """The waits between socket reads that brought content (see the class's docstring)."""
        return _settled(self, "_chunk_gap")

    @property
    def chunk_size(self) -> Distribution:
        """Bytes per socket read."""
        return _settled(self, "_chunk_size")

    @property
    def read_time(self) -> Distribution:
        """Seconds each socket read that returned data waited."""
        return _settled(self, "_read_time")

    @property
    def tokens(self) -> int:
        """Output tokens as reported by the provider, or else the number of text pieces."""
        return self.output_tokens if self.output_tokens is not None else self.text_deltas

    @property
    def inter_token_gap(self) -> Distribution:
        """The former name of :attr:`chunk_gap` (kept for compatibility): the gaps are per read, not per token."""
        return self.chunk_gap

    @property
    def generation_time(self) -> Optional[float]:
        """Seconds the server took to send the content after its first read, or ``None`` if it came in one read.

        The sum of :attr:`chunk_gap`: from the first read that brought
        content to the last, without the time the worker waited on a slow caller.
        """
        return self.chunk_gap.total if self.chunk_gap.count else None

    @property
    def tokens_per_second(self) -> Optional[float]:
        """Generation speed: ``tokens`` over the time the server took to send them, or ``None``.

        The first read stands for one average gap, so an evenly paced stream
        of N tokens in N reads at interval t gives exactly 1/t. ``None`` unless
        the content came in several reads over at least
        :data:`MIN_RATE_WINDOW` seconds: a rate over an answer that arrived at
        once, or within a millisecond, measures the network, not the model.
        """
        window = self.generation_time
        if window is None or window < MIN_RATE_WINDOW or not self.tokens:
            return None
        return self.tokens / (window + window / self.chunk_gap.count)

    @property
    def retries(self) -> int:
        """Attempts beyond the first."""
        return max(0, self.attempts - 1)


def _settled(metrics: StreamMetrics, slot: str) -> Distribution:
    """The distribution in ``slot``, made now if it was deferred (two threads may both make it: the same value)."""
    value = getattr(metrics, slot)
    if value.__class__ is not Distribution:
        value = value()
        set_field(metrics, slot, value)
    return value  # type: ignore[no-any-return]


def deferred_metrics(chunk_gap: Callable[[], Distribution], chunk_size: Callable[[], Distribution],
                     read_time: Callable[[], Distribution], **fields: Any) -> StreamMetrics:
    """A :class:`StreamMetrics` whose three distributions are made when first read.

    For a stream's final metrics, whose histograms no longer change: reading a
    distribution (or comparing, hashing, printing or pickling the metrics)
    calls its function once; the value is then the one an eager summary had.
    """
    metrics = StreamMetrics(**fields)
    set_field(metrics, "_chunk_gap", chunk_gap)
    set_field(metrics, "_chunk_size", chunk_size)
    set_field(metrics, "_read_time", read_time)
    return metrics


class StreamResult(Record):
    """What a finished stream produced.

    Attributes:
        text: the whole answer text, exactly as delivered (``""`` for a stream
            made with ``keep_text=False``, which keeps none).
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
            (``input + result.message``). A stream made with
            ``keep_text=False`` kept no text, so its turn lacks the answer's
            text (except where the provider sent it whole again, as Responses'
            output items do): an agent loop keeps the text.
        messages: the same turn as the items to append to the conversation
            whatever the provider: ``(message,)``, or the Responses items.
        cost: what the stream cost, over every attempt (a :class:`Cost`), or
            ``None`` when the client has no ``pricing`` for the model.
    """

    __slots__ = __match_args__ = ("text", "finish_reason", "usage", "tool_calls", "attempts", "metrics", "message",
                                  "messages", "cost")
    text: str
    finish_reason: Optional[str]
    usage: Optional[Usage]
    tool_calls: Tuple[ToolCall, ...]
    attempts: int
    metrics: StreamMetrics
    message: Any
    messages: Tuple[Mapping[str, Any], ...]
    cost: Optional["Cost"]

    def __init__(
        self,
        text: str,
        finish_reason: Optional[str] = None,
        usage: Optional[Usage] = None,
        tool_calls: Tuple[ToolCall, ...] = (),
        attempts: int = 1,
        metrics: Optional[StreamMetrics] = None,
        message: Any = None,
        messages: Tuple[Mapping[str, Any], ...] = (),
        cost: Optional["Cost"] = None,
    ) -> None:
        set_field(self, "text", text)
        set_field(self, "finish_reason", finish_reason)
        set_field(self, "usage", usage)
        set_field(self, "tool_calls", tool_calls)
        set_field(self, "attempts", attempts)
        set_field(self, "metrics", StreamMetrics() if metrics is None else metrics)
        set_field(self, "message", message)
        set_field(self, "messages", messages)
        set_field(self, "cost", cost)


class Cost(Record):
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

    __slots__ = __match_args__ = (
        "total", "input", "cached_input", "cache_write", "output", "reasoning", "wasted", "at_least", "model",
    )
    total: float
    input: float
    cached_input: float
    cache_write: float
    output: float
    reasoning: float
    wasted: float
    at_least: bool
    model: str

    def __init__(
        self,
        total: float,
        input: float = 0.0,
        cached_input: float = 0.0,
        cache_write: float = 0.0,
        output: float = 0.0,
        reasoning: float = 0.0,
        wasted: float = 0.0,
        at_least: bool = False,
        model: str = "",
    ) -> None:  # noqa: A002
        set_field(self, "total", total)
        set_field(self, "input", input)
        set_field(self, "cached_input", cached_input)
        set_field(self, "cache_write", cache_write)
        set_field(self, "output", output)
        set_field(self, "reasoning", reasoning)
        set_field(self, "wasted", wasted)
        set_field(self, "at_least", at_least)
        set_field(self, "model", model)


class AttemptReport(Record):
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

    __slots__ = __match_args__ = (
        "number", "started", "ended", "resume", "delay", "error", "usage", "text_deltas", "first_content",
        "reset", "discarded_chars", "response_id", "response_model",
    )
    number: int
    started: float
    ended: float
    resume: Optional[str]
    delay: float
    error: Optional[str]
    usage: Optional[Usage]
    text_deltas: int
    first_content: Optional[float]
    reset: Optional[float]
    discarded_chars: int
    response_id: Optional[str]
    response_model: Optional[str]

    def __init__(
        self,
        number: int,
        started: float,
        ended: float,
        resume: Optional[str] = None,
        delay: float = 0.0,
        error: Optional[str] = None,
        usage: Optional[Usage] = None,
        text_deltas: int = 0,
        first_content: Optional[float] = None,
        reset: Optional[float] = None,
        discarded_chars: int = 0,
        response_id: Optional[str] = None,
        response_model: Optional[str] = None,
    ) -> None:
        set_field(self, "number", number)
        set_field(self, "started", started)
        set_field(self, "ended", ended)
        set_field(self, "resume", resume)
        set_field(self, "delay", delay)
        set_field(self, "error", error)
        set_field(self, "usage", usage)
        set_field(self, "text_deltas", text_deltas)
        set_field(self, "first_content", first_content)
        set_field(self, "reset", reset)
        set_field(self, "discarded_chars", discarded_chars)
        set_field(self, "response_id", response_id)
        set_field(self, "response_model", response_model)


class StreamReport(Record):
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

    __slots__ = __match_args__ = (
        "provider", "base_url", "model", "outcome", "error", "metrics", "attempts", "usage", "finish_reason",
        "cost", "started_at",
    )
    provider: str
    base_url: str
    model: str
    outcome: str
    error: Optional[str]
    metrics: StreamMetrics
    attempts: Tuple[AttemptReport, ...]
    usage: Optional[Usage]
    finish_reason: Optional[str]
    cost: Optional[Cost]
    started_at: float

    def __init__(
        self,
        provider: str,
        base_url: str,
        model: str,
        outcome: str,
        error: Optional[str],
        metrics: StreamMetrics,
        attempts: Tuple[AttemptReport, ...] = (),
        usage: Optional[Usage] = None,
        finish_reason: Optional[str] = None,
        cost: Optional[Cost] = None,
        started_at: float = 0.0,
    ) -> None:
        set_field(self, "provider", provider)
        set_field(self, "base_url", base_url)
        set_field(self, "model", model)
        set_field(self, "outcome", outcome)
        set_field(self, "error", error)
        set_field(self, "metrics", metrics)
        set_field(self, "attempts", attempts)
        set_field(self, "usage", usage)
        set_field(self, "finish_reason", finish_reason)
        set_field(self, "cost", cost)
        set_field(self, "started_at", started_at)


class MonitorSnapshot(Record):
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
        shared_state_fallbacks: flow-control decisions taken with a client's
            own limits because its ``RedisState`` could not reach Redis (fail-open).
    """

    __slots__ = __match_args__ = (
        "started", "finished", "failed", "closed", "active", "waiting", "attempts", "errors",
        "retried_errors", "output_tokens", "bytes_received", "time_to_first_token", "duration", "circuits",
        "cost", "wasted_output_tokens", "shared_state_fallbacks",
    )
    started: int
    finished: int
    failed: int
    closed: int
    active: int
    waiting: int
    attempts: int
    errors: Mapping[str, int]
    retried_errors: Mapping[str, int]
    output_tokens: int
    bytes_received: int
    time_to_first_token: Distribution
    duration: Distribution
    circuits: Mapping[str, str]
    cost: float
    wasted_output_tokens: int
    shared_state_fallbacks: int

    def __init__(
        self,
        started: int = 0,
        finished: int = 0,
        failed: int = 0,
        closed: int = 0,
        active: int = 0,
        waiting: int = 0,
        attempts: int = 0,
        errors: Optional[Mapping[str, int]] = None,
        retried_errors: Optional[Mapping[str, int]] = None,
        output_tokens: int = 0,
        bytes_received: int = 0,
        time_to_first_token: Distribution = _EMPTY,
        duration: Distribution = _EMPTY,
        circuits: Optional[Mapping[str, str]] = None,
        cost: float = 0.0,
        wasted_output_tokens: int = 0,
        shared_state_fallbacks: int = 0,
    ) -> None:
        set_field(self, "started", started)
        set_field(self, "finished", finished)
        set_field(self, "failed", failed)
        set_field(self, "closed", closed)
        set_field(self, "active", active)
        set_field(self, "waiting", waiting)
        set_field(self, "attempts", attempts)
        set_field(self, "errors", dict() if errors is None else errors)
        set_field(self, "retried_errors", dict() if retried_errors is None else retried_errors)
        set_field(self, "output_tokens", output_tokens)
        set_field(self, "bytes_received", bytes_received)
        set_field(self, "time_to_first_token", time_to_first_token)
        set_field(self, "duration", duration)
        set_field(self, "circuits", dict() if circuits is None else circuits)
        set_field(self, "cost", cost)
        set_field(self, "wasted_output_tokens", wasted_output_tokens)
        set_field(self, "shared_state_fallbacks", shared_state_fallbacks)

    @property
    def success_rate(self) -> Optional[float]:
        """``finished / (finished + failed)``; streams the caller closed do not count. ``None`` before any."""
        ended = self.finished + self.failed
        return self.finished / ended if ended else None
