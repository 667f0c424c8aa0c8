"""Shared fixtures: the fake LLM server on 127.0.0.1, and a check that no worker thread leaks."""

from __future__ import annotations

import threading
import time
from typing import Iterator

import pytest

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


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as fake:
        yield fake


@pytest.fixture(autouse=True)
def no_leaked_worker_threads() -> Iterator[None]:
    yield
    assert wait_no_worker_threads() == [], "an llmstream worker thread outlived its test"
