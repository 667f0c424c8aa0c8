"""Memory per concurrent stream, waiting and streaming: ``python bench/memory_per_stream.py``.

Issue 17, item 5 (the README's performance notes quote it). For each client, in a
FRESH process (so its RSS is its own), against ``bench/_scale_server.py`` in its own
process:

  waiting    N streams whose request was sent and answered with headers, each
             blocked until its first token (5 s away): RSS growth / N.
  streaming  N streams that took 3 tokens each and hold their iterator (the server
             keeps sending at 5 tokens/s): RSS growth / N; then, in a second round
             under tracemalloc, the Python heap growth / N and where llmstream's own
             objects are (by module).

Clients: ``llmstream`` (``client.stream`` iterated in its caller's thread) and the
hand-written baseline (``requests`` + ``iter_lines`` + ``json.loads``, one thread per
stream, one shared session), as in ``bench/scale.py``.

Options: --streams N (default 300), --clients, --top K (modules listed),
--root DIR (the llmstream package to measure: first on the children's path;
default this checkout), --old DIR (also measure the library in DIR, e.g. a clean
clone of main, as client ``llmstream@old``: before/after in the same run),
--repeat N (each client N times, alternating; the medians are printed at the end:
RSS figures move by a KiB or two between runs).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from typing import Callable, Dict, Iterator, List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from scale import MODEL, Server, _body, _status  # noqa: E402  (the server process, the request, /proc figures)


def _opener(client: str, base_url: str, n: int) -> Callable[[int, int, float], Iterator[str]]:
    """A function that starts stream ``i`` and returns its iterator of text pieces."""
    if client.startswith("llmstream"):
        import llmstream

        shared = llmstream.Client("openai", base_url=base_url, api_key="x", pool_size=n + 4)

        def llm(i: int, tokens: int, rate: float) -> Iterator[str]:
            return iter(shared.stream("bench", model=MODEL, bench_seed=i, bench_tokens=tokens, bench_rate=rate))
        return llm

    import requests

    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=n + 4))

    def hand_written(i: int, tokens: int, rate: float) -> Iterator[str]:
        with session.post(base_url + "/chat/completions", json=_body(i, tokens, rate), stream=True,
                          timeout=(10, 60)) as resp:
            for line in resp.iter_lines():
                if line.startswith(b"data: ") and line[6:] != b"[DONE]":
                    choices = json.loads(line[6:])["choices"]
                    if choices and choices[0]["delta"].get("content"):
                        yield choices[0]["delta"]["content"]
    return hand_written


def child(client: str, base_url: str, n: int, top: int) -> None:
    start = _opener(client, base_url, n)
    "".join(start(0, 3, 1000.0))  # warm-up: imports, the first connection
    gc.collect()

    # Waiting: each thread blocks in its first next() (the first token is 5 s away).
    in_flight = threading.Semaphore(0)

    def wait_first(i: int) -> None:
        pieces = start(i, 3, 0.2)
        in_flight.release()
        for _ in pieces:
            pass

    before = _status("VmRSS")
    for i in range(n):
        threading.Thread(target=wait_first, args=(i,), daemon=True).start()
    for _ in range(n):
        in_flight.acquire()
    time.sleep(1.5)  # the requests are sent and answered with headers; no token yet
    gc.collect()
    waiting = (_status("VmRSS") - before) / n
    print(f"{client:<10} waiting for the first token: {waiting:5.1f} KiB RSS per stream", flush=True)
    figures = {"waiting": waiting}

    # Streaming: each thread took 3 tokens and holds its iterator. Twice: RSS without
    # tracemalloc (it adds its own memory), then the Python heap with it.
    def streaming(seed: int, trace: bool) -> None:
        took, release = threading.Barrier(n + 1), threading.Event()

        def hold(i: int) -> None:
            pieces = start(seed + i, 6, 5.0)
            for _ in range(3):
                next(pieces)
            took.wait()
            release.wait()
            for _ in pieces:
                pass

        gc.collect()
        if trace:
            tracemalloc.start(1)
            heap0 = tracemalloc.take_snapshot()
        before = _status("VmRSS")
        threads = [threading.Thread(target=hold, args=(i,), daemon=True) for i in range(n)]
        for thread in threads:
            thread.start()
        took.wait()
        gc.collect()
        if not trace:
            rss = (_status("VmRSS") - before) / n
            print(f"{client:<10} streaming (3 tokens taken):  {rss:5.1f} KiB RSS per stream", flush=True)
            figures["streaming"] = rss
        else:
            stats = tracemalloc.take_snapshot().compare_to(heap0, "filename")
            heap = sum(stat.size_diff for stat in stats) / n / 1024
            figures["heap"] = heap
            mine = "; llmstream's own:" if client.startswith("llmstream") else ""
            print(f"{client:<10} streaming: {heap:.1f} KiB of Python heap per stream{mine}", flush=True)
            own = [stat for stat in stats if f"{os.sep}llmstream{os.sep}" in stat.traceback[0].filename]
            for stat in own[:top]:
                name = stat.traceback[0].filename.rsplit(os.sep + "llmstream" + os.sep, 1)[-1]
                print(f"{'':<10}   {stat.size_diff / n:6.0f} B  {stat.count_diff / n:5.1f} objects  llmstream/{name}")
        release.set()
        for thread in threads:
            thread.join(60)

    streaming(1000, trace=False)
    streaming(2000, trace=True)
    print("FIGURES " + json.dumps(figures), flush=True)
    os._exit(0)  # the waiting streams need not finish


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--clients", nargs="+", choices=("llmstream", "requests"), default=["llmstream", "requests"])
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--root", default=ROOT, help="directory holding the llmstream package to measure")
    parser.add_argument("--old", help="also measure the llmstream package in this directory (as llmstream@old)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--child", nargs=2, metavar=("CLIENT", "BASE_URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.streams, args.top)
        return 0
    server = Server()
    try:
        print(f"{args.streams} streams at once, Python {sys.version.split()[0]}, server in its own process")
        runs = [(client, args.root) for client in args.clients]
        if args.old and "llmstream" in args.clients:
            runs.insert(runs.index(("llmstream", args.root)) + 1, ("llmstream@old", args.old))
        found: Dict[str, List[Dict[str, float]]] = {}
        for _ in range(args.repeat):
            for client, root in runs:
                # The library the child imports: ``root`` first on its path, not this process's.
                env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
                out = subprocess.run([sys.executable, os.path.abspath(__file__), "--streams", str(args.streams),
                                      "--top", str(args.top), "--child", client, server.base_url],
                                     check=True, timeout=300, env=env, stdout=subprocess.PIPE, text=True).stdout
                for line in out.splitlines():
                    if line.startswith("FIGURES "):
                        found.setdefault(client, []).append(json.loads(line[len("FIGURES "):]))
                    else:
                        print(line, flush=True)
        if args.repeat > 1:
            print(f"\nmedians of {args.repeat} runs (KiB per stream): waiting RSS, streaming RSS, streaming heap")
            for client, figures in found.items():
                medians = [statistics.median(f[key] for f in figures) for key in ("waiting", "streaming", "heap")]
                print(f"{client:<14} {medians[0]:6.1f} {medians[1]:6.1f} {medians[2]:6.1f}")
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
