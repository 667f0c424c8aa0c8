"""Stream setup (issue 17): the client's own session prepares its requests itself, as requests would.

``Transport._send`` hands a request prepared by llmstream straight to the mounted
adapter instead of ``Session.request`` (~170 us of a short stream's ~1 ms). These
tests hold it to requests' own result: the same request line and headers, in the
same order, as a caller's ``requests.Session`` sends (which still goes through
``Session.request``); the session's cookies kept and sent; a header requests
refuses refused; every URL requests cannot send refused with requests' message.
"""

from __future__ import annotations

import pickle
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import requests

from llmstream import APIConnectionError, AuthenticationError, Client, _worker
from llmstream._events import Distribution, StreamMetrics, StreamReport, deferred_metrics
from llmstream._histogram import Histogram
from llmstream._monitor import monitor
from llmstream._queue import Signal
from llmstream.testing import DEFAULT_TEXT, FakeLLMServer, Reply


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No proxy or CA bundle from the environment, no ~/.netrc: a caller's session (trust_env) reads them."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent/netrc")
    yield monkeypatch


def sent(server: FakeLLMServer, session: Optional[requests.Session], base_url: str, provider: str = "openai",
         **call: Any) -> Tuple[str, str, Dict[str, str], List[Tuple[str, str]]]:
    client = Client(provider, base_url=base_url, api_key="sk-test-0123456789abcdef", session=session, retry=1)
    try:
        assert client.complete("Hi", model="m", **call).text == DEFAULT_TEXT
    finally:
        client.close()
    request = server.requests[-1]
    return request.method, request.path, request.query, list(request.headers.items())


@pytest.mark.parametrize("provider, call, userinfo", [
    pytest.param("openai", {}, "", id="openai"),
    pytest.param("anthropic", {}, "", id="anthropic"),
    pytest.param("ollama", {}, "", id="ollama"),
    pytest.param("openai", {"extra_headers": {"Accept": "*/*", "X-Trace": "t 1", "User-Agent": "mine/1"}}, "",
                 id="caller-headers"),
    pytest.param("openai", {"extra_headers": {"Cookie": "mine=1", "Content-Length": "5"}}, "", id="cookie-and-length"),
    pytest.param("openai", {"extra_query": {"api-version": "2024-10-21", "q": "a b/é"}}, "", id="query-requoted"),
    pytest.param("openai", {}, "us%40er:p%3Ass@", id="userinfo-basic-auth"),
])
def test_the_own_session_sends_what_requests_sends(server: FakeLLMServer, clean_env: pytest.MonkeyPatch,
                                                   provider: str, call: Dict[str, Any], userinfo: str) -> None:
    base_url = server.base_url(provider).replace("http://", f"http://{userinfo}")
    own = sent(server, None, base_url, provider, **call)
    theirs = sent(server, requests.Session(), base_url, provider, **call)
    assert own == theirs
    headers = dict(own[3])
    if userinfo:
        assert headers["Authorization"] == "Basic dXNAZXI6cDpzcw=="  # requests' rule, kept: user:password@ wins


@pytest.mark.parametrize("session", [None, requests.Session()], ids=["own", "callers"])
def test_a_cookie_the_server_sets_is_sent_back_and_a_callers_cookie_header_wins(
        server: FakeLLMServer, clean_env: pytest.MonkeyPatch, session: Optional[requests.Session]) -> None:
    # Cloudflare's __cf_bm, as api.openai.com sets it: the official SDKs (httpx) send it back.
    server.script(Reply(headers={"Set-Cookie": "__cf_bm=abc; Path=/; HttpOnly"}), Reply(), Reply())
    client = Client(base_url=server.base_url("openai"), api_key="k", session=session)
    for _ in range(2):
        assert client.complete("Hi", model="m").text == DEFAULT_TEXT
    assert client.complete("Hi", model="m", extra_headers={"Cookie": "mine=1"}).text == DEFAULT_TEXT
    assert [r.header("Cookie") for r in server.requests] == [None, "__cf_bm=abc", "mine=1"]
    # Where requests puts it: after the request's headers, before Content-Length.
    assert [name for name, _ in server.requests[1].headers.items()] == [
        "Host", "User-Agent", "Accept-Encoding", "Accept", "Connection", "Content-Type", "Authorization", "Cookie",
        "Content-Length"]
    client.close()


def test_a_cookie_for_another_path_is_not_sent(server: FakeLLMServer) -> None:
    server.script(Reply(headers={"Set-Cookie": "other=1; Path=/elsewhere"}), Reply())
    client = Client(base_url=server.base_url("openai"), api_key="k")
    for _ in range(2):
        assert client.complete("Hi", model="m").text == DEFAULT_TEXT
    assert [r.header("Cookie") for r in server.requests] == [None, None]
    client.close()


def test_a_header_requests_refuses_is_refused_before_anything_is_sent(server: FakeLLMServer) -> None:
    client = Client(base_url=server.base_url("openai"), api_key="sk-proj-0123456789abcdefghijklmnop\n", retry=1)
    with pytest.raises(APIConnectionError) as caught:
        client.complete("Hi", model="m")
    assert str(caught.value) == (
        f"could not connect to {server.base_url('openai')}/chat/completions: Invalid leading whitespace, reserved "
        "character(s), or return character(s) in header value: 'Bearer <redacted>\\n'"
    )
    assert server.requests == []
    client.close()


@pytest.mark.parametrize("base_url", [
    pytest.param("ftp://h/v1", id="no-adapter"),
    pytest.param("http:///v1", id="no-host"),
    pytest.param("http://exa mple.com/v1", id="bad-host"),
])
def test_a_url_requests_cannot_send_is_refused_with_its_message_twice(base_url: str) -> None:
    messages = []
    for session in (None, None, requests.Session()):  # the second: nothing kept of a URL that failed
        client = Client(base_url=base_url, api_key="k", session=session, retry=1)
        with pytest.raises(ValueError) as caught:
            client.complete("Hi", model="m")
        messages.append(str(caught.value))
        client.close()
    assert messages[0] == messages[1] == messages[2]


def test_settings_put_on_the_own_session_go_through_requests(server: FakeLLMServer) -> None:
    # llmstream's own tools reach its session (llmstream debug records with a response hook).
    client = Client(base_url=server.base_url("openai"), api_key="k")
    assert client.complete("Hi", model="m").text == DEFAULT_TEXT  # a first request: its URL is prepared and kept
    session = client._transport.session
    seen: List[int] = []
    session.hooks["response"].append(lambda response, **kwargs: seen.append(response.status_code))
    session.auth = ("us@er", "p:ss")
    assert client.complete("Hi", model="m").text == DEFAULT_TEXT
    assert seen == [200]
    assert [r.header("Authorization") for r in server.requests] == ["Bearer k", "Basic dXNAZXI6cDpzcw=="]
    client.close()


def test_a_callers_session_keeps_its_auth_hooks_and_environment(server: FakeLLMServer,
                                                                 clean_env: pytest.MonkeyPatch) -> None:
    from test_options import Relay, fake_address

    proxy = Relay(fake_address(server), proxy=True)
    try:
        clean_env.setenv("HTTP_PROXY", proxy.url)  # a caller's session reads it (trust_env), as requests does
        session = requests.Session()
        session.auth = ("us@er", "p:ss")
        seen: List[int] = []
        session.hooks["response"].append(lambda response, **kwargs: seen.append(response.status_code))
        client = Client(base_url="http://callers.example.invalid/v1", api_key="k", session=session)
        assert client.complete("Hi", model="m").text == DEFAULT_TEXT
        assert seen == [200]
        assert proxy.lines == ["POST http://callers.example.invalid/v1/chat/completions HTTP/1.1"]
        assert server.requests[0].header("Authorization") == "Basic dXNAZXI6cDpzcw=="
        client.close()
        session.close()
    finally:
        proxy.stop()


def test_prepared_urls_kept_are_bounded(server: FakeLLMServer) -> None:
    client = Client(base_url=server.base_url("openai"), api_key="k")
    for n in range(70):  # a query of its own per request (a request id, a resume cursor)
        assert client.complete("Hi", model="m", extra_query={"n": str(n)}).text == DEFAULT_TEXT
    assert [r.query for r in server.requests][-1] == {"n": "69"}
    assert 0 < len(client._transport._targets) <= 64
    adapter = client._transport.session.get_adapter(server.base_url("openai"))
    assert 0 < len(adapter._keys) <= 64 and 0 < len(adapter._paths) <= 64
    client.close()


def test_the_pool_is_asked_of_the_pool_manager_each_time(server: FakeLLMServer) -> None:
    client = Client(base_url=server.base_url("openai"), api_key="k")
    for _ in range(2):
        assert client.complete("Hi", model="m").text == DEFAULT_TEXT
    adapter = client._transport.session.get_adapter(server.base_url("openai"))
    assert len(adapter._keys) == 1  # the pool key urllib3 used, kept...
    assert len(adapter.poolmanager.pools) == 1 and server.requests[0].client_port == server.requests[1].client_port
    [dropped] = [adapter.poolmanager.pools[key] for key in adapter.poolmanager.pools.keys()]
    adapter.poolmanager.clear()  # as when the manager drops it (least recently used of too many)
    assert client.complete("Hi", model="m").text == DEFAULT_TEXT
    [pool] = [adapter.poolmanager.pools[key] for key in adapter.poolmanager.pools.keys()]
    assert pool is not dropped and pool.num_connections == 1  # a new pool, made by the manager, used
    assert len({r.client_port for r in server.requests}) == 2  # ...the same pool and connection, until dropped
    client.close()


# -- the starter: a thread for a stream its caller did not iterate in time ----------------


def test_a_stream_started_while_the_starter_sleeps_longer_still_starts_on_time(
        server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # The starter sleeps until the first stream's grace (30 s) is over; the second
    # stream's grace is 20 ms: the starter must wake for it, and take it first.
    client = Client(base_url=server.base_url("openai"), api_key="k")
    monkeypatch.setattr(_worker, "START_GRACE", 30.0)
    waiting = client.stream("Hi", model="m")
    assert wait_until(lambda: _worker._starter._sleeps_until > time.monotonic() + 20)
    monkeypatch.setattr(_worker, "START_GRACE", 0.02)
    started = time.monotonic()
    prompt = client.stream("Hi", model="m")
    assert len(server.wait_for_requests(1, timeout=5.0)) == 1  # sent by a worker thread: nobody iterates it
    assert time.monotonic() - started < 2.0
    assert "".join(prompt) == DEFAULT_TEXT
    waiting.close()  # never sent: it just ends
    assert server.requests[1:] == []
    client.close()


def test_streams_due_after_the_one_the_starter_waits_for_do_not_wake_it(
        server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    client = Client(base_url=server.base_url("openai"), api_key="k")
    monkeypatch.setattr(_worker, "START_GRACE", 30.0)
    first = client.stream("Hi", model="m")
    assert wait_until(lambda: _worker._starter._sleeps_until > time.monotonic() + 20)
    wakes = []
    original = Signal.set

    def counting_set(signal: Signal) -> None:
        if signal is _worker._starter._wake:
            wakes.append(signal)
        original(signal)

    monkeypatch.setattr(Signal, "set", counting_set)
    others = [client.stream("Hi", model="m") for _ in range(5)]
    assert wakes == []  # was one per stream: a thread switch each
    for stream in [first, *others]:
        stream.close()
    assert server.requests == []
    client.close()


def test_streams_due_within_half_a_grace_are_given_their_threads_in_one_wake_up(
        server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    client = Client(base_url=server.base_url("openai"), api_key="k")
    waits = []
    original = Signal.wait

    def counting_wait(signal: Signal, timeout: Optional[float]) -> None:
        if signal is _worker._starter._wake:
            waits.append(timeout)
        original(signal, timeout)

    monkeypatch.setattr(Signal, "wait", counting_wait)
    monkeypatch.setattr(_worker, "START_GRACE", 0.4)
    started = time.monotonic()
    streams = []
    for _ in range(5):  # 10 ms apart: due within 0.2 s (half the grace) of the first
        streams.append(client.stream("Hi", model="m"))
        time.sleep(0.01)
    assert len(server.wait_for_requests(5, timeout=5.0)) == 5  # sent by threads of their own: nobody iterates
    assert time.monotonic() - started >= 0.4  # not before the grace
    # One sleep until the first is due (and half a grace), one more after them if
    # another entry is left (another test's); it was one per stream.
    assert len(waits) <= 2
    assert ["".join(stream) for stream in streams] == [DEFAULT_TEXT] * 5
    client.close()


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


# -- the stream's end: its final metrics' distributions are made when first read -------------


def test_final_metrics_summarise_their_histograms_when_first_read(
        server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    made: List[Histogram] = []
    summary = Histogram.summary

    def counting_summary(histogram: Histogram) -> Distribution:
        made.append(histogram)
        return summary(histogram)

    monkeypatch.setattr(Histogram, "summary", counting_summary)
    server.script(Reply(token_count=6, interval=0.005))
    client = Client(base_url=server.base_url("openai"), api_key="k")
    reports: List[StreamReport] = []
    unsubscribe = monitor.subscribe(reports.append)
    try:
        stream = client.stream("Hi", model="m")
        "".join(stream)
    finally:
        unsubscribe()
    metrics = stream.metrics
    assert made == [] and reports[0].metrics is metrics  # the monitor counted it without a percentile
    stats = stream._worker.stats
    eager = StreamMetrics(**{name: getattr(metrics, name) for name in StreamMetrics.__match_args__})
    assert len(made) == 3  # each made once, on first read...
    assert metrics.chunk_gap is metrics.chunk_gap and len(made) == 3  # ...and kept
    assert metrics.chunk_gap == summary(stats.gaps) and metrics.chunk_gap.count == 5
    assert metrics.chunk_size == summary(stats.chunk_sizes) and metrics.chunk_size.count == metrics.chunks
    assert metrics.read_time == summary(stats.read_times)
    assert metrics.bytes_received == int(metrics.chunk_size.total)
    assert (eager == metrics, hash(eager) == hash(metrics), repr(eager) == repr(metrics)) == (True, True, True)
    client.close()


def test_deferred_metrics_compare_hash_print_and_pickle_as_their_values() -> None:
    gap, size, read = Distribution(count=2, total=0.1, min=0.04, p50=0.05, p90=0.06, p99=0.06, max=0.06), \
        Distribution(count=3, total=900.0, min=250.0, p50=300.0, p90=350.0, p99=350.0, max=350.0), Distribution()
    fields = dict(duration=1.5, text_deltas=3, chunks=3, bytes_received=900, attempts=1)
    eager = StreamMetrics(chunk_gap=gap, chunk_size=size, read_time=read, **fields)
    for use in (lambda m: m == eager, lambda m: hash(m) == hash(eager), lambda m: repr(m) == repr(eager),
                lambda m: pickle.loads(pickle.dumps(m)) == eager, lambda m: m.replace(attempts=1) == eager,
                lambda m: eager == m):
        assert use(deferred_metrics(lambda: gap, lambda: size, lambda: read, **fields))


def test_a_key_is_cut_into_fragments_only_when_something_is_redacted(server: FakeLLMServer) -> None:
    key = "sk-proj-setup-0123456789abcdefghijklmnopqrstuvwxyz"
    server.script(Reply(), Reply(status=401, error=f"Incorrect API key provided: {key[:20]}"))
    client = Client(base_url=server.base_url("openai"), api_key=key, retry=1)
    with client.stream("Hi", model="m") as stream:
        assert "".join(stream) == DEFAULT_TEXT
        assert stream._worker._redact._fragments is None  # a stream that ended well needed none
    with pytest.raises(AuthenticationError) as caught:
        client.complete("Hi", model="m")
    assert str(caught.value) == "HTTP 401 Unauthorized: Incorrect API key provided: <redacted>"
    client.close()
