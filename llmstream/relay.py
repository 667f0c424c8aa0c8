"""Relay a stream to a browser: server-sent events or NDJSON, for Flask, Django and Starlette/FastAPI.

Usage (Flask)::

    from llmstream import relay

    @app.get("/chat")
    def chat():
        return relay.flask_response(client.stream(request.args["q"], model="gpt-4o-mini"))

Usage (FastAPI / Starlette)::

    @app.get("/chat")
    async def chat(q: str):
        return relay.starlette_response(client.stream(q, model="gpt-4o-mini"))

Resumable (a reconnecting ``EventSource`` picks up after its ``Last-Event-ID``)::

    runs = relay.MemoryRunStore()
    run_id = runs.start(client.stream(prompt, model="gpt-4o-mini"))       # POST /runs
    relay.flask_response(relay.run_body(runs, run_id, after=relay.last_event_id(request.headers, request.args)))

Wire format (SSE): every frame has ``id:`` (the number of the last event it
carries: a reconnect with it as ``Last-Event-ID`` resumes right after),
``event:`` one of ``text``, ``thinking``, ``tool_call_delta``, ``tool_call``,
``usage``, ``finish``, ``retrying``, ``reset``, ``error``, ``done``, and one
``data:`` line of JSON. Consecutive ``text`` (and ``thinking``) events are
coalesced: at most ``max_rate`` writes a second (default 20) whatever the
token rate. A ``: keep-alive`` comment goes out every ``heartbeat`` seconds
of silence. A failure after the 200 is an ``event: error`` frame (``class``,
``message``, ``delivered``), and every body ends with ``event: done``. NDJSON
carries the same events, one JSON object a line:
``{"id": 3, "event": "text", "data": {"text": "Hi"}}`` (heartbeats are
``{"event": "heartbeat"}``).

Disconnects: when the browser goes away the framework closes the body (WSGI
``close()``, ASGI cancellation); a direct relay then closes the upstream
stream (the LLM server sees its connection closed), a run is only left (it is
stopped after the store's ``orphan_timeout``). A WSGI server notices a gone
browser at its next write: within one coalescing interval while tokens flow,
within ``heartbeat`` while the model is silent.

No web framework is imported by this module unless its helper is called.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Dict, Iterator, List, Mapping, Optional, Union

from ._runs import MemoryRunStore, NotResumableError, RelayEvent, Run, RunSource, RunStore
from ._stream import TokenStream
from ._version import DISTRIBUTION

if TYPE_CHECKING:
    from ._redis_runs import RedisRunStore, RunStoreError

__all__ = [
    "Body",
    "MemoryRunStore",
    "NotResumableError",
    "Run",
    "RunSource",
    "RunStore",
    "sse",
    "ndjson",
    "run_body",
    "last_event_id",
    "flask_response",
    "django_response",
    "starlette_response",
    "SSE_HEADERS",
    "RedisRunStore",
    "RunStoreError",
]


def __getattr__(name: str) -> Any:
    # The Redis store is loaded on first use: this module imports nothing of
    # the redis extra (the store itself imports redis only when made).
    if name in ("RedisRunStore", "RunStoreError"):
        from ._redis_runs import RedisRunStore, RunStoreError

        return RedisRunStore if name == "RedisRunStore" else RunStoreError
    raise AttributeError(f"module 'llmstream.relay' has no attribute {name!r}")

#: Headers of a relayed body: no cache, and no buffering by nginx (``X-Accel-Buffering``).
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_MEDIA_TYPES = {"sse": "text/event-stream; charset=utf-8", "ndjson": "application/x-ndjson"}
#: Events merged into one frame when they follow each other.
_MERGED = ("text", "thinking")
#: A direct relay whose body is never iterated (the browser left before the
#: response began) stops its stream after this many seconds.
_UNREAD_TIMEOUT = 10.0


def _dumps(data: Any) -> str:
    # json.dumps escapes CR and LF, so the payload is always one "data:" line.
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def coalesce(events: List[RelayEvent]) -> List[RelayEvent]:
    """Merge runs of consecutive ``text`` (or ``thinking``) events; a merged event keeps the last id."""
    out: List[RelayEvent] = []
    for event in events:
        if out and event[1] in _MERGED and out[-1][1] == event[1]:
            last = out[-1]
            out[-1] = (event[0], event[1], {"text": last[2]["text"] + event[2]["text"]})
        else:
            out.append(event)
    return out


def _encode(events: List[RelayEvent], fmt: str) -> bytes:
    if fmt == "sse":
        return "".join(f"id: {i}\nevent: {name}\ndata: {_dumps(data)}\n\n" for i, name, data in events).encode()
    return "".join(_dumps({"id": i, "event": name, "data": data}) + "\n" for i, name, data in events).encode()


def _heartbeat(fmt: str) -> bytes:
    return b": keep-alive\n\n" if fmt == "sse" else b'{"event":"heartbeat"}\n'


def _preamble(fmt: str, retry_ms: int) -> bytes:
    # Sent at once so the headers go out before the first token (a WSGI
    # server sends them with the first body bytes); "retry:" sets the
    # browser's reconnect delay.
    return f"retry: {retry_ms}\n\n".encode() if fmt == "sse" else _heartbeat(fmt)


class Body:
    """A relayed response body: iterate it (WSGI) or ``async for`` it (ASGI), once.

    Made by :func:`sse`, :func:`ndjson` or :func:`run_body`; the framework
    helpers take one. ``status`` is the HTTP status to answer with: 204 for
    a reconnect after the run's ``done`` (a browser's ``EventSource`` stops
    reconnecting on a 204), else 200.
    """

    def __init__(self, run: Optional[RunSource], *, fmt: str = "sse", after: int = 0, owns_run: bool = False,
                 max_rate: float = 20.0, heartbeat: float = 5.0, retry_ms: int = 1000,
                 error: Optional[str] = None) -> None:
        if fmt not in _MEDIA_TYPES:
            raise ValueError(f"format must be 'sse' or 'ndjson', got {fmt!r}")
        if max_rate <= 0 or heartbeat <= 0:
            raise ValueError("max_rate and heartbeat must be > 0")
        self.format = fmt
        self.media_type = _MEDIA_TYPES[fmt]
        self.headers: Dict[str, str] = dict(SSE_HEADERS)
        self._run = run
        self._after = after
        self._owns_run = owns_run
        self._interval = 1.0 / max_rate
        self._heartbeat = heartbeat
        self._retry_ms = retry_ms
        self._error = error
        try:
            self.status = 204 if run is not None and run.finished and after >= run.last_id else 200
        except NotResumableError as exc:  # a store that cannot be reached (RunStoreError): an error frame
            self.status, self._error = 200, str(exc)

    def _not_resumable(self, message: str, cursor: Optional[int] = None) -> bytes:
        data = {"class": "NotResumableError", "message": message, "delivered": None}
        at = self._after if cursor is None else cursor  # the id the browser has: a reconnect asks the same
        return _encode([(at, "error", data), (at, "done", {"status": "not_resumable"})], self.format)

    def _frames(self, events: List[RelayEvent]) -> bytes:
        return _encode(coalesce(events), self.format)

    def __iter__(self) -> Iterator[bytes]:
        """The body for a WSGI server: blocking; closing it (a gone browser) ends the relay."""
        run = self._run
        if run is None or self._error is not None:
            yield self._not_resumable(self._error or "unknown run")
            return
        if self.status == 204:
            return
        run.attach()
        try:
            yield _preamble(self.format, self._retry_ms)
            cursor, last_write = self._after, time.monotonic()
            while True:
                try:
                    events = run.wait_after(cursor, last_write + self._heartbeat - time.monotonic())
                except NotResumableError as exc:
                    yield self._not_resumable(str(exc), cursor)
                    return
                now = time.monotonic()
                if events:
                    cursor = events[-1][0]
                    yield self._frames(events)
                    if events[-1][1] == "done":
                        return
                    last_write = now
                    # Pace: the next frame waits out the interval, so tokens meanwhile join it.
                    time.sleep(max(0.0, now + self._interval - time.monotonic()))
                elif now - last_write >= self._heartbeat:
                    yield _heartbeat(self.format)
                    last_write = now
        finally:
            run.detach()
            if self._owns_run:
                run.stop()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """The body for an ASGI server: never blocks the loop; cancelling it (a gone browser) ends the relay."""
        run = self._run
        if run is None or self._error is not None:
            yield self._not_resumable(self._error or "unknown run")
            return
        if self.status == 204:
            return
        if getattr(run, "blocking_reads", False):
            async for chunk in self._aiter_blocking(run):
                yield chunk
            return
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        waiting = [False]

        def wake() -> None:  # called from the pump thread, under the run's lock
            if waiting[0]:  # only while the body awaits: not once per token while it paces
                waiting[0] = False
                try:
                    loop.call_soon_threadsafe(ready.set)
                except RuntimeError:
                    return  # the loop is closed: nobody is left to wake (the pump must go on)

        run.attach(wake)
        try:
            yield _preamble(self.format, self._retry_ms)
            cursor, last_write = self._after, loop.time()
            while True:
                ready.clear()
                waiting[0] = True  # before looking: an event appended after the look wakes us
                try:
                    events = run.events_after(cursor)
                except NotResumableError as exc:
                    yield self._not_resumable(str(exc), cursor)
                    return
                if not events:
                    try:
                        await asyncio.wait_for(ready.wait(), max(0.0, last_write + self._heartbeat - loop.time()))
                    except asyncio.TimeoutError:
                        yield _heartbeat(self.format)
                        last_write = loop.time()
                    continue
                waiting[0] = False
                cursor = events[-1][0]
                yield self._frames(events)
                if events[-1][1] == "done":
                    return
                last_write = loop.time()
                await asyncio.sleep(max(0.0, last_write + self._interval - loop.time()))
        finally:
            run.detach(wake)
            if self._owns_run:
                run.stop()


    async def _aiter_blocking(self, run: RunSource) -> AsyncIterator[bytes]:
        # A store with no waker (Redis: the events come from another process):
        # each wait runs in a worker thread, at most a second at a time, so a
        # cancelled body leaves no wait behind for longer than that.
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, run.attach)
        try:
            yield _preamble(self.format, self._retry_ms)
            cursor, last_write = self._after, loop.time()
            while True:
                wait = min(1.0, max(0.0, last_write + self._heartbeat - loop.time()))
                try:
                    events = await loop.run_in_executor(None, run.wait_after, cursor, wait)
                except NotResumableError as exc:
                    yield self._not_resumable(str(exc), cursor)
                    return
                now = loop.time()
                if events:
                    cursor = events[-1][0]
                    yield self._frames(events)
                    if events[-1][1] == "done":
                        return
                    last_write = now
                    await asyncio.sleep(max(0.0, now + self._interval - loop.time()))
                elif now - last_write >= self._heartbeat:
                    yield _heartbeat(self.format)
                    last_write = now
        finally:
            run.detach()
            if self._owns_run:
                run.stop()


def sse(stream: TokenStream, *, max_rate: float = 20.0, heartbeat: float = 5.0, retry_ms: int = 1000) -> Body:
    """A server-sent-events body relaying ``stream``; the browser going away closes the stream.

    Args:
        stream: the stream to relay (not iterated by anyone else).
        max_rate: at most this many writes a second; tokens in between are coalesced.
        heartbeat: seconds of silence before a ``: keep-alive`` comment.
        retry_ms: the browser's reconnect delay (the ``retry:`` field).
    """
    return Body(Run(stream, orphan_timeout=_UNREAD_TIMEOUT), fmt="sse", owns_run=True, max_rate=max_rate, heartbeat=heartbeat, retry_ms=retry_ms)


def ndjson(stream: TokenStream, *, max_rate: float = 20.0, heartbeat: float = 5.0) -> Body:
    """Like :func:`sse`, as newline-delimited JSON for ``fetch()`` readers."""
    return Body(Run(stream, orphan_timeout=_UNREAD_TIMEOUT), fmt="ndjson", owns_run=True, max_rate=max_rate, heartbeat=heartbeat)


def run_body(store: RunStore, run_id: str, *, after: Optional[int] = None, format: str = "sse",  # noqa: A002
             max_rate: float = 20.0, heartbeat: float = 5.0, retry_ms: int = 1000) -> Body:
    """A body serving a stored run from after event ``after`` (the browser's ``Last-Event-ID``).

    An unknown or expired run, or one that no longer holds the events after
    ``after``, answers with an ``error`` frame (``class: NotResumableError``)
    and ``done`` (status ``not_resumable``): never a second generation. A
    reconnect after ``done`` answers 204 (the browser stops reconnecting).
    The browser going away leaves the run running (see the store's
    ``orphan_timeout``).
    """
    try:
        run: Optional[RunSource] = store.get(run_id)
        error = None
    except NotResumableError as exc:
        run, error = None, str(exc)
    return Body(run, fmt=format, after=after or 0, max_rate=max_rate, heartbeat=heartbeat, retry_ms=retry_ms,
                error=error)


def last_event_id(headers: Mapping[str, str], query: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """The event id a reconnecting browser asks to resume after: ``Last-Event-ID``, else ``?after=``.

    Returns None when neither is a whole number >= 0.
    """
    value = headers.get("Last-Event-ID") or headers.get("last-event-id")
    if not value and query is not None:
        value = query.get("after")
    if value and value.strip().isdigit() and value.strip().isascii():
        return int(value.strip())
    return None


def _body(source: Union[TokenStream, Body], fmt: str) -> Body:
    if isinstance(source, Body):
        return source
    return sse(source) if fmt == "sse" else ndjson(source)


def _need(module: str, name: str, package: str, extra: str) -> Any:
    """Import a web framework's name lazily (never at import of this module), naming the extra if missing."""
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f'this llmstream.relay helper needs {package}: pip install "{DISTRIBUTION}[{extra}]"', name=exc.name
        ) from exc


def flask_response(source: Union[TokenStream, Body], *, format: str = "sse") -> Any:  # noqa: A002
    """A ``flask.Response`` streaming ``source`` (a stream, or a :class:`Body`), with the relay's headers."""
    Response = _need("flask", "Response", "Flask", "flask")

    body = _body(source, format)
    return Response(iter(body), status=body.status, mimetype=None, content_type=body.media_type,
                    headers=body.headers, direct_passthrough=True)


def django_response(source: Union[TokenStream, Body], *, format: str = "sse",  # noqa: A002
                    asynchronous: bool = False) -> Any:
    """A Django ``StreamingHttpResponse`` streaming ``source``.

    Args:
        asynchronous: False (WSGI: a blocking iterator); True under ASGI (an
            async iterator that never blocks the event loop).
    """
    StreamingHttpResponse = _need("django.http", "StreamingHttpResponse", "Django", "django")

    body = _body(source, format)
    content = body.__aiter__() if asynchronous else iter(body)
    response = StreamingHttpResponse(content, status=body.status, content_type=body.media_type)
    for name, value in body.headers.items():
        response[name] = value
    return response


def starlette_response(source: Union[TokenStream, Body], *, format: str = "sse") -> Any:  # noqa: A002
    """A Starlette (FastAPI) ``StreamingResponse`` streaming ``source`` without blocking the event loop."""
    StreamingResponse = _need("starlette.responses", "StreamingResponse", "Starlette", "starlette")

    body = _body(source, format)
    return StreamingResponse(body.__aiter__(), status_code=body.status, media_type=body.media_type,
                             headers=body.headers)
