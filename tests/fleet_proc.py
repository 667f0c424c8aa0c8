"""One process of a fleet, for tests/test_redis_state.py: ``python fleet_proc.py '<json>'``.

It makes a Client with ``shared=RedisState(...)``, runs the streams the JSON
asks for, and prints one JSON line per milestone on stdout (``ready``,
``done``...). ``mode`` is one of:

  * ``streams``: ``streams`` streams from ``threads`` threads; prints ``done`` with the outcomes.
  * ``wait-go``: one warm-up stream, ``ready``, then waits for a line on stdin and runs ``streams`` more.
  * ``hold``: starts ``streams`` streams and never reads them to the end (the test kills the process).
"""

from __future__ import annotations

import concurrent.futures
import json
import sys
from typing import Any, Dict, List

import llmstream


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    cfg: Dict[str, Any] = json.loads(sys.argv[1])
    state = llmstream.RedisState(cfg["redis_url"], prefix=cfg["prefix"], lease=cfg.get("lease", 30.0),
                                 timeout=cfg.get("timeout", 0.5))
    rate = cfg.get("rate_limit")
    client = llmstream.Client(
        "openai", base_url=cfg["base_url"], api_key="sk-test", retry=llmstream.Retry(max_attempts=1),
        max_concurrent=cfg.get("max_concurrent"), shared=state,
        rate_limit=llmstream.RateLimit(**rate) if rate else None, timeout=llmstream.Timeout(total=60),
    )
    name = cfg["name"]

    def one(i: int) -> str:
        try:
            return client.complete(f"{name}-{i}", model="m").text
        except llmstream.StreamError as exc:
            return f"{type(exc).__name__}: {exc}"

    mode = cfg["mode"]
    if mode == "hold":
        streams = [client.stream(f"{name}-hold-{i}", model="m") for i in range(cfg["streams"])]
        # Kept: an iterator dropped closes its stream. The server stalls after
        # the first token, so each stream keeps its slot.
        iterators = [iter(s) for s in streams]
        for it in iterators:
            next(it)
        say(event="holding")
        sys.stdin.readline()  # until killed
        return
    if mode == "wait-go":
        results: List[str] = [one(-1)]
        say(event="ready")
        sys.stdin.readline()
    else:
        results = []
    with concurrent.futures.ThreadPoolExecutor(cfg.get("threads", 1)) as pool:
        results += list(pool.map(one, range(cfg["streams"])))
    say(event="done", results=results, fallbacks=state.fallbacks)
    state.close()


if __name__ == "__main__":
    main()
