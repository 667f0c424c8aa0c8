"""A fake LLM server for tests, demos and benchmarks: real HTTP on 127.0.0.1, scripted streams and faults.

Usage::

    from llmstream.testing import FakeLLMServer, Reply

    with FakeLLMServer() as server:
        server.script(Reply(text="Paris", close_after_tokens=1), Reply(text="Paris"))
        client = SomeClient(base_url=server.base_url("openai"), api_key="test")
        ...
        assert server.requests[0].json["model"] == "gpt-4o-mini"

Layering: this package is standalone. It imports nothing from ``llmstream``
(only the standard library), so it can test any client, including a broken
llmstream. ``_reply`` (what to send) <- ``_wire`` (what formats share) <- one
module per provider format (``_openai_chat``, ``_openai_responses``,
``_anthropic``, ``_ollama``: stream, non-streaming answer, errors, extra
endpoints) <- ``_formats`` (the table of them, encoders) <- ``_faults`` (the
write plan) <- ``_writer`` (bytes to the socket) <- ``_handler`` (HTTP) <-
``_server`` (threads, lifecycle); ``_cli`` runs it.
"""

from ._cli import serve
from ._reply import DEFAULT_TEXT, Reply
from ._server import FakeLLMServer
from ._state import RecordedRequest

__all__ = ["DEFAULT_TEXT", "FakeLLMServer", "RecordedRequest", "Reply", "serve"]
