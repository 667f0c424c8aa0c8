"""What a stream holds while it runs (issue 17: hundreds of streams in one process).

Each test pins one decision of bench/SCALE_NOTES.md ("Memory per stream"), so a
change that brings the cost back goes red here, not only in the bench.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import sys
import threading
import weakref
from typing import Any, Iterator, List, Tuple

from llmstream import Client, Retry, TokenStream
from llmstream import _connection, _worker
from llmstream._callbacks import Callbacks
from llmstream._histogram import Histogram
from llmstream._providers._base import PackedSpec, RequestSpec
from llmstream._redact import redactor_for
from llmstream.testing import FakeLLMServer, Reply

TOKENS = ["Hello", " slow", " world"]
TEXT = "".join(TOKENS)


def _client(server: FakeLLMServer) -> Client:
    return Client("openai", base_url=server.base_url("openai"), api_key="sk-test-0123456789abcdef",
                  retry=Retry(max_attempts=2, initial_delay=0.01))


@contextlib.contextmanager
def _after_first_piece(server: FakeLLMServer) -> Iterator[Tuple[TokenStream, Iterator[str]]]:
    """A stream whose caller took its first piece and holds its iterator; the server stalls 30 s, the body is lent."""
    server.script(Reply(text=TEXT, tokens=TOKENS, stall_after_tokens=(1, 30)))
    with _client(server) as client, client.stream("q", model="m") as stream:
        pieces = iter(stream)
        assert next(pieces) == "Hello"
        yield stream, pieces


def test_a_lent_body_pauses_the_run_in_its_one_generator(server: FakeLLMServer) -> None:
    # One generator per stream: a chain of them (yield from) costs a frame and a
    # C stack level each on 3.11 -- 16 KiB of stack touched instead of 12.
    with _after_first_piece(server) as (stream, pieces):
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
    with _after_first_piece(server) as (stream, pieces):
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


# -- wt-mem2: what each stream holds beyond the hand-written loop (SCALE_NOTES.md, "Memory per stream, second pass")


def _locks(obj: Any) -> List[Any]:
    lock_type = type(threading.Lock())
    return [held for held in gc.get_referents(obj) if type(held) is lock_type]


def test_a_streams_own_objects_are_slotted(server: FakeLLMServer) -> None:
    # A __dict__'s values cost ~40-60 bytes more than slots, per object, hundreds of streams at once.
    with _after_first_piece(server) as (stream, pieces):
        worker = stream._worker
        attempt = worker._attempt
        assert attempt is not None and attempt._reader is not None
        reader = attempt._reader
        for obj in (stream, reader.response, reader, worker._resumer, reader.decoder, reader.decoder.decoder):
            assert not hasattr(obj, "__dict__"), type(obj).__name__


def test_a_stream_holds_no_lock_but_its_lent_bodys_step_lock(server: FakeLLMServer) -> None:
    # Status, iterating thread, a response's closed flag and a lent body's return
    # flags are set under locks shared by every stream (nothing allocated under
    # them); only the lock a read step holds is a lent body's own.
    with _after_first_piece(server) as (stream, pieces):
        lent = stream._worker.queue.lent
        assert lent is not None
        assert _locks(stream) == [] and _locks(lent.reader.response) == []
        assert len(_locks(lent)) == 1
        # The shared flags still do their work: one loop at a time.
        try:
            next(iter(stream))
        except RuntimeError as exc:
            assert "already being iterated in this thread" in str(exc)
        else:
            raise AssertionError("a second loop over the stream was let in")
        stream.close()
        assert stream.status == "closed" and list(pieces) == []


def _finalizers_of(obj: Any) -> List[Any]:
    registry = weakref.finalize._registry  # type: ignore[attr-defined]
    return [entry for entry in list(registry) if (entry.peek() or (None,))[0] is obj]


def test_a_dropped_stream_is_cancelled_without_a_finalizer_entry(server: FakeLLMServer) -> None:
    # weakref.finalize costs a registry entry, a weak reference and two small
    # objects per stream (~320 bytes): a dropped stream's __del__ cancels its worker.
    server.script(Reply(text=TEXT, tokens=TOKENS, stall_after_tokens=(1, 30)),
                  Reply(text=TEXT, tokens=TOKENS, stall_after_tokens=(1, 30)))
    with _client(server) as client:
        stream = client.stream("q", model="m")
        pieces = iter(stream)
        assert next(pieces) == "Hello" and _finalizers_of(stream) == []
        worker = stream._worker
        del pieces, stream
        gc.collect()
        assert worker._cancel.is_set() and worker.join(5)

        async def dropped_async_stream() -> bool:
            stream = client.astream("q", model="m")
            # Asserted once the stream is over: a failure here must not leave it running.
            none = _finalizers_of(stream) == [] and _finalizers_of(stream._stream) == []
            async for text in stream:
                assert text == "Hello"
                break
            inner = stream._stream._worker
            del stream
            gc.collect()
            await asyncio.get_running_loop().run_in_executor(None, inner.join, 5.0)
            assert inner._cancel.is_set() and inner.join(0)
            return none

        assert asyncio.run(dropped_async_stream()), "a weakref.finalize was registered for the async stream"


def test_a_plain_text_stream_makes_no_resume_turn_or_tool_call_state(server: FakeLLMServer) -> None:
    # Thinking, tool calls, refused resumes, output items and resets are rare:
    # what records them is made by the first one, not for every stream.
    with _after_first_piece(server) as (stream, pieces):
        worker = stream._worker
        resumer = worker._resumer
        assert resumer._thinking is None and resumer._calls is None and resumer._refused == ()
        assert stream._turn is None and stream._tool_calls == ()
        assert worker.text is not None and worker.text._retired is None


def test_the_kept_request_is_the_body_sent_and_the_clients_headers(server: FakeLLMServer) -> None:
    # The body is kept encoded, as the very bytes the request sent (one copy,
    # not ~0.8 KiB of dicts per stream); a client's streams share its headers.
    server.script(Reply(text=TEXT, tokens=TOKENS, stall_after_tokens=(1, 30)),
                  Reply(text=TEXT, tokens=TOKENS, stall_after_tokens=(1, 30)))
    with _client(server) as client:
        with client.stream("q", model="m", temperature=0.5) as first, client.stream("q", model="m") as second:
            assert next(iter(first)) == "Hello" and next(iter(second)) == "Hello"
            spec, other = first._worker._spec, second._worker._spec
            assert isinstance(spec, PackedSpec) and isinstance(other, PackedSpec)
            assert spec.headers is other.headers and spec.url is other.url
            attempt = first._worker._attempt
            assert attempt is not None and attempt._response is not None
            assert attempt._response._response.request.body is spec.body
            assert spec.json == {"model": "m", "messages": [{"role": "user", "content": "q"}], "stream": True,
                                 "stream_options": {"include_usage": True}, "temperature": 0.5}
            # Changing a field keeps the body as it is; changing the body encodes the new one.
            moved = spec.replace(url="http://127.0.0.1:1/v1/chat/completions")
            assert isinstance(moved, PackedSpec) and moved.body is spec.body
            assert spec.replace(json={"a": "é"}).body == '{"a": "é"}'.encode()
            assert RequestSpec("POST", spec.url, spec.headers, {"a": 1}) != spec  # a plain spec is another class


def test_a_responses_head_is_read_through_a_small_buffer(server: FakeLLMServer) -> None:
    # http.client reads the head through a buffered reader of 8 KiB by default:
    # a glibc malloc per stream, with pages touched. The body is read from the socket directly.
    server.script(Reply(text=TEXT, tokens=TOKENS, stall_after_tokens=(1, 30)))
    with _client(server) as client, client.stream("q", model="m") as stream:
        assert next(iter(stream)) == "Hello"
        attempt = stream._worker._attempt
        assert attempt is not None and attempt._response is not None
        reader = attempt._response._raw._original_response.fp
        assert sys.getsizeof(reader) < 1024  # the buffer's size is counted in it


def test_a_head_larger_than_the_buffer_is_read_whole(server: FakeLLMServer) -> None:
    padding = {f"x-pad-{i}": "v" * 100 for i in range(60)}  # a 6.5 KiB head, the body in the same writes
    server.script(Reply(text=TEXT, tokens=TOKENS, headers=padding), Reply(text=TEXT, tokens=TOKENS, headers=padding,
                                                                           chunked=False))
    with _client(server) as client:
        for _ in range(2):
            with client.stream("q", model="m") as stream:
                assert "".join(stream) == TEXT
                assert stream.result.text == TEXT


def test_histogram_bucket_numbers_take_two_bytes() -> None:
    histogram = Histogram()
    values = [0.001 * 1.03 ** i for i in range(500)] + [0.0, -1.0, 1e300, math.inf, 5e-324, 1e-300]
    for value in values:
        histogram.add(value)
    histogram.fold()
    assert histogram._keys is not None and histogram._keys.itemsize == 2 and len(histogram._keys) == len(values)
    summary = histogram.summary()
    assert summary.count == len(values) and summary.min == -1.0 and summary.max == math.inf
    want = sorted(values)[math.ceil(0.5 * len(values)) - 1]  # nearest rank
    assert summary.p50 is not None and abs(summary.p50 - want) <= 0.02 * want
