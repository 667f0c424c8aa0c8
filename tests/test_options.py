"""The official SDKs' habits (issue 14, item 3): extra headers/query/body, option names
that never fall into the body, transport options, messages' shape, peeking."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

import pytest
import requests

import llmstream
from llmstream import AuthenticationError, Client, StreamBusyError
from llmstream.testing import DEFAULT_TEXT, FakeLLMServer, Reply

from conftest import READING_BODY, wait_no_worker_threads, wait_thread_in


def client_for(server: FakeLLMServer, provider: str = "openai", **kwargs: Any) -> Client:
    return Client(provider, base_url=server.base_url(provider), api_key="sk-test-0123456789abcdef", **kwargs)


# -- extra headers, query, body ----------------------------------------------------


def test_default_and_extra_headers_query_and_body_reach_the_server(server: FakeLLMServer) -> None:
    client = client_for(server, default_headers={"OpenAI-Organization": "org-1", "X-Team": "a"})
    result = client.complete(
        "Hi", model="m", temperature=0.5,
        extra_headers={"x-team": "b", "OpenAI-Project": "proj-1"},
        extra_query={"api-version": "2024-10-21"},
        extra_body={"temperature": 0.2, "vendor_option": {"fast": True}},
    )
    assert result.text == DEFAULT_TEXT
    request = server.requests[0]
    assert request.header("OpenAI-Organization") == "org-1"
    assert request.header("OpenAI-Project") == "proj-1"
    assert [v for k, v in request.headers.items() if k.lower() == "x-team"] == ["b"]  # replaced, not doubled
    assert request.query == {"api-version": "2024-10-21"}
    assert request.path == "/v1/chat/completions"
    assert request.json["temperature"] == 0.2
    assert request.json["vendor_option"] == {"fast": True}
    assert request.json["stream"] is True


def test_anthropic_beta_header_and_a_removed_default(server: FakeLLMServer) -> None:
    client = client_for(server, "anthropic", default_headers={"anthropic-beta": "output-128k-2025-02-19"})
    client.complete("Hi", model="claude", extra_headers={"anthropic-version": None})
    request = server.requests[0]
    assert request.header("anthropic-beta") == "output-128k-2025-02-19"
    assert request.header("anthropic-version") is None


def test_extra_options_are_kept_on_a_resumed_attempt(server: FakeLLMServer) -> None:
    answer = "Paris is the capital of France."
    server.script(Reply(text=answer, close_after_tokens=2, event_ids=False), Reply(text=answer))
    client = client_for(server, "anthropic", retry=llmstream.Retry(initial_delay=0))
    result = client.complete("Capital?", model="claude", extra_headers={"anthropic-beta": "b1"},
                             extra_query={"q": "1"}, extra_body={"top_k": 3})
    assert result.text == answer and result.attempts == 2
    second = server.requests[1]
    assert second.header("anthropic-beta") == "b1"
    assert second.query == {"q": "1"}
    assert second.json["top_k"] == 3
    assert second.json["messages"][-1] == {"role": "assistant", "content": "Paris is"}


def test_secret_looking_headers_and_query_values_are_redacted(server: FakeLLMServer) -> None:
    token = "proxytoken-0123456789abcdef"
    query_key = "querykey-0123456789abcdef"
    server.script(Reply(status=401, error=f"bad proxy token {token} and key {query_key}"))
    client = client_for(server, default_headers={"X-Proxy-Token": token}, retry=1)
    with pytest.raises(AuthenticationError) as caught:
        client.complete("Hi", model="m", extra_query={"key": query_key})
    text = str(caught.value) + caught.value.body + repr(caught.value)
    assert token[:8] not in text and query_key[:8] not in text
    assert str(caught.value) == "HTTP 401 Unauthorized: bad proxy token <redacted> and key <redacted>"
    assert server.requests[0].header("X-Proxy-Token") == token  # sent, only never shown


@pytest.mark.parametrize("option, value, where", [
    ("extra_headers", ["x"], "extra_headers must be a mapping"),
    ("extra_headers", {"x": 1}, "header 'x' must be a str"),
    ("extra_query", ["x"], "extra_query must be a mapping"),
    ("extra_body", "x", "extra_body must be a mapping"),
])
def test_bad_extra_options_are_refused_before_sending(server: FakeLLMServer, option: str, value: Any, where: str) -> None:
    with pytest.raises(TypeError, match=where):
        client_for(server).stream("Hi", model="m", **{option: value})
    assert server.requests == []


# -- llmstream's options never become body keys -------------------------------------


@pytest.mark.parametrize("name, belongs", [
    ("api_key", "llmstream.Client(api_key=...)"),
    ("base_url", "llmstream.Client(base_url=...)"),
    ("provider", 'llmstream.Client("anthropic", ...)'),
    ("headers", "extra_headers={...} for this call, or llmstream.Client(default_headers={...}) for every call"),
])
def test_client_options_given_to_a_call_say_where_they_belong(server: FakeLLMServer, name: str, belongs: str) -> None:
    with pytest.raises(TypeError) as caught:
        client_for(server).stream("Hi", model="m", **{name: "x"})
    message = str(caught.value)
    assert message.startswith(f"Client.stream() got {name}=, which is not a per-call option "
                              "(it would be sent to the server inside the request body): it belongs in ")
    assert belongs in message
    assert f"use extra_body={{{name!r}: ...}}" in message
    assert server.requests == []


def test_the_module_function_refuses_a_misplaced_option_too(server: FakeLLMServer) -> None:
    with pytest.raises(TypeError, match=r"^llmstream.stream\(\) got headers=, "):
        llmstream.stream("Hi", model="m", base_url=server.base_url("openai"), api_key="k", headers={})


@pytest.mark.parametrize("name, suggestion", [
    ("timout", "did you mean timeout=?"),
    ("max_retries", "did you mean retry=N (attempts in all, the first included: max_retries=2 is retry=3)?"),
    ("extra_header", "did you mean extra_headers=?"),
    ("mesages", "did you mean messages=?"),
    ("sytem", "did you mean system=?"),
    ("max_output_char", "did you mean max_output_chars=?"),
    ("api_keys", "did you mean api_key=?"),
])
def test_a_near_miss_of_an_option_says_did_you_mean(server: FakeLLMServer, name: str, suggestion: str) -> None:
    with pytest.raises(TypeError) as caught:
        client_for(server).stream("Hi", model="m", **{name: 5})
    assert suggestion in str(caught.value)
    assert server.requests == []


PROVIDER_PARAMS = {
    "temperature": 0.1, "top_p": 0.9, "top_k": 5, "max_tokens": 7, "max_completion_tokens": 7,
    "max_output_tokens": 7, "stop": ["x"], "seed": 1, "n": 1, "user": "u", "metadata": {"a": "b"},
    "tools": [], "tool_choice": "auto", "parallel_tool_calls": False, "response_format": {"type": "text"},
    "stream_options": None, "logprobs": False, "top_logprobs": 0, "presence_penalty": 0, "frequency_penalty": 0,
    "logit_bias": {}, "reasoning_effort": "low", "reasoning": {"effort": "low"}, "store": False,
    "service_tier": "auto", "prediction": None, "modalities": ["text"], "thinking": {"type": "disabled"},
    "stop_sequences": ["x"], "options": {"num_ctx": 2048}, "format": "json", "keep_alive": "5m", "think": False,
    "instructions": "be brief", "previous_response_id": None, "background": False, "truncation": "auto",
    "include": [], "text": {"format": {"type": "text"}}, "session_id": "s", "safety_identifier": "x",
    "prompt_cache_key": "k", "verbosity": "low", "web_search_options": {}, "audio": None,
}


def test_provider_parameters_still_pass_through_unchanged(server: FakeLLMServer) -> None:
    client_for(server).complete("Hi", model="m", **PROVIDER_PARAMS)
    body = server.requests[0].json
    for name, value in PROVIDER_PARAMS.items():
        if value is not None:
            assert body[name] == value, name


# -- messages' shape -------------------------------------------------------------------


EXPECTED = """messages must be a list of dicts, like messages=[{"role": "user", "content": "Hi"}]"""


@pytest.mark.parametrize("messages, message", [
    ("Hi there", EXPECTED + ", not a str; for one user message pass it as the prompt: stream('Hi there', ...)"),
    ({"role": "user", "content": "Hi"}, EXPECTED + ", not a dict; wrap one message in a list: messages=[{...}]"),
    ([("user", "Hi")], EXPECTED + ": messages[0] is a tuple, not a dict; "
                                  "write ('user', ...) as {'role': 'user', 'content': ...}"),
    (["Hi"], EXPECTED + ": messages[0] is a str, not a dict; write a bare string as {'role': 'user', 'content': ...}"),
    ([{"role": "user", "content": "Hi"}, 5], EXPECTED + ": messages[1] is a int, not a dict"),
    (5, EXPECTED + ", not int"),
])
def test_wrongly_shaped_messages_say_the_shape_expected(server: FakeLLMServer, messages: Any, message: str) -> None:
    with pytest.raises(TypeError) as caught:
        client_for(server).complete(messages=messages, model="m")
    assert str(caught.value) == message
    assert server.requests == []


def test_a_list_given_as_the_prompt_points_to_messages(server: FakeLLMServer) -> None:
    with pytest.raises(TypeError) as caught:
        client_for(server).complete([{"role": "user", "content": "Hi"}], model="m")
    assert str(caught.value) == ("the prompt must be a str, not a list; pass a conversation by keyword: "
                                 'messages=[{"role": "user", "content": "Hi"}]')


# -- peeking ---------------------------------------------------------------------------


def test_peeking_then_looping_continues_the_same_stream(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=["a", "b", "c", "d"]))
    with client_for(server).stream("Hi", model="m") as stream:
        first = next(iter(stream))
        rest = [text for text in stream]
    assert (first, rest) == ("a", ["b", "c", "d"])
    assert stream.text == "abcd" and stream.status == "finished"


def test_a_loop_can_stop_and_another_go_on_then_events(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=["a", "b", "c", "d"]))
    with client_for(server).stream("Hi", model="m") as stream:
        for text in stream:
            break
        second = next(iter(stream))
        kinds = [type(event).__name__ for event in stream.events()]
    assert (text, second) == ("a", "b")
    assert kinds[:2] == ["TextDelta", "TextDelta"] and "Finish" in kinds
    assert stream.result.text == "abcd"


def test_peek_then_result_gets_the_whole_answer(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=["a", "b", "c"]))
    stream = client_for(server).stream("Hi", model="m")
    assert next(iter(stream)) == "a"
    assert stream.result.text == "abc"


def test_a_dropped_stream_is_closed_when_collected_even_after_a_peek(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=["a", "b"], stall_after_tokens=(1, 30.0)))
    stream = client_for(server).stream("Hi", model="m")
    assert next(iter(stream)) == "a"
    del stream
    assert wait_no_worker_threads(1.0) == []


def test_reading_result_inside_the_loop_says_so(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=["a", "b"]))
    with client_for(server).stream("Hi", model="m") as stream:
        for _ in stream:
            with pytest.raises(StreamBusyError) as caught:
                stream.result
            break
    assert str(caught.value) == (
        ".result was read inside the loop over this stream: it waits for the end of the answer, which that "
        "loop is still reading. Read .result after the loop (.text holds the text so far)")


def test_reading_result_while_another_thread_loops_says_so(server: FakeLLMServer) -> None:
    server.script(Reply(tokens=["a", "b"], stall_after_tokens=(1, 30.0)))
    stream = client_for(server).stream("Hi", model="m")
    got = threading.Event()
    errors: List[BaseException] = []

    def consume() -> None:
        try:
            for _ in stream:
                got.set()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    consumer = threading.Thread(target=consume)
    consumer.start()
    try:
        assert got.wait(5)
        with pytest.raises(StreamBusyError, match="another thread is iterating this stream"):
            stream.result
    finally:
        stream.close()
        consumer.join(5)
    assert errors == []


# -- transport options -----------------------------------------------------------------


class Relay:
    """A TCP relay to the fake server, optionally a TLS endpoint or an HTTP forward proxy.

    As a proxy it records each request line and rewrites an absolute URL to its path,
    as the fake server routes on paths.
    """

    def __init__(self, target: Tuple[str, int], *, tls: Optional[ssl.SSLContext] = None, proxy: bool = False) -> None:
        self.target = target
        self.tls = tls
        self.proxy = proxy
        self.lines: List[str] = []
        self.handshake_errors: List[str] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._threads: List[threading.Thread] = []
        self._stopped = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target)
        try:
            if self.tls is not None:
                try:
                    client = self.tls.wrap_socket(client, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    self.handshake_errors.append(type(exc).__name__)
                    return
            if self.proxy:
                head = b""
                while b"\r\n" not in head:
                    data = client.recv(65536)
                    if not data:
                        return
                    head += data
                line, _, rest = head.partition(b"\r\n")
                self.lines.append(line.decode())
                method, url, version = line.split(b" ")
                path = b"/" + url.split(b"/", 3)[3] if url.startswith(b"http") else url
                upstream.sendall(b" ".join((method, path, version)) + b"\r\n" + rest)
            pump = threading.Thread(target=self._pump, args=(upstream, client), daemon=True)
            pump.start()
            self._pump(client, upstream)
            pump.join(10)
        finally:
            upstream.close()
            client.close()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            try:
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._stopped = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone does not
        except OSError:
            pass
        self._listener.close()
        self._thread.join(5)


def fake_address(server: FakeLLMServer) -> Tuple[str, int]:
    port = int(server.base_url("openai").split(":")[2].split("/")[0])
    return ("127.0.0.1", port)


@pytest.fixture
def proxy(server: FakeLLMServer) -> Iterator[Relay]:
    relay = Relay(fake_address(server), proxy=True)
    yield relay
    relay.stop()


@pytest.fixture
def clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_an_explicit_proxy_is_used(server: FakeLLMServer, proxy: Relay, clean_proxy_env: pytest.MonkeyPatch) -> None:
    client = Client(base_url="http://api.example.invalid/v1", api_key="k", proxies={"http": proxy.url})
    assert client.complete("Hi", model="m").text == DEFAULT_TEXT
    assert proxy.lines == ["POST http://api.example.invalid/v1/chat/completions HTTP/1.1"]


def test_environment_proxies_are_honoured_and_an_explicit_one_wins(
        server: FakeLLMServer, proxy: Relay, clean_proxy_env: pytest.MonkeyPatch) -> None:
    other = Relay(fake_address(server), proxy=True)
    try:
        clean_proxy_env.setenv("HTTP_PROXY", proxy.url)
        assert Client(base_url="http://env.example.invalid/v1", api_key="k").complete("Hi", model="m").text == DEFAULT_TEXT
        assert proxy.lines == ["POST http://env.example.invalid/v1/chat/completions HTTP/1.1"]
        client = Client(base_url="http://mine.example.invalid/v1", api_key="k", proxies=other.url)
        assert client.complete("Hi", model="m").text == DEFAULT_TEXT
        assert other.lines == ["POST http://mine.example.invalid/v1/chat/completions HTTP/1.1"]
        assert len(proxy.lines) == 1
    finally:
        other.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed (apt-get install -y openssl)")
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=30)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=llmstream test CA")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
        (d / f"{name}.ext").write_text(ext + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return d


@pytest.fixture
def tls_relay(server: FakeLLMServer, pki: Path) -> Iterator[Relay]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    context.load_verify_locations(pki / "ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED  # a client certificate is needed
    relay = Relay(fake_address(server), tls=context)
    yield relay
    relay.stop()


def test_verify_a_ca_bundle_and_a_client_certificate(tls_relay: Relay, pki: Path,
                                                     clean_proxy_env: pytest.MonkeyPatch) -> None:
    base_url = f"https://127.0.0.1:{tls_relay.port}/v1"
    client = Client(base_url=base_url, api_key="k", verify=str(pki / "ca.pem"),
                    cert=(str(pki / "client.pem"), str(pki / "client.key")), retry=1)
    assert client.complete("Hi", model="m").text == DEFAULT_TEXT
    # Without the CA bundle the server's certificate is refused; without the client's, the server refuses.
    with pytest.raises(llmstream.APIConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        Client(base_url=base_url, api_key="k", cert=(str(pki / "client.pem"), str(pki / "client.key")),
               retry=1).complete("Hi", model="m")
    with pytest.raises(llmstream.StreamError):
        Client(base_url=base_url, api_key="k", verify=str(pki / "ca.pem"), retry=1).complete("Hi", model="m")
    clean_proxy_env.setenv("REQUESTS_CA_BUNDLE", str(pki / "ca.pem"))  # the environment's bundle, as requests
    assert Client(base_url=base_url, api_key="k", cert=(str(pki / "client.pem"), str(pki / "client.key")),
                  retry=1).complete("Hi", model="m").text == DEFAULT_TEXT


def test_verify_false_skips_the_check(tls_relay: Relay, pki: Path, clean_proxy_env: pytest.MonkeyPatch) -> None:
    client = Client(base_url=f"https://127.0.0.1:{tls_relay.port}/v1", api_key="k", verify=False,
                    cert=(str(pki / "client.pem"), str(pki / "client.key")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # urllib3's InsecureRequestWarning: the point of verify=False
        assert client.complete("Hi", model="m").text == DEFAULT_TEXT


def test_a_callers_session_is_used_and_close_still_ends_a_stream_at_once(server: FakeLLMServer) -> None:
    session = requests.Session()
    session.headers["X-From-Session"] = "yes"
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=4)
    session.mount("http://", adapter)
    # Used before llmstream gets it: its pools must still end up tracked.
    assert session.get(server.base_url("openai") + "/models", timeout=5).status_code in (200, 404)
    server.script(Reply(tokens=["a", "b"], stall_after_tokens=(1, 30.0)), Reply(text="done"))
    client = Client(base_url=server.base_url("openai"), api_key="k", session=session)
    stream = client.stream("Hi", model="m")
    got: List[str] = []
    first = threading.Event()

    def consume() -> None:
        for text in stream:  # blocks in a read after "a": the server stalls
            got.append(text)
            first.set()

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert first.wait(5)
    assert wait_thread_in(READING_BODY, [consumer], also_workers=True)  # into the blocked read
    started = time.monotonic()
    stream.close()  # from another thread: only a tracked socket can be shut under the read
    consumer.join(5)
    assert not consumer.is_alive() and time.monotonic() - started < 0.5
    assert got == ["a"]
    assert wait_no_worker_threads(1.0) == []
    assert client.complete("Hi", model="m").text == "done"
    assert [r.header("X-From-Session") for r in server.requests[-2:]] == ["yes", "yes"]
    assert session.adapters["http://"] is adapter  # theirs, kept
    client.close()
    assert session.get(server.base_url("openai") + "/models", timeout=5).status_code in (200, 404)  # still open
    session.close()


@pytest.mark.parametrize("kwargs, message", [
    ({"proxies": 5}, "proxies must be a dict like {'https': 'http://proxy:3128'} or a URL, not int"),
    ({"verify": 1.5}, "verify must be True, False or a CA bundle's path, not float"),
    ({"cert": 5}, "cert must be a path or a (cert, key) tuple of paths, not int"),
    ({"session": object()}, "session must be a requests.Session, not object"),
    ({"default_headers": [("a", "b")]}, "default_headers must be a mapping of header names to values, not list"),
])
def test_bad_transport_options_are_refused(kwargs: Any, message: str) -> None:
    with pytest.raises(TypeError) as caught:
        Client(base_url="http://127.0.0.1:9/v1", api_key="k", **kwargs)
    assert str(caught.value) == message

