"""What every provider's fake wire format shares: the event type, the stream context, JSON helpers.

Strategy: each provider's format lives in a module of its own (``_openai_chat``,
``_openai_responses``, ``_anthropic``, ``_ollama``); each holds the streaming
formatter, the non-streaming body, its error body and its extra endpoints, and
``_formats`` lists them in one table. A new provider is one new module and one
row of that table.

Must never: import ``llmstream`` (the testing package is standalone).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, List, Mapping, NamedTuple, Tuple

from ._reply import Reply

__all__ = ["CREATED", "CREATED_AT", "FRAGMENT", "Event", "StreamContext", "chain", "dump", "fragments", "q",
           "text_of", "usage_of", "MODELS", "estimate_tokens"]

CREATED = 1735689600  # 2025-01-01T00:00:00Z, fixed so streams are byte-for-byte reproducible
CREATED_AT = "2025-01-01T00:00:00Z"
FRAGMENT = 8  # characters of tool-call JSON per arguments delta

_quote = json.JSONEncoder(ensure_ascii=False).encode  # str -> JSON string literal, C fast path


def q(text: str) -> bytes:
    """``text`` as a JSON string literal, UTF-8."""
    return _quote(text).encode("utf-8")


def dump(obj: Any) -> bytes:
    """``obj`` as compact JSON, UTF-8."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class Event(NamedTuple):
    """One provider message: an SSE event (name + data) or one JSON line (data)."""

    data: bytes
    name: bytes = b""
    tokens: int = 0
    end: bool = False


@dataclass(frozen=True)
class StreamContext:
    """What a formatter needs from the request: who asked, and which tokens to stream."""

    provider: str
    model: str
    number: int  # the request's arrival number, used in every id
    include_usage: bool
    tokens: Callable[[], Iterator[str]]
    body: Mapping[str, Any] = field(default_factory=dict, hash=False)  # the request's JSON body


def usage_of(reply: Reply, streamed: int) -> Tuple[int, int]:
    """``(input_tokens, output_tokens)``: the reply's, else 12 and the text tokens sent."""
    return reply.usage if reply.usage is not None else (12, streamed)


def fragments(arguments: Any) -> List[str]:
    """A tool call's JSON arguments cut into the pieces its deltas carry."""
    text = json.dumps(arguments, ensure_ascii=False)
    return [text[i:i + FRAGMENT] for i in range(0, len(text), FRAGMENT)] or [""]


def chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    """``first``, then ``rest``."""
    yield first
    yield from rest


def text_of(ctx: StreamContext) -> Tuple[str, int]:
    """The whole answer text and its token count (non-streaming answers only: a stream never joins its tokens)."""
    tokens = list(ctx.tokens())
    return "".join(tokens), len(tokens)


#: The models the fake server lists (``GET /v1/models``, ``/api/tags``) per provider.
MODELS: Mapping[str, Tuple[str, ...]] = {
    "openai": ("gpt-4o-mini", "gpt-4o", "fake-model"),
    "anthropic": ("claude-sonnet-4-5", "claude-haiku-4-5", "fake-model"),
    "ollama": ("llama3.2:latest", "fake-model:latest"),
}


def estimate_tokens(value: Any) -> int:
    """A deterministic token estimate of a request's content: one per 4 characters of its JSON, at least 1."""
    return max(1, len(json.dumps(value, ensure_ascii=False)) // 4)
