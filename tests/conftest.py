"""Shared fixtures: the fake LLM server on 127.0.0.1, and a check that no worker thread leaks."""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import pytest

from hostile_server import HostileServer, Step
from llmstream.testing import FakeLLMServer


def worker_threads() -> list:
    return [t for t in threading.enumerate() if t.name.startswith("llmstream-worker")]


def wait_no_worker_threads(timeout: float = 3.0) -> list:
    """Wait (bounded) until every llmstream worker thread has ended; return the survivors."""
    deadline = time.monotonic() + timeout
    alive = worker_threads()
    while alive and time.monotonic() < deadline:
        alive[0].join(max(0.0, deadline - time.monotonic()))
        alive = worker_threads()
    return alive


#: The innermost Python frame of a thread blocked reading a response body: socket.py's
#: ``readinto`` under http.client's reader, or ``OpenResponse._read_dechunked`` once
#: it reads the socket's own ``recv`` (a C call: no frame of its own).
READING_BODY = ("readinto", "_read_dechunked")


def wait_thread_in(function: Union[str, Tuple[str, ...]], threads: Optional[Sequence[threading.Thread]] = None,
                   timeout: float = 5.0, *, also_workers: bool = False) -> bool:
    """Wait (bounded) until one of ``threads`` (default: the llmstream workers) runs ``function``.

    ``function`` is the name (or names) of the thread's innermost Python frame:
    :data:`READING_BODY` for a body read, ``"readinto"`` (socket.py) for another
    socket read, ``"_create_tracked_connection"`` for ``connect()``.
    A test that closes a stream "in the middle of a read" waits for this instead of
    sleeping, so a loaded machine cannot make it close in another phase. (A stream
    iterated in a thread reads in that thread, not in a worker -- unless that thread
    started iterating after ``START_GRACE``, when a worker sent the request and reads
    ahead: ``also_workers=True`` accepts either.)
    """
    names = (function,) if isinstance(function, str) else function
    deadline = time.monotonic() + timeout
    while True:
        frames = sys._current_frames()
        candidates = worker_threads() if threads is None else list(threads) + (worker_threads() if also_workers else [])
        for thread in candidates:
            frame = frames.get(thread.ident) if thread.ident is not None else None
            if frame is not None and frame.f_code.co_name in names:
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)


@pytest.fixture
def serve() -> Iterator[Callable[[Sequence[Sequence[Step]]], HostileServer]]:
    """Start raw-socket servers (``tests/hostile_server.py``), each playing its scripts; all stopped after the test."""
    servers: List[HostileServer] = []

    def start(scripts: Sequence[Sequence[Step]]) -> HostileServer:
        server = HostileServer(scripts).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as fake:
        yield fake


@pytest.fixture(autouse=True)
def no_leaked_worker_threads() -> Iterator[None]:
    yield
    assert wait_no_worker_threads() == [], "an llmstream worker thread outlived its test"


@pytest.fixture(scope="session", autouse=True)
def nothing_outlives_the_session() -> Iterator[None]:
    """After the whole suite: no worker thread alive and no TokenStream reachable.

    A stream whose failure is stored where a global (the ``weakref.finalize``
    registry, a monitor) can reach it stays alive for ever; so does its text.
    The scan is of ``gc.get_objects()`` after a collection: it needs nothing
    from the library.
    """
    yield
    import gc

    from llmstream._stream import TokenStream

    alive_threads = wait_no_worker_threads()
    gc.collect()
    streams = [obj for obj in gc.get_objects() if isinstance(obj, TokenStream)]
    assert alive_threads == [] and streams == [], (
        f"{len(alive_threads)} llmstream worker thread(s) and {len(streams)} TokenStream(s) outlived the test session"
    )
