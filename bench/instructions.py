"""Instructions per token of one slow stream, under callgrind: ``python bench/instructions.py``.

Issue 17's per-token figure without the machine's noise. CPU seconds of
``bench/scale.py`` move by ±10% between runs on a shared 2-core machine; the
instructions a token costs do not, once three things are held still:

  * the interpreter's teardown: each run leaves with ``os._exit`` right after
    the measured stream (freeing the heap at exit differs between runs);
  * string hashing: ``PYTHONHASHSEED`` is fixed per run (dict probe lengths, and
    so the instructions of every attribute and key lookup, depend on it);
    the figure is the median over ``--seeds``;
  * the path: ``START_GRACE`` is raised so the stream always runs in its
    caller's thread (under valgrind it would otherwise sometimes get a worker).

Each client streams ``--short`` and then ``--long`` tokens in two runs (one event
per socket write, at 50 events/s, from ``bench/_scale_server.py`` in its own
process); the figure is the difference divided by the difference in tokens, so
the request, the process start and the end cancel out. Clients: llmstream
(``client.stream``, iterated) and the hand-written baseline of ``bench/scale.py``
(``requests`` + ``iter_lines`` + ``json.loads``), measured in the same run.

Needs ``valgrind`` (``apt-get install valgrind``); a run takes about a minute per seed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from scale import MODEL, Server, _body, hand_written_texts  # noqa: E402

RATE = 50.0


def child(client: str, base_url: str, tokens: int) -> None:
    """One stream of ``tokens`` tokens after a 3-token warm-up; then leave without the interpreter's teardown."""
    from _scale_server import expected_text

    if client == "requests":
        import requests

        session = requests.Session()

        def run(seed: int, count: int) -> str:
            return "".join(hand_written_texts(session, base_url + "/chat/completions", _body(seed, count, RATE)))
    else:
        import llmstream
        import llmstream._worker

        llmstream._worker.START_GRACE = 5.0  # always the caller's thread: one path to measure
        llm = llmstream.Client("openai", base_url=base_url, api_key="x")

        def run(seed: int, count: int) -> str:
            return "".join(llm.stream("bench", model=MODEL, bench_seed=seed, bench_tokens=count, bench_rate=RATE))

    run(0, 3)
    text = run(1, tokens)
    if text != expected_text(1, tokens):
        raise SystemExit(f"{client}: wrong text")
    sys.stdout.flush()
    os._exit(0)


def instructions(client: str, base_url: str, tokens: int, seed: int, root: str) -> int:
    """Instructions callgrind counts for one child run."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONHASHSEED": str(seed)}
        if root:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out", sys.executable,
             os.path.abspath(__file__), "--child", client, base_url, str(tokens)],
            capture_output=True, text=True, env=env, timeout=900, check=False)
        found = re.search(r"Collected : (\d+)", done.stderr)
        if done.returncode != 0 or found is None:
            raise RuntimeError(f"{client} under valgrind failed: {done.stderr[-2000:]}")
        return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", nargs="+", default=["llmstream", "requests"], choices=["llmstream", "requests"])
    parser.add_argument("--short", type=int, default=50)
    parser.add_argument("--long", type=int, default=250)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--root", default="", help="directory holding the llmstream package to measure")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        client, base_url, tokens = args.child
        child(client, base_url, int(tokens))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed: apt-get install valgrind")
    server = Server()
    try:
        results: Dict[str, List[float]] = {c: [] for c in args.clients}
        for seed in args.seeds:
            for client in args.clients:
                short = instructions(client, server.base_url, args.short, seed, args.root)
                long = instructions(client, server.base_url, args.long, seed, args.root)
                results[client].append((long - short) / (args.long - args.short))
    finally:
        server.close()
    base = statistics.median(results["requests"]) if "requests" in results else None
    print(f"instructions per token, one slow stream ({args.short} vs {args.long} tokens, hash seeds {args.seeds})")
    for client, values in results.items():
        per_token = statistics.median(values)
        ratio = f"{per_token / base:.2f}x requests" if base else ""
        print(f"{client:10s} {per_token:9.0f}  (runs: {', '.join(f'{v:.0f}' for v in values)})  {ratio}")


if __name__ == "__main__":
    main()
