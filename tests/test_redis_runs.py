"""relay.RedisRunStore: resumable runs in Redis Streams, against a real redis-server the tests start."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest

pytest.importorskip("redis")

import llmstream  # noqa: E402
from llmstream import relay  # noqa: E402
from llmstream.testing import FakeLLMServer, Reply  # noqa: E402
from redis_server import RedisServer, free_port, needs_redis_server, redis_server  # noqa: E402,F401 (redis_server: a fixture)
from relay_servers import parse_sse, text_of, wait_until  # noqa: E402

pytestmark = needs_redis_server

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TOKENS = ["The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", "."]
TEXT = "".join(TOKENS)



@pytest.fixture()
def store(redis_server: RedisServer) -> Iterator[Any]:
    runs = relay.RedisRunStore(redis_server.url, prefix="t", ttl=30)
    try:
        yield runs
    finally:
        runs.close()


def client_for(server: FakeLLMServer) -> llmstream.Client:
    return llmstream.Client(base_url=server.base_url("openai"), api_key="test-key")


def frames(body: Any, upto: int) -> List[Any]:
    """Read a body until ``upto`` events arrived, then drop the connection (close the body)."""
    got: List[Any] = []
    it = iter(body)
    for chunk in it:
        got += parse_sse(chunk) if chunk.startswith(b"id:") else []
        if len(got) >= upto:
            break
    it.close()
    return got


def test_reconnect_with_last_event_id_gets_the_exact_text_once(server: FakeLLMServer, store: Any,
                                                               redis_server: RedisServer) -> None:
    server.script(Reply(text=TEXT, tokens=TOKENS, interval=0.03))
    run_id = store.start(client_for(server).stream("hi", model="m"))
    first = frames(relay.run_body(store, run_id, max_rate=1000), 3)  # disconnects mid-answer
    assert text_of(first) != TEXT
    rest = parse_sse(b"".join(relay.run_body(store, run_id, after=int(first[-1][0]))))
    assert text_of(first + rest) == TEXT
    ids = [int(i) for i, _, _ in first + rest]
    assert ids == sorted(set(ids))  # each frame once (a frame carries the id of its last coalesced event)
    assert rest[-1][1:] == ("done", {"status": "finished"})
    # A reconnect after "done": 204; one generation in all.
    again = relay.run_body(store, run_id, after=int(rest[-1][0]))
    assert again.status == 204 and b"".join(again) == b""
    assert len(server.requests) == 1
    # The events are in Redis, each id once.
    entries = redis_server.client.xrange("{t}:run:" + run_id + ":events")
    assert [int(e[0].split(b"-")[0]) for e in entries] == list(range(1, len(entries) + 1))
    assert 0 < redis_server.client.pttl("{t}:run:" + run_id + ":events") <= 30_000


def test_a_reader_in_another_process_reads_the_run(server: FakeLLMServer, store: Any,
                                                   redis_server: RedisServer) -> None:
    server.script(Reply(text=TEXT, tokens=TOKENS, interval=0.03))
    run_id = store.start(client_for(server).stream("hi", model="m"))
    first = frames(relay.run_body(store, run_id, max_rate=1000), 2)
    code = ("import sys; from llmstream import relay\n"
            "s = relay.RedisRunStore(sys.argv[1], prefix='t')\n"
            "sys.stdout.buffer.write(b''.join(relay.run_body(s, sys.argv[2], after=int(sys.argv[3]))))\n"
            "s.close()\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code, redis_server.url, run_id, first[-1][0]], env=env,
                         capture_output=True, timeout=30, check=True).stdout
    rest = parse_sse(out)
    assert text_of(first + rest) == TEXT
    assert [n for _, n, _ in rest][-1] == "done"
    assert int(rest[0][0]) > int(first[-1][0])


def test_async_body_reads_a_redis_run(server: FakeLLMServer, store: Any) -> None:
    server.script(Reply(text=TEXT, tokens=TOKENS, interval=0.01))
    run_id = store.start(client_for(server).stream("hi", model="m"))

    async def read() -> bytes:
        return b"".join([c async for c in relay.run_body(store, run_id)])

    events = parse_sse(asyncio.run(read()))
    assert text_of(events) == TEXT and events[-1][1] == "done"


def test_stop_from_another_store_reaches_the_upstream(server: FakeLLMServer, store: Any,
                                                      redis_server: RedisServer) -> None:
    server.script(Reply(token_count=100_000, interval=0.01))
    run_id = store.start(client_for(server).stream("hi", model="m"))
    assert wait_until(lambda: server.active_connections == 1, 5)
    other = relay.RedisRunStore(redis_server.url, prefix="t")  # as another worker process would
    try:
        assert other.stop(run_id) is True
        assert other.stop("nope") is False
        assert wait_until(lambda: server.active_connections == 0, 1.5)
        events = parse_sse(b"".join(relay.run_body(other, run_id, max_rate=1000)))
        assert events[-1][1:] == ("done", {"status": "closed"})
    finally:
        other.close()


def test_unread_run_is_stopped_after_orphan_timeout(server: FakeLLMServer, redis_server: RedisServer) -> None:
    store = relay.RedisRunStore(redis_server.url, prefix="t", orphan_timeout=0.5)
    try:
        server.script(Reply(token_count=100_000, interval=0.01))
        store.start(client_for(server).stream("hi", model="m"))
        assert wait_until(lambda: server.active_connections == 1, 5)
        assert wait_until(lambda: server.active_connections == 0, 3.0)
    finally:
        store.close()


def test_unknown_and_expired_runs_are_not_resumable(server: FakeLLMServer, redis_server: RedisServer) -> None:
    store = relay.RedisRunStore(redis_server.url, prefix="t", ttl=0.3)
    try:
        events = parse_sse(b"".join(relay.run_body(store, "nope", after=3)))
        assert [(n, d.get("class"), d.get("status")) for _, n, d in events] == [
            ("error", "NotResumableError", None), ("done", None, "not_resumable")]
        server.script(Reply(text=TEXT, tokens=TOKENS))
        run_id = store.start(client_for(server).stream("hi", model="m"))
        assert text_of(parse_sse(b"".join(relay.run_body(store, run_id)))) == TEXT
        assert wait_until(lambda: redis_server.client.exists("{t}:run:" + run_id,
                                                               "{t}:run:" + run_id + ":events") == 0, 5)
        with pytest.raises(relay.NotResumableError):
            store.get(run_id)
        assert len(server.requests) == 1  # no second generation
    finally:
        store.close()


def test_past_max_events_is_not_resumable(server: FakeLLMServer, redis_server: RedisServer) -> None:
    store = relay.RedisRunStore(redis_server.url, prefix="t", max_events=2)
    try:
        server.script(Reply(text=TEXT, tokens=TOKENS))
        run_id = store.start(client_for(server).stream("hi", model="m"))
        assert wait_until(lambda: store.get(run_id).finished, 5)
        last = store.get(run_id).last_id
        events = parse_sse(b"".join(relay.run_body(store, run_id, after=0)))
        assert events[0][2]["class"] == "NotResumableError"
        tail = parse_sse(b"".join(relay.run_body(store, run_id, after=last - 2)))
        assert [n for _, n, _ in tail] == ["usage", "done"]
    finally:
        store.close()


def test_redis_down_is_a_clear_typed_error_without_a_hang(server: FakeLLMServer) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    store = relay.RedisRunStore(url, timeout=0.3)
    try:
        stream = client_for(server).stream("hi", model="m")
        started = time.monotonic()
        with pytest.raises(relay.RunStoreError, match=r"\(Redis at redis://127\.0\.0\.1:\d+/0\) could not be reached: ConnectionError"):
            store.start(stream)
        assert stream.status == "closed" and server.requests == []  # no generation nobody could read
        with pytest.raises(relay.RunStoreError):
            store.get("abc")
        events = parse_sse(b"".join(relay.run_body(store, "abc", after=1)))
        assert [(n, d.get("class")) for _, n, d in events] == [("error", "NotResumableError"), ("done", None)]
        assert "could not be reached" in events[0][2]["message"]
        assert time.monotonic() - started < 5
    finally:
        store.close()


def test_redis_dying_mid_read_ends_the_body_with_an_error_frame(server: FakeLLMServer) -> None:
    redis_server = RedisServer()
    store = relay.RedisRunStore(redis_server.url, prefix="t", timeout=0.3)
    try:
        server.script(Reply(token_count=100_000, interval=0.01))
        run_id = store.start(client_for(server).stream("hi", model="m"))
        body = iter(relay.run_body(store, run_id, max_rate=1000))
        next(body), next(body)
        redis_server.proc.send_signal(signal.SIGSTOP)  # hung, not gone: only the timeouts help
        started = time.monotonic()
        rest = parse_sse(b"".join(body))
        assert time.monotonic() - started < 5
        assert rest[-2][2]["class"] == "NotResumableError" and "could not be reached" in rest[-2][2]["message"]
        assert rest[-1][2] == {"status": "not_resumable"}
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
        store.close()
        redis_server.stop()


def test_the_store_is_exported_lazily() -> None:
    code = ("import sys, llmstream.relay as r\nassert 'redis' not in sys.modules\n"
            "r.RedisRunStore\nassert 'redis' not in sys.modules\nprint('ok')")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert out.stdout == "ok\n", out.stderr
