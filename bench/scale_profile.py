"""Where llmstream's CPU goes per token with many slow streams: ``python bench/scale_profile.py``.

Runs ``--streams`` llmstream streams as ``bench/scale.py`` does (server in its own
process), under yappi with the CPU clock (per-thread CPU time, builtins included,
so ``time.monotonic``, ``settimeout`` and lock calls are seen), and prints each
function's own CPU per token, split by caller threads and worker threads, and by
bucket. yappi slows the process ~2x, so the "scaled" column divides each figure
by (profiled total / --unprofiled-us, the figure ``scale.py`` measured without it).

``--ablate NAME [NAME ...]`` instead measures the CPU with parts turned off
(monkeypatched: the result must still be exact), which gives the saving of each
part without a profiler's distortion: ``hist`` (Histogram.add), ``settimeout``,
``debuglog`` (the ``isEnabledFor`` check), ``monitor``.
yappi is a bench-only dependency: ``pip install yappi``.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import resource
import subprocess
import sys
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from scale import Server, Timings, expected_text, run_llmstream  # noqa: E402

#: (bucket, substrings of "module:function" that fall in it), the first match wins.
BUCKETS: List[Tuple[str, Tuple[str, ...]]] = [
    ("setup (connect, request, thread start, end)", (
        "Transport.open", "requests", "urllib3", "http/client", "Worker.__init__", "Thread.start", "Client.stream",
        "_report", "freeze", "monitor", "Monitor", "_drain", "join", "getaddrinfo", "connect", "Gate", "Slots",
        "Resumer.__init__", "new_decoder", "TokenStream.__init__", "finalize", "close", "build_request",
        "http/", "email/", "idna", "encodings", "socket.py:socket", "_collections_abc", "_weakrefset", "weakref",
        "genericpath", "posixpath", "netrc", "urllib/", "_client.py", "_flow.py", "_config.py")),
    ("hand-over (Condition/lock)", ("threading.py", "EventQueue", "_thread.", "lock", "RLock", "_next_batch")),
    ("settimeout syscall", ("settimeout",)),
    ("time.monotonic", ("monotonic",)),
    ("stats (histogram adds)", ("Histogram", "math.", "log", "floor")),
    ("socket read (recv, read1)", ("readinto", "read1", "recv", "_read_dechunked", "Dechunker", "OpenResponse.read",
                                   "translate_errors", "contextlib", "_socket")),
    ("decoder (lines, SSE, JSON, deltas)", ("linebuffer", "sse", "SSE", "json", "fastjson", "Decoder", "decoder",
                                            "_providers", "openai", "TextDelta", "loads", "decode")),
    ("resume filter / emit", ("Resumer", "filter", "_emit", "_has_content", "isinstance")),
    ("logging isEnabledFor", ("isEnabledFor", "logging")),
    ("consumer loop (_consume)", ("_consume",)),
    ("read loop (_read_body, _time_left)", ("_read_body", "_time_left")),
]


def bucket_of(name: str) -> str:
    for bucket, keys in BUCKETS:
        if any(k in name for k in keys):
            return bucket
    return "other"


def profile(base_url: str, n: int, tokens: int, rate: float, unprofiled_us: float) -> None:
    import yappi

    run_llmstream(base_url, 1, 5, 1000.0, None)
    gc.collect()
    import threading
    yappi.set_clock_type("cpu")
    yappi.set_context_name_callback(lambda: threading.current_thread().name)
    yappi.start(builtins=True, profile_threads=True)
    timings = Timings(n)
    run_llmstream(base_url, n, tokens, rate, timings)
    yappi.stop()
    assert not timings.errors and all(timings.texts[i] == expected_text(i, tokens) for i in range(n))
    names = {t.id: t.name for t in yappi.get_thread_stats()}
    own: Dict[str, Dict[str, float]] = {"caller": collections.Counter(), "worker": collections.Counter()}
    for ctx, name in names.items():
        kind = "caller" if name.startswith("bench-caller") else "worker" if name.startswith("llmstream-worker") else None
        if kind is None:
            continue
        for stat in yappi.get_func_stats(ctx_id=ctx):
            # Two path levels ("requests/sessions.py"), so the bucket rules see the package.
            module = "/".join(stat.module.split(os.sep)[-2:])
            own[kind][f"{module}:{stat.name}"] += stat.tsub
    per_token = 1e6 / (n * tokens)
    total = sum(sum(v.values()) for v in own.values()) * per_token
    scale = unprofiled_us / total if unprofiled_us else 1.0
    print(f"profiled CPU {total:.0f} us/token (caller+worker threads); scaled to {unprofiled_us or total:.0f} "
          f"(factor {scale:.2f})")
    for kind in ("caller", "worker"):
        funcs = own[kind]
        buckets: Dict[str, float] = collections.Counter()
        for name, t in funcs.items():
            buckets[bucket_of(name)] += t
        kind_total = sum(funcs.values()) * per_token
        print(f"\n--- {kind} threads: {kind_total:.0f} us/token profiled, {kind_total * scale:.0f} scaled")
        for bucket, t in sorted(buckets.items(), key=lambda kv: -kv[1]):
            print(f"  {t * per_token:7.1f} {t * per_token * scale:7.1f}  {bucket}")
        print("  top functions (own time, us/token profiled):")
        for name, t in sorted(funcs.items(), key=lambda kv: -kv[1])[:45]:
            print(f"  {t * per_token:7.2f}  [{bucket_of(name)[:12]}] {name}")


def _ablate(names: List[str]) -> None:
    import logging

    from llmstream import _histogram, _transport, _worker
    if "hist" in names:
        _histogram.Histogram.add = lambda self, value: None  # type: ignore[method-assign]
    if "settimeout" in names:
        _transport.TIMEOUT_SLACK = float("inf")  # the timeout set once is kept
    if "debuglog" in names:
        _worker.logger.isEnabledFor = lambda level: False  # type: ignore[method-assign]
        logging.getLogger("llmstream").isEnabledFor = lambda level: False  # type: ignore[method-assign]
    if "monitor" in names:
        _worker.monitor.stream_started = lambda: None  # type: ignore[method-assign]
        _worker.monitor.stream_ended = lambda report: None  # type: ignore[method-assign]


def ablate_child(config: Dict[str, object]) -> None:
    """In a fresh process: turn parts off, run the streams, print CPU seconds."""
    _ablate(list(config["ablate"]))  # type: ignore[call-overload]
    n, tokens, rate = int(config["streams"]), int(config["tokens"]), float(config["rate"])  # type: ignore[call-overload]
    run_llmstream(str(config["base_url"]), 1, 5, 1000.0, None)
    gc.collect()
    timings = Timings(n)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    run_llmstream(str(config["base_url"]), n, tokens, rate, timings)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    assert not timings.errors and all(timings.texts[i] == expected_text(i, tokens) for i in range(n)), timings.errors[:2]
    print(json.dumps({"cpu": usage.ru_utime + usage.ru_stime - cpu}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--unprofiled-us", type=float, default=0.0, help="CPU us/token measured without the profiler")
    parser.add_argument("--ablate", nargs="*", help="measure CPU with these parts off (one child per set)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    server = Server()
    try:
        if args.ablate is None:
            profile(server.base_url, args.streams, args.tokens, args.rate, args.unprofiled_us)
            return
        sets = [[]] + [[name] for name in args.ablate] + ([args.ablate] if len(args.ablate) > 1 else [])
        results: Dict[str, List[float]] = {"+".join(s) or "none": [] for s in sets}
        for _ in range(args.repeat):
            for s in sets:
                config = {"ablate": s, "streams": args.streams, "tokens": args.tokens, "rate": args.rate,
                          "base_url": server.base_url}
                proc = subprocess.run([sys.executable, __file__, "--ablate-child", json.dumps(config)],
                                      capture_output=True, text=True, timeout=300, check=True)
                results["+".join(s) or "none"].append(json.loads(proc.stdout.strip().splitlines()[-1])["cpu"])
        per = 1e6 / (args.streams * args.tokens)
        base = sorted(results["none"])[len(results["none"]) // 2]
        print(f"{'turned off':<40} {'CPU s (median)':>15} {'us/token':>9} {'saved us/token':>15}")
        for label, cpus in results.items():
            med = sorted(cpus)[len(cpus) // 2]
            print(f"{label:<40} {med:>15.2f} {med * per:>9.0f} {(base - med) * per:>+15.1f}")
    finally:
        server.close()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--ablate-child":
        ablate_child(json.loads(sys.argv[2]))
    else:
        main()
