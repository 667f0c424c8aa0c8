"""Fleet-wide flow control through a real redis-server: ``Client(shared=llmstream.RedisState(url))``.

The tests start their own ``redis-server`` on a free 127.0.0.1 port (no
persistence) and stop it after; a fleet is several real processes
(``tests/fleet_proc.py``) against one ``FakeLLMServer``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

redis = pytest.importorskip("redis")

from llmstream import (  # noqa: E402
    CircuitBreaker,
    CircuitOpenError,
    Client,
    RateLimit,
    RateLimitError,
    RedisState,
    Retry,
    ServerError,
    SharedStateError,
    StreamTimeoutError,
    Timeout,
)
from llmstream._transport import Cancelled  # noqa: E402
from llmstream.testing import DEFAULT_TEXT, FakeLLMServer, Reply  # noqa: E402

from conftest import wait_no_worker_threads  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NO_RETRY = Retry(max_attempts=1)



from redis_server import RedisServer, needs_redis_server, redis_server  # noqa: E402,F401 (redis_server: a fixture)

pytestmark = needs_redis_server


@pytest.fixture()
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as s:
        yield s


class Fleet:
    """Processes running tests/fleet_proc.py; each prints JSON lines."""

    def __init__(self) -> None:
        self.procs: List[subprocess.Popen[str]] = []

    def start(self, **cfg: Any) -> "subprocess.Popen[str]":
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
        proc = subprocess.Popen([sys.executable, str(HERE / "fleet_proc.py"), json.dumps(cfg)], env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc

    @staticmethod
    def read(proc: "subprocess.Popen[str]", timeout: float = 40) -> Dict[str, Any]:
        """The process's next JSON line, bounded (a reader thread: pipes have no read timeout)."""
        box: List[str] = []
        reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        if not box or not box[0]:
            raise AssertionError(f"fleet process {proc.pid} said nothing within {timeout}s (exit {proc.poll()})")
        return json.loads(box[0])  # type: ignore[no-any-return]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()


@pytest.fixture()
def fleet() -> Iterator[Fleet]:
    f = Fleet()
    try:
        yield f
    finally:
        f.stop()


def shared_client(server: FakeLLMServer, state: RedisState, **kwargs: Any) -> Client:
    kwargs.setdefault("retry", NO_RETRY)
    return Client("openai", base_url=server.base_url("openai"), api_key="sk-test-key", shared=state, **kwargs)


def wait_until(condition: Any, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


# -- the fleet: several processes ------------------------------------------------------------


def test_four_processes_share_one_concurrency_limit(redis_server: RedisServer, fleet: Fleet) -> None:
    limit = 4
    with FakeLLMServer(max_concurrent=limit, limit_retry_after=0.05) as server:
        server.default_reply = Reply(interval=0.002)  # paced, so that streams overlap
        procs = [fleet.start(mode="streams", name=f"p{n}", redis_url=redis_server.url, prefix="conc",
                             base_url=server.base_url("openai"), max_concurrent=limit, streams=50, threads=50)
                 for n in range(4)]
        outcomes = [fleet.read(p) for p in procs]
        for out in outcomes:
            assert out["event"] == "done"
            assert out["results"] == [DEFAULT_TEXT] * 50
            assert out["fallbacks"] == 0
        assert len(server.requests) == 200
        assert server.max_active_connections == limit
        assert server.rejected_over_limit == 0
    # Every lease was given back and nobody is left in the line.
    assert redis_server.client.zcard("{conc}:leases") == 0
    assert redis_server.client.zcard("{conc}:queue") == 0


def test_a_requests_per_minute_budget_holds_across_processes(redis_server: RedisServer, fleet: Fleet,
                                                             server: FakeLLMServer) -> None:
    # 1200/min = 20 requests a second for the whole fleet, a bucket of 2 (0.1 s of budget).
    rate = {"requests_per_minute": 1200, "burst_seconds": 0.1}
    procs = [fleet.start(mode="streams", name=f"p{n}", redis_url=redis_server.url, prefix="rpm",
                         base_url=server.base_url("openai"), rate_limit=rate, streams=16, threads=4)
             for n in range(4)]
    for p in procs:
        assert fleet.read(p)["results"] == [DEFAULT_TEXT] * 16
    times = sorted(r.received_at for r in server.requests)
    assert len(times) == 64
    # After the first 2 (the full bucket), one request every 50 ms, whatever the number of processes.
    observed = (len(times) - 2) / (times[-1] - times[0])
    assert 20 * 0.95 <= observed <= 20 * 1.05, observed
    # Each process alone would have sent its 16 at 20/s: four times the fleet's budget.
    assert {r.json["messages"][-1]["content"].split("-")[0] for r in server.requests} == {"p0", "p1", "p2", "p3"}


def test_one_429_pauses_every_process_of_the_fleet(redis_server: RedisServer, fleet: Fleet,
                                                   server: FakeLLMServer) -> None:
    procs = [fleet.start(mode="wait-go", name=f"p{n}", redis_url=redis_server.url, prefix="pause",
                         base_url=server.base_url("openai"), streams=2, threads=2) for n in range(3)]
    for p in procs:
        assert fleet.read(p)["event"] == "ready"  # each has streamed once: connected and warm
    server.script(Reply(status=429, headers={"Retry-After": "1.5"}))
    with RedisState(redis_server.url, prefix="pause") as state:
        with pytest.raises(RateLimitError):
            shared_client(server, state).complete("limited", model="m")
    limited_at = server.requests[-1].received_at
    for p in procs:
        p.stdin.write("go\n")  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]
    for p in procs:
        assert fleet.read(p)["results"] == [DEFAULT_TEXT] * 3  # the warm-up and the 2 after "go"
    later = [r.received_at - limited_at for r in server.requests if r.received_at > limited_at]
    assert len(later) == 6
    assert min(later) >= 1.45, later  # the Retry-After, measured by Redis's clock, not the processes'


def test_a_killed_process_frees_its_slots_within_the_lease(redis_server: RedisServer, fleet: Fleet,
                                                           server: FakeLLMServer) -> None:
    lease = 1.0
    server.default_reply = Reply(stall_after_tokens=(1, float("inf")))
    holder = fleet.start(mode="hold", name="holder", redis_url=redis_server.url, prefix="kill", lease=lease,
                         timeout=0.2, base_url=server.base_url("openai"), max_concurrent=2, streams=2)
    assert fleet.read(holder)["event"] == "holding"
    server.default_reply = Reply()
    with RedisState(redis_server.url, prefix="kill", lease=lease, timeout=0.2) as state:
        client = shared_client(server, state, max_concurrent=2)
        with client.stream("waiter", model="m") as waiting:
            # The holder renews its leases: after twice the lease time the waiter still waits.
            time.sleep(2 * lease)
            assert len(server.requests) == 2 and redis_server.client.zcard("{kill}:leases") == 2
            holder.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            assert waiting.result.text == DEFAULT_TEXT
        freed_after = server.requests[-1].received_at - killed_at
        assert freed_after <= lease + 0.3, freed_after


def test_redis_stopped_mid_run_fails_open_or_closed_without_hanging(redis_server: RedisServer,
                                                                    server: FakeLLMServer,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    from prometheus_client import CollectorRegistry

    import llmstream.prometheus

    exporter = llmstream.prometheus.install(CollectorRegistry())
    monitored_before = llmstream.monitor.snapshot().shared_state_fallbacks
    opened = RedisState(redis_server.url, prefix="down", timeout=0.2, retry_interval=0.5, lease=1.0)
    closed = RedisState(redis_server.url, prefix="down", timeout=0.2, retry_interval=0.5, lease=1.0, on_error="closed")
    rate = RateLimit(requests_per_minute=6000)
    open_client = shared_client(server, opened, max_concurrent=2, rate_limit=rate)
    closed_client = shared_client(server, closed, max_concurrent=2, rate_limit=rate)
    try:
        assert open_client.complete("before", model="m").text == DEFAULT_TEXT
        assert closed_client.complete("before", model="m").text == DEFAULT_TEXT
        server.default_reply = Reply(stall_after_tokens=(1, 0.5))
        in_flight = open_client.stream("in flight", model="m")
        pieces = iter(in_flight)
        assert next(pieces) == "Hello"  # it holds a Redis lease now
        server.default_reply = Reply()

        # Slow: the server stops answering (SIGSTOP) -> each call waits at most the timeout.
        redis_server.proc.send_signal(signal.SIGSTOP)
        caplog.set_level(logging.WARNING, logger="llmstream")
        started = time.monotonic()
        assert open_client.complete("slow redis", model="m").text == DEFAULT_TEXT
        assert time.monotonic() - started < 1.0
        assert opened.fallbacks >= 1 and opened.failures == 1
        # Redis is left alone for retry_interval: the next stream does not wait for it again.
        started = time.monotonic()
        assert open_client.complete("slow redis, again", model="m").text == DEFAULT_TEXT
        assert time.monotonic() - started < 0.15
        assert opened.failures == 1
        assert "Redis at redis://127.0.0.1:" in caplog.text and "fail-open" in caplog.text
        started = time.monotonic()
        with pytest.raises(SharedStateError) as info:
            closed_client.complete("slow redis", model="m")
        assert time.monotonic() - started < 1.0
        assert "RedisState(on_error='closed')" in str(info.value) and info.value.attempts == 0

        # Down: redis-server is gone (connection refused).
        redis_server.proc.send_signal(signal.SIGCONT)
        redis_server.proc.kill()
        redis_server.proc.wait(10)
        assert "Hello" + "".join(pieces) == DEFAULT_TEXT  # its release cannot reach Redis: it does not hang either
        time.sleep(0.6)  # past retry_interval: both ask Redis again
        started = time.monotonic()
        assert open_client.complete("redis down", model="m").text == DEFAULT_TEXT
        with pytest.raises(SharedStateError):
            closed_client.complete("redis down", model="m")
        assert time.monotonic() - started < 1.0
        assert closed.fallbacks == 0
        # The metric: in the monitor's snapshot and in Prometheus.
        assert llmstream.monitor.snapshot().shared_state_fallbacks - monitored_before == opened.fallbacks
        assert exporter.registry.get_sample_value("llmstream_shared_state_fallbacks_total") == \
            llmstream.monitor.snapshot().shared_state_fallbacks
        # Fail-open used this process's own limits: 2 slots, the local pause and buckets.
        assert open_client._flow._local.slots.in_use == 0  # type: ignore[attr-defined]
    finally:
        opened.close()
        closed.close()
        exporter.uninstall()
    assert wait_no_worker_threads() == []


# -- one process, several RedisStates (each as if in its own process) --------------------------


def test_waiters_are_served_in_fifo_order_across_states(redis_server: RedisServer, server: FakeLLMServer) -> None:
    states = [RedisState(redis_server.url, prefix="fifo") for _ in range(3)]
    try:
        clients = [shared_client(server, s, max_concurrent=1) for s in states]
        server.script(Reply(stall_before_first_byte=float("inf")))
        holder = clients[0].stream("holder", model="m")
        server.wait_for_requests(1)
        streams = []
        for i in range(6):
            streams.append(clients[i % 3].stream(f"w{i}", model="m"))
            wait_until(lambda: redis_server.client.zcard("{fifo}:queue") == i + 1, what=f"waiter {i} in line")
        holder.close()
        for s in streams:
            assert s.result.text == DEFAULT_TEXT
        assert [r.json["messages"][-1]["content"] for r in server.requests] == ["holder"] + [f"w{i}" for i in range(6)]
    finally:
        for s in states:
            s.close()


def test_a_newcomer_never_jumps_the_line(redis_server: RedisServer) -> None:
    # The LEASE script itself, step by step: a slot freed while the head of the
    # line has not polled yet is not taken by a stream that arrives after it.
    with RedisState(redis_server.url, prefix="line") as state:
        keys = [state.keys[k] for k in ("leases", "queue", "alive", "seq")]

        def ask(lease_id: str) -> List[int]:
            return [int(x) for x in state.call("lease", keys, [lease_id, 1, 5000, 5000])]

        assert ask("holder") == [1, 0, 0]  # granted at once: a free slot and nobody in line
        assert ask("first")[0] == 0  # in line, rank 0
        redis_server.client.zrem("{line}:leases", "holder")  # the holder gives its slot back
        assert ask("newcomer") == [0, 1, 1]  # a free slot, but it is first's: rank 1 waits
        assert ask("first") == [1, 0, 0]
        assert ask("newcomer") == [0, 0, 0]  # now at the head, waiting for a slot
        assert redis_server.client.zrange("{line}:queue", 0, -1) == [b"newcomer"]


def test_a_cancelled_waiter_leaves_the_line(redis_server: RedisServer, server: FakeLLMServer) -> None:
    with RedisState(redis_server.url, prefix="cancel") as state:
        client = shared_client(server, state, max_concurrent=1)
        server.script(Reply(stall_before_first_byte=float("inf")))
        holder = client.stream("holder", model="m")
        server.wait_for_requests(1)
        waiter = client.stream("waiter", model="m")
        wait_until(lambda: redis_server.client.zcard("{cancel}:queue") == 1, what="a waiter")
        waiter.close()
        wait_until(lambda: redis_server.client.zcard("{cancel}:queue") == 0, what="the waiter to leave")
        with pytest.raises(StreamTimeoutError) as info:
            client.complete("timed out", model="m", timeout=Timeout(total=0.3))
        assert info.value.kind == "total" and "shared through Redis" in str(info.value)
        holder.close()
        assert client.complete("after", model="m").text == DEFAULT_TEXT
        assert redis_server.client.zcard("{cancel}:leases") == 0


@pytest.mark.parametrize("max_concurrent", [None, 2], ids=["alone", "with-the-lease-back"])
def test_token_budget_is_charged_then_corrected_by_the_usage(redis_server: RedisServer, server: FakeLLMServer,
                                                             max_concurrent: Any) -> None:
    server.default_reply = Reply(usage=(10, 20))
    with RedisState(redis_server.url, prefix="tok") as state:
        client = shared_client(server, state, max_concurrent=max_concurrent,
                               rate_limit=RateLimit(tokens_per_minute=60_000, burst_seconds=10))
        client.complete("q", model="m", max_tokens=500)  # charged ~500 first, then corrected to 30
        level = float(redis_server.client.hget("{tok}:rate", "tok"))
        assert 10_000 - 31 <= level <= 10_000  # a bucket of 10 000, minus the 30 used (it refills meanwhile)
        assert redis_server.client.zcard("{tok}:leases") == 0


def test_a_shared_breaker_opens_for_every_client_of_the_fleet(redis_server: RedisServer, server: FakeLLMServer) -> None:
    states = [RedisState(redis_server.url, prefix="brk", share_breaker=True) for _ in range(2)]
    try:
        breaker = CircuitBreaker(failure_threshold=2, cooldown=30)
        a, b = (shared_client(server, s, circuit_breaker=breaker) for s in states)
        server.script(Reply(status=503), Reply(status=503))
        with pytest.raises(ServerError):
            a.complete("1", model="m")
        with pytest.raises(ServerError):
            b.complete("2", model="m")
        assert a.circuit_state == "open" and b.circuit_state == "open"
        with pytest.raises(CircuitOpenError) as info:
            a.complete("3", model="m")
        assert "after 2 consecutive failures" in str(info.value) and info.value.retry_after > 25
        assert len(server.requests) == 2
        # Not shared: the same two failures, one per client, open nothing.
        local = [RedisState(redis_server.url, prefix="brk2") for _ in range(2)]
        c, d = (shared_client(server, s, circuit_breaker=breaker) for s in local)
        server.script(Reply(status=503), Reply(status=503))
        for client in (c, d):
            with pytest.raises(ServerError):
                client.complete("x", model="m")
        assert c.circuit_state == "closed" and c.complete("ok", model="m").text == DEFAULT_TEXT
        for s in local:
            s.close()
    finally:
        for s in states:
            s.close()


def test_after_the_cooldown_one_probe_goes_out_for_the_whole_fleet(redis_server: RedisServer,
                                                                 server: FakeLLMServer) -> None:
    states = [RedisState(redis_server.url, prefix="probe", share_breaker=True) for _ in range(2)]
    try:
        breaker = CircuitBreaker(failure_threshold=1, cooldown=0.3)
        a, b = (shared_client(server, s, circuit_breaker=breaker) for s in states)
        server.script(Reply(status=503))
        with pytest.raises(ServerError):
            a.complete("fails", model="m")
        wait_until(lambda: b.circuit_state == "half-open", what="the cooldown")
        # The attempts themselves, as the workers run them (a probe answered 2xx closes the
        # circuit at its headers, so no fake-server reply could keep one in flight).
        never = threading.Event()
        deadline = time.monotonic() + 5
        assert a._flow.enter(1.0, never, deadline) == (pytest.approx(0, abs=0.5), True)  # a's is the probe
        with pytest.raises(CircuitOpenError) as info:
            b._flow.enter(1.0, never, deadline)
        assert "a probe request is in flight" in str(info.value) and info.value.retry_after == 0
        a._flow.record(True, Cancelled())  # closed by its caller: proves nothing
        assert b._flow.enter(1.0, never, deadline)[1] is True  # so b's attempt is the next probe
        b._flow.record(True, None)
        assert a.circuit_state == "closed" and b.circuit_state == "closed"
    finally:
        for s in states:
            s.close()


def test_every_key_is_in_one_cluster_slot_per_prefix(redis_server: RedisServer, server: FakeLLMServer) -> None:
    from redis.crc import key_slot

    with RedisState(redis_server.url, prefix="tenant-7", share_breaker=True) as state:
        client = shared_client(server, state, max_concurrent=2, circuit_breaker=True,
                               rate_limit=RateLimit(requests_per_minute=600, tokens_per_minute=100_000))
        server.script(Reply(status=503))
        with pytest.raises(ServerError):
            client.complete("fails", model="m")
        with client.stream("holds a slot", model="m") as s:
            assert s.result.text == DEFAULT_TEXT
        keys = sorted(k.decode() for k in redis_server.client.keys("*"))
        assert keys == ["{tenant-7}:breaker:" + client._flow.base_url, "{tenant-7}:rate"]
        assert {key_slot(k.encode()) for k in keys} == {key_slot(b"tenant-7")}
        # Nothing of the request: no prompt, no key.
        dump = repr([redis_server.client.hgetall(k) for k in keys if "seq" not in k])
        assert "holds a slot" not in dump and "sk-test-key" not in dump


def test_without_the_extra_redis_state_names_it() -> None:
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "redis" or name.startswith("redis."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
import llmstream
try:
    llmstream.RedisState("redis://127.0.0.1:1/0")
except ImportError as exc:
    print(exc)
print(llmstream.complete("hi", model="m", base_url="http://127.0.0.1:1/v1", api_key="k", retry=1)
      if False else "core works")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout == 'llmstream.RedisState needs redis: pip install "llmstream-sdk[redis]"\ncore works\n', done.stderr


def test_redis_state_is_validated_and_its_repr_hides_the_password() -> None:
    state = RedisState("redis://user:hunter2@127.0.0.1:1/0", prefix="x")
    assert "hunter2" not in repr(state) and "127.0.0.1:1" in repr(state)
    state.close()
    with pytest.raises(ValueError, match="on_error must be 'open' or 'closed'"):
        RedisState(on_error="maybe")
    with pytest.raises(ValueError, match="prefix must be a non-empty str without braces"):
        RedisState(prefix="{x}")
    with pytest.raises(TypeError, match="shared must be a llmstream.RedisState or None"):
        Client("openai", base_url="http://127.0.0.1:1/v1", api_key="k", shared="redis://x")  # type: ignore[arg-type]


def test_import_llmstream_does_not_import_redis() -> None:
    code = "import sys, llmstream; print('redis' in sys.modules); llmstream.RedisState; print('redis' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout == "False\nFalse\n", done.stderr
