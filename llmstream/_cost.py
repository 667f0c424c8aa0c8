"""What a stream's tokens cost, and which of them the caller did not keep.

Strategy: the worker records each attempt (an ``AttemptReport``: its usage,
the text pieces it delivered, how it resumed, whether a ``Reset`` discarded
text). :func:`account` groups attempts into *generations* (one answer the
model produced: an attempt resumed with ``last-event-id`` goes on with the
same one, any other retry asks for a new one), counts each generation's
tokens once, and marks as wasted the generations whose answer the caller did
not keep: one followed by a replay or a fresh request, or one whose text a
later ``Reset`` discarded. A continuation (``continue``) keeps what came
before, so nothing is wasted there.

Counts: the provider's reported usage where it reported one for a
generation that ended normally; otherwise (a failure, ``close()``,
``max_output_chars``) the larger of the reported output and the text pieces
seen, and the figure is "at least".

Usage shapes (the decoders' ``Usage`` fields first, else read from ``Usage.raw``,
checked before use, never trusted):
  * input includes cached tokens, details beside it:
    ``prompt_tokens_details.cached_tokens`` (Chat Completions),
    ``input_tokens_details.cached_tokens`` (Responses API);
  * input excludes the cache, counted beside it: ``cache_read_input_tokens``
    and ``cache_creation_input_tokens`` (Messages API);
  * reasoning inside the output: ``completion_tokens_details.reasoning_tokens``,
    ``output_tokens_details.reasoning_tokens``.
These are shapes of the wire format, not provider names: any compatible
server that reports them is read the same way.

Sans-IO: pure functions and immutable values; no clock, no IO.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ._record import Record, set_field
from ._events import AttemptReport, Cost, Usage

__all__ = ["Price", "Pricing", "TokenCounts", "Accounting", "token_counts", "account", "price"]

#: A count above this is not a token count (a corrupt or hostile figure): ignored.
MAX_TOKENS = 10 ** 12
_PER = 1_000_000.0


def _count(value: Any) -> Optional[int]:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
        return None
    return value


def _first(*counts: Optional[int]) -> Optional[int]:
    """The first count given (a valid one: ``_count`` checked the raw ones; decoders check theirs)."""
    for count in counts:
        if count is not None:
            return _count(count)
    return None


def _nested(raw: Mapping[str, Any], outer: str, inner: str) -> Optional[int]:
    details = raw.get(outer)
    return _count(details.get(inner)) if isinstance(details, Mapping) else None


class TokenCounts(Record):
    """Tokens of one answer, normalised: ``input`` includes the cache, ``output`` includes reasoning."""

    __slots__ = __match_args__ = ("input", "cache_read", "cache_write", "output", "reasoning")
    input: int
    cache_read: int
    cache_write: int
    output: int
    reasoning: int

    def __init__(
        self,
        input: int = 0,
        cache_read: int = 0,
        cache_write: int = 0,
        output: int = 0,
        reasoning: int = 0,
    ) -> None:  # noqa: A002
        set_field(self, "input", input)
        set_field(self, "cache_read", cache_read)
        set_field(self, "cache_write", cache_write)
        set_field(self, "output", output)
        set_field(self, "reasoning", reasoning)

    def __add__(self, other: "TokenCounts") -> "TokenCounts":
        return TokenCounts(self.input + other.input, self.cache_read + other.cache_read,
                           self.cache_write + other.cache_write, self.output + other.output,
                           self.reasoning + other.reasoning)


def token_counts(usage: Optional[Usage]) -> Tuple[TokenCounts, bool, bool]:
    """The normalised counts of a ``Usage``, and whether input and output were reported."""
    if usage is None:
        return TokenCounts(), False, False
    raw = usage.raw if isinstance(usage.raw, Mapping) else {}
    given_in, given_out = _count(usage.input_tokens), _count(usage.output_tokens)
    base_in, output = given_in or 0, given_out or 0
    if "cache_read_input_tokens" in raw or "cache_creation_input_tokens" in raw:
        # Messages API: input_tokens counts only what was neither read from nor written to the cache.
        read = _first(usage.cached_input_tokens, _count(raw.get("cache_read_input_tokens")))
        write = _first(usage.cache_write_tokens, _count(raw.get("cache_creation_input_tokens")))
        cache_read, cache_write = read or 0, write or 0
        total_in = base_in + cache_read + cache_write
    else:
        # Everyone else counts cache reads inside the input (the decoders' cached_input_tokens:
        # OpenAI, Responses, DeepSeek, Gemini); a Usage built by hand may carry only the raw object.
        cached = _first(usage.cached_input_tokens, _nested(raw, "prompt_tokens_details", "cached_tokens"),
                        _nested(raw, "input_tokens_details", "cached_tokens"))
        cache_read, cache_write, total_in = min(cached or 0, base_in), 0, base_in
    reasoning = _first(usage.reasoning_tokens, _nested(raw, "completion_tokens_details", "reasoning_tokens"),
                       _nested(raw, "output_tokens_details", "reasoning_tokens"))
    counts = TokenCounts(total_in, cache_read, cache_write, output, min(reasoning or 0, output))
    return counts, given_in is not None, given_out is not None


def _check_price(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"Price.{name} must be a finite number >= 0 (US dollars per million tokens), got {value!r}")
    return float(value)


class Price(Record):
    """One model's prices in US dollars per million tokens.

    Args:
        input: uncached input (prompt) tokens.
        output: output tokens.
        cached_input: input tokens read from the provider's cache (default: ``input``).
        reasoning: reasoning output tokens (default: ``output``, as providers bill them).
        cache_write: input tokens written to the cache (default: ``input``).

    Usage::

        llmstream.Price(input=0.15, cached_input=0.075, output=0.60)
    """

    __slots__ = __match_args__ = ("input", "output", "cached_input", "reasoning", "cache_write")
    input: float
    output: float
    cached_input: Optional[float]
    reasoning: Optional[float]
    cache_write: Optional[float]

    def __init__(
        self,
        input: float,
        output: float,
        cached_input: Optional[float] = None,
        reasoning: Optional[float] = None,
        cache_write: Optional[float] = None,
    ) -> None:  # noqa: A002
        set_field(self, "input", input)
        set_field(self, "output", output)
        set_field(self, "cached_input", cached_input)
        set_field(self, "reasoning", reasoning)
        set_field(self, "cache_write", cache_write)
        self.__post_init__()

    def __post_init__(self) -> None:
        for name in ("input", "output"):
            object.__setattr__(self, name, _check_price(name, getattr(self, name)))
        for name, default in (("cached_input", self.input), ("reasoning", self.output), ("cache_write", self.input)):
            value = getattr(self, name)
            object.__setattr__(self, name, default if value is None else _check_price(name, value))


PriceTypes = Union[Price, Mapping[str, float]]


class Pricing:
    """The prices of the models you use, per model name: give it to ``Client(pricing=...)``.

    A model is looked up by the name asked for, then by the name the provider
    answered with; a key ending in ``*`` matches every name it starts
    (the longest such key wins).

    Usage::

        pricing = llmstream.Pricing({
            "gpt-4o-mini": llmstream.Price(input=0.15, cached_input=0.075, output=0.60),
            "claude-sonnet-4*": {"input": 3.0, "cached_input": 0.30, "output": 15.0, "cache_write": 3.75},
        })
        client = llmstream.Client(pricing=pricing)
        print(client.complete("Hi", model="gpt-4o-mini").cost)

    Raises:
        ValueError: a price that is not a finite number >= 0, or an empty model name.
        TypeError: a price that is neither a ``Price`` nor a mapping of its fields.
    """

    def __init__(self, prices: Mapping[str, PriceTypes]) -> None:
        table: Dict[str, Price] = {}
        for model, value in prices.items():
            if not isinstance(model, str) or not model or model == "*":
                raise ValueError(f"Pricing keys must be model names (or prefixes ending in '*'), got {model!r}")
            if isinstance(value, Mapping):
                value = Price(**value)
            if not isinstance(value, Price):
                raise TypeError(f"the price of {model!r} must be a llmstream.Price or a dict, "
                                f"not {type(value).__name__}")
            table[model] = value
        self._exact = {k: v for k, v in table.items() if not k.endswith("*")}
        self._prefixes = sorted(((k[:-1], v) for k, v in table.items() if k.endswith("*")),
                                key=lambda item: -len(item[0]))
        self._table = table

    def lookup(self, *models: Optional[str]) -> Optional[Tuple[str, Price]]:
        """The first of ``models`` that has a price, and that price (``None`` when none has)."""
        for model in models:
            if model and model in self._exact:
                return model, self._exact[model]
        for model in models:
            for prefix, found in self._prefixes:
                if model and model.startswith(prefix):
                    return model, found
        return None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pricing) and other._table == self._table

    def __repr__(self) -> str:
        return f"Pricing({self._table!r})"


class Accounting(Record):
    """A stream's tokens over all its attempts: what was paid for, and what the caller did not keep."""

    __slots__ = __match_args__ = ("paid", "wasted", "at_least", "response_model")
    paid: TokenCounts
    wasted: TokenCounts
    at_least: bool
    response_model: Optional[str]

    def __init__(
        self,
        paid: TokenCounts,
        wasted: TokenCounts,
        at_least: bool,
        response_model: Optional[str],
    ) -> None:
        set_field(self, "paid", paid)
        set_field(self, "wasted", wasted)
        set_field(self, "at_least", at_least)
        set_field(self, "response_model", response_model)


def _generations(attempts: Sequence[AttemptReport]) -> List[List[AttemptReport]]:
    groups: List[List[AttemptReport]] = []
    for attempt in attempts:
        if groups and attempt.resume == "last-event-id":
            groups[-1].append(attempt)  # the server goes on with the same answer
        else:
            groups.append([attempt])
    return groups


def _generation_tokens(group: List[AttemptReport], complete: bool) -> Tuple[TokenCounts, bool]:
    """One generation's tokens, and whether they are only a lower bound."""
    usage = next((a.usage for a in reversed(group) if a.usage is not None), None)
    counts, has_in, has_out = token_counts(usage)
    pieces = sum(a.text_deltas for a in group)
    if complete and has_out:
        return counts, not has_in
    if not pieces and usage is None:
        return TokenCounts(), False  # nothing came back (a refused request): nothing was generated
    output = max(counts.output, pieces)
    return TokenCounts(counts.input, counts.cache_read, counts.cache_write, output, counts.reasoning), True


def account(attempts: Sequence[AttemptReport], *, complete: bool) -> Accounting:
    """Count the tokens of every attempt (see the module docstring).

    Args:
        attempts: the stream's attempts, in order.
        complete: True when the stream finished normally with the provider's
            end marker (not cut by ``close()``, ``max_output_chars`` or a failure).
    """
    groups = _generations(attempts)
    paid, wasted = TokenCounts(), TokenCounts()
    at_least = False
    for index, group in enumerate(groups):
        last = index == len(groups) - 1
        counts, lower = _generation_tokens(group, complete and last and group[-1].error is None)
        paid += counts
        at_least = at_least or lower
        later = groups[index + 1:]
        thrown_away = bool(later) and (later[0][0].resume in (None, "replay")
                                       or any(a.reset is not None for g in later for a in g))
        if thrown_away:
            wasted += counts
    model = next((a.response_model for a in reversed(attempts) if a.response_model), None)
    return Accounting(paid, wasted, at_least, model)


def _dollars(counts: TokenCounts, p: Price) -> Tuple[float, float, float, float, float]:
    uncached = max(0, counts.input - counts.cache_read - counts.cache_write)
    reasoning = min(counts.reasoning, counts.output)
    assert p.cached_input is not None and p.reasoning is not None and p.cache_write is not None
    return (uncached * p.input / _PER, counts.cache_read * p.cached_input / _PER,
            counts.cache_write * p.cache_write / _PER, (counts.output - reasoning) * p.output / _PER,
            reasoning * p.reasoning / _PER)


def price(pricing: Optional[Pricing], model: str, accounting: Accounting) -> Optional[Cost]:
    """The :class:`~llmstream.Cost` of an accounting, or ``None`` when ``model`` has no price."""
    if pricing is None:
        return None
    found = pricing.lookup(model, accounting.response_model)
    if found is None:
        return None
    name, p = found
    parts = _dollars(accounting.paid, p)
    wasted = sum(_dollars(accounting.wasted, p))
    return Cost(total=sum(parts), input=parts[0], cached_input=parts[1], cache_write=parts[2], output=parts[3],
                reasoning=parts[4], wasted=wasted, at_least=accounting.at_least, model=name)
