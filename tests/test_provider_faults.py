"""The fake server's scripted faults work the same for the providers whose formats live in their own modules."""

from __future__ import annotations

from typing import Any, Dict

import pytest

import llmstream
from llmstream._exceptions import IncompleteStreamError, MalformedStreamError, StreamTimeoutError
from llmstream.testing import FakeLLMServer, Reply
from llmstream.testing._reply import DEFAULT_TEXT

CALL: Dict[str, Dict[str, Any]] = {
    "gemini": {"model": "gemini-2.5-flash"},
    "vertex": {"model": "gemini-2.5-flash", "project": "p", "location": "us-central1"},
    "azure": {"model": "dep", "api_version": "2024-10-21"},
}
FINISH = {"gemini": "STOP", "vertex": "STOP", "azure": "stop"}
ONCE = llmstream.Retry(max_attempts=1)


@pytest.mark.parametrize("provider", sorted(CALL))
@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(Reply(drip=True), id="drip"),
        pytest.param(Reply(split_seed=7), id="split"),
        pytest.param(Reply(line_ending="\r\n"), id="crlf"),
        pytest.param(Reply(line_ending="\r"), id="cr"),
        pytest.param(Reply(keepalive_every=1), id="keepalive"),
        pytest.param(Reply(events_per_write=3), id="batched"),
        pytest.param(Reply(chunked=False), id="close-delimited"),
    ],
)
def test_clean_faults_deliver_the_whole_answer(provider: str, reply: Reply) -> None:
    with FakeLLMServer() as server:
        server.script(reply)
        client = llmstream.Client(provider, base_url=server.base_url(provider), api_key="k")
        result = client.complete("Hi", retry=ONCE, **CALL[provider])
        assert (result.text, result.finish_reason) == (DEFAULT_TEXT, FINISH[provider])


@pytest.mark.parametrize("provider", sorted(CALL))
@pytest.mark.parametrize(
    "reply, error, partial",
    [
        pytest.param(Reply(text="a b c", close_after_tokens=1), IncompleteStreamError, "a", id="cut"),
        pytest.param(Reply(text="a b c", malformed_at=3), MalformedStreamError, None, id="malformed"),
        pytest.param(Reply(text="a b c", stall_after_tokens=(1, 30.0)), StreamTimeoutError, "a", id="stall"),
    ],
)
def test_failing_faults(provider: str, reply: Reply, error: type, partial: Any) -> None:
    with FakeLLMServer() as server:
        server.script(reply)
        client = llmstream.Client(provider, base_url=server.base_url(provider), api_key="k",
                                  timeout=llmstream.Timeout(idle=0.3))
        with pytest.raises(error) as caught:
            client.complete("Hi", retry=ONCE, **CALL[provider])
        if partial is not None:
            assert caught.value.partial_text == partial


@pytest.mark.parametrize("provider", sorted(CALL))
def test_oversized_line_is_refused(provider: str) -> None:
    with FakeLLMServer() as server:
        server.script(Reply(text="a b", oversized_line=5000))
        client = llmstream.Client(provider, base_url=server.base_url(provider), api_key="k", max_line_length=1024)
        with pytest.raises(MalformedStreamError):
            client.complete("Hi", retry=ONCE, **CALL[provider])


@pytest.mark.parametrize("provider", sorted(CALL))
def test_retry_after_a_cut_replays_exactly_once(provider: str) -> None:
    with FakeLLMServer() as server:
        server.script(Reply(text="one two three four", close_after_tokens=2), Reply(text="one two three four"))
        client = llmstream.Client(provider, base_url=server.base_url(provider), api_key="k",
                                  retry=llmstream.Retry(max_attempts=2, initial_delay=0.01, max_delay=0.01))
        with client.stream("Hi", **CALL[provider]) as s:
            assert "".join(s) == "one two three four"
        assert s.result.attempts == 2


@pytest.mark.parametrize("provider", ["gemini", "vertex"])
def test_gemini_without_its_finish_chunk_is_incomplete(provider: str) -> None:
    with FakeLLMServer() as server:
        server.script(Reply(text="a b c", omit_end_marker=True))
        client = llmstream.Client(provider, base_url=server.base_url(provider), api_key="k")
        with pytest.raises(IncompleteStreamError) as caught:
            client.complete("Hi", retry=ONCE, **CALL[provider])
        assert caught.value.partial_text == "a b c"


def test_azure_without_done_after_the_finish_is_complete() -> None:
    # As for every OpenAI-compatible server: the finish_reason already says the model stopped.
    with FakeLLMServer() as server:
        server.script(Reply(text="a b c", omit_end_marker=True))
        client = llmstream.Client("azure", base_url=server.base_url("azure"), api_key="k")
        result = client.complete("Hi", retry=ONCE, **CALL["azure"])
        assert (result.text, result.finish_reason) == ("a b c", "stop")
