"""Real web servers for the relay tests: uvicorn (ASGI) and werkzeug (WSGI) on 127.0.0.1, in threads."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any, Dict, Iterator, List, Tuple

from llmstream.sse import SSEDecoder


class Uvicorn:
    """An ASGI app served by a real uvicorn server on an ephemeral port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", ws="none"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "Uvicorn":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Werkzeug:
    """A WSGI app served by werkzeug's threaded server (what ``flask run`` uses) on an ephemeral port."""

    def __init__(self, app: Any) -> None:
        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "Werkzeug":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def parse_sse(data: bytes) -> List[Tuple[str, str, Dict[str, Any]]]:
    """(id, event, data) of every event in an SSE body."""
    decoder = SSEDecoder()
    events = decoder.feed(data) + decoder.close()
    return [(e.id or "", e.event, json.loads(e.data)) for e in events]


def parse_ndjson(data: bytes) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in data.decode().splitlines() if line]


def text_of(events: Iterator[Tuple[str, str, Dict[str, Any]]]) -> str:
    """The answer a browser page would show: text frames joined, a reset clearing what came before."""
    shown = ""
    for _, name, data in events:
        if name == "text":
            shown += data["text"]
        elif name == "reset":
            shown = ""
    return shown


def wait_until(predicate: Any, timeout: float) -> bool:
    """Poll ``predicate`` (a state of another process' socket: nothing to wait on) until true or the bound."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
