"""The value classes (events, results, request specs) behave as frozen dataclasses did,
and importing llmstream stays light (issue 14, item 10)."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from llmstream import Distribution, StreamMetrics, StreamResult, TextDelta, ThinkingDelta, ToolCall, ToolCallDelta, Usage
from llmstream._providers._base import RequestSpec
from llmstream._record import FrozenInstanceError, unfrozen_twin
from llmstream.sse import ServerSentEvent

ROOT = Path(__file__).resolve().parent.parent

VALUES = [
    TextDelta("Par"),
    ToolCallDelta(0, "call_1", "weather", '{"city"'),
    ToolCall(0, "call_1", "weather", ("Paris",), '{"city": "Paris"}'),
    Usage(3, 7),
    Distribution(count=2, total=0.3, min=0.1, p50=0.1, p90=0.2, p99=0.2, max=0.2),
    StreamMetrics(time_to_first_token=0.1, duration=1.0, text_deltas=5, errors=("ServerError",)),
    StreamResult("Paris", finish_reason="stop", usage=Usage(1, 2)),
    ServerSentEvent("message", "data", "7"),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_values_are_frozen_equal_by_fields_and_survive_pickle_and_copy(value: object) -> None:
    assert pickle.loads(pickle.dumps(value)) == value
    assert copy.copy(value) == value and copy.deepcopy(value) == value
    with pytest.raises(FrozenInstanceError):
        value.text = "x"  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        del value.__match_args__  # type: ignore[misc]
    assert not hasattr(value, "__dict__")  # slotted


def test_an_event_built_through_its_unfrozen_twin_is_an_ordinary_frozen_one() -> None:
    # The per-token hot paths build TextDelta and ServerSentEvent this way (issue 17).
    import llmstream._providers.openai_chat as chat
    for twin in (unfrozen_twin(TextDelta), chat._UnfrozenTextDelta):
        event = twin()
        event.text = "Par"
        event.__class__ = TextDelta
        assert type(event) is TextDelta and event == TextDelta("Par") and hash(event) == hash(TextDelta("Par"))
        assert repr(event) == "TextDelta(text='Par')" and pickle.loads(pickle.dumps(event)) == event
        with pytest.raises(FrozenInstanceError):
            event.text = "x"
        assert not hasattr(event, "__dict__")
    with pytest.raises(TypeError):  # a layout that differs cannot take the class
        odd = unfrozen_twin(ToolCallDelta)()
        odd.__class__ = TextDelta


def test_repr_eq_hash_replace_and_match_as_dataclasses() -> None:
    assert repr(TextDelta("hi")) == "TextDelta(text='hi')"
    assert repr(Usage(1, 2)) == ("Usage(input_tokens=1, output_tokens=2, raw={}, cached_input_tokens=None, "
                                 "cache_write_tokens=None, reasoning_tokens=None)")
    assert TextDelta("a") == TextDelta("a") and TextDelta("a") != TextDelta("b")
    assert TextDelta("a") != ThinkingDelta("a") and hash(TextDelta("a")) == hash(TextDelta("a"))  # same fields, other class
    assert ToolCallDelta(0, None, None, "x").replace(id="c") == ToolCallDelta(0, "c", None, "x")
    with pytest.raises(TypeError, match="TextDelta has no field nope"):
        TextDelta("a").replace(nope=1)
    match TextDelta("hi"):
        case TextDelta(text):
            assert text == "hi"
    assert StreamResult("x").metrics == StreamMetrics()
    assert Usage().raw == {} and Usage().raw is not Usage().raw


def test_a_request_specs_repr_never_shows_its_headers() -> None:
    spec = RequestSpec("POST", "https://api.example/v1/chat/completions", {"Authorization": "Bearer sk-secret-123456"})
    assert repr(spec) == "RequestSpec(method='POST', url='https://api.example/v1/chat/completions', json=None)"
    assert spec.replace(json={"a": 1}).headers == spec.headers


def test_import_llmstream_stays_light() -> None:
    # backoff's package imports asyncio; dataclasses imports inspect, dis and ast: none of
    # them is needed to stream (bench/COLDSTART_NOTES.md), nor are the other providers.
    code = ("import sys, llmstream\n"
            "print(sorted(m for m in ('asyncio', 'backoff', 'dataclasses', 'inspect', 'difflib',"
            " 'llmstream._providers.anthropic', 'llmstream._providers.ollama') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\n"
