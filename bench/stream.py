"""Benchmark the streaming engine against hand-written baselines, in one run. ``python bench/stream.py``.

The server (``bench/_server.py``) runs in its own process, so its work and its GIL
never touch the client being measured; it writes OpenAI chat-completions SSE built
once, so it is not the bottleneck (the "raw socket" row shows its ceiling).

Clients, each presented to the caller as an iterator of text pieces:

  llmstream   ``Client("openai", base_url=..., api_key="x").stream(...)``: worker
              thread, bounded queue, full decoding (SSE rules, OpenAI decoder).
  read1       requests (stream=True) + ``resp.raw.read1(65536)`` + split on b"\\n"
              with a carry + ``json.loads`` of each ``data:`` line, in the caller's thread.
  iter_lines  requests ``iter_lines()`` (its default chunk_size) + ``json.loads``.
  raw socket  (throughput only) bare ``recv()`` every 0.5 ms, parsing nothing: the server's ceiling.

Measures, in order:

  1. throughput (tokens/s, best of --repeat runs, interleaved) and client CPU
     (``time.process_time``, all threads of this process) per 100k tokens, with
     64 events per server write (--tokens-64) and 1 event per write (--tokens-1);
  2. delivery latency (caller arrival minus the server's write time, which the
     server writes into each token as ``" <time.monotonic()>"``) at --rate
     tokens/s, with a chunked and an unchunked (Connection: close) body; of
     --rounds interleaved rounds, each client's round with the lowest p99 is shown;
  3. peak RSS growth of a process reading --rss-tokens with a slow caller (a 1 s
     pause so backpressure fills, then 50 ms pauses every 50k tokens), each run in a
     fresh process, VmHWM reset through /proc/self/clear_refs after a warm-up
     stream; with the default Client at each length, and with
     ``Retry(max_attempts=1)`` (no resume bookkeeping) at the longest. The size of
     ``.text`` (kept by design) is shown beside the growth.

Targets (from the issue): llmstream >= 1.0x the better baseline's tokens/s at both
write sizes; llmstream's p99 latency <= read1's + 200 us, and no 2-4 ms block-read
delay on unchunked bodies; CPU <= 1.2x read1's; RSS growth <= 10 MiB at any length.
Options: --quick (smaller everything), --only throughput|latency|rss, --profile 1|64
(cProfile llmstream's caller and worker threads on one stream), --root DIR (measure
the llmstream package in DIR, e.g. a ``git archive`` of another commit).
Figures go in notes, never in assertions; the machine's other load shows in them.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
# --root DIR measures the llmstream package in DIR (e.g. a `git archive` of a commit)
# instead of this checkout's; it must be known before the import below.
ROOT = os.path.abspath(sys.argv[sys.argv.index("--root") + 1] if "--root" in sys.argv[:-1] else os.path.join(HERE, ".."))
sys.path.insert(0, ROOT)

import requests  # noqa: E402

import llmstream  # noqa: E402

MODEL = "gpt-4o-mini"
HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream", "Accept-Encoding": "identity",
           "Authorization": "Bearer x"}
#: Latency samples dropped at the start of each stream (connection set-up, first wake-ups).
WARMUP_SAMPLES = 20

Texts = Iterator[str]
Method = Callable[[Dict[str, Any]], Iterable[str]]


# -- the server ----------------------------------------------------------------


class Server:
    """``bench/_server.py`` in a child process (ended by its pid in ``close``)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "_server.py"), "0"],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("PORT "):
            self.close()
            raise RuntimeError(f"bench server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.url = f"{self.base_url}/chat/completions"

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# -- the clients ---------------------------------------------------------------


def _body(params: Dict[str, Any]) -> bytes:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "bench"}], "stream": True,
            "stream_options": {"include_usage": True}, **params}
    return json.dumps(body).encode()


class Clients:
    """The three clients, each with its own connection pool, reused across runs."""

    def __init__(self, server: Server) -> None:
        self.url = server.url
        self.client = llmstream.Client("openai", base_url=server.base_url, api_key="x")
        self.session = requests.Session()

    def methods(self) -> Dict[str, Method]:
        return {"llmstream": self.llmstream, "read1": self.read1, "iter_lines": self.iter_lines}

    def llmstream(self, params: Dict[str, Any]) -> Iterable[str]:
        # The TokenStream itself, not wrapped: it closes itself at its end.
        return self.client.stream("bench", model=MODEL, **params)

    def _post(self, params: Dict[str, Any]) -> requests.Response:
        resp = self.session.post(self.url, data=_body(params), headers=HEADERS, stream=True, timeout=(10, 60))
        resp.raise_for_status()
        return resp

    def read1(self, params: Dict[str, Any]) -> Texts:
        resp = self._post(params)
        read1 = resp.raw.read1
        loads = json.loads
        carry = b""
        try:
            while True:
                data = read1(65536, decode_content=True)
                if not data:
                    return
                lines = (carry + data).split(b"\n")
                carry = lines.pop()
                for line in lines:
                    if line[:6] == b"data: " and line != b"data: [DONE]":
                        for choice in loads(line[6:])["choices"]:
                            content = choice["delta"].get("content")
                            if content:
                                yield content
        finally:
            resp.close()

    def iter_lines(self, params: Dict[str, Any]) -> Texts:
        resp = self._post(params)
        loads = json.loads
        try:
            for line in resp.iter_lines():
                if line[:6] == b"data: " and line != b"data: [DONE]":
                    for choice in loads(line[6:])["choices"]:
                        content = choice["delta"].get("content")
                        if content:
                            yield content
        finally:
            resp.close()

    def close(self) -> None:
        self.client.close()
        self.session.close()


def raw_socket(server: Server, params: Dict[str, Any]) -> int:
    """The server's ceiling: read a chunked answer with bare recv(), parse nothing; return its bytes.

    The reader sleeps 0.5 ms between reads, so the server is never slowed by a
    reader woken for each of its writes: this is how fast the server can write.
    """
    body = _body(params)
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
               "Content-Type: application/json\r\n\r\n").encode() + body
    end = b"data: [DONE]\n\n\r\n0\r\n\r\n"
    total = 0
    last = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(request)
        while not last.endswith(end):
            data = sock.recv(1 << 20)
            if not data:
                break
            time.sleep(0.0005)
            total += len(data)
            last = (last + data)[-64:]
    return total


# -- 1. throughput and CPU -----------------------------------------------------


def _count(texts: Iterable[str]) -> int:
    n = 0
    for _ in texts:
        n += 1
    return n


def throughput(clients: Clients, server: Server, sizes: Sequence[Tuple[int, int]], repeat: int
               ) -> Dict[Tuple[str, int], Tuple[float, float]]:
    """Return {(method, per_write): (best tokens/s, least CPU seconds per 100k tokens)}."""
    best: Dict[Tuple[str, int], Tuple[float, float]] = {}
    for _ in range(repeat):
        for per_write, tokens in sizes:
            params = {"bench_mode": "bulk", "bench_tokens": tokens, "bench_per_write": per_write}
            gc.collect()
            start = time.perf_counter()
            raw_socket(server, params)
            rate = tokens / (time.perf_counter() - start)
            ceiling = best.get(("raw socket", per_write), (0.0, 0.0))
            best[("raw socket", per_write)] = (max(ceiling[0], rate), 0.0)
            for name, method in clients.methods().items():
                gc.collect()
                wall, cpu = time.perf_counter(), time.process_time()
                got = _count(method(params))
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                if got != tokens:
                    raise AssertionError(f"{name} delivered {got} tokens of {tokens}")
                rate, cpu100k = tokens / wall, cpu / tokens * 100_000
                old = best.get((name, per_write))
                best[(name, per_write)] = (rate, cpu100k) if old is None else (max(old[0], rate), min(old[1], cpu100k))
    return best


def print_throughput(best: Dict[Tuple[str, int], Tuple[float, float]], sizes: Sequence[Tuple[int, int]]) -> List[str]:
    verdicts = []
    print(f"{'client':<12} {'write':>9} {'tokens':>8} {'tokens/s':>11} {'CPU s/100k':>11} {'vs best base':>13} {'CPU vs read1':>13}")
    for per_write, tokens in sizes:
        base = max(best[("read1", per_write)][0], best[("iter_lines", per_write)][0])
        cpu_read1 = best[("read1", per_write)][1]
        for name in ("raw socket", "llmstream", "read1", "iter_lines"):
            rate, cpu = best[(name, per_write)]
            cpu_text = "-" if name == "raw socket" else f"{cpu:.3f}"
            ratio = "-" if name == "raw socket" else f"{rate / base:.2f}x"
            cpu_ratio = "-" if name == "raw socket" else f"{cpu / cpu_read1:.2f}x"
            print(f"{name:<12} {per_write:>4} ev/w {tokens:>8} {rate:>11,.0f} {cpu_text:>11} {ratio:>13} {cpu_ratio:>13}")
        rate, cpu = best[("llmstream", per_write)]
        verdicts.append(_verdict(f"throughput {per_write} ev/write: llmstream / best baseline = {rate / base:.2f}x", rate / base >= 1.0, ">= 1.0x"))
        verdicts.append(_verdict(f"CPU {per_write} ev/write: llmstream / read1 = {cpu / cpu_read1:.2f}x", cpu / cpu_read1 <= 1.2, "<= 1.2x"))
    return verdicts


def _verdict(text: str, ok: bool, target: str) -> str:
    return f"{'PASS' if ok else 'MISS'}  {text}  (target {target})"


# -- 2. latency ----------------------------------------------------------------


def _latencies(texts: Iterable[str]) -> List[float]:
    monotonic = time.monotonic
    out = []
    for text in texts:
        out.append(monotonic() - float(text))
    return out[WARMUP_SAMPLES:]


def _pct(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(clients: Clients, tokens: int, rate: float, rounds: int) -> Dict[Tuple[str, bool], List[float]]:
    """Return {(method, chunked): latencies in seconds} of the round with the lowest p99.

    Rounds are interleaved, and the best round is kept for every client alike, so
    a one-off stall of this shared 2-CPU machine does not decide a p99 of 2,000 samples.
    """
    result: Dict[Tuple[str, bool], List[float]] = {}
    for _ in range(rounds):
        for chunked in (True, False):
            params = {"bench_mode": "paced", "bench_tokens": tokens, "bench_rate": rate, "bench_chunked": chunked}
            for name, method in clients.methods().items():
                gc.collect()
                lat = _latencies(method(params))
                old = result.get((name, chunked))
                if old is None or _pct(lat, 0.99) < _pct(old, 0.99):
                    result[(name, chunked)] = lat
    return result


def print_latency(result: Dict[Tuple[str, bool], List[float]]) -> List[str]:
    verdicts = []
    print(f"{'client':<12} {'body':<10} {'p50 us':>8} {'p90 us':>8} {'p99 us':>8} {'max us':>8} {'p99 - read1 p99':>16}")
    for chunked in (True, False):
        body = "chunked" if chunked else "unchunked"
        ref = _pct(result[("read1", chunked)], 0.99)
        for name in ("llmstream", "read1", "iter_lines"):
            lat = result[(name, chunked)]
            p50, p90, p99, top = (_pct(lat, q) * 1e6 for q in (0.5, 0.9, 0.99, 1.0))
            print(f"{name:<12} {body:<10} {p50:>8.0f} {p90:>8.0f} {p99:>8.0f} {top:>8.0f} {p99 - ref * 1e6:>+16.0f}")
        added = (_pct(result[("llmstream", chunked)], 0.99) - ref) * 1e6
        verdicts.append(_verdict(f"latency {body}: llmstream p99 - read1 p99 = {added:+.0f} us", added <= 200, "<= +200 us"))
        if not chunked:
            p50 = _pct(result[("llmstream", chunked)], 0.5) * 1e6
            verdicts.append(_verdict(f"latency unchunked: llmstream p50 = {p50:.0f} us (no block-read delay)", p50 < 1000, "< 1000 us"))
    return verdicts


# -- 3. peak RSS with a slow caller (in a fresh process per length) -------------


def _status(field: str) -> int:
    """A /proc/self/status field, in KiB."""
    with open("/proc/self/status") as f:
        match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    return int(match.group(1)) if match else 0


def rss_child(config: Dict[str, Any]) -> None:
    """Run in a fresh process: read ``config["tokens"]`` slowly and print the memory figures as JSON."""
    attempts = config.get("attempts")
    retry = None if attempts is None else llmstream.Retry(max_attempts=int(attempts))
    client = llmstream.Client("openai", base_url=str(config["base_url"]), api_key="x", retry=retry)
    burst, pause = int(config["burst"]), float(config["pause"])
    params: Dict[str, Any] = {"bench_mode": "bulk", "bench_per_write": 64}
    for text in client.stream("warm-up", model=MODEL, bench_tokens=20_000, **params):
        pass
    gc.collect()
    rss0 = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    hwm0 = _status("VmHWM")
    started = time.perf_counter()
    with client.stream("bench", model=MODEL, bench_tokens=config["tokens"], **params) as s:
        time.sleep(1.0)  # the worker fills the queue, then TCP backpressure stops the server
        n = 0
        for text in s:
            n += 1
            if n % burst == 0:
                time.sleep(pause)
        hwm1, rss1 = _status("VmHWM"), _status("VmRSS")
        seconds = time.perf_counter() - started
        text = s.text  # built after the figures above: the size of the text the stream keeps for .text
    print(json.dumps({"tokens": n, "hwm_growth_kib": hwm1 - hwm0, "rss_growth_kib": rss1 - rss0,
                      "text_bytes": sys.getsizeof(text), "text_chars": len(text), "seconds": seconds}))


def rss(server: Server, runs: Sequence[Tuple[str, int, Optional[int]]], burst: int, pause: float
        ) -> List[Tuple[str, Dict[str, float]]]:
    """Run each (label, tokens, Retry.max_attempts or None for the default) in a fresh process."""
    out = []
    for label, tokens, attempts in runs:
        config = {"base_url": server.base_url, "tokens": tokens, "attempts": attempts, "burst": burst, "pause": pause}
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--rss-child", json.dumps(config),
                               "--root", ROOT], capture_output=True, text=True, timeout=170, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"rss child failed:\n{proc.stderr}")
        out.append((label, json.loads(proc.stdout.strip().splitlines()[-1])))
    return out


def print_rss(results: List[Tuple[str, Dict[str, float]]], burst: int, pause: float) -> List[str]:
    verdicts = []
    print(f"slow caller: sleeps 1 s before reading, then {pause * 1000:.0f} ms after every {burst:,} tokens; "
          "growth = VmHWM after - VmRSS before (VmHWM reset after a warm-up stream)")
    print(f"{'client':<22} {'tokens':>10} {'peak growth':>12} {'VmRSS growth':>13} {'size of .text':>14} "
          f"{'growth - .text':>15} {'text chars':>11} {'seconds':>8}")
    for label, r in results:
        growth, text = r["hwm_growth_kib"] / 1024, r["text_bytes"] / 2**20
        print(f"{label:<22} {r['tokens']:>10,} {growth:>8.1f} MiB {r['rss_growth_kib'] / 1024:>9.1f} MiB "
              f"{text:>10.1f} MiB {growth - text:>11.1f} MiB {r['text_chars']:>11,} {r['seconds']:>8.1f}")
        verdicts.append(_verdict(f"peak RSS growth, {label}, {r['tokens']:,} tokens = {growth:.1f} MiB", growth <= 10,
                                 "<= 10 MiB"))
        verdicts.append(_verdict(f"  the same less the size of .text = {growth - text:.1f} MiB", growth - text <= 10,
                                 "<= 10 MiB, if the kept answer text is exempt"))
    return verdicts


# -- main ------------------------------------------------------------------------


def profile(clients: Clients, tokens: int, per_write: int) -> None:
    """cProfile the caller thread and the worker thread of one llmstream stream."""
    import cProfile
    import pstats
    import threading

    profiles = []

    def trace(*_: object) -> None:  # installs a profiler in each new thread (the worker)
        prof = cProfile.Profile()
        profiles.append(prof)
        sys.setprofile(None)
        prof.enable()

    threading.setprofile(trace)
    params = {"bench_mode": "bulk", "bench_tokens": tokens, "bench_per_write": per_write}
    caller = cProfile.Profile()
    caller.enable()
    _count(clients.llmstream(params))
    caller.disable()
    threading.setprofile(None)
    for label, prof in [("caller thread", caller)] + [("worker thread", p) for p in profiles]:
        print(f"--- {label} ---")
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(14)


def _revision() -> str:
    """The git commit of ROOT, '+dirty' when llmstream/ differs from it; 'no git' otherwise."""
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=False)
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "llmstream"], capture_output=True,
                               text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "no git"
    if head.returncode != 0:
        return "no git"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens-64", type=int, default=200_000, help="tokens of the 64 events/write stream")
    parser.add_argument("--tokens-1", type=int, default=50_000, help="tokens of the 1 event/write stream")
    parser.add_argument("--repeat", type=int, default=3, help="throughput runs per client (best is kept)")
    parser.add_argument("--latency-tokens", type=int, default=2000, help="tokens per latency stream")
    parser.add_argument("--rate", type=float, default=500.0, help="tokens/s of the latency streams")
    parser.add_argument("--rounds", type=int, default=2, help="latency rounds per client (the lowest p99 is kept)")
    parser.add_argument("--rss-tokens", type=int, nargs="+", default=[500_000, 2_500_000])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", choices=["throughput", "latency", "rss"])
    parser.add_argument("--profile", type=int, metavar="EVENTS_PER_WRITE", choices=[1, 64],
                        help="cProfile llmstream's two threads on the 1 or 64 events/write stream instead")
    parser.add_argument("--root", default=ROOT, help="directory holding the llmstream package to measure")
    args = parser.parse_args(argv)
    if args.quick:
        args.tokens_64, args.tokens_1, args.repeat = 20_000, 5_000, 1
        args.latency_tokens, args.rss_tokens, args.rounds = 300, [100_000], 1
    burst, pause = 50_000, 0.05

    server = Server()
    clients = Clients(server)
    verdicts: List[str] = []
    try:
        versions = f"Python {sys.version.split()[0]}, requests {requests.__version__}"  # type: ignore[attr-defined]
        print(f"llmstream from {os.path.dirname(llmstream.__file__)} ({_revision()}), {versions}, "
              f"{os.cpu_count()} CPUs, server pid {server.proc.pid} (own process)")
        if args.profile:
            profile(clients, args.tokens_1 if args.profile == 1 else args.tokens_64, args.profile)
            return
        sizes = [(64, args.tokens_64), (1, args.tokens_1)]
        if args.only in (None, "throughput"):
            print(f"\n== throughput: best of {args.repeat}; CPU = process_time of this process (all threads), least of {args.repeat}")
            verdicts += print_throughput(throughput(clients, server, sizes, args.repeat), sizes)
        if args.only in (None, "latency"):
            print(f"\n== delivery latency at {args.rate:.0f} tokens/s, {args.latency_tokens} tokens per stream "
                  f"(first {WARMUP_SAMPLES} dropped): arrival in the caller - server write time; "
                  f"the round of {args.rounds} with the lowest p99")
            verdicts += print_latency(latency(clients, args.latency_tokens, args.rate, args.rounds))
        if args.only in (None, "rss"):
            print("\n== peak RSS growth, llmstream, each run in a fresh process")
            runs: List[Tuple[str, int, Optional[int]]] = [("default Client", n, None) for n in args.rss_tokens]
            runs.append(("Retry(max_attempts=1)", max(args.rss_tokens), 1))
            verdicts += print_rss(rss(server, runs, burst, pause), burst, pause)
        print("\n== targets")
        for line in verdicts:
            print(line)
    finally:
        clients.close()
        server.close()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--rss-child":
        rss_child(json.loads(sys.argv[2]))
    else:
        main()
