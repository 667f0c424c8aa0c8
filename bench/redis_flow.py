"""The cost of sharing flow control through Redis, against the in-process limiter, in one run.

``python bench/redis_flow.py`` (needs ``redis-server`` on the PATH and the ``redis`` extra).
It starts its own redis-server on a free 127.0.0.1 port (no persistence) and stops it after.

Measures, interleaved in blocks so that the machine's other load hits both sides alike:

  1. per attempt: ``flow.enter()`` + ``flow.record()`` (what the worker runs around each
     HTTP attempt) with a rate limit that never makes it wait, for the local ``Flow`` and
     for ``RedisState``'s flow; p50/p99 in microseconds, and the Redis round-trips each
     made (counted at redis-py's ``execute_command``);
  2. per one-attempt stream: ``acquire_slot`` + ``enter`` + ``record`` + ``release_slot``
     (with a usage correction), the same way: the lease rides with the first attempt's
     admission, and goes back with the correction;
  3. end to end: ``client.complete()`` against ``FakeLLMServer`` with ``max_concurrent``,
     ``requests_per_minute`` and ``tokens_per_minute`` set, local vs shared; p50/p99 in ms
     and round-trips per stream.

Options: --attempts N (default 3000), --streams N (default 300), --threads N (also run
part 1 with N threads at once; default 8). Figures go in notes, never in assertions.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

import llmstream  # noqa: E402
from llmstream._flow import Flow, FlowControl  # noqa: E402
from llmstream.testing import FakeLLMServer, Reply  # noqa: E402

RATE = llmstream.RateLimit(requests_per_minute=1e9, tokens_per_minute=1e12)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis() -> Tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probe = redis.Redis(port=port)
    for _ in range(500):
        try:
            probe.ping()
            break
        except redis.exceptions.ConnectionError:
            time.sleep(0.01)
    probe.close()
    return proc, f"redis://127.0.0.1:{port}/0"


class Counter:
    """Counts redis-py commands sent (one per round-trip: scripts and single commands alike)."""

    def __init__(self, client: Any) -> None:
        self.n = 0
        original = client.execute_command

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.n += 1
            return original(*args, **kwargs)

        client.execute_command = counted


def pct(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def row(name: str, samples: List[float], unit: float, label: str, trips: float = float("nan")) -> str:
    return (f"| {name} | {statistics.median(samples) * unit:.1f} | {pct(samples, 0.99) * unit:.1f} | "
            f"{label} | {trips:.2f} |")


def time_attempts(flow: FlowControl, n: int) -> List[float]:
    cancel = threading.Event()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        _, probe = flow.enter(100.0, cancel, time.monotonic() + 60)
        flow.record(probe, None)
        out.append(time.perf_counter() - t)
    return out


def time_streams(flow: FlowControl, n: int) -> List[float]:
    """A one-attempt stream's flow control: slot, admission, outcome, slot back with the usage correction."""
    cancel = threading.Event()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        lease = flow.acquire_slot(cancel, time.monotonic() + 60)
        _, probe = flow.enter(100.0, cancel, time.monotonic() + 60, lease)
        flow.record(probe, None)
        flow.release_slot(lease, -40.0)
        out.append(time.perf_counter() - t)
    return out


def interleave(n: int, block: int, sides: Dict[str, Callable[[int], List[float]]]) -> Dict[str, List[float]]:
    results: Dict[str, List[float]] = {name: [] for name in sides}
    done = 0
    while done < n:
        size = min(block, n - done)
        for name, fn in sides.items():
            results[name] += fn(size)
        done += size
    return results


def threaded(flow: FlowControl, threads: int, per_thread: int) -> List[float]:
    out: List[float] = []
    lock = threading.Lock()

    def run() -> None:
        samples = time_attempts(flow, per_thread)
        with lock:
            out.extend(samples)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=3000)
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    proc, url = start_redis()
    try:
        state = llmstream.RedisState(url, prefix="bench", share_breaker=True)
        counter = Counter(state._redis)
        local = Flow(base_url="http://bench", max_concurrent=10_000, rate_limit=RATE,
                     circuit_breaker=llmstream.CircuitBreaker())
        shared = state.flow(base_url="http://bench", max_concurrent=10_000, rate_limit=RATE,
                            circuit_breaker=llmstream.CircuitBreaker())
        time_attempts(local, 200), time_attempts(shared, 200), time_streams(shared, 200)  # warm-up, scripts loaded
        print(f"redis-server {redis.Redis.from_url(url).info()['redis_version']}, python {sys.version.split()[0]}, "
              f"llmstream {llmstream.__version__}\n")
        print("| what | p50 µs | p99 µs | n | Redis round-trips each |\n|---|---|---|---|---|")
        before = counter.n
        r = interleave(args.attempts, 100, {"local": lambda k: time_attempts(local, k),
                                            "redis": lambda k: time_attempts(shared, k)})
        trips = (counter.n - before) / args.attempts
        print(row("attempt, in-process Flow (breaker + rpm + tpm)", r["local"], 1e6, str(args.attempts), 0))
        print(row("attempt, RedisState (pause + shared breaker + rpm + tpm)", r["redis"], 1e6, str(args.attempts),
                  trips))
        added = [b - a for a, b in zip(sorted(r["local"]), sorted(r["redis"]))]
        print(f"| attempt, added by Redis (quantile differences) | {statistics.median(added) * 1e6:.1f} | "
              f"{(pct(r['redis'], 0.99) - pct(r['local'], 0.99)) * 1e6:.1f} | | |")
        before = counter.n
        leases = interleave(args.attempts, 100, {"local": lambda k: time_streams(local, k),
                                                 "redis": lambda k: time_streams(shared, k)})
        trips = (counter.n - before) / args.attempts
        print(row("one-attempt stream, in-process (slot + attempt + slot back, usage)", leases["local"], 1e6,
                  str(args.attempts), 0))
        print(row("one-attempt stream, RedisState (lease + attempt + lease back, usage)", leases["redis"], 1e6,
                  str(args.attempts), trips))
        if args.threads > 1:
            per = max(1, args.attempts // args.threads)
            lt = threaded(local, args.threads, per)
            before = counter.n
            rt = threaded(shared, args.threads, per)
            trips = (counter.n - before) / (per * args.threads)
            print(row(f"attempt, in-process, {args.threads} threads at once", lt, 1e6, str(len(lt)), 0))
            print(row(f"attempt, RedisState, {args.threads} threads at once", rt, 1e6, str(len(rt)), trips))

        with FakeLLMServer(default_reply=Reply(text="ok")) as server:
            common: Dict[str, Any] = dict(base_url=server.base_url("openai"), api_key="x", max_concurrent=64,
                                          rate_limit=RATE, retry=1)
            local_client = llmstream.Client("openai", **common)
            shared_client = llmstream.Client("openai", shared=state, **common)

            def streams(client: llmstream.Client) -> Callable[[int], List[float]]:
                def run(k: int) -> List[float]:
                    out = []
                    for _ in range(k):
                        t = time.perf_counter()
                        client.complete("hi", model="m", max_tokens=10)
                        out.append(time.perf_counter() - t)
                    return out
                return run

            streams(local_client)(20), streams(shared_client)(20)
            before = counter.n
            s = interleave(args.streams, 25, {"local": streams(local_client), "redis": streams(shared_client)})
            trips = (counter.n - before) / args.streams
            print()
            print("| whole stream (complete(), fake server) | p50 ms | p99 ms | n | Redis round-trips each |")
            print("|---|---|---|---|---|")
            print(row("in-process flow control", s["local"], 1e3, str(args.streams), 0))
            print(row("RedisState (lease + admission, then lease back + usage)", s["redis"], 1e3, str(args.streams),
                      trips))
            local_client.close()
            shared_client.close()
        state.close()
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
