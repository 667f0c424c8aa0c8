"""llmstream: stream LLM answers without the bugs everyone writes by hand.

Every token exactly once, in order, or a clear, typed error saying what was
delivered. See ``README.md`` for the tour.

This file only re-exports. The layers, each importing only the ones below it:

  vocabulary   _exceptions, _events, _config         (imports nothing of llmstream)
  sans-IO core _linebuffer, sse, _jsonl, _fastjson, _dechunk, _resume, _histogram, _cost,
               _output_guard, _render, _providers/*
  IO shell     _transport, _retry, _next_attempt, _flow, _monitor, _stats, _body, _lending,
               _queue, _attempt, _worker   (requests, urllib3, threads)
  consumer API _stream, _client, _async, _runs
  tools        _cli (the command line), notebook, prometheus and otel (optional extras),
               _redis_state (RedisState: the optional extra redis, imported when made)

``llmstream.sse`` (the SSE decoder alone) and ``llmstream.testing`` (a fake LLM
server) are public modules of their own; ``llmstream.notebook`` and
``llmstream.prometheus`` need optional extras. ``llmstream.relay`` relays a
stream to a browser (SSE / NDJSON); its web-framework helpers import the
framework only when called.
"""

import typing as _typing

from ._client import Client, acomplete, astream, complete, stream
from ._config import CircuitBreaker, RateLimit, Retry, Timeout
from ._cost import Price, Pricing
from ._events import (
    AttemptReport,
    Cost,
    Distribution,
    ContentFilter,
    Finish,
    OutputItem,
    MonitorSnapshot,
    Reset,
    Retrying,
    StreamMetrics,
    StreamReport,
    StreamResult,
    TextDelta,
    ThinkingDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    CallbackError,
    CircuitOpenError,
    IncompleteStreamError,
    MalformedStreamError,
    NotFoundError,
    PermissionDeniedError,
    ProviderError,
    RateLimitError,
    ResumeError,
    ServerError,
    SharedStateError,
    StreamBusyError,
    StreamClosedError,
    StreamError,
    StreamTimeoutError,
    TextNotKeptError,
)
from ._monitor import Monitor, monitor
from ._stream import TokenStream
from ._version import __version__

if _typing.TYPE_CHECKING:
    from ._async import AsyncTokenStream
    from ._redis_state import RedisState


def __getattr__(name: str) -> _typing.Any:
    # RedisState is loaded on first use, so that `import llmstream` loads
    # nothing of the redis extra (the class itself imports redis only when made).
    if name == "RedisState":
        from ._redis_state import RedisState

        return RedisState
    if name == "AsyncTokenStream":
        # asyncio (a few ms to import) only for the programs that use it.
        from ._async import AsyncTokenStream

        return AsyncTokenStream
    raise AttributeError(f"module 'llmstream' has no attribute {name!r}")


__all__ = [
    "__version__",
    # entry points
    "stream",
    "complete",
    "Client",
    "TokenStream",
    # asyncio (issue 13)
    "astream",
    "acomplete",
    "AsyncTokenStream",
    # configuration
    "Timeout",
    "Retry",
    "RateLimit",
    "CircuitBreaker",
    "RedisState",
    # events and results
    "TextDelta",
    "ThinkingDelta",
    "ToolCallDelta",
    "ToolCall",
    "Usage",
    "OutputItem",
    "Finish",
    "ContentFilter",
    "Retrying",
    "Reset",
    "StreamResult",
    "StreamMetrics",
    "Distribution",
    # observability
    "monitor",
    "Monitor",
    "MonitorSnapshot",
    "StreamReport",
    "AttemptReport",
    # cost (issue 15)
    "Price",
    "Pricing",
    "Cost",
    # errors
    "StreamError",
    "APIStatusError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "RateLimitError",
    "ServerError",
    "APIConnectionError",
    "StreamTimeoutError",
    "IncompleteStreamError",
    "MalformedStreamError",
    "ProviderError",
    "ResumeError",
    "CallbackError",
    "CircuitOpenError",
    "SharedStateError",
    "StreamClosedError",
    "StreamBusyError",
    "TextNotKeptError",
]
