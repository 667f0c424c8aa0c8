"""Timing rules of ``Timeout``, tested from the server side so that each rule matters.

* A slow caller is not an idle server: the server is STILL WRITING while the
  caller is slower than ``idle``, and the queue is so small that the worker must
  block on it (a test whose server finished before the caller's first sleep
  passes whatever the rule).
* Keep-alive comments, pings, blank data and empty deltas are not progress.
* ``total`` bounds every attempt and every backoff wait together.

Each rule was broken once in the library to watch its test fail (see the
report of the branch that added this file).
"""

from __future__ import annotations

import threading
import time
from typing import List, Sequence

import pytest

import llmstream
from llmstream import Retry, ServerError, StreamTimeoutError, Timeout

from hostile_server import (
    HostileServer,
    Send,
    Signal,
    Step,
    Wait,
    anthropic_transcript,
    chunked,
    consume,
    head,
    openai_done,
    openai_event,
)

KEY = "sk-test-timing"


def client_for(server: HostileServer, provider: str = "openai", **kwargs: object) -> llmstream.Client:
    kwargs.setdefault("retry", Retry(max_attempts=1))
    base = f"{server.url}/v1" if provider == "openai" else server.url
    return llmstream.Client(provider=provider, base_url=base, api_key=KEY, **kwargs)  # type: ignore[arg-type]


def _chunk(data: bytes) -> bytes:
    return chunked([data], last=False)


# -- a slow caller is not an idle server ------------------------------------------------

WORDS = [f"w{i} " for i in range(6)]
SERVER_GAP = 0.08  # between the server's events: well under idle
IDLE = 0.15
CALLER_SLEEP = 0.2  # per token: longer than idle, and slower than the server


def test_slow_caller_is_not_an_idle_server_while_the_server_is_still_writing(serve) -> None:
    server_done = threading.Event()
    steps: List[Step] = [Send(head(framing="chunked"))]
    for word in WORDS:
        steps += [Send(_chunk(openai_event(word))), Wait(SERVER_GAP)]
    steps += [Send(_chunk(openai_done()) + b"0\r\n\r\n"), Signal(server_done)]
    server = serve([steps])
    # max_buffered=1: after one event the worker blocks on put() until the
    # caller takes it, i.e. for about CALLER_SLEEP > IDLE each time.
    client = client_for(server, max_buffered=1, timeout=Timeout(connect=1, first_token=2, idle=IDLE, total=10))
    got: List[str] = []
    overlapped = False
    with client.stream("hi", model="m") as stream:
        for piece in stream:
            got.append(piece)
            overlapped = overlapped or not server_done.is_set()
            time.sleep(CALLER_SLEEP)
        status = stream.status
    assert (status, "".join(got)) == ("finished", "".join(WORDS))
    # The rule only mattered if the server was still writing while the caller slept.
    assert overlapped, "the server finished before the caller's first sleep: this test proves nothing"
    client.close()


def test_the_idle_clock_starts_when_the_caller_asks_for_more(serve) -> None:
    # The server's gap (0.4 s) is longer than idle (0.3 s), but the caller
    # spends 0.35 s on each token: it asks for the next one 0.05 s before the
    # server sends it. From the caller's side the wait is 0.05 s, so no timeout
    # (0.25 s to spare for a server thread that waits for the CPU on a loaded
    # machine). Measured from the previous token's arrival instead, the clock
    # would run out while the caller was busy (a clock that counts a slow
    # caller): 0.4 s > 0.3 s, and any delay only makes that wait longer.
    gap, idle, caller = 0.4, 0.3, 0.35
    steps: List[Step] = [Send(head(framing="chunked"))]
    for word in WORDS[:4]:
        steps += [Send(_chunk(openai_event(word))), Wait(gap)]
    steps += [Send(_chunk(openai_done()) + b"0\r\n\r\n")]
    server = serve([steps])
    client = client_for(server, timeout=Timeout(connect=1, first_token=2, idle=idle, total=10))
    got: List[str] = []
    with client.stream("hi", model="m") as stream:
        for piece in stream:
            got.append(piece)
            time.sleep(caller)
        status = stream.status
    assert (status, "".join(got)) == ("finished", "".join(WORDS[:4]))
    client.close()


# -- keep-alives are not progress ---------------------------------------------------

_PING_SCRIPTS = {
    "comment": b": ping\n\n",
    "blank-data": b"data: \n\n",
    "empty-content": b'data: {"choices":[{"index":0,"delta":{"content":""}}]}\n\n',
    "role-only": b'data: {"choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n',
}


def _pinging(first: bytes, ping: bytes) -> List[Step]:
    steps: List[Step] = [Send(head(framing="chunked") + (_chunk(first) if first else b""))]
    for _ in range(60):  # 3 s of pings at most; the script ends when the client closes
        steps += [Wait(0.05), Send(_chunk(ping))]
    return steps + [Wait()]


@pytest.mark.parametrize("ping", list(_PING_SCRIPTS), ids=list(_PING_SCRIPTS))
@pytest.mark.parametrize("when,kind,partial", [("after-text", "idle", "Hi"), ("before-text", "first_token", "")])
def test_keepalives_are_not_progress(serve, ping: str, when: str, kind: str, partial: str) -> None:
    first = openai_event("Hi") if when == "after-text" else b""
    server = serve([_pinging(first, _PING_SCRIPTS[ping])])
    client = client_for(server, timeout=Timeout(connect=1, first_token=0.3, idle=0.3, total=5))
    out, _ = consume(client)
    assert (out.error, out.partial, out.attrs.get("kind")) == (StreamTimeoutError, partial, kind), out.describe()
    assert 0.3 <= out.elapsed < 0.7, out.elapsed
    client.close()  # leaks after failures are test_hostile.py's business


def test_anthropic_ping_events_are_not_progress(serve) -> None:
    start = b"".join(anthropic_transcript(["Hi"], stop=False))
    ping = b'event: ping\ndata: {"type": "ping"}\n\n'
    server = serve([_pinging(start, ping)])
    client = client_for(server, "anthropic", timeout=Timeout(connect=1, first_token=0.3, idle=0.3, total=5))
    out, _ = consume(client)
    assert (out.error, out.partial, out.attrs.get("kind")) == (StreamTimeoutError, "Hi", "idle"), out.describe()
    assert 0.3 <= out.elapsed < 0.7, out.elapsed
    client.close()


# -- total bounds retries and backoff waits ---------------------------------------------


def _status_500(headers: Sequence[tuple]) -> List[Step]:
    body = b'{"error":{"message":"busy","type":"server_error"}}'
    return [Send(head(500, headers, framing="length", length=len(body), content_type=b"application/json") + body)]


def test_total_bounds_retries_that_honour_retry_after(serve) -> None:
    server = serve([_status_500([(b"retry-after-ms", b"300")])])
    client = client_for(server, retry=Retry(max_attempts=10, initial_delay=0),
                        timeout=Timeout(connect=1, first_token=2, idle=2, total=1.0))
    out, _ = consume(client)
    # Attempts at about 0, 0.3, 0.6 and 0.9 s; the next wait would pass total, so the last error is raised.
    assert (out.error, out.attrs.get("status_code")) == (ServerError, 500), out.describe()
    assert out.elapsed < 1.1, out.elapsed
    assert out.attrs["attempts"] == len(server.requests) and 3 <= len(server.requests) <= 4
    client.close()


def test_total_refuses_a_backoff_wait_that_cannot_fit(serve) -> None:
    server = serve([_status_500([(b"Retry-After", b"5")])])
    client = client_for(server, retry=Retry(max_attempts=3, initial_delay=0),
                        timeout=Timeout(connect=1, first_token=2, idle=2, total=1.0))
    out, _ = consume(client)
    assert (out.error, out.attrs.get("status_code"), out.attrs.get("attempts")) == (ServerError, 500, 1), out.describe()
    assert out.elapsed < 0.3, out.elapsed
    client.close()


def test_total_bounds_attempts_that_each_stall(serve) -> None:
    server = serve([[Send(head(framing="chunked")), Wait()]])
    client = client_for(server, retry=Retry(max_attempts=10, initial_delay=0),
                        timeout=Timeout(connect=1, first_token=0.4, idle=0.4, total=1.0))
    out, _ = consume(client)
    assert (out.error, out.partial, out.attrs.get("kind")) == (StreamTimeoutError, "", "total"), out.describe()
    assert 1.0 <= out.elapsed < 1.15, out.elapsed
    assert len(server.requests) == 3  # at 0, 0.4 and 0.8 s
    client.close()
