"""A real redis-server for the tests (tests/test_redis_state.py, tests/test_redis_runs.py)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Iterator

import pytest
import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A real redis-server on a free loopback port, no persistence; stopped (and reaped) by ``stop()``."""

    def __init__(self) -> None:
        # redis-server cannot listen on port 0: the port is picked here and may be taken
        # before redis-server binds it (by another process, or by an outgoing connection of
        # this suite). Then redis-server exits, or another process's server answers on it:
        # take a new port (a bounded number of times) until the server that answers is ours.
        for _ in range(5):
            if self._start(free_port()):
                return
        raise RuntimeError("redis-server did not start")

    def _start(self, port: int) -> bool:
        self.port = port
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client.info("server")["process_id"] == self.proc.pid:
                    return True
                self.stop()  # someone else's server holds the port; ours failed to bind
                return False
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):  # not up yet, or not a redis
                if self.proc.poll() is not None:  # could not bind
                    self.stop()
                    return False
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.02)

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case a test left it stopped
            self.proc.kill()
        self.proc.wait(10)


#: Skipped on a machine without redis-server, except in CI (CI=true), where .ci/run
#: installs it: there a missing server must fail these tests, not hide them.
needs_redis_server = pytest.mark.skipif(shutil.which("redis-server") is None and os.environ.get("CI") != "true",
                                        reason="redis-server is not installed (.ci/run installs it)")


@pytest.fixture()
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port for one test, stopped after it."""
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()
