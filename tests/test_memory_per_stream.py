"""What a stream holds while it runs (issue 17: hundreds of streams in one process).

Each test pins one decision of bench/SCALE_NOTES.md ("Memory per stream"), so a
change that brings the cost back goes red here, not only in the bench.
"""

from __future__ import annotations

import threading

from llmstream import Client, Retry
from llmstream import _connection, _worker
from llmstream._callbacks import Callbacks
from llmstream._redact import redactor_for
from llmstream.testing import FakeLLMServer, Reply

TOKENS = ["Hello", " slow", " world"]
TEXT = "".join(TOKENS)


def _client(server: FakeLLMServer) -> Client:
    return Client("openai", base_url=server.base_url("openai"), api_key="sk-test-0123456789abcdef",
                  retry=Retry(max_attempts=2, initial_delay=0.01))


def test_a_lent_body_pauses_the_run_in_its_one_generator(server: FakeLLMServer) -> None:
    # One generator per stream: a chain of them (yield from) costs a frame and a
    # C stack level each on 3.11 -- 16 KiB of stack touched instead of 12.
    server.script(Reply(text=TEXT, tokens=TOKENS, stall_after_tokens=(1, 30)))
    with _client(server) as client, client.stream("q", model="m") as stream:
        pieces = iter(stream)
        assert next(pieces) == "Hello"
        worker = stream._worker
        assert worker.queue.lent is not None  # the caller's thread reads the body
        run = worker._run
        assert run.gi_suspended and run.gi_yieldfrom is None
        assert run.gi_frame.f_locals["decision"] is None  # made at the first failure only
        # Nothing was ever waited on through the queue: its wake-ups were never made.
        assert worker.queue._wake_caller is None and worker.queue._wake_worker is None


def test_closing_the_run_while_its_body_is_lent_ends_the_attempt(server: FakeLLMServer) -> None:
    # What the garbage collector does to a run dropped at its pause: the
    # attempt still ends (its response closed, its entry in the stats written).
    server.script(Reply(text=TEXT, tokens=TOKENS, stall_after_tokens=(1, 30)))
    with _client(server) as client, client.stream("q", model="m") as stream:
        pieces = iter(stream)
        assert next(pieces) == "Hello"
        worker = stream._worker
        attempt = worker._attempt
        assert attempt is not None and attempt._response is not None
        # A run is collected only once nothing holds its worker: out of the
        # process-wide set of lending workers first, as the collector would find it.
        with _worker._LENDING_LOCK:
            _worker._LENDING.discard(worker)
        worker._run.close()
        assert attempt._response is None and attempt._sockets is None
        assert worker._attempt is None and worker.queue.lent is None
        assert len(worker.stats.attempt_log) == 1
        assert worker._cancel.is_set()
        worker._end()  # what the segment running it would have done


def test_streams_with_the_same_key_share_one_redactor(server: FakeLLMServer) -> None:
    server.script(Reply(text=TEXT, tokens=TOKENS), Reply(text=TEXT, tokens=TOKENS))
    with _client(server) as client:
        with client.stream("q", model="m") as first, client.stream("q", model="m") as second:
            assert first._worker._redact is second._worker._redact
            assert first._worker._redact("key sk-test-0123456789abcdef") == "key <redacted>"
            assert "".join(first) == TEXT and "".join(second) == TEXT
    other = redactor_for(["another-secret-0123"])
    assert other is not redactor_for(["sk-test-0123456789abcdef"]) and other("another-secret-0123") == "<redacted>"


def test_a_stream_without_callbacks_makes_none() -> None:
    shared = Callbacks()
    assert shared.merged(on_text=None, on_event=None) is shared
    printed = []
    merged = shared.merged(on_text=printed.append)
    assert merged is not shared and merged.on_text == printed.append and shared.on_text is None


def test_no_per_thread_state_is_left_once_the_request_is_sent(server: FakeLLMServer) -> None:
    server.script(Reply(text=TEXT, tokens=TOKENS))
    done = []

    def run() -> None:
        with _client(server) as client:
            done.append(client.complete("q", model="m").text)
        done.append(threading.get_ident() in _connection._attempts)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert done == [TEXT, False]
    assert not hasattr(_connection, "_local")
