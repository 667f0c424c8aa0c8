"""The public surface: __all__ is exactly what design.md names, and everything is documented."""

from __future__ import annotations

import inspect

import llmstream
import llmstream.relay
import llmstream.sse
import llmstream.testing

DESIGN_NAMES = {
    "stream", "complete", "Client", "TokenStream", "Timeout", "Retry",
    "TextDelta", "ThinkingDelta", "ToolCallDelta", "ToolCall", "Usage", "OutputItem", "Finish", "ContentFilter", "Retrying", "Reset",
    "StreamResult", "StreamMetrics",
    "StreamError", "APIStatusError", "BadRequestError", "AuthenticationError", "PermissionDeniedError",
    "NotFoundError", "RateLimitError", "ServerError", "APIConnectionError", "StreamTimeoutError",
    "IncompleteStreamError", "MalformedStreamError", "ProviderError", "ResumeError",
    "StreamClosedError", "StreamBusyError", "TextNotKeptError", "__version__",
}
#: Beyond design.md: issue 5 (metrics, monitor) and issue 7 (flow control).
OBSERVABILITY_NAMES = {"Distribution", "monitor", "Monitor", "MonitorSnapshot", "StreamReport"}
#: Issue 15: what each stream cost, and each attempt as the monitor's listeners see it.
COST_NAMES = {"Price", "Pricing", "Cost", "AttemptReport"}
FLOW_CONTROL_NAMES = {"RateLimit", "CircuitBreaker", "CircuitOpenError"}
#: Issue 16: flow control shared by a fleet through Redis.
FLEET_NAMES = {"RedisState", "SharedStateError"}

#: Issue 13: the asyncio facade.
ASYNC_NAMES = {"astream", "acomplete", "AsyncTokenStream", "CallbackError"}


def test_all_is_exactly_the_public_surface() -> None:
    assert set(llmstream.__all__) == (DESIGN_NAMES | OBSERVABILITY_NAMES | FLOW_CONTROL_NAMES | COST_NAMES
                                      | FLEET_NAMES | ASYNC_NAMES)
    assert len(llmstream.__all__) == len(set(llmstream.__all__))
    public = {n for n in vars(llmstream) if not n.startswith("_")} - {"sse", "testing", "relay"}
    # Submodules appear as attributes once imported; everything else public is in __all__.
    assert {n for n in public if not inspect.ismodule(getattr(llmstream, n))} <= set(llmstream.__all__)


def test_every_public_name_has_a_docstring() -> None:
    for module in (llmstream, llmstream.sse, llmstream.testing, llmstream.relay):
        for name in module.__all__:
            obj = getattr(module, name)
            if name == "__version__" or not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            assert inspect.getdoc(obj), f"{module.__name__}.{name} has no docstring"
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if not attr.startswith("_") and (inspect.isfunction(member) or isinstance(member, property)):
                        assert inspect.getdoc(member), f"{module.__name__}.{name}.{attr} has no docstring"


def test_errors_form_the_documented_tree() -> None:
    for name in ("APIStatusError", "APIConnectionError", "StreamTimeoutError", "IncompleteStreamError",
                 "MalformedStreamError", "ProviderError", "ResumeError", "CircuitOpenError",
                 "SharedStateError"):
        assert issubclass(getattr(llmstream, name), llmstream.StreamError)
    for name in ("BadRequestError", "AuthenticationError", "PermissionDeniedError", "NotFoundError",
                 "RateLimitError", "ServerError"):
        assert issubclass(getattr(llmstream, name), llmstream.APIStatusError)
    assert issubclass(llmstream.StreamTimeoutError, TimeoutError)
    assert issubclass(llmstream.StreamClosedError, RuntimeError)
    assert issubclass(llmstream.StreamBusyError, RuntimeError)
    assert issubclass(llmstream.TextNotKeptError, RuntimeError)


def test_package_ships_py_typed() -> None:
    from pathlib import Path

    assert (Path(llmstream.__file__).parent / "py.typed").exists()
