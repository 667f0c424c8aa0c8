"""Memory of a very long answer read by a slow caller: kept once, not at all, or on disk. ``python bench/keep_text.py``.

Issue 14, item 9. Each configuration runs in a fresh process against
``bench/_server.py`` (its own process, so the server's buffers are not counted),
which streams an OpenAI chat-completions answer of about --mb MB of UTF-8 text
as fast as the socket takes it. The caller is slow: it sleeps 1 s before
reading (the queue fills, then TCP backpressure stops the server), then
--pause s after every --burst pieces.

Configurations (retries on, the default ``Retry``, in all of them):

  default             iterate; the text is kept (once: the resumer and ``.text`` share it)
  keep_text=False     iterate; no text kept
  sink + keep=False   ``sink=file`` while iterating, no text kept
  to_file keep=False  ``stream.to_file(path)``, no text kept
  to_file             ``stream.to_file(path)`` with the default Client (the file becomes the one copy)

Figures: peak RSS growth (VmHWM after minus VmRSS before; VmHWM reset through
/proc/self/clear_refs after a warm-up stream) beside the answer's UTF-8 size.
Targets (the issue): under 10 MiB without a kept text; about 1x the answer's
UTF-8 size with it. Figures go in notes, never in assertions.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
# BENCH_ROOT=DIR measures the llmstream package in DIR (a `git archive` of another
# commit, for a before/after figure of the "default" configuration).
sys.path.insert(0, os.environ.get("BENCH_ROOT") or os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import llmstream  # noqa: E402
from stream import MODEL, Server, _status  # noqa: E402  (bench/stream.py: the server process and /proc figures)

#: The bench server's content events average 4.63 bytes of UTF-8 (measured).
CHARS_PER_TOKEN = 4.63
CONFIGS = ["default", "keep_text=False", "sink + keep=False", "to_file keep=False", "to_file"]


def child(config: Dict[str, Any]) -> None:
    """In a fresh process: read the answer one way, print the figures as JSON."""
    name = config["name"]
    keep = name in ("default", "to_file")
    options: Dict[str, Any] = {} if name == "default" else {"keep_text": keep}  # "default": runs on older commits too
    client = llmstream.Client("openai", base_url=config["base_url"], api_key="x", **options)
    params: Dict[str, Any] = {"bench_mode": "bulk", "bench_per_write": 64}
    for _ in client.stream("warm-up", model=MODEL, bench_tokens=20_000, **params):
        pass
    gc.collect()
    rss0 = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    hwm0 = _status("VmHWM")
    burst, pause = int(config["burst"]), float(config["pause"])
    started = time.perf_counter()
    chars = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "answer.txt")
        sink_file = open(os.path.join(tmp, "sink.txt"), "w", encoding="utf-8") if name.startswith("sink") else None
        if sink_file is not None:
            params["sink"] = sink_file
        s = client.stream("bench", model=MODEL, bench_tokens=config["tokens"], **params)
        with s:
            time.sleep(1.0)
            if name.startswith("to_file"):
                _to_file_slowly(s, path, _SlowFile(burst, pause))
                size = os.path.getsize(path)
            else:
                n = 0
                for text in s:
                    n += 1
                    chars += len(text)
                    if n % burst == 0:
                        time.sleep(pause)
                size = 0
        hwm1, rss1 = _status("VmHWM"), _status("VmRSS")
        seconds = time.perf_counter() - started
        if sink_file is not None:
            sink_file.close()
            size = os.path.getsize(sink_file.name)
        if name == "default":
            size = len(s.text.encode("utf-8"))
        elif not size:
            size = chars  # ASCII answer: one byte per character
    print(json.dumps({"hwm_growth_kib": hwm1 - hwm0, "rss_growth_kib": rss1 - rss0, "utf8_bytes": size,
                      "seconds": seconds}))


class _SlowFile:
    """A pause after every ``burst`` writes: a slow disk, for ``to_file``."""

    def __init__(self, burst: int, pause: float) -> None:
        self.burst, self.pause, self.n = burst, pause, 0

    def tick(self) -> None:
        self.n += 1
        if self.n % self.burst == 0:
            time.sleep(self.pause)


def _to_file_slowly(s: "llmstream.TokenStream", path: str, slow: _SlowFile) -> None:
    """``s.to_file(path)``, its writes slowed down (the file object's write is wrapped through the stream's sink)."""
    original = s._sink
    s._sink = lambda text: slow.tick()  # called once per piece, like the file's own write
    try:
        s.to_file(path)
    finally:
        s._sink = original


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50.0, help="answer size, MB of UTF-8")
    parser.add_argument("--burst", type=int, default=50_000)
    parser.add_argument("--pause", type=float, default=0.05)
    parser.add_argument("--only", nargs="+", choices=CONFIGS, default=CONFIGS)
    args = parser.parse_args(argv)
    tokens = int(args.mb * 1e6 / CHARS_PER_TOKEN)
    server = Server()
    try:
        print(f"answer: {tokens:,} content events (~{args.mb:.0f} MB); slow caller: 1 s before reading, "
              f"then {args.pause * 1000:.0f} ms after every {args.burst:,} pieces; each run in a fresh process")
        print(f"{'configuration':<20} {'peak growth':>12} {'RSS growth':>11} {'answer UTF-8':>13} {'growth/answer':>14} "
              f"{'seconds':>8}")
        for name in args.only:
            config = {"name": name, "base_url": server.base_url, "tokens": tokens, "burst": args.burst,
                      "pause": args.pause}
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(config)],  # env: BENCH_ROOT too
                                  capture_output=True, text=True, timeout=900, check=False)
            if proc.returncode != 0:
                print(f"{name:<20} failed:\n{proc.stderr}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            growth, answer = r["hwm_growth_kib"] / 1024, r["utf8_bytes"] / 2**20
            print(f"{name:<20} {growth:>8.1f} MiB {r['rss_growth_kib'] / 1024:>7.1f} MiB {answer:>9.1f} MiB "
                  f"{growth / answer if answer else 0:>13.2f}x {r['seconds']:>8.1f}")
    finally:
        server.close()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]))
    else:
        main(sys.argv[1:])
