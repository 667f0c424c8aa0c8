"""Benchmark the byte framing core against naive parsing. Run by hand: ``python bench/decoder.py``.

Builds about 50 MB of OpenAI chat-completions-shaped SSE (one word per chunk,
as gpt-4o-mini streams it, about 1% of words non-ASCII, then a finish chunk, a
usage chunk and ``data: [DONE]``), cuts it into 16 KiB pieces once, and feeds
the same pieces to:

  (a) naive SSE: carry + ``bytes.split(b"\\n")`` + a list comprehension that
      keeps the payload of each ``data: `` line (no decoding, no spec rules);
  (b) naive SSE + ``json.loads`` of each payload but ``[DONE]``;
  (c) ``llmstream.sse.SSEDecoder``;
  (d) the whole OpenAI path, ``StreamDecoder(OpenAIChatProvider().new_decoder(), framing="sse")``.

Each is timed best of 3 (runs interleaved) in this process with ``time.perf_counter``. Figures
go in notes, never in assertions. Options: ``--mb N`` (size), ``--non-ascii F``
(fraction of words with non-ASCII characters, default 0.01: about half the
pieces are then pure ASCII), ``--profile X`` (cProfile one of a/b/c/d instead
of timing).
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
from typing import Callable, Dict, List, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from llmstream.sse import SSEDecoder  # noqa: E402

PIECE = 16 * 1024
WORDS = (
    " the", " a", " of", " stream", " token", " model", " and", " to", " is", " in", " that",
    " it", " answer", " Paris", ".", ",", " with", " for", " \n", " **bold**", " `code`", " 42",
    " quick", " brown", " fox", " jumps", "\n\n", " \"quoted\"", " it's", " over",
)
# Sent raw, as UTF-8 (OpenAI does not escape non-ASCII). English answers hold a
# few: em dashes, curly quotes, accented names.
NON_ASCII_WORDS = (" —", " café", " naïve", " “quoted”", " résumé", " 東京", " €5")


def chunk(i: int, delta: str, finish: str = "null") -> bytes:
    """One chat.completion.chunk event, laid out exactly as OpenAI sends it."""
    body = (
        '{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk",'
        f'"created":{1718000000 + i // 50},"model":"gpt-4o-mini","system_fingerprint":"fp_0ba0d124f1",'
        f'"choices":[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}]}}'
    )
    return b"data: " + body.encode() + b"\n\n"


def build_stream(megabytes: float, non_ascii: float = 0.01) -> Tuple[bytes, int]:
    """Return (stream bytes, number of SSE events) of about ``megabytes`` MB.

    ``non_ascii`` is the fraction of words drawn from ``NON_ASCII_WORDS``.
    """
    rng = random.Random(1234)
    parts = [chunk(0, '{"role":"assistant","content":"","refusal":null}')]
    size = len(parts[0])
    target = int(megabytes * 1_000_000)
    i = 1
    while size < target:
        word = rng.choice(NON_ASCII_WORDS if rng.random() < non_ascii else WORDS)
        part = chunk(i, json.dumps({"content": word}, ensure_ascii=False, separators=(",", ":")))
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


def time_cases(pieces: List[bytes], runs: int = 3) -> Dict[str, Tuple[float, int]]:
    """Return {case: (best seconds, events)}, best of ``runs``.

    The runs are interleaved (a b c d, a b c d, ...) so that a burst of load
    on a shared machine does not land on one case only.
    """
    best: Dict[str, Tuple[float, int]] = {}
    for _ in range(runs):
        for key, _label, fn in CASES:
            try:
                start = time.perf_counter()
                events = fn(pieces)
                seconds = time.perf_counter() - start
            except ImportError:
                continue
            if key not in best or seconds < best[key][0]:
                best[key] = (seconds, events)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50.0, help="stream size in MB (default 50)")
    parser.add_argument("--non-ascii", type=float, default=0.01, help="fraction of non-ASCII words (default 0.01)")
    parser.add_argument("--profile", choices=[key for key, _, _ in CASES], help="cProfile one case")
    args = parser.parse_args()

    data, n_events = build_stream(args.mb, args.non_ascii)
    pieces = [data[i : i + PIECE] for i in range(0, len(data), PIECE)]
    mb = len(data) / 1e6
    ascii_pieces = sum(piece.isascii() for piece in pieces) / len(pieces)
    print(
        f"{mb:.1f} MB, {n_events} SSE events, {len(pieces)} pieces of {PIECE} bytes "
        f"({ascii_pieces:.0%} all ASCII; --non-ascii {args.non_ascii}), Python {sys.version.split()[0]}"
    )

    if args.profile:
        fn = {key: f for key, _, f in CASES}[args.profile]
        cProfile.runctx("fn(pieces)", globals(), {"fn": fn, "pieces": pieces}, "/tmp/decoder.prof")
        pstats.Stats("/tmp/decoder.prof").sort_stats("tottime").print_stats(15)
        return

    timings = time_cases(pieces)
    rates = {}
    for key, label, _fn in CASES:
        if key not in timings:
            print(f"({key}) {label:30s} skipped: its modules are not importable yet")
            continue
        seconds, events = timings[key]
        rates[key] = mb / seconds
        print(f"({key}) {label:30s} {mb / seconds:8.1f} MB/s {events / seconds:12,.0f} events/s ({events} events)")

    if "a" in rates and "c" in rates:
        print(f"SSEDecoder / naive split         = {rates['c'] / rates['a']:.2f}  (target >= 0.70)")
    if "b" in rates and "d" in rates:
        print(f"OpenAI path / naive split + json = {rates['d'] / rates['b']:.2f}  (target >= 0.80)")


if __name__ == "__main__":
    main()
