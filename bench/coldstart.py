"""Cold start: a fresh interpreter that imports, makes a client and streams 16 tokens.

Measured side by side (issue 14, item 10): the same work done by

  * ``llmstream``: ``import llmstream``, ``llmstream.Client(...)``, iterate a stream;
  * ``requests``: a plain script (``import requests, json``, a ``Session``, a
    streaming POST, ``iter_lines``, ``json.loads`` per event) — what people write
    by hand, and the floor llmstream is held to (within 1.1x).

Each run is a new ``python`` process, timed from spawn to exit (interpreter start
included, the same for both), against ``bench/_server.py`` in its own process
(``bench_mode: "bulk"``, 16 tokens). Runs alternate between the two scripts so
machine noise hits both alike; the medians and their ratio are printed, and
``-X importtime``'s top entries for llmstream with ``--importtime``.

Usage::

    python bench/coldstart.py            # 30 runs of each
    python bench/coldstart.py --runs 60 --importtime
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent

LLMSTREAM = """
import llmstream
client = llmstream.Client(base_url="{url}", api_key="k")
text = "".join(client.stream("Hi", model="m", bench_mode="bulk", bench_tokens=16))
assert len(text) > 16, text
"""

#: Appended to both scripts: the process's own CPU time since it started (interpreter
#: start included), precise, where getrusage here counts in 10 ms ticks.
REPORT_CPU = """
import time as _time
print(_time.process_time())
"""

REQUESTS = """
import json
import requests
session = requests.Session()
body = {{"model": "m", "messages": [{{"role": "user", "content": "Hi"}}], "stream": True,
         "bench_mode": "bulk", "bench_tokens": 16}}
response = session.post("{url}/chat/completions", json=body, stream=True,
                        headers={{"Authorization": "Bearer k"}}, timeout=(10, 60))
response.raise_for_status()
parts = []
for line in response.iter_lines():
    if line.startswith(b"data: ") and line != b"data: [DONE]":
        for choice in json.loads(line[6:]).get("choices", []):
            parts.append(choice["delta"].get("content") or "")
text = "".join(parts)
assert len(text) > 16, text
"""


def start_server() -> "tuple[subprocess.Popen[str], str]":
    server = subprocess.Popen([sys.executable, str(ROOT / "bench" / "_server.py")], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    line = server.stdout.readline().split()
    assert line[0] == "PORT", line
    return server, f"http://127.0.0.1:{line[1]}/v1"


def run_once(code: str, env: Dict[str, str], cwd: str) -> Tuple[float, float]:
    """Wall time and CPU time of one run, in seconds.

    The CPU time is what a loaded machine distorts least (other processes
    delay a run, they do not make it compute more), so it is reported too:
    the process's own ``time.process_time()`` at its end (all its threads,
    from its start), as it prints it.
    """
    started = time.perf_counter()
    # cwd matters: "python -c" imports from the current directory first.
    done = subprocess.run([sys.executable, "-c", code + REPORT_CPU], check=True, env=env, cwd=cwd,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    return wall, float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--importtime", action="store_true", help="also print llmstream's slowest imports")
    parser.add_argument("--root", default=str(ROOT), help="the checkout whose llmstream is measured (another "
                                                          "branch, for a before/after)")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": args.root, "PYTHONDONTWRITEBYTECODE": "1"}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(name, None)
    server, url = start_server()
    try:
        scripts = {"requests": REQUESTS.format(url=url), "llmstream": LLMSTREAM.format(url=url)}
        for code in scripts.values():  # warm the page cache and the .pyc files
            run_once(code, {**env, "PYTHONDONTWRITEBYTECODE": ""}, args.root)
        walls: Dict[str, List[float]] = {name: [] for name in scripts}
        cpus: Dict[str, List[float]] = {name: [] for name in scripts}
        for _ in range(args.runs):
            for name, code in scripts.items():
                wall, cpu = run_once(code, env, args.root)
                walls[name].append(wall)
                cpus[name].append(cpu)
        wall_floor, cpu_floor = statistics.median(walls["requests"]), statistics.median(cpus["requests"])
        print(f"cold start, import + client + a 16-token stream, {args.runs} runs each (python {sys.version.split()[0]}, "
              f"load average {os.getloadavg()[0]:.1f})")
        for name in scripts:
            wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
            print(f"  {name:<10} wall: median {wall * 1000:6.1f} ms, min {min(walls[name]) * 1000:6.1f} ms, "
                  f"ratio {wall / wall_floor:.2f}   cpu: median {cpu * 1000:6.1f} ms, ratio {cpu / cpu_floor:.2f}")
        empty = [run_once("pass", env, args.root) for _ in range(10)]
        print(f"  (an empty interpreter: wall median {statistics.median(w for w, _ in empty) * 1000:.1f} ms, "
              f"cpu {statistics.median(c for _, c in empty) * 1000:.1f} ms)")
        if args.importtime:
            done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import llmstream"], env=env, cwd=args.root,
                                  capture_output=True, text=True, check=True)
            rows = []
            for line in done.stderr.splitlines()[1:]:
                parts = line.split("|")
                rows.append((int(parts[1]), parts[2].strip()))
            print("llmstream's slowest imports (cumulative us):")
            for cumulative, name in sorted(rows, reverse=True)[:15]:
                print(f"  {cumulative:8d}  {name}")
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
