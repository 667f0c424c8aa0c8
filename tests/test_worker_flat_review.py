"""Review of the flattened run (one generator, Attempt start/take_back/abandon): its exit paths under races.

Each test drives a real stream against the fake server on 127.0.0.1 and checks
what the flattening could have lost: the concurrency slot freed on every exit,
a retry wait cut short by close() from another thread, join() from many
threads against the lazily made done Latch, no per-thread entry left in
``_connection._attempts``, and the per-key shared Redactor.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
from typing import Any, List

import pytest

from llmstream import Client, Retry, Retrying, ServerError
from llmstream import _connection, _redact, _worker
from llmstream.testing import DEFAULT_TEXT, FakeLLMServer, Reply

from conftest import wait_no_worker_threads, wait_thread_in

LONG_WAIT = Retry(max_attempts=3, initial_delay=30.0, max_delay=30.0)
#: A failure whose retry waits exactly 30 s (a jittered backoff could be short).
FAIL_THEN_WAIT = Reply(status=503, headers={"Retry-After": "30"})


def wait_main_in_library(frames: Any, timeout: float = 5.0) -> bool:
    """Wait (bounded) until the main thread blocks in one of ``frames`` of llmstream itself (not threading's)."""
    main = threading.main_thread()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = sys._current_frames().get(main.ident)  # type: ignore[arg-type]
        if frame is not None and frame.f_code.co_name in frames and "/llmstream/" in frame.f_code.co_filename:
            return True
        time.sleep(0.002)
    return False


def client_for(server: FakeLLMServer, **kwargs: Any) -> Client:
    kwargs.setdefault("retry", Retry(max_attempts=1))
    return Client("openai", base_url=server.base_url("openai"), api_key="sk-review-key-0001", **kwargs)


def assert_nothing_left(client: Client) -> None:
    assert client._flow.slots is not None
    assert client._flow.slots.in_use == 0
    assert wait_no_worker_threads() == []
    assert _connection._attempts == {}
    # This client's workers only: _LENDING is process-wide (test_memory_per_stream closes a run by hand).
    assert not [w for w in _worker._LENDING if w._flow is client._flow]


def test_close_from_another_thread_ends_an_inline_retry_wait_and_frees_the_slot(server: FakeLLMServer) -> None:
    client = client_for(server, max_concurrent=1, retry=LONG_WAIT)
    server.script(FAIL_THEN_WAIT)
    stream = client.stream("hi", model="m")
    events = stream.events()
    first = next(events)  # run in this thread: the 503, then the Retrying event before the wait
    assert isinstance(first, Retrying) and first.delay == 30.0
    closer = threading.Thread(target=lambda: (wait_main_in_library(("wait",)), stream.close()))
    closer.start()
    started = time.monotonic()
    rest = list(events)  # the 30 s wait runs here, in this thread, until close()
    closer.join(5)
    assert time.monotonic() - started < 5.0
    assert rest == []
    assert stream.status == "closed"
    assert [r.json["messages"][-1]["content"] for r in server.requests] == ["hi"]
    assert_nothing_left(client)
    assert client.stream("again", model="m").result.text == DEFAULT_TEXT


def test_close_during_a_worker_threads_retry_wait_frees_the_slot(server: FakeLLMServer) -> None:
    client = client_for(server, max_concurrent=1, retry=LONG_WAIT)
    server.script(FAIL_THEN_WAIT)
    stream = client.stream("hi", model="m")  # not iterated: a worker thread runs it
    assert wait_thread_in("wait")  # the worker in its 30 s retry wait
    started = time.monotonic()
    stream.close()
    assert time.monotonic() - started < 2.0
    assert stream._worker.join(0) is True
    assert stream.status == "closed"
    assert_nothing_left(client)
    assert client.stream("again", model="m").result.text == DEFAULT_TEXT


def test_close_from_another_thread_while_the_caller_reads_the_lent_body(server: FakeLLMServer) -> None:
    client = client_for(server, max_concurrent=1)
    server.script(Reply(text="one two three", tokens=["one ", "two ", "three"], stall_after_tokens=(2, float("inf"))))
    stream = client.stream("hi", model="m")
    got: List[str] = []
    main = threading.current_thread()
    two = threading.Event()
    closer = threading.Thread(target=lambda: (two.wait(5), wait_thread_in(("readinto", "_read_dechunked"), [main]),
                                              stream.close()))
    closer.start()
    for text in stream:  # the body is lent: this thread reads it, and blocks in the stall
        got.append(text)
        if len(got) == 2:
            two.set()
    closer.join(5)
    assert "".join(got) == "one two "
    assert stream.status == "closed"
    assert stream.text == "one two "
    assert_nothing_left(client)
    assert client.stream("again", model="m").result.text == DEFAULT_TEXT


def test_a_keyboard_interrupt_in_the_callers_own_run_frees_the_slot(server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # The retry's attempt runs in the caller's thread (it iterates); Ctrl+C lands
    # inside Attempt.start (the gate's token estimate): the slot, the socket
    # and the run must all be let go, and the interrupt must go on.
    from llmstream import RateLimit

    client = client_for(server, max_concurrent=1, retry=Retry(max_attempts=2, initial_delay=0.0),
                        rate_limit=RateLimit(tokens_per_minute=10_000_000))
    provider = client._provider
    calls = []

    def estimate(body: Any) -> float:
        calls.append(body)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return 1.0

    monkeypatch.setattr(provider, "estimate_tokens", estimate)
    server.script(Reply(status=500))
    stream = client.stream("hi", model="m")
    with pytest.raises(KeyboardInterrupt):
        for _ in stream.events():
            pass
    assert len(calls) == 2
    assert stream._worker.join(5) is True
    monkeypatch.undo()
    assert_nothing_left(client)
    assert client.stream("again", model="m").result.text == DEFAULT_TEXT


def test_many_joins_from_many_threads_all_return_when_the_run_ends(server: FakeLLMServer) -> None:
    # The done Latch is made by the first join() that has to wait; joins racing
    # the run's end (and each other) must never miss it.
    client = client_for(server)
    for round_ in range(20):
        server.script(Reply(text="ab", tokens=["a", "b"], interval=0.002 * (round_ % 3)))
        stream = client.stream("hi", model="m")  # not iterated: a worker thread reads ahead
        results: List[bool] = []
        joiners = [threading.Thread(target=lambda: results.append(stream._worker.join(10))) for _ in range(4)]
        for joiner in joiners:
            joiner.start()
        for joiner in joiners:
            joiner.join(15)
        assert results == [True] * 4
        assert stream.result.text == "ab"
    assert wait_no_worker_threads() == []


def test_no_per_thread_attempt_is_left_after_failures_from_many_threads(server: FakeLLMServer) -> None:
    # The sending thread's attempt lives in a dict by thread id: every way a
    # request can end must take its entry out, or a later thread reusing the id
    # would report its sockets to a dead attempt.
    client = client_for(server)
    refused = Client("openai", base_url="http://127.0.0.1:9/v1", api_key="sk-review-key-0001", retry=Retry(max_attempts=1))
    errors: List[BaseException] = []

    def one(i: int) -> None:
        try:
            if i % 3 == 0:
                server_reply = client.stream(f"ok {i}", model="m").result.text
                assert server_reply == DEFAULT_TEXT
            elif i % 3 == 1:
                with pytest.raises(Exception):
                    refused.stream("x", model="m").result
            else:
                s = client.stream(f"stall {i}", model="m")
                s.close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert errors == []
    assert _connection._attempts == {}
    assert wait_no_worker_threads() == []


def test_a_500_error_message_is_redacted_with_the_streams_own_key_only(server: FakeLLMServer) -> None:
    # Streams of the same key share one Redactor; another key gets its own, and
    # the shared entry (with the secrets in its key) goes with its last stream.
    key_a, key_b = "sk-review-aaaaaaaaaaaa", "sk-review-bbbbbbbbbbbb"
    a = Client("openai", base_url=server.base_url("openai"), api_key=key_a, retry=Retry(max_attempts=1))
    b = Client("openai", base_url=server.base_url("openai"), api_key=key_b, retry=Retry(max_attempts=1))
    server.script(Reply(status=500, error=f"bad {key_a}"), Reply(status=500, error=f"bad {key_b}"))
    sa, sb = a.stream("x", model="m"), b.stream("y", model="m")
    with pytest.raises(ServerError) as ea:
        sa.result
    with pytest.raises(ServerError) as eb:
        sb.result
    assert key_a not in str(ea.value) and key_b not in str(eb.value)
    assert "<redacted>" in str(ea.value) and "<redacted>" in str(eb.value)
    assert sa._worker._redact is not sb._worker._redact
    sa2 = a.stream("x2", model="m")
    assert sa2._worker._redact is sa._worker._redact
    sa2.result
    keys = [k for k in _redact._SHARED.keys() if key_a in k or key_b in k]
    assert len(keys) == 2
    del sa, sb, sa2, ea, eb
    gc.collect()
    assert [k for k in _redact._SHARED.keys() if key_a in k or key_b in k] == []


def test_a_run_closed_at_its_pause_frees_the_slot_and_the_breakers_probe(server: FakeLLMServer) -> None:
    # What the garbage collector does to a run dropped while its body is lent
    # (GeneratorExit at the yield): Attempt.abandon, then the slot's finally.
    from llmstream import CircuitBreaker

    client = client_for(server, max_concurrent=1, circuit_breaker=CircuitBreaker(failure_threshold=1, cooldown=0.05))
    server.script(Reply(status=500))
    with pytest.raises(ServerError):
        client.stream("open the circuit", model="m").result
    time.sleep(0.06)  # the cooldown: the next attempt is the one probe
    server.script(Reply(text="one two", tokens=["one ", "two"], stall_after_tokens=(1, 30)))
    stream = client.stream("probe", model="m")
    pieces = iter(stream)
    assert next(pieces) == "one "
    worker = stream._worker
    assert worker.queue.lent is not None and client._flow.slots is not None and client._flow.slots.in_use == 1
    # A run is collected only once nothing holds its worker: out of _LENDING
    # (its body came back, and no thread could be started for the next segment).
    with _worker._LENDING_LOCK:
        _worker._LENDING.discard(worker)
    attempt = worker._attempt
    assert attempt is not None
    worker._run.close()
    assert client._flow.slots.in_use == 0
    # The attempt ended too: its response closed (the server sees the hang-up), its record written.
    assert attempt._response is None and attempt._sockets is None and attempt._gate is None
    assert len(worker.stats.attempt_log) == 1
    deadline = time.monotonic() + 5
    while server.active_connections > 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.active_connections == 0
    assert worker._attempt is None and worker.queue.lent is None
    worker._end()
    stream.close()
    # The probe was let go (as cancelled, not a failure): the next attempt may probe again.
    assert client.stream("after", model="m").result.text == DEFAULT_TEXT
    assert_nothing_left(client)


def test_closes_at_random_moments_from_other_threads_never_leak_a_slot(server: FakeLLMServer) -> None:
    # Every phase the flattened run can be in (waiting for a slot, connecting,
    # reading ahead, lent to a reading thread, in a retry wait, resuming) met by
    # a close() from another thread: the slots all come back, nothing is left.
    import random

    rng = random.Random(1234)
    client = client_for(server, max_concurrent=2, retry=Retry(max_attempts=3, initial_delay=0.01, max_delay=0.02))
    replies = []
    for i in range(36):
        kind = i % 4
        if kind == 0:
            replies.append(Reply(status=500))
        elif kind == 1:
            replies.append(Reply(token_count=40, interval=0.001))
        elif kind == 2:
            replies.append(Reply(token_count=20, close_after_tokens=5))
        else:
            replies.append(Reply(token_count=10, stall_after_tokens=(3, 0.05)))
    server.script(*replies)
    outcomes: List[str] = []
    lock = threading.Lock()

    def consume(stream: Any) -> None:
        try:
            for _ in stream:
                pass
        except Exception as exc:
            with lock:
                outcomes.append(type(exc).__name__)
            return
        with lock:
            outcomes.append(stream.status)

    threads = []
    streams = []
    for i in range(24):
        stream = client.stream(f"s{i}", model="m")
        streams.append(stream)
        if i % 2:
            reader = threading.Thread(target=consume, args=(stream,))
            reader.start()
            threads.append(reader)
        closer = threading.Timer(rng.uniform(0.0, 0.06), stream.close)
        closer.start()
        threads.append(closer)
    for thread in threads:
        thread.join(20)
    for stream in streams:
        stream.close()
        assert stream._worker.join(5) is True
        assert stream.status in ("closed", "finished", "failed")
    assert len(outcomes) == 12
    assert client._flow.slots is not None and client._flow.slots.in_use == 0
    assert client._flow.slots.waiting == 0
    assert wait_no_worker_threads() == []
    assert _connection._attempts == {}
    # This client's workers only: _LENDING is process-wide (test_memory_per_stream closes a run by hand).
    assert not [w for w in _worker._LENDING if w._flow is client._flow]


def test_a_stream_dropped_while_its_body_is_lent_frees_its_slot(server: FakeLLMServer) -> None:
    # The finalizer (in the caller's own thread, the consumer) cancels the
    # worker: the lent body is recalled and a thread of its own ends the run.
    client = client_for(server, max_concurrent=1)
    server.script(Reply(text="one two", tokens=["one ", "two"], stall_after_tokens=(1, 30)))
    stream = client.stream("dropped", model="m")
    pieces = iter(stream)
    assert next(pieces) == "one "
    assert stream._worker.queue.lent is not None
    worker = stream._worker
    assert client._flow.slots is not None and client._flow.slots.in_use == 1
    del stream, pieces
    gc.collect()
    assert worker.join(5) is True
    assert client._flow.slots.in_use == 0
    assert worker.stats.attempt_log[-1].error is None  # ended as cancelled, not as a failure
    del worker
    assert client.stream("after", model="m").result.text == DEFAULT_TEXT
    assert_nothing_left(client)


def _ctrl_c_when(condition: threading.Event, frames: Any) -> threading.Thread:
    """A thread that sends SIGINT to the main thread once ``condition`` is set and it blocks in ``frames``."""
    import signal

    main = threading.main_thread()

    def kick() -> None:
        condition.wait(5)
        wait_main_in_library(frames)  # the main thread blocked in the library, not in a test helper
        signal.pthread_kill(main.ident, signal.SIGINT)  # type: ignore[arg-type]

    thread = threading.Thread(target=kick)
    thread.start()
    return thread


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="SIGINT goes to the main thread")
def test_ctrl_c_while_the_caller_reads_the_lent_body_frees_the_slot(server: FakeLLMServer) -> None:
    client = client_for(server, max_concurrent=1)
    server.script(Reply(text="one two", tokens=["one ", "two"], stall_after_tokens=(1, 30)))
    stream = client.stream("hi", model="m")
    got: List[str] = []
    first = threading.Event()
    kicker = _ctrl_c_when(first, ("readinto", "_read_dechunked"))
    with pytest.raises(KeyboardInterrupt):
        for text in stream:
            got.append(text)
            first.set()
    kicker.join(5)
    assert got == ["one "]
    assert stream.status == "closed"
    assert stream._worker.join(5) is True
    assert_nothing_left(client)
    assert client.stream("again", model="m").result.text == DEFAULT_TEXT


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="SIGINT goes to the main thread")
def test_ctrl_c_in_an_inline_retry_wait_frees_the_slot(server: FakeLLMServer) -> None:
    client = client_for(server, max_concurrent=1, retry=LONG_WAIT)
    server.script(FAIL_THEN_WAIT)
    stream = client.stream("hi", model="m")
    events = stream.events()
    assert isinstance(next(events), Retrying)
    asked = threading.Event()
    asked.set()
    kicker = _ctrl_c_when(asked, ("wait",))
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        next(events)  # the 30 s wait, in this thread
    kicker.join(5)
    assert time.monotonic() - started < 5.0
    assert stream.status == "closed"
    assert stream._worker.join(5) is True
    assert_nothing_left(client)
    assert client.stream("again", model="m").result.text == DEFAULT_TEXT


def test_histogram_snapshots_from_another_thread_while_it_folds_never_overcount() -> None:
    # The body's thread adds (and folds: pending -> bucket numbers -> dict)
    # while the caller's thread takes snapshots, with thread switches forced
    # as often as CPython allows: a snapshot may miss values being folded,
    # never count one twice, and its quantiles stay inside [min, max].
    from llmstream._histogram import Histogram

    histogram = Histogram()
    added = [0]
    stop = threading.Event()
    problems: List[str] = []

    def write() -> None:
        for i in range(1, 20001):
            histogram.add(i * 1e-4 if i % 7 else 0.0)  # some zeros: the Python-level fold path too
            added[0] = i
        stop.set()

    def read() -> None:
        while not stop.is_set():
            summary = histogram.summary()
            in_buckets = sum(n for _, n in histogram.buckets())
            so_far = added[0] + 1  # the value being added may be pending before it is counted in added
            if summary.count > so_far or in_buckets > so_far:
                problems.append(f"counted {summary.count}/{in_buckets} of {so_far}")
            if summary.p50 is not None and not (summary.min <= summary.p50 <= summary.max):  # type: ignore[operator]
                problems.append(f"p50 {summary.p50} outside [{summary.min}, {summary.max}]")

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=write), threading.Thread(target=read)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        sys.setswitchinterval(interval)
    assert problems == []
    histogram.fold()
    assert histogram.summary().count == 20000
    assert sum(n for _, n in histogram.buckets()) == 20000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_forked_child_inherits_no_per_thread_attempt() -> None:
    # The sending thread's attempt lives in a dict by thread id. A fork while
    # another thread is sending copies its entry into the child, where that
    # thread does not exist and a new thread may get its id (glibc reuses the
    # dead threads' stacks): a threading.local's dicts go with their threads
    # at a fork, the dict's entries must too.
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # connect() completes in the backlog; nobody ever answers
    port = listener.getsockname()[1]
    client = Client("openai", base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-review-key-0001",
                    retry=Retry(max_attempts=1))
    stream = client.stream("hi", model="m")  # not iterated: a worker thread sends it and waits for the headers
    try:
        deadline = time.monotonic() + 5
        while not _connection._attempts and time.monotonic() < deadline:
            time.sleep(0.002)
        assert len(_connection._attempts) == 1
        pid = os.fork()
        if pid == 0:  # the child: report and leave at once (no pytest, no atexit)
            code = 1
            try:
                code = 0 if _connection._attempts == {} else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "the child inherited the sending thread's attempt"
    finally:
        stream.close()
        listener.close()
    assert _connection._attempts == {}
    assert wait_no_worker_threads() == []
