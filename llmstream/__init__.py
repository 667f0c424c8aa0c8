"""llmstream: stream LLM answers without the bugs everyone writes by hand.

Every token exactly once, in order, or a clear, typed error saying what was
delivered. See ``README.md`` for the tour.

This file only re-exports. The layers, each importing only the ones below it:

  vocabulary   _exceptions, _events, _config         (imports nothing of llmstream)
  sans-IO core _linebuffer, sse, _jsonl, _fastjson, _dechunk, _resume, _histogram, _cost,
               _output_guard, _render, _providers/*
  IO shell     _transport, _retry, _flow, _monitor, _stats, _worker   (requests, urllib3, threads)
  consumer API _stream, _client
  tools        _cli (the command line), notebook, prometheus and otel (optional extras)

``llmstream.sse`` (the SSE decoder alone) and ``llmstream.testing`` (a fake LLM
server) are public modules of their own; ``llmstream.notebook`` and
``llmstream.prometheus`` need optional extras.
"""

from ._client import Client, complete, stream
from ._config import CircuitBreaker, RateLimit, Retry, Timeout
from ._cost import Price, Pricing
from ._events import (
    AttemptReport,
    Cost,
    Distribution,
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
    CircuitOpenError,
    IncompleteStreamError,
    MalformedStreamError,
    NotFoundError,
    PermissionDeniedError,
    ProviderError,
    RateLimitError,
    ResumeError,
    ServerError,
    StreamBusyError,
    StreamClosedError,
    StreamError,
    StreamTimeoutError,
)
from ._monitor import Monitor, monitor
from ._stream import TokenStream
from ._version import __version__

__all__ = [
    "__version__",
    # entry points
    "stream",
    "complete",
    "Client",
    "TokenStream",
    # configuration
    "Timeout",
    "Retry",
    "RateLimit",
    "CircuitBreaker",
    # events and results
    "TextDelta",
    "ThinkingDelta",
    "ToolCallDelta",
    "ToolCall",
    "Usage",
    "OutputItem",
    "Finish",
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
    "CircuitOpenError",
    "StreamClosedError",
    "StreamBusyError",
]
