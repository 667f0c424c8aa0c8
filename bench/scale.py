"""Many concurrent slow streams: client CPU, RSS and wall time per client. ``python bench/scale.py``.

Issue 17: a web app runs hundreds of concurrent slow streams (20-100 tokens/s),
so every socket read carries one token and the per-token overhead of the client
(hand-overs, clock reads, syscalls, metrics) is what costs CPU.

The server (``bench/_scale_server.py``, asyncio) runs in its OWN process, so its
CPU is not counted: it answers each request with ``--tokens`` OpenAI chat SSE
events at ``--rate`` events/s, one event per socket write and per HTTP chunk,
then ``[DONE]``. Each stream's text is known (``bench_seed``) and checked exactly.

Clients, each run in a FRESH subprocess (so its RSS growth is its own), after one
warm-up stream (imports, first connection):

  llmstream   one shared ``llmstream.Client``; ``--streams`` threads each iterate
              ``client.stream(...)`` (the caller's thread runs a stream it
              iterates at once), ``pool_size=streams`` so connections are reused.
  requests    hand-written: one shared ``requests.Session`` (pool = streams), one
              thread per stream, ``iter_lines()`` + ``json.loads`` of ``data:`` lines.
  inline      (with --clients, not by default) llmstream's Transport + StreamDecoder
              driven by the caller thread, no worker or queue: private names, the
              lower bound of the "caller reads while it waits" change in SCALE_NOTES.md.
  llmstream-async  (with --clients) llmstream's asyncio facade: one loop, one task per
              stream, ``async for text in client.astream(...)`` (each stream is read by a
              thread of its own that hands items to the loop; see ``_async.py``).
  httpx       ``httpx.AsyncClient`` + ``httpx_sse.aconnect_sse`` on one asyncio
              loop, one task per stream (bench-only deps, not the project's:
              ``pip install httpx httpx-sse`` into the venv).

Figures per client (median of --repeat runs, each a fresh process):
  CPU       user+sys of the child process (``resource.getrusage``) over the
            concurrent phase only (from starting the streams to the last one's end);
  RSS       peak growth: VmHWM after minus VmRSS before (VmHWM reset through
            /proc/self/clear_refs after the warm-up);
  wall      start of the first stream to the end of the last; ideal = tokens/rate
            (plus connect, shown as the latest first-token time "spread");
  us/token  CPU / (streams x tokens).

Options: --streams N [N ...], --tokens, --rate, --clients (subset), --repeat, --old-root DIR
(also llmstream from DIR, interleaved: ``git clone -q . /tmp/old && git -C /tmp/old checkout REV``),
--stack-size KiB (``threading.stack_size`` in the child, for the thread clients),
--py-spy FILE (sample the llmstream child with py-spy, raw collapsed stacks by thread).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from _scale_server import expected_text  # noqa: E402

MODEL = "gpt-4o-mini"
CLIENTS = ("llmstream", "requests", "httpx", "llmstream-async", "inline")
#: The name of the llmstream measured from ``--old-root``.
OLD = "llmstream-old"
WARMUP_TOKENS = 5


class Server:
    """``_scale_server.py`` in its own process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "_scale_server.py")],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"the server did not start: {line!r}")
        self.base_url = f"http://127.0.0.1:{int(line.split()[1])}/v1"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# -- the child: one client, N streams ------------------------------------------


def _status(field: str) -> int:
    """A /proc/self/status field, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _body(seed: int, tokens: int, rate: float) -> Dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "bench"}], "stream": True,
            "bench_seed": seed, "bench_tokens": tokens, "bench_rate": rate}


class Timings:
    """Per-stream start, first token and end times (perf_counter), filled by every stream."""

    def __init__(self, n: int) -> None:
        self.start = [0.0] * n
        self.first = [0.0] * n
        self.end = [0.0] * n
        self.texts: List[Optional[str]] = [None] * n
        self.errors: List[str] = []
        #: Threads alive at the first token of each stream, the highest seen (a race-free max is not needed).
        self.threads = 0

    def run(self, i: int, pieces: Callable[[], Any]) -> None:
        """Consume one stream's iterator of text pieces, timing it (thread clients)."""
        self.start[i] = time.perf_counter()
        try:
            parts = []
            for text in pieces():
                if not parts:
                    self.first[i] = time.perf_counter()
                    self.threads = max(self.threads, threading.active_count())
                parts.append(text)
            self.texts[i] = "".join(parts)
        except Exception as exc:  # reported by the parent as a failed run, never hidden
            self.errors.append(f"stream {i}: {type(exc).__name__}: {exc}")
        self.end[i] = time.perf_counter()

    async def arun(self, i: int, pieces: Callable[[], Any]) -> None:
        """As :meth:`run`, for an async iterator of text pieces (asyncio clients)."""
        self.start[i] = time.perf_counter()
        try:
            parts = []
            async for text in pieces():
                if not parts:
                    self.first[i] = time.perf_counter()
                    self.threads = max(self.threads, threading.active_count())
                parts.append(text)
            self.texts[i] = "".join(parts)
        except Exception as exc:  # reported by the parent as a failed run, never hidden
            self.errors.append(f"stream {i}: {type(exc).__name__}: {exc}")
        self.end[i] = time.perf_counter()


def _threads(n: int, target: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=target, args=(i,), name=f"bench-caller-{i}", daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def run_llmstream(base_url: str, n: int, tokens: int, rate: float, timings: Optional[Timings]) -> None:
    import llmstream

    global _LLM_CLIENT
    if timings is None:  # warm-up: build the client
        _LLM_CLIENT = llmstream.Client("openai", base_url=base_url, api_key="x", pool_size=max(n, 32))
    client = _LLM_CLIENT

    def pieces(i: int) -> Callable[[], Any]:
        return lambda: client.stream("bench", model=MODEL, bench_seed=i, bench_tokens=tokens, bench_rate=rate)

    _run_threads(n, pieces, timings)


def run_requests(base_url: str, n: int, tokens: int, rate: float, timings: Optional[Timings]) -> None:
    import requests

    global _SESSION
    if timings is None:
        _SESSION = requests.Session()
        _SESSION.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=max(n, 10)))
    session = _SESSION
    url = base_url + "/chat/completions"

    _run_threads(n, lambda i: lambda: hand_written_texts(session, url, _body(i, tokens, rate)), timings)


def hand_written_texts(session: Any, url: str, body: Dict[str, Any]) -> Iterator[str]:
    """The hand-written baseline: ``requests`` + ``iter_lines`` + ``json.loads`` of ``data:`` lines."""
    with session.post(url, json=body, stream=True, timeout=(10, 60)) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                return
            choices = json.loads(data)["choices"]
            if choices:
                text = choices[0]["delta"].get("content")
                if text:
                    yield text


def _run_threads(n: int, pieces: Callable[[int], Callable[[], Any]], timings: Optional[Timings]) -> None:
    box = timings if timings is not None else Timings(n)
    _threads(n, lambda i: box.run(i, pieces(i)))
    if timings is None and box.errors:
        raise RuntimeError(f"warm-up failed: {box.errors[0]}")


def run_httpx(base_url: str, n: int, tokens: int, rate: float, timings: Optional[Timings]) -> None:
    import asyncio

    import httpx
    from httpx_sse import aconnect_sse

    box = timings if timings is not None else Timings(n)
    url = base_url + "/chat/completions"

    async def texts(client: httpx.AsyncClient, i: int) -> Any:
        async with aconnect_sse(client, "POST", url, json=_body(i, tokens, rate)) as source:
            async for sse in source.aiter_sse():
                if sse.data == "[DONE]":
                    return
                choices = json.loads(sse.data)["choices"]
                if choices:
                    text = choices[0]["delta"].get("content")
                    if text:
                        yield text

    async def main() -> None:
        limits = httpx.Limits(max_connections=max(n, 10), max_keepalive_connections=max(n, 10))
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60.0, connect=10.0)) as client:
            await asyncio.gather(*(box.arun(i, lambda i=i: texts(client, i)) for i in range(n)))

    # A fresh loop per call: the warm-up's loop is gone, as are its connections.
    asyncio.run(main())
    if timings is None and box.errors:
        raise RuntimeError(f"warm-up failed: {box.errors[0]}")


def run_llmstream_async(base_url: str, n: int, tokens: int, rate: float, timings: Optional[Timings]) -> None:
    """llmstream's asyncio facade: one loop, one task per stream, ``async for`` over ``client.astream``."""
    import asyncio

    import llmstream

    global _LLM_ASYNC_CLIENT
    if timings is None:
        _LLM_ASYNC_CLIENT = llmstream.Client("openai", base_url=base_url, api_key="x", pool_size=max(n, 32))
    client = _LLM_ASYNC_CLIENT
    box = timings if timings is not None else Timings(n)

    async def main() -> None:
        await asyncio.gather(*(box.arun(i, lambda i=i: client.astream(
            "bench", model=MODEL, bench_seed=i, bench_tokens=tokens, bench_rate=rate)) for i in range(n)))

    asyncio.run(main())
    if timings is None and box.errors:
        raise RuntimeError(f"warm-up failed: {box.errors[0]}")


def run_inline(base_url: str, n: int, tokens: int, rate: float, timings: Optional[Timings]) -> None:
    """llmstream's own transport and decoder driven by the caller thread: no worker thread, no queue.

    Not a supported API (private names): the lower bound of a design where the
    caller reads the socket itself while it waits (SCALE_NOTES.md, change 1).
    """
    from llmstream._events import TextDelta
    from llmstream._providers import get_provider
    from llmstream._providers._base import StreamDecoder
    from llmstream._transport import Transport

    global _INLINE
    if timings is None:
        _INLINE = (get_provider("openai"), Transport(pool_size=max(n, 32)))
    provider, transport = _INLINE
    base = provider.normalize_base_url(base_url)

    def stream(i: int) -> Any:
        spec = provider.build_request(base_url=base, api_key="x", model=MODEL,
                                      messages=[{"role": "user", "content": "bench"}],
                                      params={"bench_seed": i, "bench_tokens": tokens, "bench_rate": rate})
        decoder = StreamDecoder(provider.new_decoder(), framing=provider.framing)
        response = transport.open(spec, provider, connect_timeout=10.0, response_timeout=60.0,
                                  cancelled=lambda: False, on_response=lambda r: None)
        with response:
            while not decoder.finished:
                data = response.read(60.0, "idle")
                if not data:
                    break
                for event in decoder.feed(data):
                    if event.__class__ is TextDelta:
                        yield event.text
            decoder.close()

    _run_threads(n, lambda i: lambda: stream(i), timings)


RUNNERS = {"llmstream": run_llmstream, "requests": run_requests, "httpx": run_httpx, "inline": run_inline,
           "llmstream-async": run_llmstream_async}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(config: Dict[str, Any]) -> None:
    """In a fresh process: warm up, then run ``streams`` concurrent streams and print the figures as JSON."""
    if config.get("stack_kib"):
        threading.stack_size(int(config["stack_kib"]) * 1024)
    run = RUNNERS[config["client"]]
    n, tokens, rate = int(config["streams"]), int(config["tokens"]), float(config["rate"])
    run(config["base_url"], 1, WARMUP_TOKENS, 1000.0, None)
    import gc
    gc.collect()
    timings = Timings(n)
    rss0 = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    spy = None
    if config.get("py_spy"):
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(os.getpid()), "--threads", "--format", "raw",
                                "--rate", "250", "--output", config["py_spy"], "--duration",
                                str(int(tokens / rate + 3))], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # let it attach before the streams start
    cpu, wall = _cpu(), time.perf_counter()
    run(config["base_url"], n, tokens, rate, timings)
    cpu, wall = _cpu() - cpu, time.perf_counter() - wall
    hwm, rss1 = _status("VmHWM"), _status("VmRSS")
    if spy is not None:
        spy.wait(60)
    bad = [i for i in range(n) if timings.texts[i] != expected_text(i, tokens)]
    t0 = min(timings.start)
    print(json.dumps({
        "cpu": cpu, "wall": wall, "peak_growth_kib": hwm - rss0, "rss_growth_kib": rss1 - rss0,
        "threads_peak": timings.threads, "bad_texts": len(bad), "errors": timings.errors[:3],
        "spread": max(timings.first) - t0,
        "lag_p50": statistics.median(e - f for e, f in zip(timings.end, timings.first)) - (tokens - 1) / rate,
        "lag_max": max(e - f for e, f in zip(timings.end, timings.first)) - (tokens - 1) / rate,
    }))


# -- the parent -------------------------------------------------------------------


def measure(server: Server, client: str, n: int, args: argparse.Namespace, py_spy: Optional[str] = None
            ) -> Dict[str, Any]:
    root = args.root
    if client == OLD:  # llmstream, imported from --old-root
        client, root = "llmstream", args.old_root
    config = {"client": client, "streams": n, "tokens": args.tokens, "rate": args.rate,
              "base_url": server.base_url, "stack_kib": args.stack_size, "py_spy": py_spy}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(config)],
                          capture_output=True, text=True, timeout=300, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{client} child failed:\n{proc.stderr}")
    result: Dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["bad_texts"] or result["errors"]:
        raise AssertionError(f"{client}, {n} streams: {result['bad_texts']} wrong texts, errors {result['errors']}")
    return result


def _median(runs: List[Dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def print_table(n: int, args: argparse.Namespace, results: Dict[str, List[Dict[str, Any]]]) -> None:
    ideal = args.tokens / args.rate
    print(f"\n== {n} streams x {args.tokens} tokens at {args.rate:g} tokens/s (ideal wall {ideal:.1f} s + connect); "
          f"median of {args.repeat}, every text checked exactly")
    print(f"{'client':<15} {'CPU s':>7} {'us/token':>9} {'peak RSS +MiB':>14} {'wall s':>7} {'wall-ideal':>10} "
          f"{'spread s':>9} {'lag p50 ms':>11} {'lag max ms':>11} {'threads':>8} {'CPU vs req':>11} {'CPU vs httpx':>13}")
    base = {name: _median(results[name], "cpu") for name in ("requests", "httpx") if name in results}
    for name, runs in results.items():
        cpu = _median(runs, "cpu")
        wall = _median(runs, "wall")
        ratios = [f"{cpu / base[b]:.2f}x" if b in base else "-" for b in ("requests", "httpx")]
        print(f"{name:<15} {cpu:>7.2f} {cpu / (n * args.tokens) * 1e6:>9.0f} "
              f"{_median(runs, 'peak_growth_kib') / 1024:>14.1f} {wall:>7.2f} {wall - ideal:>+10.2f} "
              f"{_median(runs, 'spread'):>9.2f} {_median(runs, 'lag_p50') * 1e3:>11.0f} "
              f"{_median(runs, 'lag_max') * 1e3:>11.0f} {max(r['threads_peak'] for r in runs):>8} "
              f"{ratios[0]:>11} {ratios[1]:>13}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--clients", nargs="+", choices=CLIENTS, default=list(CLIENTS[:3]),
                        help="inline: llmstream's transport+decoder in the caller thread (a prototype's bound)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--stack-size", type=int, default=0, metavar="KiB",
                        help="threading.stack_size in the client process (0: the default)")
    parser.add_argument("--py-spy", metavar="FILE", help="sample the llmstream run with py-spy (raw stacks) into FILE")
    parser.add_argument("--root", default=ROOT, help="directory holding the llmstream package to measure")
    parser.add_argument("--old-root", metavar="DIR",
                        help=f"also measure the llmstream package in DIR (a clone of an older commit) as {OLD!r}, "
                             "interleaved with the others: a before/after in one run")
    args = parser.parse_args()
    if args.old_root:
        args.clients = [*args.clients, OLD]
    server = Server()
    try:
        # The library the children import (--root first on their path), not this process's.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [args.root, os.environ.get("PYTHONPATH")])))
        where = subprocess.run([sys.executable, "-c", "import llmstream; print(llmstream.__file__)"], env=env, cwd=os.sep,
                               capture_output=True, text=True, check=True, timeout=60).stdout.strip()
        print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, server pid {server.proc.pid} (own process), "
              f"llmstream {where}, stack size {args.stack_size or 'default'} KiB")
        for n in args.streams:
            results: Dict[str, List[Dict[str, Any]]] = {name: [] for name in args.clients}
            for _ in range(args.repeat):
                for name in args.clients:  # interleaved, so a slow spell of the machine hits all alike
                    spy = args.py_spy if (args.py_spy and name == "llmstream") else None
                    results[name].append(measure(server, name, n, args, spy))
            print_table(n, args, results)
    finally:
        server.close()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]))
    else:
        main()
