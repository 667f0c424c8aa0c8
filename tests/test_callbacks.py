"""Callbacks: on_text, on_event, on_retry, on_error, on_complete fire in the consumer's thread for exactly what it is given."""

from __future__ import annotations

import threading
from typing import Any, List

import pytest

import llmstream
from llmstream.testing import FakeLLMServer, Reply

TOKENS = ["The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", "."]
TEXT = "".join(TOKENS)


def client_for(server: FakeLLMServer, **kwargs: Any) -> llmstream.Client:
    return llmstream.Client(base_url=server.base_url("openai"), api_key="test-key", **kwargs)


def test_complete_with_callbacks_fires_each_in_the_consumers_thread(server: FakeLLMServer) -> None:
    server.script(Reply(text=TEXT, tokens=TOKENS))
    seen: List[Any] = []
    threads = set()

    def record(kind: str) -> Any:
        def callback(value: Any) -> None:
            threads.add(threading.get_ident())
            seen.append((kind, value))
        return callback

    result = client_for(server).complete("hi", model="m", on_text=record("text"), on_complete=record("complete"),
                                         on_error=record("error"))
    assert [v for k, v in seen if k == "text"] == TOKENS
    assert seen[-1] == ("complete", result) and result.text == TEXT
    assert threads == {threading.get_ident()}


def test_on_event_sees_every_event_iteration_gives(server: FakeLLMServer) -> None:
    server.script(Reply(text=TEXT, tokens=TOKENS))
    seen: List[Any] = []
    with client_for(server).stream("hi", model="m", on_event=seen.append) as s:
        given = list(s.events())
    assert seen == given


def test_client_callbacks_and_stream_overrides(server: FakeLLMServer) -> None:
    server.script(Reply(text=TEXT, tokens=TOKENS), Reply(text="Paris"))
    from_client: List[str] = []
    from_stream: List[str] = []
    client = client_for(server, on_text=from_client.append)
    assert "".join(client.stream("hi", model="m")) == TEXT
    assert "".join(client.stream("hi", model="m", on_text=from_stream.append)) == "Paris"
    assert "".join(from_client) == TEXT and from_stream == ["Paris"]


def test_on_retry_and_on_error(server: FakeLLMServer) -> None:
    server.script(Reply(text=TEXT, tokens=TOKENS, close_after_tokens=2), Reply(text=TEXT, tokens=TOKENS, close_after_tokens=4))
    retries: List[llmstream.Retrying] = []
    errors: List[BaseException] = []
    texts: List[str] = []
    with pytest.raises(llmstream.IncompleteStreamError) as info:
        client_for(server, retry=2).complete("hi", model="m", on_retry=retries.append, on_error=errors.append,
                                             on_text=texts.append)
    assert [r.attempt for r in retries] == [2]
    assert errors == [info.value]
    # Exactly what was given: the replay's repeat of "The quick" was never handed out twice.
    assert "".join(texts) == info.value.partial_text and TEXT.startswith(info.value.partial_text)
    assert len(info.value.partial_text) > len("The quick")


def test_exception_in_callback_closes_the_stream_with_its_cause(server: FakeLLMServer) -> None:
    server.script(Reply(token_count=100_000, interval=0.001))
    seen: List[str] = []

    def on_text(text: str) -> None:
        seen.append(text)
        if len(seen) == 3:
            raise ValueError("boom")

    s = client_for(server).stream("hi", model="m", on_text=on_text)
    with pytest.raises(llmstream.CallbackError) as info:
        for _ in s:
            pass
    assert isinstance(info.value.__cause__, ValueError) and info.value.callback == "on_text"
    assert info.value.partial_text == "tok0 tok1 tok2"
    assert s.status == "closed"
    server.wait_for_requests(1)


def test_exception_in_on_event_for_a_non_text_event(server: FakeLLMServer) -> None:
    server.script(Reply(text=TEXT, tokens=TOKENS))

    def on_event(event: Any) -> None:
        if isinstance(event, llmstream.Finish):
            raise KeyError("no")

    with pytest.raises(llmstream.CallbackError) as info:
        client_for(server).complete("hi", model="m", on_event=on_event)
    assert isinstance(info.value.__cause__, KeyError) and info.value.callback == "on_event"


def test_on_text_print_streams_without_newlines(server: FakeLLMServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.script(Reply(text=TEXT, tokens=TOKENS))
    llmstream.complete("hi", model="m", base_url=server.base_url("openai"), api_key="k", on_text=print)
    assert capsys.readouterr().out == TEXT


def test_callback_must_be_callable(server: FakeLLMServer) -> None:
    with pytest.raises(TypeError, match="on_text must be callable"):
        client_for(server, on_text="print")
