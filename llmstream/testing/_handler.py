"""The HTTP handler: parse, log and route a request, then answer with the next scripted reply.

Strategy: ``http.server`` parses the request line and headers and runs the
HTTP/1.1 keep-alive loop; everything after that is ours. A streaming answer
writes its own chunked framing (see ``_writer``), so the client sees exactly
the writes the reply asked for. Non-2xx answers carry a ``Content-Length`` and
keep the connection alive, as real APIs do.

Routes: ``POST /v1/chat/completions`` (openai), ``POST /v1/responses``
(openai-responses), ``GET /v1/responses/{id}?stream=true&starting_after=N``
(replay of a Responses stream, fault-free, without consuming the script; without
``stream=true``: the stored response object),
``POST /v1/messages`` (anthropic), ``POST /api/chat`` (ollama). Each answers
a stream when the body says ``"stream": true`` (Ollama: unless it says
``false``, as the real server defaults to streaming), else one JSON object in
the provider's documented non-streaming shape, from the same scripted reply.
What apps call besides (never consuming the script): ``GET /v1/models`` and
``GET /v1/models/{id}`` (Anthropic's shape when the request carries
``anthropic-version``, else OpenAI's), ``POST /v1/messages/count_tokens``,
``GET /api/tags``.

Natural resume behaviour (not faults):
  * ``Last-Event-ID: N`` (``{event_id_prefix}N``, read as UTF-8) sends only
    the events after id N of the reply (SSE providers; Ollama ignores it);
  * a conversation ending with an assistant message P (Anthropic and Ollama
    always, OpenAI chat with ``continue_final_message: true``) streams only
    what follows P when the reply's text starts with P, else the whole text
    (and always the whole text with ``Reply(ignore_prefill=True)``).

Must never: print to stderr (diagnostics go to the ``llmstream.testing``
logger), or let a client that went away raise out of the handler.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from ._faults import plan
from ._formats import CONTENT_TYPES, FORMATS, FORMATTERS, StreamContext, error_body, reason
from ._reply import Reply, continuation, fault_free
from ._state import RecordedRequest, ServerState
from ._wire import dump
from ._writer import BodyWriter

if TYPE_CHECKING:  # pragma: no cover
    from ._server import FakeHTTPServer

__all__ = ["Handler"]

logger = logging.getLogger("llmstream.testing")

ROUTES = {fmt.path: name for name, fmt in FORMATS.items()}
RESPONSES_PREFIX = "/v1/responses/"
MODELS_PATH = "/v1/models"
#: The providers' other endpoints: (method, path) -> (provider, answer(body, headers)).
EXTRA_ENDPOINTS = {key: (name, answer) for name, fmt in FORMATS.items() for key, answer in fmt.endpoints.items()}
NO_PREFILL = ("This model does not support assistant message prefill. "
              "The conversation must end with a user message.")
DEFAULT_MODEL = "fake-model"
_GONE = (ConnectionError, TimeoutError)  # BrokenPipe, ConnectionReset, ConnectionAborted


def _route(path: str) -> Tuple[Optional[str], Dict[str, str]]:
    """The format whose ``route`` takes ``path``, and what the path says (``{"model": ...}``), or (None, {})."""
    for name, fmt in FORMATS.items():
        found = fmt.route(path) if fmt.route is not None else None
        if found is not None:
            return name, found
    return None, {}


def _style(path: str) -> str:
    """The provider whose error format fits a path (for 404s and bad requests)."""
    if path.startswith("/api/"):
        return "ollama"
    if path.startswith("/v1/messages"):
        return "anthropic"
    return "openai"


def _final_assistant(body: Any) -> Optional[str]:
    """The text of the last message if it is the assistant's, else None."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return None
    last = messages[-1]
    if last.get("role") != "assistant":
        return None
    content = last.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part["text"] for part in content
                       if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def _continues(provider: str, body: Dict[str, Any]) -> bool:
    """Whether this provider continues a final assistant message (prefill)."""
    if provider == "openai":
        return body.get("continue_final_message") is True
    return provider in ("anthropic", "ollama")


def _event_number(header: Optional[str], prefix: str) -> int:
    """The event number a ``Last-Event-ID`` names (ids are ``{prefix}{n}``); 0 for none or a foreign id."""
    if not header:
        return 0
    try:
        # http.server decodes header bytes as Latin-1; clients send the id's
        # UTF-8 bytes, as browsers' EventSource does.
        value = header.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return 0
    number = value[len(prefix):] if value.startswith(prefix) else ""
    return int(number) if number.isascii() and number.isdigit() else 0


def _include_usage(body: Dict[str, Any]) -> bool:
    stream_options = body.get("stream_options")
    return isinstance(stream_options, dict) and stream_options.get("include_usage") is True


def _int(value: Optional[str], default: int) -> Optional[int]:
    """Parse an integer header or query value: ``default`` when absent, None when invalid."""
    if value is None or value == "":
        return default
    try:
        return int(value.strip())
    except ValueError:
        return None


class Handler(BaseHTTPRequestHandler):
    """One connection of the fake LLM server (HTTP/1.1, keep-alive)."""

    protocol_version = "HTTP/1.1"
    server_version = "llmstream-fake-server"
    sys_version = ""
    server: "FakeHTTPServer"
    #: True from admission under ``max_concurrent`` until ``_release()`` (per request).
    _in_flight = False

    def version_string(self) -> str:
        """The ``Server`` header value."""
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Send the access log to the ``llmstream.testing`` logger instead of stderr."""
        logger.debug("%s " + format, self.address_string(), *args)

    def handle(self) -> None:
        """Run the keep-alive loop; a client that went away ends it quietly."""
        try:
            super().handle()
        except _GONE as exc:
            logger.debug("client went away: %r", exc)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        """Route a GET (only the Responses replay exists)."""
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        """Route a POST to the provider's streaming endpoint."""
        self._dispatch()

    @property
    def state(self) -> ServerState:
        """The server's shared state."""
        return self.server.state

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: List[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        path, _, query_string = self.path.partition("?")
        query = dict(urllib.parse.parse_qsl(query_string, keep_blank_values=True))
        raw = self._read_body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        number = self.state.record(RecordedRequest(
            method=self.command, path=path, query=query, headers=dict(self.headers.items()), json=body,
            received_at=time.monotonic(), client_port=self.client_address[1]))
        provider = ROUTES.get(path)
        if provider is None:
            provider, named = _route(path)
            if isinstance(body, dict) and "model" in named:
                body = {**body, "model": named["model"]}  # a path that names the model (Gemini, Azure deployments)
        if self._catalog(path, body):
            return
        if self.command == "GET" and path.startswith(RESPONSES_PREFIX):
            if self._admitted("openai"):
                try:
                    self._replay(path[len(RESPONSES_PREFIX):], query)
                finally:
                    self._release()
        elif provider is None:
            self._error(404, _style(path), f"Unknown request URL: {self.command} {path}", "not_found_error"
                        if _style(path) == "anthropic" else "invalid_request_error")
        elif self.command != "POST":
            self._error(405, provider, f"Method {self.command} not allowed on {path}; use POST", None)
        elif not isinstance(body, dict):
            self._error(400, provider, "the request body must be a JSON object", None)
        elif self._admitted(provider):
            try:
                self._answer(provider, body, number)
            finally:
                self._release()

    def _answer(self, provider: str, body: Dict[str, Any], number: int) -> None:
        # An agent loop's turn sent back altered (a thinking signature dropped...) is refused
        # as the real API refuses it, before a scripted reply is used up.
        check = FORMATS[provider].check_turns
        problem = check(body, self._had_reasoning) if check is not None else None
        if problem is not None:
            self._error(400, provider, problem, None)  # the format's own 400 type
            return
        reply = self.state.next_reply()
        final = _final_assistant(body)
        if reply.refuse_prefill and final is not None:
            self._error(400, provider, NO_PREFILL, "invalid_request_error")
            return
        if not 200 <= reply.status < 300:
            self._error(reply.status, provider, reply.error, reply.error_type, reply)
            return
        streams = body.get("stream", FORMATS[provider].streams_by_default) is True
        ctx = StreamContext(
            provider=provider,
            model=body["model"] if isinstance(body.get("model"), str) else DEFAULT_MODEL,
            number=number,
            include_usage=_include_usage(body),
            tokens=(reply.iter_tokens if final is None or reply.ignore_prefill or not _continues(provider, body)
                    else lambda: continuation(reply.iter_tokens, final)),
            body=body,
        )
        if provider == "openai-responses":  # stored, as the API does by default
            self.state.remember(f"resp_fake_{number}", fault_free(reply), ctx)
        if not streams:
            self._complete(reply, ctx)
            return
        # JSON lines carry no ids, so Ollama (like the real one) ignores the header.
        last_id = _event_number(self.headers.get("Last-Event-ID"), reply.event_id_prefix) if provider != "ollama" else 0
        self._stream(reply, ctx, skip_through=last_id)

    def _had_reasoning(self, response_id: str) -> bool:
        stored = self.state.recall(response_id)
        return stored is not None and bool(stored[0].thinking)

    def _complete(self, reply: Reply, ctx: StreamContext) -> None:
        """Answer a non-streaming request: one JSON object with a Content-Length.

        Of the reply's faults, only those about bytes apply (``stall_before_first_byte``,
        ``close_after_bytes``, ``drip``/``split_seed``, ``interval``); token positions
        mean nothing without a stream.
        """
        data = reply.raw_body if reply.raw_body is not None else dump(FORMATS[ctx.provider].complete(reply, ctx))
        self.send_response(reply.status, reason(reply.status))
        self.send_header("Content-Type", reply.content_type or "application/json")
        self.send_header("Content-Length", str(len(data)))
        self._request_id_header(ctx.provider)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        conn: socket.socket = self.connection
        writer = BodyWriter(conn.sendall, dataclasses.replace(reply, chunked=False),
                            pause=lambda s: self.state.pause(s, conn), sleep=self.state.sleep, before_end=self._release)
        try:
            self.end_headers()
            clean = writer.run([data])
        except _GONE as exc:
            logger.debug("client went away mid-answer: %r", exc)
            clean = False
        if not clean:
            self.close_connection = True
            self._release()
            _hang_up(conn)

    def _catalog(self, path: str, body: Any) -> bool:
        """Answer the endpoints that list models or count tokens; False when ``path`` is none of them."""
        anthropic_client = self.headers.get("anthropic-version") is not None
        style = "anthropic" if anthropic_client else "openai"
        extra = EXTRA_ENDPOINTS.get((self.command, path))
        if extra is not None:
            provider, answer = extra
            if self.command == "POST" and not isinstance(body, dict):
                self._error(400, provider, "the request body must be a JSON object", None)
            else:
                self._json(provider, answer(body, dict(self.headers.items())))
        elif path == MODELS_PATH and self.command == "GET":
            self._json(style, FORMATS[style].catalog(dict(self.headers.items())))
        elif path.startswith(MODELS_PATH + "/") and self.command == "GET":
            wanted = urllib.parse.unquote(path[len(MODELS_PATH) + 1:])
            found = [m for m in FORMATS[style].catalog(dict(self.headers.items()))["data"] if m["id"] == wanted]
            if found:
                self._json(style, found[0])
            else:
                self._error(404, style, f"The model '{wanted}' does not exist", "not_found_error"
                            if anthropic_client else "invalid_request_error")
        else:
            return False
        return True

    def _json(self, provider: str, obj: Any) -> None:
        data = dump(obj)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self._request_id_header(provider)
        self._release()
        self.end_headers()
        self.wfile.write(data)

    def _replay(self, response_id: str, query: Dict[str, str]) -> None:
        stored = self.state.recall(response_id)
        if stored is None:
            self._error(404, "openai", f"Response with id '{response_id}' not found.", None)
            return
        if query.get("stream") != "true":  # a retrieve: the stored response object
            reply, ctx = stored
            self._json("openai", FORMATS["openai-responses"].complete(reply, ctx))
            return
        starting_after = _int(query.get("starting_after"), -1)
        if starting_after is None:
            self._error(400, "openai", "starting_after must be an integer", None)
            return
        reply, ctx = stored
        # Event k (1-based) carries sequence_number k-1: skip through k = N+1.
        last_id = _event_number(self.headers.get("Last-Event-ID"), reply.event_id_prefix)
        self._stream(reply, ctx, skip_through=max(starting_after + 1, last_id))

    def _error(self, status: int, provider: str, message: Optional[str], error_type: Optional[str],
               reply: Optional[Reply] = None, headers: Optional[Dict[str, str]] = None) -> None:
        raw = reply.raw_body if reply is not None else None
        data = raw if raw is not None else error_body(provider, status, message, error_type)
        self.send_response(status, reason(status))
        self.send_header("Content-Type", (reply.content_type if reply else None) or "application/json")
        self.send_header("Content-Length", str(len(data)))
        self._request_id_header(provider)
        for name, value in [*(reply.headers.items() if reply else ()), *(headers or {}).items()]:
            self.send_header(name, value)
        self._release()
        self.end_headers()
        self.wfile.write(data)

    def _request_id_header(self, provider: str) -> None:
        if provider == "anthropic":
            self.send_header("request-id", "req_fake")
        elif provider != "ollama":
            self.send_header("x-request-id", "req_fake")

    def _admitted(self, provider: str) -> bool:
        """Count the request in flight, or answer 429 over ``max_concurrent`` (consuming no scripted reply)."""
        if self.state.stream_started():
            self._in_flight = True
            return True
        # As a real API's concurrency limit answers.
        self._error(429, provider, "Too many concurrent requests; retry later.", None,
                    headers={"Retry-After": f"{self.state.limit_retry_after:g}"})
        return False

    def _release(self) -> None:
        """Stop counting this request against ``max_concurrent`` (once).

        Called before the client can see its answer end (the last piece of the
        body, the hang-up, or the answer's headers when the body goes in one
        write), not after: a client that saw the end may send its next request
        at once, and on a loaded machine that request can arrive before this
        thread runs again. Counted until then, it was refused as one too many.
        """
        if self._in_flight:
            self._in_flight = False
            self.state.stream_ended()

    def _stream(self, reply: Reply, ctx: StreamContext, skip_through: int) -> None:
        self.send_response(reply.status, reason(reply.status))
        self.send_header("Content-Type", reply.content_type or CONTENT_TYPES[ctx.provider])
        self.send_header("Cache-Control", "no-cache")
        self._request_id_header(ctx.provider)
        self.send_header("Transfer-Encoding" if reply.chunked else "Connection",
                         "chunked" if reply.chunked else "close")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        conn: socket.socket = self.connection
        writer = BodyWriter(conn.sendall, reply, pause=lambda s: self.state.pause(s, conn), sleep=self.state.sleep,
                            before_end=self._release)
        body = ([reply.raw_body] if reply.raw_body is not None
                else plan(FORMATTERS[ctx.provider](reply, ctx), reply, ctx, skip_through))
        try:
            self.end_headers()
            clean = writer.run(body)
            if clean and reply.chunked:
                writer.finish()
        except _GONE as exc:
            logger.debug("client went away mid-stream: %r", exc)
            clean = False
        if not clean or not reply.chunked:
            self.close_connection = True
        if not clean:
            self._release()
            _hang_up(conn)


def _hang_up(conn: socket.socket) -> None:
    # FIN after the bytes already queued, so the client receives every byte
    # that was written and then sees the connection end mid-body.
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass

