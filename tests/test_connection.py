"""close() while the TCP connection is still being opened, and what a failed stream leaves behind.

The connect phase is staged with a listening socket whose accept queue is full
(backlog 0, never accepted): Linux then drops further SYNs, so the client's
``connect()`` blocks in SYN_SENT, as it does against an unreachable host.
"""

from __future__ import annotations

import gc
import socket
import threading
import time
import weakref
from typing import Iterator, List

import pytest

import llmstream
from llmstream.testing import FakeLLMServer, Reply

from conftest import wait_no_worker_threads, wait_thread_in

KEY = "sk-test-" + "x" * 32


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A port whose accept queue is full, so a new connect() hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers: List[socket.socket] = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(filler)
    try:
        yield port
    finally:
        for filler in fillers:
            filler.close()
        server.close()


def _client(port: int, **timeout: float) -> llmstream.Client:
    return llmstream.Client(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, retry=1,
                            timeout=llmstream.Timeout(**timeout))


def test_the_staged_connect_really_hangs(unanswered_port: int) -> None:
    # Proves the phase the next test closes in: left alone, the connect times out.
    with _client(unanswered_port, connect=0.3, first_token=5) as client:
        with pytest.raises(llmstream.StreamTimeoutError) as info:
            client.complete("hi", model="m")
    assert info.value.kind == "connect"


def test_close_while_connecting_ends_the_worker_at_once(unanswered_port: int) -> None:
    with _client(unanswered_port, connect=30, first_token=30) as client:
        stream = client.stream("hi", model="m")
        assert wait_thread_in("_create_tracked_connection")  # blocked in connect() (see the test above)
        started = time.monotonic()
        stream.close()
        assert time.monotonic() - started < 0.1
        assert wait_no_worker_threads(0.5) == []
        assert stream.status == "closed"


def test_a_failed_stream_is_collected_with_everything_it_held(server: FakeLLMServer) -> None:
    server.default_reply = Reply(text="never ends", tokens=["never", " ends"], close_after_tokens=1)
    refs = []
    client = llmstream.Client(base_url=server.base_url("openai"), api_key=KEY, retry=1)
    for _ in range(20):
        stream = client.stream("hi", model="m")
        with pytest.raises(llmstream.IncompleteStreamError):
            for _ in stream:
                pass
        refs.append(weakref.ref(stream))
        del stream
    client.close()
    gc.collect()
    assert [r for r in refs if r() is not None] == []
    assert not [t for t in threading.enumerate() if t.name.startswith("llmstream-worker")]
