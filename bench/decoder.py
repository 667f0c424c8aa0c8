"""Benchmark the byte framing core against naive parsing. Run by hand: ``python bench/decoder.py``.

Builds about 50 MB of OpenAI chat-completions-shaped SSE (one word per chunk,
as gpt-4o-mini streams it, a few non-ASCII words, then a finish chunk, a
usage chunk and ``data: [DONE]``), cuts it into 16 KiB pieces once, and feeds
the same pieces to:

  (a) naive SSE: carry + ``bytes.split(b"\\n")`` + a list comprehension that
      keeps the payload of each ``data: `` line (no decoding, no spec rules);
  (b) naive SSE + ``json.loads`` of each payload but ``[DONE]``;
  (c) ``llmstream.sse.SSEDecoder``;
  (d) the whole OpenAI path, ``StreamDecoder(OpenAIChatProvider().new_decoder(), framing="sse")``.

Each is timed best of 3 in this process with ``time.perf_counter``. Figures
go in notes, never in assertions. Options: ``--mb N`` (size), ``--profile X``
(cProfile one of a/b/c/d instead of timing).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import random
import sys
import time
from typing import Callable, List, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from llmstream.sse import SSEDecoder  # noqa: E402

PIECE = 16 * 1024
WORDS = (
    " the", " a", " of", " stream", " token", " model", " and", " to", " is", " in", " that",
    " it", " answer", " Paris", ".", ",", " with", " for", " café", " naïve", " —", " résumé",
    " \n", " **bold**", " `code`", " 42", " quick", " brown", " fox", " jumps",
)


def chunk(i: int, delta: str, finish: str = "null") -> bytes:
    """One chat.completion.chunk event, laid out exactly as OpenAI sends it."""
    body = (
        '{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk",'
        f'"created":{1718000000 + i // 50},"model":"gpt-4o-mini","system_fingerprint":"fp_0ba0d124f1",'
        f'"choices":[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}]}}'
    )
    return b"data: " + body.encode() + b"\n\n"


def build_stream(megabytes: float) -> Tuple[bytes, int]:
    """Return (stream bytes, number of SSE events) of about ``megabytes`` MB."""
    rng = random.Random(1234)
    parts = [chunk(0, '{"role":"assistant","content":"","refusal":null}')]
    size = len(parts[0])
    target = int(megabytes * 1_000_000)
    i = 1
    while size < target:
        part = chunk(i, json.dumps({"content": rng.choice(WORDS)}, ensure_ascii=False, separators=(",", ":")))
        parts.append(part)
        size += len(part)
        i += 1
    parts.append(chunk(i, "{}", finish='"stop"'))
    usage = (
        '{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1718001000,'
        '"model":"gpt-4o-mini","system_fingerprint":"fp_0ba0d124f1","choices":[],'
        f'"usage":{{"prompt_tokens":12,"completion_tokens":{i},"total_tokens":{i + 12}}}}}'
    )
    parts.append(b"data: " + usage.encode() + b"\n\n")
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts), len(parts)


def naive_split(pieces: List[bytes]) -> int:
    """(a) The least a hand-rolled SSE reader does: split lines, keep data payloads."""
    carry = b""
    count = 0
    for piece in pieces:
        lines = (carry + piece).split(b"\n")
        carry = lines.pop()
        payloads = [line[6:] for line in lines if line.startswith(b"data: ")]
        count += len(payloads)
    return count


def naive_json(pieces: List[bytes]) -> int:
    """(b) (a) plus json.loads of every payload but the [DONE] marker."""
    loads = json.loads
    carry = b""
    count = 0
    for piece in pieces:
        lines = (carry + piece).split(b"\n")
        carry = lines.pop()
        values = [loads(line[6:]) for line in lines if line.startswith(b"data: ") and line != b"data: [DONE]"]
        count += len(values)
    return count


def sse_decoder(pieces: List[bytes]) -> int:
    """(c) llmstream.sse.SSEDecoder."""
    decoder = SSEDecoder()
    count = 0
    for piece in pieces:
        count += len(decoder.feed(piece))
    decoder.close()
    return count


def openai_path(pieces: List[bytes]) -> int:
    """(d) bytes -> SSE -> OpenAI chat decoder -> unified events."""
    from llmstream._providers._base import StreamDecoder
    from llmstream._providers.openai_chat import OpenAIChatProvider

    decoder = StreamDecoder(OpenAIChatProvider().new_decoder(), framing="sse")
    count = 0
    for piece in pieces:
        count += len(decoder.feed(piece))
    count += len(decoder.close())
    return count


CASES: List[Tuple[str, str, Callable[[List[bytes]], int]]] = [
    ("a", "naive split + carry", naive_split),
    ("b", "naive split + json.loads", naive_json),
    ("c", "SSEDecoder", sse_decoder),
    ("d", "OpenAI path (StreamDecoder)", openai_path),
]


def best_of(fn: Callable[[List[bytes]], int], pieces: List[bytes], runs: int = 3) -> Tuple[float, int]:
    """Return (best seconds, events) over ``runs`` runs."""
    best = float("inf")
    events = 0
    for _ in range(runs):
        start = time.perf_counter()
        events = fn(pieces)
        best = min(best, time.perf_counter() - start)
    return best, events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50.0, help="stream size in MB (default 50)")
    parser.add_argument("--profile", choices=[key for key, _, _ in CASES], help="cProfile one case")
    args = parser.parse_args()

    data, n_events = build_stream(args.mb)
    pieces = [data[i : i + PIECE] for i in range(0, len(data), PIECE)]
    mb = len(data) / 1e6
    print(f"{mb:.1f} MB, {n_events} SSE events, {len(pieces)} pieces of {PIECE} bytes, Python {sys.version.split()[0]}")

    if args.profile:
        fn = {key: f for key, _, f in CASES}[args.profile]
        cProfile.runctx("fn(pieces)", globals(), {"fn": fn, "pieces": pieces}, "/tmp/decoder.prof")
        pstats.Stats("/tmp/decoder.prof").sort_stats("tottime").print_stats(15)
        return

    rates = {}
    for key, label, fn in CASES:
        try:
            seconds, events = best_of(fn, pieces)
        except ImportError as exc:
            print(f"({key}) {label:30s} skipped: {exc}")
            continue
        rates[key] = mb / seconds
        print(f"({key}) {label:30s} {mb / seconds:8.1f} MB/s {events / seconds:12,.0f} events/s ({events} events)")

    if "a" in rates and "c" in rates:
        print(f"SSEDecoder / naive split         = {rates['c'] / rates['a']:.2f}  (target >= 0.70)")
    if "b" in rates and "d" in rates:
        print(f"OpenAI path / naive split + json = {rates['d'] / rates['b']:.2f}  (target >= 0.80)")


if __name__ == "__main__":
    main()
