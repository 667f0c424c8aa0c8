"""The sans-IO resume rules: matching a continuation or a replay, the Last-Event-ID value, the order of ways.

A continuation is fed whole, one character at a time and split in two at
every point: where the network cut the text must never change what the
caller gets (the rule is about text, not about pieces).
"""

from __future__ import annotations

from typing import Any, List, Sequence

import pytest
import requests.utils
from hypothesis import given
from hypothesis import strategies as st

from llmstream import Finish, IncompleteStreamError, Reset, ResumeError, TextDelta, ToolCallDelta, Usage
from llmstream._providers._base import StreamDecoder
from llmstream._providers.anthropic import AnthropicProvider
from llmstream._providers.ollama import OllamaProvider
from llmstream._providers.openai_chat import OpenAIChatProvider
from llmstream._resume import MAX_LAST_EVENT_ID_BYTES, Resumer, last_event_id_header
from llmstream._resume_match import ContinuationFilter, ReplayFilter, restart_threshold


def splits(text: str) -> List[List[str]]:
    """``text`` whole, one character at a time, and in two at every point."""
    ways = [[text], list(text)]
    ways.extend([text[:i], text[i:]] for i in range(1, len(text)))
    return ways


def merged(events: Sequence[Any]) -> List[Any]:
    """Adjacent text deltas joined, empty ones dropped: what the caller reads."""
    out: List[Any] = []
    for event in events:
        if isinstance(event, TextDelta):
            if not event.text:
                continue
            if out and isinstance(out[-1], TextDelta):
                out[-1] = TextDelta(out[-1].text + event.text)
                continue
        out.append(event)
    return out


def continue_with(delivered: str, pieces: Sequence[str], held_back: str = "", end: bool = True) -> List[Any]:
    f = ContinuationFilter(delivered, held_back, attempt=2)
    events: List[Any] = []
    for piece in pieces:
        events.extend(f.filter([TextDelta(piece)]))
    if end:
        events.extend(f.filter([Finish("stop")]))
    return merged(events)


def reset(delivered: str, *text: str) -> List[Any]:
    return [Reset(attempt=2, discarded_text=delivered), *[TextDelta(t) for t in text], Finish("stop")]


CASES = [
    # (delivered, continuation, held back, what the caller gets after the delivered text)
    pytest.param("Paris is", " big.", "", [TextDelta(" big."), Finish("stop")], id="genuine"),
    pytest.param("Par", "Paris is big.", "", [TextDelta("is is big."), Finish("stop")], id="ParParis-restart"),
    pytest.param("The capital ", "The capital of France", " ", [TextDelta("of France"), Finish("stop")],
                 id="restart-with-held-back-whitespace"),
    pytest.param("The capital ", " of France", " ", [TextDelta("of France"), Finish("stop")],
                 id="held-back-whitespace-repeated"),
    pytest.param("The capital\n\n", "\nof", "\n\n", [TextDelta("of"), Finish("stop")], id="held-back-partly-repeated"),
    pytest.param("The capital ", "of France", " ", [TextDelta("of France"), Finish("stop")],
                 id="held-back-whitespace-not-repeated"),
    pytest.param("- apples\n", "- pears\n", "", [TextDelta("- pears\n"), Finish("stop")],
                 id="short-shared-start-is-a-continuation"),
    pytest.param("ha", "ha!", "", [TextDelta("!"), Finish("stop")], id="ambiguous-repeat-of-all-counts-as-restart"),
    pytest.param("Paris", "Paris", "", [Finish("stop")], id="restart-with-the-same-answer"),
    pytest.param("Paris", "", "", [Finish("stop")], id="empty-continuation"),
    pytest.param("The capital of France", "The capital city of France", "",
                 reset("The capital of France", "The capital city of France"), id="restart-that-went-another-way"),
    pytest.param("Paris is big", "Paris is", "", reset("Paris is big", "Paris is"), id="restart-that-ended-early"),
    pytest.param("- apples\n", "- ", "", [TextDelta("- "), Finish("stop")], id="short-continuation-ending-inside"),
]


@pytest.mark.parametrize(("delivered", "continuation", "held_back", "expected"), CASES)
def test_continuation_at_every_split(delivered: str, continuation: str, held_back: str, expected: List[Any]) -> None:
    for pieces in splits(continuation) if continuation else [[]]:
        assert continue_with(delivered, pieces, held_back) == expected, pieces


def test_continuation_is_held_while_it_repeats_the_delivered_start() -> None:
    f = ContinuationFilter("Paris is big", "", attempt=2)
    assert f.filter([TextDelta("Par")]) == []
    assert f.filter([TextDelta("is"), Usage(1, 2)]) == [Usage(1, 2)]  # not text: it passes at once
    assert f.filter([TextDelta(" is big, yes")]) == [TextDelta(", yes")]
    assert f.filter([TextDelta("!")]) == [TextDelta("!")]


def test_a_tool_call_ends_the_text_and_decides() -> None:
    f = ContinuationFilter("- apples\n", "", attempt=2)
    call = ToolCallDelta(0, "c1", "f", "{}")
    assert f.filter([TextDelta("- "), call]) == [TextDelta("- "), call]


def test_restart_threshold() -> None:
    assert [restart_threshold(n) for n in (1, 2, 3, 4, 21, 128, 10_000)] == [1, 1, 2, 2, 11, 64, 64]


def test_replay_that_ends_inside_the_delivered_text_resets() -> None:
    f = ReplayFilter("Paris is big", "", {}, attempt=2)
    assert f.filter([TextDelta("Paris")]) == []
    assert f.filter([Finish("stop")]) == [Reset(attempt=2, discarded_text="Paris is big"), TextDelta("Paris"),
                                          Finish("stop")]


def test_replay_that_repeats_all_then_ends_is_exact() -> None:
    f = ReplayFilter("Paris", "", {}, attempt=2)
    assert f.filter([TextDelta("Paris"), Finish("stop")]) == [Finish("stop")]


# -- Last-Event-ID -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_id", "value"),
    [
        pytest.param("42", b"42", id="ascii"),
        pytest.param("résumé-€", "résumé-€".encode(), id="utf8-not-latin1"),
        pytest.param("a b\tc", b"a b\tc", id="inner-space-and-tab"),
        pytest.param("\u0085x", b"\xc2\x85x", id="unicode-control-is-obs-text"),
        pytest.param(" x", None, id="leading-space"),
        pytest.param("x ", None, id="trailing-space"),
        pytest.param("\tx", None, id="leading-tab"),
        pytest.param("a\x01b", None, id="control-character"),
        pytest.param("a\x7fb", None, id="delete"),
        pytest.param("", None, id="empty"),
        pytest.param("\ud800", None, id="lone-surrogate"),
        pytest.param("x" * (MAX_LAST_EVENT_ID_BYTES + 1), None, id="overlong"),
    ],
)
def test_last_event_id_header(event_id: str, value: Any) -> None:
    assert last_event_id_header(event_id) == value


@given(st.text(alphabet=st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)), max_size=20))
def test_every_id_sent_is_a_header_requests_accepts(event_id: str) -> None:
    value = last_event_id_header(event_id)
    if value is not None:
        requests.utils.check_header_validity(("Last-Event-ID", value))  # raises InvalidHeader if not
        assert value.decode("utf-8") == event_id


# -- the Resumer: which way, and in what order ----------------------------------------


def openai_decoder(event_id: str) -> StreamDecoder:
    d = StreamDecoder(OpenAIChatProvider().new_decoder(), framing="sse")
    block = f'id:{event_id}\ndata: {{"choices":[{{"index":0,"delta":{{"content":"Par"}}}}]}}\n\n'
    assert d.feed(block.encode()) == [TextDelta("Par")]
    return d


def resumer(provider: Any, mode: str) -> Resumer:
    spec = provider.build_request(base_url="http://x", api_key="k", model="m",
                                  messages=[{"role": "user", "content": "q"}], params={})
    r = Resumer(provider, spec, mode, max_line_length=1 << 16)
    r.new_decoder()
    assert r.filter([TextDelta("Par")]) == [TextDelta("Par")]
    return r


BROKEN = IncompleteStreamError("cut")


@pytest.mark.parametrize(
    ("provider", "way"),
    [(AnthropicProvider(), "continue"), (OpenAIChatProvider(), "replay"), (OllamaProvider(), "replay")],
    ids=["anthropic-guaranteed-prefill", "openai-best-effort", "ollama-best-effort"],
)
def test_auto_prefers_replay_unless_the_prefill_is_guaranteed(provider: Any, way: str) -> None:
    r = resumer(provider, "auto")
    r.next_request(BROKEN, None)
    assert r.strategy == way


def test_utf8_event_id_goes_as_bytes() -> None:
    r = resumer(OpenAIChatProvider(), "last-event-id")
    spec = r.next_request(BROKEN, openai_decoder("résumé-€"))
    assert spec.headers["Last-Event-ID"] == "résumé-€".encode()


def test_an_id_that_cannot_be_a_header_falls_back_under_auto() -> None:
    r = resumer(OpenAIChatProvider(), "auto")
    spec = r.next_request(BROKEN, openai_decoder("  padded"))
    assert r.strategy == "replay" and "Last-Event-ID" not in spec.headers


def test_an_id_that_cannot_be_a_header_is_a_resume_error_for_last_event_id() -> None:
    r = resumer(OpenAIChatProvider(), "last-event-id")
    with pytest.raises(ResumeError, match="cannot be sent as a header value"):
        r.next_request(BROKEN, openai_decoder("  padded"))


def test_ollama_continue_request_extends_a_final_assistant_message() -> None:
    provider = OllamaProvider()
    spec = provider.build_request(base_url="http://x", api_key=None, model="m", params={},
                                  messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "The"}])
    resumed = provider.continue_request(spec, " capital")
    assert resumed.json is not None and resumed.json["messages"][-1] == {"role": "assistant", "content": "The capital"}
    assert spec.json is not None and spec.json["messages"][-1]["content"] == "The"  # the original is untouched
    fresh = provider.build_request(base_url="http://x", api_key=None, model="m", params={},
                                   messages=[{"role": "user", "content": "q"}])
    appended = provider.continue_request(fresh, "Par")
    assert appended.json is not None and appended.json["messages"][-1] == {"role": "assistant", "content": "Par"}
    assert provider.continue_request(fresh, "") is fresh
