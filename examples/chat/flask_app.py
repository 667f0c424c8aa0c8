"""A chat page that streams an LLM's answer to the browser, with Flask.

Run (no API key needed: the built-in fake server answers)::

    pip install "llmstream-sdk[flask]"
    python examples/chat/flask_app.py          # then open http://127.0.0.1:8000

With OPENAI_API_KEY set it asks OpenAI instead. Routes: ``/`` the page,
``POST /runs`` starts a resumable run, ``/runs/<id>/events`` serves it (a
reconnect with ``Last-Event-ID`` picks up after it), ``POST /runs/<id>/stop``,
``/chat?q=`` a direct SSE relay, ``/chat.ndjson?q=`` the same as NDJSON.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from typing import Any, List, Optional

from flask import Flask, request
from werkzeug.serving import make_server

import llmstream
from llmstream import relay
from common import PAGE, make_client, parse_args


def create_app(client: llmstream.Client, runs: relay.MemoryRunStore, model: str = "gpt-4o-mini") -> Flask:
    app = Flask(__name__)

    @app.get("/")
    def page() -> Any:
        return PAGE

    @app.post("/runs")
    def start_run() -> Any:
        prompt = (request.get_json(silent=True) or {}).get("prompt") or "Hello"
        return {"id": runs.start(client.stream(prompt, model=model))}

    @app.get("/runs/<run_id>/events")
    def run_events(run_id: str) -> Any:
        after = relay.last_event_id(request.headers, request.args)
        return relay.flask_response(relay.run_body(runs, run_id, after=after))

    @app.post("/runs/<run_id>/stop")
    def stop_run(run_id: str) -> Any:
        return {"stopped": runs.stop(run_id)}

    @app.get("/chat")
    def chat() -> Any:
        return relay.flask_response(client.stream(request.args.get("q", "Hello"), model=model))

    @app.get("/chat.ndjson")
    def chat_ndjson() -> Any:
        return relay.flask_response(client.stream(request.args.get("q", "Hello"), model=model), format="ndjson")

    return app


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    with ExitStack() as stack:
        client, where = make_client(args, stack)
        runs = relay.MemoryRunStore()
        stack.callback(runs.close)
        server = make_server(args.host, args.port, create_app(client, runs, args.model), threaded=True)
        print(f"chat page on http://{args.host}:{server.socket.getsockname()[1]}/ (answers from {where})", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
