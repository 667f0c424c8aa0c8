"""llmstream.relay: SSE / NDJSON bodies, coalescing, heartbeats, error frames, real web servers, resumable runs."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any, List

import pytest
import requests

import llmstream
from llmstream import relay
from llmstream.testing import FakeLLMServer, Reply
from hostile_server import Send, Wait, chunked, head, openai_transcript
from relay_servers import Uvicorn, Werkzeug, parse_ndjson, parse_sse, text_of, wait_until

TOKENS = ["The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", "."]
TEXT = "".join(TOKENS)


def client_for(server: FakeLLMServer, **kwargs: Any) -> llmstream.Client:
    return llmstream.Client(base_url=server.base_url("openai"), api_key="test-key", **kwargs)


def body_bytes(body: relay.Body) -> bytes:
    return b"".join(body)


def test_sse_frames_carry_exact_text_ids_and_end_with_done(server: FakeLLMServer) -> None:
    server.script(Reply(text=TEXT, tokens=TOKENS))
    data = body_bytes(relay.sse(client_for(server).stream("hi", model="m")))
    assert data.startswith(b"retry: 1000\n\n")
    events = parse_sse(data)
    names = [name for _, name, _ in events]
    assert text_of(events) == TEXT
    assert names[-3:] == ["finish", "usage", "done"]
    assert events[-1][2] == {"status": "finished"}
    assert events[-3][2] == {"reason": "stop"}
    ids = [int(i) for i, _, _ in events]
    assert ids == sorted(set(ids)) and ids[0] >= 1  # every frame numbered by the last event it carries


def test_ndjson_carries_the_same_events(server: FakeLLMServer) -> None:
    server.script(Reply(text=TEXT, tokens=TOKENS))
    lines = parse_ndjson(body_bytes(relay.ndjson(client_for(server).stream("hi", model="m"))))
    assert lines[0] == {"event": "heartbeat"}
    events = [(str(x["id"]), x["event"], x["data"]) for x in lines[1:]]
    assert text_of(events) == TEXT
    assert [e[1] for e in events][-3:] == ["finish", "usage", "done"]


def test_fast_stream_is_coalesced_to_max_rate(server: FakeLLMServer) -> None:
    # 1,000 tokens at about 1,000 a second: about one second of stream.
    server.script(Reply(token_count=1000, interval=0.001))
    started = time.monotonic()
    chunks = list(relay.sse(client_for(server).stream("hi", model="m"), max_rate=20))
    elapsed = time.monotonic() - started
    text_writes = [c for c in chunks if b"event: text" in c]
    events = parse_sse(b"".join(chunks))
    assert text_of(events) == " ".join(f"tok{i}" for i in range(1000))
    assert len(text_writes) <= 20 * elapsed + 2, (len(text_writes), elapsed)
    assert len(text_writes) >= 5  # it did stream, not one frame at the end


def test_heartbeat_while_the_model_is_silent(server: FakeLLMServer) -> None:
    server.script(Reply(text=TEXT, tokens=TOKENS, stall_before_first_byte=0.5))
    data = body_bytes(relay.sse(client_for(server).stream("hi", model="m"), heartbeat=0.1))
    assert data.count(b": keep-alive\n\n") >= 3
    assert text_of(parse_sse(data)) == TEXT


def test_failure_after_200_is_an_error_frame_with_what_was_delivered(server: FakeLLMServer) -> None:
    server.script(Reply(text=TEXT, tokens=TOKENS, close_after_tokens=3))
    events = parse_sse(body_bytes(relay.sse(client_for(server, retry=1).stream("hi", model="m"))))
    assert [name for _, name, _ in events][-2:] == ["error", "done"]
    error = events[-2][2]
    assert error["class"] == "IncompleteStreamError"
    assert error["delivered"] == "The quick brown"
    assert error["attempts"] == 1
    assert text_of(events) == "The quick brown"
    assert events[-1][2] == {"status": "failed"}


def test_error_frame_redacts_the_key(server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "sk-live-0123456789abcdefXYZ"
    server.script(Reply(status=401, error=f"Incorrect API key provided: {key}"))
    client = llmstream.Client(base_url=server.base_url("openai"), api_key=key)
    data = body_bytes(relay.sse(client.stream("hi", model="m")))
    error = parse_sse(data)[-2][2]
    assert error["class"] == "AuthenticationError" and error["status_code"] == 401
    assert "<redacted>" in error["message"]
    assert b"0123456789abcdef" not in data


def test_a_bug_sends_its_class_not_its_message() -> None:
    from llmstream._redact import Redactor
    from llmstream._runs import describe_error

    data = describe_error(ValueError("password=hunter2"), "abc", Redactor())
    assert data == {"class": "ValueError", "delivered": "abc", "message": "internal error (see the server's log)"}


def test_retrying_frame_then_the_answer_exactly_once(server: FakeLLMServer) -> None:
    server.script(Reply(text=TEXT, tokens=TOKENS, close_after_tokens=2), Reply(text=TEXT, tokens=TOKENS))
    events = parse_sse(body_bytes(relay.sse(client_for(server, retry=2).stream("hi", model="m"))))
    names = [name for _, name, _ in events]
    retrying = events[names.index("retrying")][2]
    assert retrying["attempt"] == 2 and retrying["error"]["class"] == "IncompleteStreamError"
    assert text_of(events) == TEXT
    assert events[-1][2] == {"status": "finished"}


def test_reset_frame_says_how_much_to_discard() -> None:
    from llmstream._redact import Redactor
    from llmstream._runs import convert

    assert convert(llmstream.Reset(attempt=2, discarded_text="abc"), Redactor()) == (
        "reset", {"attempt": 2, "discarded_chars": 3})


def test_async_body_relays_the_same(server: FakeLLMServer) -> None:
    server.script(Reply(text=TEXT, tokens=TOKENS))
    body = relay.sse(client_for(server).stream("hi", model="m"))

    async def read() -> bytes:
        return b"".join([chunk async for chunk in body])

    events = parse_sse(asyncio.run(read()))
    assert text_of(events) == TEXT and events[-1][1] == "done"


def test_last_event_id() -> None:
    assert relay.last_event_id({"Last-Event-ID": "12"}) == 12
    assert relay.last_event_id({}, {"after": "7"}) == 7
    assert relay.last_event_id({"Last-Event-ID": "x"}, {}) is None
    assert relay.last_event_id({"Last-Event-ID": "-3"}) is None
    assert relay.last_event_id({}) is None


# -- real servers ------------------------------------------------------------------


def flask_app(client: llmstream.Client, runs: relay.MemoryRunStore) -> Any:
    from flask import Flask, request

    app = Flask(__name__)

    @app.get("/sse")
    def sse() -> Any:
        return relay.flask_response(client.stream(request.args.get("q", "hi"), model="m"))

    @app.get("/ndjson")
    def nd() -> Any:
        return relay.flask_response(client.stream("hi", model="m"), format="ndjson")

    @app.post("/runs")
    def start() -> Any:
        return {"id": runs.start(client.stream("hi", model="m"))}

    @app.get("/runs/<run_id>")
    def resume(run_id: str) -> Any:
        return relay.flask_response(relay.run_body(runs, run_id, after=relay.last_event_id(request.headers, request.args)))

    return app


def starlette_app(client: llmstream.Client) -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Route

    async def sse(request: Any) -> Any:
        return relay.starlette_response(client.stream("hi", model="m"))

    async def nd(request: Any) -> Any:
        return relay.starlette_response(client.stream("hi", model="m"), format="ndjson")

    return Starlette(routes=[Route("/sse", sse), Route("/ndjson", nd)])


@pytest.fixture
def runs() -> Any:
    store = relay.MemoryRunStore()
    yield store
    store.close()


@pytest.mark.parametrize("kind", ["flask", "starlette"])
def test_real_server_headers_and_body(kind: str, server: FakeLLMServer, runs: relay.MemoryRunStore) -> None:
    server.default_reply = Reply(text=TEXT, tokens=TOKENS)
    client = client_for(server)
    app_server = Werkzeug(flask_app(client, runs)) if kind == "flask" else Uvicorn(starlette_app(client))
    with app_server as web:
        response = requests.get(web.url + "/sse", timeout=10)
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Accel-Buffering"] == "no"
        assert text_of(parse_sse(response.content)) == TEXT
        response = requests.get(web.url + "/ndjson", timeout=10)
        assert response.headers["Content-Type"].startswith("application/x-ndjson")
        assert parse_ndjson(response.content)[-1]["event"] == "done"


@pytest.mark.parametrize("kind", ["flask", "starlette", "django"])
def test_browser_going_away_closes_the_upstream_within_a_second(kind: str, server: FakeLLMServer,
                                                                  runs: relay.MemoryRunStore) -> None:
    server.default_reply = Reply(token_count=100_000, interval=0.01)
    client = client_for(server)
    app_server = {"flask": lambda: Werkzeug(flask_app(client, runs)), "starlette": lambda: Uvicorn(starlette_app(client)),
                  "django": lambda: django_server(client)}[kind]()
    with app_server as web:
        response = requests.get(web.url + "/sse", stream=True, timeout=10)
        got = b""
        for chunk in response.raw.stream(1024, decode_content=False):
            got += chunk
            if got.count(b"event: text") >= 3:
                break
        assert server.active_connections == 1
        response.close()  # the browser goes away
        closed_at = time.monotonic()
        assert wait_until(lambda: server.active_connections == 0, 3.0)
        assert time.monotonic() - closed_at < 1.0


def configure_django() -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(DEBUG=False, ALLOWED_HOSTS=["127.0.0.1"], ROOT_URLCONF=__name__, SECRET_KEY="test")
        django.setup()


def django_server(client: llmstream.Client) -> Werkzeug:
    """A Django project (this module is its URLconf) under werkzeug's WSGI server."""
    configure_django()
    from django.core.handlers.wsgi import WSGIHandler
    from django.urls import clear_url_caches, path

    urlpatterns[:] = [path("sse", lambda request: relay.django_response(client.stream("hi", model="m")))]
    clear_url_caches()
    return Werkzeug(WSGIHandler())


def test_django_asynchronous_response_is_an_async_iterator(server: FakeLLMServer) -> None:
    configure_django()
    server.script(Reply(text=TEXT, tokens=TOKENS))
    response = relay.django_response(client_for(server).stream("hi", model="m"), asynchronous=True)
    assert response.is_async and response["Cache-Control"] == "no-cache"

    async def read() -> bytes:
        return b"".join([bytes(chunk) async for chunk in response.streaming_content])

    assert text_of(parse_sse(asyncio.run(read()))) == TEXT


def test_django_streaming_response(server: FakeLLMServer) -> None:
    server.default_reply = Reply(text=TEXT, tokens=TOKENS)
    with django_server(client_for(server)) as web:
        response = requests.get(web.url + "/sse", timeout=10)
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["X-Accel-Buffering"] == "no"
        assert text_of(parse_sse(response.content)) == TEXT


urlpatterns: List[Any] = []


# -- resumable runs ----------------------------------------------------------------


def test_run_resumes_after_last_event_id_exactly_once(server: FakeLLMServer, runs: relay.MemoryRunStore) -> None:
    server.script(Reply(text=TEXT, tokens=TOKENS, interval=0.02))
    run_id = runs.start(client_for(server).stream("hi", model="m"))
    first: List[Any] = []
    body = iter(relay.run_body(runs, run_id, max_rate=1000))
    for chunk in body:
        first += parse_sse(chunk) if chunk.startswith(b"id:") else []
        if len(first) >= 3:
            break
    body.close()  # type: ignore[attr-defined]  # the connection drops
    last = first[-1][0]
    rest = parse_sse(b"".join(relay.run_body(runs, run_id, after=int(last))))
    assert text_of(first + rest) == TEXT
    ids = [int(i) for i, _, _ in first + rest]
    assert ids == sorted(set(ids))  # nothing twice
    # A reconnect after "done": 204, so the browser stops.
    again = relay.run_body(runs, run_id, after=int(rest[-1][0]))
    assert again.status == 204 and body_bytes(again) == b""
    assert server.wait_for_requests(1) and len(server.requests) == 1  # one generation


def test_unknown_run_is_not_resumable(runs: relay.MemoryRunStore) -> None:
    events = parse_sse(body_bytes(relay.run_body(runs, "nope", after=3)))
    assert [(n, d.get("class"), d.get("status")) for _, n, d in events] == [
        ("error", "NotResumableError", None), ("done", None, "not_resumable")]


def test_run_past_its_kept_events_is_not_resumable(server: FakeLLMServer) -> None:
    store = relay.MemoryRunStore(max_events=2)
    server.script(Reply(text=TEXT, tokens=TOKENS))
    run_id = store.start(client_for(server).stream("hi", model="m"))
    assert store.get(run_id).join(10)
    assert store.get(run_id).last_id >= 4  # text, finish, usage, done
    events = parse_sse(body_bytes(relay.run_body(store, run_id, after=1)))
    assert events[0][2]["class"] == "NotResumableError" and events[0][0] == "1"
    tail = parse_sse(body_bytes(relay.run_body(store, run_id, after=store.get(run_id).last_id - 2)))
    assert [n for _, n, _ in tail] == ["usage", "done"]


def test_expired_run_is_forgotten(serve) -> None:
    # The upstream holds the end of its answer until the run is in hand: a run that finished
    # and outlived its 50 ms before the first get() (a loaded machine) would be gone already.
    gate = threading.Event()
    events = openai_transcript(TOKENS)
    upstream = serve([[Send(head(framing="chunked") + chunked(events[:1], last=False)), Wait(event=gate),
                       Send(chunked(events[1:]))]])
    store = relay.MemoryRunStore(ttl=0.05)
    client = llmstream.Client(base_url=f"{upstream.url}/v1", api_key="test-key")
    run_id = store.start(client.stream("hi", model="m"))
    run = store.get(run_id)
    gate.set()
    assert run.join(10)
    time.sleep(0.1)  # the time-to-live itself is what is tested
    with pytest.raises(relay.NotResumableError):
        store.get(run_id)


def test_stop_cancels_the_upstream(server: FakeLLMServer, runs: relay.MemoryRunStore) -> None:
    server.script(Reply(token_count=100_000, interval=0.01))
    run_id = runs.start(client_for(server).stream("hi", model="m"))
    assert wait_until(lambda: server.active_connections == 1, 5)
    assert runs.stop(run_id)
    assert wait_until(lambda: server.active_connections == 0, 1.0)
    run = runs.get(run_id)
    assert run.join(5)
    assert run.events_after(run.last_id - 1)[-1][1:] == ("done", {"status": "closed"})


def test_unread_run_is_stopped_after_orphan_timeout(server: FakeLLMServer) -> None:
    store = relay.MemoryRunStore(orphan_timeout=0.2)
    server.script(Reply(token_count=100_000, interval=0.01))
    run_id = store.start(client_for(server).stream("hi", model="m"))
    body = iter(relay.run_body(store, run_id))
    next(body), next(body)
    body.close()  # type: ignore[attr-defined]
    assert wait_until(lambda: server.active_connections == 0, 3.0)
    assert store.get(run_id).join(5)


def test_an_event_handed_to_a_reader_never_changes(server: FakeLLMServer, runs: relay.MemoryRunStore) -> None:
    # Pieces are merged into the newest kept event only until a reader is given it.
    server.script(Reply(token_count=400, interval=0.002))
    run_id = runs.start(client_for(server).stream("hi", model="m"))
    run = runs.get(run_id)
    seen = {}
    cursor = 0
    while not run.finished or run.events_after(cursor):
        for event_id, name, data in run.wait_after(cursor, 0.05):
            seen[event_id] = (name, dict(data))
            cursor = event_id
    final = {i: (n, dict(d)) for i, n, d in run.events_after(0)}
    assert seen == final
    assert "".join(d["text"] for n, d in final.values() if n == "text") == " ".join(f"tok{i}" for i in range(400))


def test_run_never_read_is_stopped(server: FakeLLMServer) -> None:
    # The browser left before the body began: nobody ever reads the run.
    store = relay.MemoryRunStore(orphan_timeout=0.2)
    server.script(Reply(token_count=100_000, interval=0.01))
    run_id = store.start(client_for(server).stream("hi", model="m"))
    assert wait_until(lambda: server.active_connections == 1, 5)
    assert wait_until(lambda: server.active_connections == 0, 3.0)
    assert store.get(run_id).join(5)


def test_json_payload_is_one_data_line(server: FakeLLMServer) -> None:
    server.script(Reply(text="a\nb\r\nc", tokens=["a\n", "b\r\n", "c"], events_per_write=3))
    data = body_bytes(relay.sse(client_for(server).stream("hi", model="m")))
    assert text_of(parse_sse(data)) == "a\nb\r\nc"
    for block in data.split(b"\n\n"):
        assert block.count(b"data:") <= 1 and b"\r" not in block
    texts = [json.loads(line[6:]).get("text") for line in data.split(b"\n") if line.startswith(b"data: ")]
    assert "".join(t for t in texts if isinstance(t, str)) == "a\nb\r\nc"  # however the frames were coalesced


def test_pieces_received_together_are_appended_to_the_run_at_once(
        server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # All the tokens in one write: one read, one batch, so the pump joins them
    # and takes the run's lock once (TokenStream._more_in_hand), not per token.
    from llmstream._runs import Run

    appended: List[str] = []
    real = Run._append_text

    def spy(self: Run, name: str, text: str) -> None:
        appended.append(text)
        real(self, name, text)

    monkeypatch.setattr(Run, "_append_text", spy)
    server.script(Reply(text=TEXT, tokens=TOKENS, events_per_write=len(TOKENS) + 3))
    events = parse_sse(body_bytes(relay.sse(client_for(server).stream("hi", model="m"))))
    assert text_of(events) == TEXT
    # One append per read (the body bytes that came with the headers are a read of their own).
    assert "".join(appended) == TEXT and len(appended) <= 2, appended


def test_text_before_a_failure_mid_batch_reaches_the_browser_before_the_error(server: FakeLLMServer) -> None:
    # The pump joins a batch's pieces before appending them: a failure in the
    # middle of a batch (here a callback's) must not lose the pieces before it.
    server.script(Reply(text=TEXT, tokens=TOKENS, events_per_write=len(TOKENS)))
    seen: List[str] = []

    def on_text(text: str) -> None:
        seen.append(text)
        if len(seen) == 4:
            raise ValueError("boom")

    events = parse_sse(body_bytes(relay.sse(client_for(server).stream("hi", model="m", on_text=on_text))))
    error = [d for _, n, d in events if n == "error"][0]
    assert error["class"] == "CallbackError"
    assert text_of(events) == "".join(TOKENS[:3])
    assert [n for _, n, _ in events][-2:] == ["error", "done"]
