"""The same chat page with FastAPI (served by uvicorn): the relay never blocks the event loop.

Run (no API key needed: the built-in fake server answers)::

    pip install "llmstream-sdk[fastapi]" uvicorn
    python examples/chat/fastapi_app.py        # then open http://127.0.0.1:8000

Routes as in ``flask_app.py``.
"""

from __future__ import annotations

import socket
import sys
from contextlib import ExitStack
from typing import Any, Dict, List, Optional

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

import llmstream
from llmstream import relay
from common import PAGE, make_client, parse_args


def create_app(client: llmstream.Client, runs: relay.MemoryRunStore, model: str = "gpt-4o-mini") -> FastAPI:
    app = FastAPI()

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE

    @app.post("/runs")
    async def start_run(body: Dict[str, Any]) -> Dict[str, str]:
        return {"id": runs.start(client.stream(body.get("prompt") or "Hello", model=model))}

    @app.get("/runs/{run_id}/events")
    async def run_events(run_id: str, request: Request) -> Any:
        after = relay.last_event_id(request.headers, request.query_params)
        return relay.starlette_response(relay.run_body(runs, run_id, after=after))

    @app.post("/runs/{run_id}/stop")
    async def stop_run(run_id: str) -> Dict[str, bool]:
        return {"stopped": runs.stop(run_id)}

    @app.get("/chat")
    async def chat(q: str = "Hello") -> Any:
        return relay.starlette_response(client.stream(q, model=model))

    @app.get("/chat.ndjson")
    async def chat_ndjson(q: str = "Hello") -> Any:
        return relay.starlette_response(client.stream(q, model=model), format="ndjson")

    return app


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    with ExitStack() as stack:
        client, where = make_client(args, stack)
        runs = relay.MemoryRunStore()
        stack.callback(runs.close)
        sock = socket.socket()
        sock.bind((args.host, args.port))
        sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them
        print(f"chat page on http://{args.host}:{sock.getsockname()[1]}/ (answers from {where})", flush=True)
        server = uvicorn.Server(uvicorn.Config(create_app(client, runs, args.model), log_level="warning"))
        server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
