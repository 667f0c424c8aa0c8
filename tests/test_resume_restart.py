"""Resume against servers that do not do what was asked, end to end against the fake server.

A server that ignores the prefill and starts its answer again ("ParParis"),
a continuation that resembles a restart, an SSE id that is not Latin-1 or
cannot be a header at all. Each case asserts the exact text delivered, or the
exact exception with its exact ``partial_text``, and the request the server
received.
"""

from __future__ import annotations

import json
from typing import Any, List

import pytest
import requests

from llmstream import Client, Reset, ResumeError, Retry, TextDelta
from llmstream.testing import FakeLLMServer, RecordedRequest, Reply

TOKENS = ["The", " capital", " of", " France", " is", " Paris", ".", " Ça", " va", " 🎉"]
TEXT = "".join(TOKENS)
CUT = 4
DELIVERED = "".join(TOKENS[:CUT])  # "The capital of France"


def client(server: FakeLLMServer, provider: str, resume: str) -> Client:
    return Client(provider, base_url=server.base_url(provider), api_key="sk-test",
                  retry=Retry(max_attempts=3, initial_delay=0.01, resume=resume))


def collect(server: FakeLLMServer, provider: str, resume: str, **params: Any) -> List[str]:
    got: List[str] = []
    for text in client(server, provider, resume).stream("Capital of France?", model="m", **params):
        got.append(text)
    return got


def is_continue_request(provider: str, request: RecordedRequest, prefill: str) -> bool:
    last = request.json["messages"][-1]
    flag = request.json.get("continue_final_message") is True if provider == "openai" else True
    return flag and last == {"role": "assistant", "content": prefill}


# -- the server ignores the prefill and answers from the beginning ---------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic", "ollama"])
def test_continue_against_a_server_that_starts_again_delivers_once(server: FakeLLMServer, provider: str) -> None:
    server.script(Reply(tokens=TOKENS, close_after_tokens=CUT, event_ids=False),
                  Reply(tokens=TOKENS, ignore_prefill=True, event_ids=False))
    got = collect(server, provider, "continue")
    assert "".join(got) == TEXT
    first, second = server.requests
    assert is_continue_request(provider, second, DELIVERED)


@pytest.mark.parametrize("provider", ["openai", "anthropic", "ollama"])
def test_auto_against_a_server_that_ignores_the_prefill_delivers_once(server: FakeLLMServer, provider: str) -> None:
    # Anthropic continues (its API guarantees the prefill; a proxy may not
    # honour it); the others replay. Either way the caller reads the text once.
    server.script(Reply(tokens=TOKENS, close_after_tokens=CUT, event_ids=False),
                  Reply(tokens=TOKENS, ignore_prefill=True, event_ids=False))
    assert "".join(collect(server, provider, "auto")) == TEXT
    first, second = server.requests
    if provider == "anthropic":
        assert is_continue_request(provider, second, DELIVERED)
    else:
        assert second.json == first.json


def test_restart_held_back_whitespace_is_not_dropped_twice(server: FakeLLMServer) -> None:
    tokens = ["The", " capital ", "of", " France"]
    server.script(Reply(tokens=tokens, close_after_tokens=2, event_ids=False),
                  Reply(tokens=tokens, ignore_prefill=True, event_ids=False))
    assert "".join(collect(server, "anthropic", "continue")) == "The capital of France"
    assert server.requests[1].json["messages"][-1] == {"role": "assistant", "content": "The capital"}


def test_a_restart_that_goes_another_way_is_a_resume_error(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=TOKENS, close_after_tokens=CUT, event_ids=False),
                  Reply(tokens=["The", " capital", " city", " is", " Paris"], ignore_prefill=True, event_ids=False))
    got: List[str] = []
    with pytest.raises(ResumeError) as info:
        for text in client(server, "openai", "continue").stream("q", model="m"):
            got.append(text)
    assert type(info.value) is ResumeError
    assert "".join(got) == DELIVERED
    assert info.value.partial_text == DELIVERED


def test_a_restart_that_goes_another_way_resets_in_events(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=TOKENS, close_after_tokens=CUT, event_ids=False),
                  Reply(tokens=["The", " capital", " city", " is", " Paris"], ignore_prefill=True, event_ids=False))
    s = client(server, "openai", "continue").stream("q", model="m")
    events = [e for e in s.events() if isinstance(e, (TextDelta, Reset))]
    resets = [e for e in events if isinstance(e, Reset)]
    assert resets == [Reset(attempt=2, discarded_text=DELIVERED)]
    after = events[events.index(resets[0]) + 1:]
    assert "".join(e.text for e in after) == "The capital city is Paris"
    assert s.result.text == "The capital city is Paris"


# -- genuine continuations --------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic", "ollama"])
def test_a_continuation_sharing_a_short_start_is_delivered(server: FakeLLMServer, provider: str) -> None:
    # The continuation "- pears" begins like the delivered "- apples": held
    # back for two characters, then delivered whole.
    tokens = ["- ", "apples", "\n", "- ", "pears", "\n"]
    server.script(Reply(tokens=tokens, close_after_tokens=3, event_ids=False), Reply(tokens=tokens, event_ids=False))
    assert "".join(collect(server, provider, "continue")) == "- apples\n- pears\n"
    assert is_continue_request(provider, server.requests[1], "- apples" if provider == "anthropic" else "- apples\n")


def test_the_ambiguous_case_a_continuation_repeating_all_counts_as_a_restart(server: FakeLLMServer) -> None:
    # Delivered "ha"; the model, honouring the prefill, continues "ha!". That
    # is indistinguishable from a server that started again with "ha!", and is
    # read as one (documented in _resume_match.ContinuationFilter): the caller
    # gets "ha!", never a silent "haha!" from a server that restarted.
    server.script(Reply(tokens=["ha", "ha!"], close_after_tokens=1, event_ids=False),
                  Reply(tokens=["ha", "ha!"], event_ids=False))
    assert "".join(collect(server, "openai", "continue")) == "ha!"
    assert is_continue_request("openai", server.requests[1], "ha")


def test_ollama_continue_extends_the_callers_own_prefill(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=TOKENS, close_after_tokens=CUT), Reply(tokens=TOKENS))
    messages = [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "The"}]
    got = list(client(server, "ollama", "continue").stream(messages=messages, model="m"))
    # The server continues "The": the caller reads the continuation, once.
    assert "".join(got) == TEXT[len("The"):]
    first, second = server.requests
    assert first.json["messages"][-1] == {"role": "assistant", "content": "The"}
    assert second.json["messages"][-1] == {"role": "assistant", "content": "The capital of France is"}
    assert second.json["messages"][:-1] == first.json["messages"][:-1]


# -- Last-Event-ID with any id -----------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("resume", ["last-event-id", "auto"])
def test_non_latin1_event_id_reconnects_with_its_utf8_bytes(server: FakeLLMServer, provider: str, resume: str) -> None:
    prefix = "résumé-€-"
    server.script(Reply(tokens=TOKENS, close_after_tokens=CUT, event_id_prefix=prefix, event_ids=True),
                  Reply(tokens=TOKENS, event_id_prefix=prefix, event_ids=True))
    assert "".join(collect(server, provider, resume, max_tokens=50)) == TEXT
    sent = server.requests[1].header("Last-Event-ID")
    assert sent is not None
    raw = sent.encode("latin-1")  # http.server reads header bytes as Latin-1: these are the bytes sent
    assert raw.startswith(prefix.encode("utf-8")) and raw[len(prefix.encode("utf-8")):].isdigit()
    assert server.requests[1].json == server.requests[0].json


@pytest.mark.parametrize("prefix", [pytest.param(" padded-", id="leading-space"),
                                    pytest.param("ctl\x01-", id="control-character")])
@pytest.mark.parametrize(("provider", "fallback"), [("openai", "replay"), ("anthropic", "continue")])
def test_an_id_that_cannot_be_a_header_falls_back_under_auto(server: FakeLLMServer, prefix: str, provider: str,
                                                            fallback: str) -> None:
    server.script(Reply(tokens=TOKENS, close_after_tokens=CUT, event_id_prefix=prefix, event_ids=True),
                  Reply(tokens=TOKENS, event_id_prefix=prefix, event_ids=True))
    assert "".join(collect(server, provider, "auto", max_tokens=50)) == TEXT
    first, second = server.requests
    assert second.header("Last-Event-ID") is None
    if fallback == "continue":
        assert is_continue_request(provider, second, DELIVERED)
    else:
        assert second.json == first.json


def test_an_id_that_cannot_be_a_header_is_a_resume_error_for_last_event_id(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=TOKENS, close_after_tokens=CUT, event_id_prefix=" padded-", event_ids=True), Reply(tokens=TOKENS))
    got: List[str] = []
    with pytest.raises(ResumeError) as info:
        for text in client(server, "openai", "last-event-id").stream("q", model="m"):
            got.append(text)
    assert type(info.value) is ResumeError
    assert info.value.partial_text == DELIVERED
    assert "".join(got) == DELIVERED
    assert len(server.requests) == 1


# -- the fake server's own behaviour, so the tests above test what they say ---------------


@pytest.mark.parametrize(("ignore", "expected"), [(False, " capital of France"), (True, "The capital of France")])
def test_fake_server_ignore_prefill_answers_from_the_beginning(server: FakeLLMServer, ignore: bool,
                                                               expected: str) -> None:
    server.script(Reply(tokens=TOKENS[:CUT], ignore_prefill=ignore))
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "The"}]
    body = requests.post(server.base_url("ollama") + "/api/chat", json={"model": "m", "messages": messages},
                         timeout=5)
    lines = [json.loads(line) for line in body.content.splitlines()]
    assert "".join(line["message"]["content"] for line in lines) == expected


def test_fake_server_reads_a_utf8_last_event_id(server: FakeLLMServer) -> None:
    prefix = "résumé-€-"
    server.script(Reply(tokens=TOKENS[:CUT], event_id_prefix=prefix, event_ids=True))
    body = requests.post(server.base_url("openai") + "/chat/completions",
                         json={"model": "m", "messages": [{"role": "user", "content": "q"}], "stream": True},
                         headers={"Last-Event-ID": f"{prefix}2".encode()}, timeout=5).content
    ids = [line[4:] for line in body.split(b"\n") if line.startswith(b"id: ")]
    assert ids and ids[0] == f"{prefix}3".encode()


def test_after_a_reset_the_new_answer_is_what_a_later_resume_matches(server: FakeLLMServer) -> None:
    # Break, replay that diverges (Reset), break again, replay: the third
    # answer is matched against the text delivered since the Reset.
    second = ["The", " answer", " is", " Paris", "."]
    server.script(Reply(tokens=TOKENS, close_after_tokens=CUT), Reply(tokens=second, close_after_tokens=3),
                  Reply(tokens=second))
    s = client(server, "openai", "replay").stream("q", model="m")
    events = [e for e in s.events() if isinstance(e, (TextDelta, Reset))]
    after = events[events.index(Reset(attempt=2, discarded_text=DELIVERED)) + 1:]
    assert "".join(e.text for e in after) == "The answer is Paris."
    assert s.result.text == "The answer is Paris."
    assert len(server.requests) == 3
