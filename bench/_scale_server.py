"""A paced OpenAI chat SSE server for ``bench/scale.py``: hundreds of slow streams at once, in its OWN process.

Run by ``bench/scale.py`` as ``python bench/_scale_server.py`` (prints ``PORT <n>``
on its first line, then serves until killed). Standard library only.

Why asyncio and not ``bench/_server.py`` (a thread per connection, ``time.sleep``
pacing, a backlog of 64): 500 connections at 20 events/s are 10,000 paced writes
a second on a 2-CPU machine shared with the client being measured. Here each
write is one ``loop.call_at`` callback doing one ``transport.write`` (one
``send``), with no coroutine or thread per stream, so the server takes little of
the CPU the client needs; and the backlog is 4096, so 500 connects at once are
never refused or retried.

The request's JSON body chooses the answer (extra keys, passed through unchanged
by llmstream as ``**params``):

  * ``bench_tokens`` content events at ``bench_rate`` events/s on a fixed schedule
    (event ``i`` is written at ``start + (i + 1) / rate``), each in its OWN socket
    write and its own HTTP chunk (``Transfer-Encoding: chunked``, keep-alive);
  * event ``i``'s content is ``words(bench_seed, bench_tokens)[i]``, so the client
    knows each stream's exact text;
  * before them a role chunk, after them a finish chunk, a usage chunk and
    ``data: [DONE]``, as OpenAI lays them out (``bench/_server.py`` builds them).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _server import NON_ASCII_WORDS, ROLE, WORDS, content_event, frame, tail  # noqa: E402

#: Every word a stream's text is built from (about 1 in 5 events non-ASCII, so UTF-8 is exercised).
VOCABULARY = WORDS + NON_ASCII_WORDS
_EVENTS = [frame(content_event(word), True) for word in VOCABULARY]
_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n")


def word_indexes(seed: int, tokens: int) -> List[int]:
    """Which word of VOCABULARY each event of stream ``seed`` carries (the client calls this too)."""
    n = len(VOCABULARY)
    return [(seed * 7 + i * (i + 3)) % n for i in range(tokens)]


def expected_text(seed: int, tokens: int) -> str:
    """The exact text stream ``seed`` delivers."""
    return "".join(VOCABULARY[k] for k in word_indexes(seed, tokens))


class _Stream(asyncio.Protocol):
    """One connection: parse requests (keep-alive), answer each with a paced stream."""

    def __init__(self) -> None:
        self.buf = b""
        self.transport: Optional[asyncio.Transport] = None
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            import socket
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next_request()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.transport = None

    def _next_request(self) -> None:
        head_end = self.buf.find(b"\r\n\r\n")
        if head_end < 0:
            return
        length = 0
        for line in self.buf[:head_end].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        end = head_end + 4 + length
        if len(self.buf) < end:
            return
        body, self.buf = self.buf[head_end + 4:end], self.buf[end:]
        params: Dict[str, Any] = json.loads(body) if body else {}
        self.busy = True
        self._answer(int(params.get("bench_tokens", 100)), float(params.get("bench_rate", 20.0)),
                     int(params.get("bench_seed", 0)))

    def _answer(self, tokens: int, rate: float, seed: int) -> None:
        loop = asyncio.get_running_loop()
        self._write(_HEAD + frame(ROLE, True))
        start = loop.time()
        indexes = word_indexes(seed, tokens)
        for i, k in enumerate(indexes[:-1]):
            loop.call_at(start + (i + 1) / rate, self._write, _EVENTS[k])
        # The last event and the tail in one callback: timers due at the same
        # time have no guaranteed order.
        loop.call_at(start + tokens / rate, self._finish, tokens, _EVENTS[indexes[-1]] if indexes else b"")

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _finish(self, tokens: int, last: bytes) -> None:
        if last:
            self._write(last)
        self._write(frame(tail(tokens), True) + b"0\r\n\r\n")
        self.busy = False
        if self.buf:
            self._next_request()


async def _main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Stream, "127.0.0.1", port, backlog=4096, reuse_address=True)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
