"""Benchmark the Gemini decoder's per-token text path. Run by hand: ``python bench/gemini_decoder.py``.

Builds about 50 MB of ``streamGenerateContent?alt=sse`` chunks (one word per
chunk, each with its cumulative ``usageMetadata``, CRLF line endings as the
API sends them, then a ``finishReason`` chunk), cuts it into 16 KiB pieces and
feeds them to ``StreamDecoder(GeminiProvider().new_decoder(), framing="sse+json")``,
best of 5 with ``time.perf_counter``. Figures go in notes, never in assertions.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from llmstream._providers import PROVIDERS  # noqa: E402
from llmstream._providers._base import StreamDecoder  # noqa: E402

WORDS = [" the", " a", " stream", " token", " Paris", ".", " café"]


def main() -> None:
    provider = PROVIDERS["gemini"]
    words = WORDS * 30000
    chunks = [b'data: {"candidates":[{"content":{"parts":[{"text":' + json.dumps(w).encode()
              + b'}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":%d,'
              b'"totalTokenCount":%d},"modelVersion":"gemini-2.5-flash","responseId":"x"}\r\n\r\n' % (i, i + 12)
              for i, w in enumerate(words)]
    chunks.append(b'data: {"candidates":[{"content":{"parts":[{"text":""}],"role":"model"},"finishReason":"STOP",'
                  b'"index":0}]}\r\n\r\n')
    data = b"".join(chunks)
    pieces = [data[i:i + 16384] for i in range(0, len(data), 16384)]
    best, events = float("inf"), 0
    for _ in range(5):
        decoder = StreamDecoder(provider.new_decoder(), framing=provider.framing)
        start = time.perf_counter()
        events = sum(len(decoder.feed(piece)) for piece in pieces) + len(decoder.close())
        best = min(best, time.perf_counter() - start)
    print(f"{len(data) / 1e6:.1f} MB, {events} events, best {best * 1000:.0f} ms: "
          f"{len(data) / 1e6 / best:.1f} MB/s, {len(words) / best:,.0f} tokens/s")


if __name__ == "__main__":
    main()
