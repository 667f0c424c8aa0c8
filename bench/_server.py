"""A minimal OpenAI chat-completions SSE server for ``bench/stream.py``, run as its OWN process.

Run by ``bench/stream.py`` as ``python bench/_server.py`` (prints ``PORT <n>`` on its
first line, then serves until killed). Standard library only: it must not share a
process, and so a GIL, with the client being measured.

Why not ``llmstream.testing.FakeLLMServer``: it renders every event in Python as it
writes, so at 1 event per write it can be slower than the client it should feed,
and its replies carry no write-time stamps. This server writes bytes built once.

The request's JSON body chooses the answer (extra keys, which llmstream passes
through unchanged as ``**params``):

  * ``bench_mode: "bulk"``: ``bench_tokens`` content events (words cycled from a
    pool built once), grouped ``bench_per_write`` events per socket write, as fast
    as the socket takes them.
  * ``bench_mode: "paced"``: ``bench_tokens`` events at ``bench_rate`` events/s on a
    fixed schedule; each token's content is ``" <time.monotonic() at its write>"``
    (CLOCK_MONOTONIC: comparable across processes on Linux).
  * ``bench_chunked``: true (default): HTTP/1.1 chunked, keep-alive, one HTTP
    chunk per socket write. False: no length, ``Connection: close``.

Every answer is: a role chunk (empty content), the content chunks, a finish chunk, a
usage chunk, ``data: [DONE]``, exactly as OpenAI lays them out (no ``id:`` lines).
"""

from __future__ import annotations

import itertools
import json
import random
import socket
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Tuple

WORDS = (
    " the", " a", " of", " stream", " token", " model", " and", " to", " is", " in", " that",
    " it", " answer", " Paris", ".", ",", " with", " for", " \n", " **bold**", " `code`", " 42",
    " quick", " brown", " fox", " jumps", "\n\n", " \"quoted\"", " it's", " over",
)
NON_ASCII_WORDS = (" —", " café", " naïve", " “quoted”", " résumé", " 東京", " €5")
#: Distinct content events cycled through by bulk answers (a multiple of 64).
POOL = 4096
_HEAD = '{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1718000000,' \
        '"model":"gpt-4o-mini","system_fingerprint":"fp_0ba0d124f1","choices":'


def event(delta: str, finish: str = "null") -> bytes:
    """One chat.completion.chunk SSE event, laid out as OpenAI sends it."""
    body = _HEAD + f'[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}]}}'
    return b"data: " + body.encode("utf-8") + b"\n\n"


def content_event(text: str) -> bytes:
    """A content chunk for ``text`` (raw UTF-8, as OpenAI does not escape non-ASCII)."""
    return event(json.dumps({"content": text}, ensure_ascii=False, separators=(",", ":")))


ROLE = event('{"role":"assistant","content":"","refusal":null}')


def tail(tokens: int) -> bytes:
    """The finish chunk, the usage chunk and the end marker."""
    usage = (_HEAD + '[],"usage":{"prompt_tokens":12,"completion_tokens":%d,"total_tokens":%d}}' % (tokens, tokens + 12))
    return event("{}", finish='"stop"') + b"data: " + usage.encode() + b"\n\n" + b"data: [DONE]\n\n"


def _pool() -> List[bytes]:
    rng = random.Random(1234)  # about 1% non-ASCII words, as English answers have
    return [content_event(rng.choice(NON_ASCII_WORDS if rng.random() < 0.01 else WORDS)) for _ in range(POOL)]


EVENTS = _pool()
_groups_cache: Dict[Tuple[int, bool], List[bytes]] = {}
_cache_lock = threading.Lock()


def frame(data: bytes, chunked: bool) -> bytes:
    """``data`` as one HTTP/1.1 chunk, or as is."""
    return b"%x\r\n%s\r\n" % (len(data), data) if chunked else data


def groups(per_write: int, chunked: bool) -> List[bytes]:
    """The pool cut into writes of ``per_write`` events, framed (cached: the write loop only sends)."""
    with _cache_lock:
        found = _groups_cache.get((per_write, chunked))
        if found is None:
            size = per_write * max(1, POOL // per_write)
            cycle = (EVENTS * (size // POOL + 1))[:size]
            found = [frame(b"".join(cycle[i:i + per_write]), chunked) for i in range(0, size, per_write)]
            _groups_cache[(per_write, chunked)] = found
        return found


def send_bulk(send: Callable[[bytes], None], tokens: int, per_write: int, chunked: bool) -> None:
    """Send the body of a bulk answer, ``per_write`` content events per socket write."""
    send(frame(ROLE, chunked))
    full, rest = divmod(tokens, per_write)
    for data in itertools.islice(itertools.cycle(groups(per_write, chunked)), full):
        send(data)
    if rest:
        send(frame(b"".join(EVENTS[i % POOL] for i in range(full * per_write, tokens)), chunked))
    send(frame(tail(tokens), chunked))


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def read_request(self) -> Tuple[str, Dict[str, Any]]:
        """Return (request line, JSON body); raise EOFError when the client closed."""
        while b"\r\n\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.buf += data
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        while len(self.buf) < length:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.buf += data
        body, self.buf = self.buf[:length], self.buf[length:]
        return lines[0], (json.loads(body) if body else {})


def _respond(sock: socket.socket, params: Dict[str, Any]) -> bool:
    """Send one answer; return True if the connection may be kept."""
    chunked = bool(params.get("bench_chunked", True))
    mode = params.get("bench_mode", "bulk")
    tokens = int(params.get("bench_tokens", 1000))
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"Connection: close\r\n\r\n"
    send = sock.sendall
    send(head)
    if mode == "paced":
        rate = float(params.get("bench_rate", 500.0))
        _paced(send, tokens, rate, chunked)
    else:
        send_bulk(send, tokens, int(params.get("bench_per_write", 64)), chunked)
    if chunked:
        send(b"0\r\n\r\n")
    return chunked


def _paced(send: Callable[[bytes], None], tokens: int, rate: float, chunked: bool) -> None:
    def write(data: bytes) -> None:
        send(frame(data, chunked))

    write(ROLE)
    interval = 1.0 / rate
    start = time.monotonic() + interval
    monotonic = time.monotonic
    for i in range(tokens):
        delay = start + i * interval - monotonic()
        if delay > 0:
            time.sleep(delay)
        # Stamped at the write itself: the event is built around the stamp.
        write(content_event(" %.6f" % monotonic()))
    write(tail(tokens))


def _serve(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = _Conn(sock)
    try:
        while True:
            _line, params = conn.read_request()
            if not _respond(sock, params):
                break
    except (EOFError, OSError):
        pass
    finally:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


def main() -> None:
    """Listen on 127.0.0.1 (port from argv[1], default 0), print the port, serve forever."""
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    for per_write in (1, 64):
        groups(per_write, True)
    print(f"PORT {listener.getsockname()[1]}", flush=True)
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=_serve, args=(sock,), daemon=True).start()


if __name__ == "__main__":
    main()
