"""Relay overhead: CPU of relaying a stream as SSE vs plain iteration, and how long an event waits for its frame.

Run: ``python bench/relay_bench.py`` (the fake server runs in a process of its
own, so this process's CPU time is the client's alone). Figures go in
``bench/RELAY_NOTES.md``; nothing here is asserted.

* CPU: ``time.process_time()`` of this process while it consumes N tokens sent
  as fast as the server can (plain ``for text in stream`` vs ``b"".join(relay.sse(stream))``),
  median of R runs, the two interleaved.
* Latency: a paced stream (1,000 tokens/s); each text piece's time from the pump
  having it (``Run._append_text``) to the body yielding the frame that carries it:
  the delay the coalescing adds, to be within one interval (50 ms at 20 frames/s).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from typing import List, Tuple

import llmstream
from llmstream import relay
from llmstream._runs import Run


def start_server(*faults: str) -> Tuple[subprocess.Popen, str]:  # type: ignore[type-arg]
    args = [sys.executable, "-m", "llmstream.testing"]
    for fault in faults:
        args += ["--fault", fault]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    while "openai" not in line:
        line = proc.stdout.readline()
    return proc, line.split("base_url=")[1].strip()


def cpu(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.process_time()
    fn()
    return time.process_time() - start


class TimedRun(Run):
    """A run that remembers when each text piece reached it, and into which event it went (bench only)."""

    pieces: List[Tuple[float, int]]

    def _append_text(self, name: str, text: str) -> None:
        if not hasattr(self, "pieces"):
            self.pieces = []
        arrived = time.monotonic()
        super()._append_text(name, text)
        self.pieces.append((arrived, self.last_id))  # the pump is the only writer: last_id is this piece's event


def latency(base_url: str) -> List[float]:
    client = llmstream.Client(base_url=base_url, api_key="k")
    run = TimedRun(client.stream("hi", model="m"))
    body = relay.Body(run, owns_run=True)
    framed: List[Tuple[int, float]] = []  # (newest id in the write, when it was yielded)
    for chunk in body:
        now = time.monotonic()
        ids = [int(line[4:]) for line in chunk.split(b"\n") if line.startswith(b"id: ")]
        if ids:
            framed.append((max(ids), now))
    delays = []
    for arrived, event_id in run.pieces:
        yielded = next(t for newest, t in framed if newest >= event_id)
        delays.append(yielded - arrived)
    return delays


def main() -> None:
    tokens, runs = 20_000, 5
    proc, url = start_server(f"token_count={tokens}", "interval=0")  # as fast as the server can (its CLI paces by default)
    try:
        client = llmstream.Client(base_url=url, api_key="k")
        plain, relayed = [], []
        for _ in range(runs):
            plain.append(cpu(lambda: sum(1 for _ in client.stream("hi", model="m"))))
            relayed.append(cpu(lambda: b"".join(relay.sse(client.stream("hi", model="m")))))
        p, r = statistics.median(plain), statistics.median(relayed)
        print(f"CPU, {tokens} tokens, median of {runs}: plain {p * 1000:.0f} ms, relay {r * 1000:.0f} ms, "
              f"overhead {100 * (r - p) / p:+.1f}%  (runs: plain {[round(x, 3) for x in plain]}, "
              f"relay {[round(x, 3) for x in relayed]})")
    finally:
        proc.terminate()
        proc.wait()
    proc, url = start_server("token_count=3000", "interval=0.001")
    try:
        delays = sorted(latency(url))
        p50, p99 = delays[len(delays) // 2], delays[int(len(delays) * 0.99)]
        print(f"token -> frame delay, 1,000 tokens/s, max_rate 20: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
              f"max {delays[-1] * 1000:.1f} ms over {len(delays)} tokens")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
