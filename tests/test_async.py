"""The asyncio facade: async for, events(), async with, aclose, acomplete, cancellation, a loop never blocked, backpressure."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from typing import Any, Iterator, List

import pytest

import llmstream
from llmstream.testing import FakeLLMServer, Reply
from helpers import read_until
from relay_servers import wait_until

TOKENS = ["The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", "."]
TEXT = "".join(TOKENS)


def client_for(server: FakeLLMServer, **kwargs: Any) -> llmstream.Client:
    return llmstream.Client(base_url=server.base_url("openai"), api_key="test-key", **kwargs)


def test_async_for_text_and_result(server: FakeLLMServer) -> None:
    server.script(Reply(text=TEXT, tokens=TOKENS))

    async def main() -> Any:
        pieces: List[str] = []
        async with client_for(server).astream("hi", model="m") as s:
            async for text in s:
                pieces.append(text)
        return pieces, s.result

    pieces, result = asyncio.run(main())
    assert pieces == TOKENS
    assert result.text == TEXT and result.finish_reason == "stop"


def test_async_events(server: FakeLLMServer) -> None:
    server.script(Reply(text=TEXT, tokens=TOKENS))

    async def main() -> List[Any]:
        s = client_for(server).astream("hi", model="m")
        return [e async for e in s.events()]

    events = asyncio.run(main())
    assert "".join(e.text for e in events if isinstance(e, llmstream.TextDelta)) == TEXT
    assert isinstance(events[-2], llmstream.Finish) or isinstance(events[-1], llmstream.Usage)


def test_acomplete_and_module_level(server: FakeLLMServer) -> None:
    server.script(Reply(text=TEXT, tokens=TOKENS), Reply(text="Paris"), Reply(text="Rome"))

    async def main() -> Any:
        a = await client_for(server).acomplete("hi", model="m")
        b = await llmstream.acomplete("hi", model="m", base_url=server.base_url("openai"), api_key="k")
        c = "".join([t async for t in llmstream.astream("hi", model="m", base_url=server.base_url("openai"), api_key="k")])
        return a.text, b.text, c

    assert asyncio.run(main()) == (TEXT, "Paris", "Rome")


def test_failure_raises_the_typed_error_with_partial_text(server: FakeLLMServer) -> None:
    server.script(Reply(text=TEXT, tokens=TOKENS, close_after_tokens=3))

    async def main() -> List[str]:
        got: List[str] = []
        async for text in client_for(server, retry=1).astream("hi", model="m"):
            got.append(text)
        return got

    with pytest.raises(llmstream.IncompleteStreamError) as info:
        asyncio.run(main())
    assert info.value.partial_text == "The quick brown"


def test_cancelling_the_task_closes_the_stream_and_socket(server: FakeLLMServer) -> None:
    server.script(Reply(text=TEXT, tokens=TOKENS, stall_after_tokens=(2, 30)))

    async def main() -> llmstream.AsyncTokenStream:
        s = client_for(server).astream("hi", model="m")
        got = asyncio.Event()

        async def consume() -> None:
            async for _ in s:
                got.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(got.wait(), 5)
        assert server.active_connections == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return s

    s = asyncio.run(main())
    cancelled_at = time.monotonic()
    assert wait_until(lambda: server.active_connections == 0, 3)
    assert time.monotonic() - cancelled_at < 1.0
    assert wait_until(lambda: s.status == "closed", 2)


def test_aclose_and_break(server: FakeLLMServer) -> None:
    server.script(Reply(token_count=100_000, interval=0.001))

    async def main() -> str:
        s = client_for(server).astream("hi", model="m")
        async for _ in s:
            break
        await s.aclose()
        await s.aclose()  # idempotent
        return s.status

    assert asyncio.run(main()) == "closed"
    assert wait_until(lambda: server.active_connections == 0, 1.0)


def test_two_consumers_is_misuse(server: FakeLLMServer) -> None:
    server.script(Reply(text=TEXT))

    async def main() -> None:
        async with client_for(server).astream("hi", model="m") as s:
            it = s.__aiter__()
            await it.__anext__()
            with pytest.raises(llmstream.StreamBusyError):
                await s.events().__anext__()

    asyncio.run(main())


@pytest.fixture
def remote_server() -> Iterator[str]:
    """The fake server in a process of its own, as a real LLM server is: its 200 writer threads
    do not compete for this process's GIL."""
    proc = subprocess.Popen([sys.executable, "-m", "llmstream.testing", "--fault", "token_count=40",
                             "--fault", "interval=0.005"], stdout=subprocess.PIPE)
    try:
        banner = read_until(proc, b"Press Ctrl+C to stop.").decode()  # bounded, unlike readline()
        match = re.search(r"^  openai +base_url=(\S+)$", banner, re.MULTILINE)
        assert match, banner
        yield match[1]
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_200_streams_never_block_the_loop(remote_server: str) -> None:
    client = llmstream.Client(base_url=remote_server, api_key="k", pool_size=200)

    async def heartbeat(stop: asyncio.Event, lags: List[float]) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            before = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - before - 0.01)

    running = [0, 0]  # now, most at once

    async def one(i: int) -> str:
        # Requests arrive over 0.1 s, as at a web server: making a stream costs
        # ~0.3 ms of loop time, so 200 made in ONE loop turn would alone cost ~60 ms.
        await asyncio.sleep(i * 0.0005)
        running[0] += 1
        running[1] = max(running)
        try:
            return "".join([t async for t in client.astream("hi", model="m")])
        finally:
            running[0] -= 1

    async def main(lags: List[float]) -> List[str]:
        stop = asyncio.Event()
        beat = asyncio.create_task(heartbeat(stop, lags))
        await asyncio.sleep(0.05)
        texts = await asyncio.gather(*(one(i) for i in range(200)))
        stop.set()
        await beat
        return list(texts)

    # Best of three runs, under 200 ms: on a shared 2-core machine other processes
    # hold the CPU for tens of ms (measured: ~70 ms worst lag in every run with the
    # suite and two busy processes pinned to one core). A library that blocks the
    # loop (a Thread.start() per stream, measured: 430-760 ms worst lag in every
    # run, unloaded) is still far above.
    bound = 0.2
    worst = []
    for _ in range(3):
        lags: List[float] = []
        running[1] = 0
        texts = asyncio.run(main(lags))
        assert texts == [" ".join(f"tok{i}" for i in range(40))] * 200
        assert running[1] >= 150, running  # they did run concurrently
        worst.append(max(lags))
        if worst[-1] < bound:
            break
    assert min(worst) < bound, f"worst loop lag per run: {[round(w * 1000, 1) for w in worst]} ms"


def test_backpressure_holds(server: FakeLLMServer) -> None:
    server.script(Reply(token_count=2_000_000))

    async def main() -> int:
        async with client_for(server, max_buffered=16).astream("hi", model="m") as s:
            it = s.__aiter__()
            await it.__anext__()
            await asyncio.sleep(0.5)  # a slow consumer: the reader must stop pulling
            return s.metrics.bytes_received

    received = asyncio.run(main())
    # The whole answer is ~30 MB; a held-back stream has read little more than socket buffers.
    assert received < 4_000_000, received
    assert threading.active_count() < 50
