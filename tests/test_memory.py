"""Backpressure keeps memory bounded: a huge stream read slowly does not pile up in RAM."""

from __future__ import annotations

import time

import pytest

from llmstream import Client, Retry
from llmstream.testing import FakeLLMServer, Reply

MiB = 1024 * 1024


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@pytest.mark.timeout(180)
def test_five_million_tokens_read_slowly_keep_rss_bounded(server: FakeLLMServer) -> None:
    tokens = 5_000_000
    server.script(Reply(token_count=tokens, events_per_write=256))
    client = Client("openai", base_url=server.base_url("openai"), api_key="k",
                    retry=Retry(max_attempts=1), max_buffered=256)
    before = rss_bytes()
    count = 0
    chars = 0
    samples = []
    with client.stream("go", model="m") as stream:
        for piece in stream:
            count += 1
            chars += len(piece)
            if count == 1:
                # A slow caller: the queue fills, the worker blocks, TCP pushes back.
                time.sleep(1.0)
            if count % 500_000 == 0:
                # What the process holds beyond the answer text kept for .text
                # (ASCII here: one byte per character).
                samples.append(rss_bytes() - before - chars)
        text_size = len(stream.text)
    assert count == tokens
    assert text_size == chars == len("tok0") + sum(len(f" tok{i}") for i in range(1, tokens))
    # Bounded whatever the length: after the first million tokens the overhead
    # no longer grows with the stream (unbounded buffering would add ~60 bytes
    # per token, 240 MiB over the remaining four million).
    assert max(samples) - samples[1] < 8 * MiB, [round(x / MiB, 1) for x in samples]
    assert max(samples) < 32 * MiB, [round(x / MiB, 1) for x in samples]
