"""A real browser (headless Chromium, driven by selenium) reads the chat examples served by real servers.

uvicorn serves the FastAPI app and werkzeug's WSGI server the Flask app
(``examples/chat``); the LLM is the fake server. The page uses the browser's
own ``EventSource`` (and ``fetch`` + NDJSON). Without Chromium the tests are
skipped on a developer's machine and FAIL in CI (``CI=true``): ``.ci/run``
installs it.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest

import llmstream
from llmstream import relay
from llmstream.testing import FakeLLMServer, Reply
from relay_servers import Uvicorn, Werkzeug, wait_until

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "chat"
sys.path.insert(0, str(EXAMPLES))

TOKENS = ["The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", "."] * 3
TEXT = "".join(TOKENS)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


def _find(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return ""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium, driver_path = _find("chromium", "chromium-browser"), _find("chromedriver")
    if not chromium or not driver_path:
        message = "headless Chromium is needed: apt-get install chromium chromium-driver"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (.ci/run installs it)")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="llmstream-chromium-")
    options = webdriver.ChromeOptions()
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.binary_location = chromium
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def app_server(kind: str, client: llmstream.Client, runs: relay.MemoryRunStore) -> Any:
    if kind == "flask":
        import flask_app

        return Werkzeug(flask_app.create_app(client, runs, "m"))
    import fastapi_app

    return Uvicorn(fastapi_app.create_app(client, runs, "m"))


@pytest.fixture
def runs() -> Iterator[relay.MemoryRunStore]:
    store = relay.MemoryRunStore()
    yield store
    store.close()


def ask(browser: Any, url: str) -> None:
    browser.get(url)
    browser.find_element("css selector", "#ask button").click()


def page_state(browser: Any) -> Any:
    return browser.execute_script(
        "return {answer: document.getElementById('answer').textContent, error: document.getElementById('error').textContent,"
        " done: window.chat.done, opens: window.chat.opens, times: window.chat.times, status:"
        " document.getElementById('status').textContent}")


def close_page(browser: Any) -> None:
    """Close the tab (a new one takes its place for the next test)."""
    old = browser.current_window_handle
    browser.switch_to.new_window("tab")
    new = browser.current_window_handle
    browser.switch_to.window(old)
    browser.close()
    browser.switch_to.window(new)


def wait_done(browser: Any, timeout: float = 20) -> Any:
    assert wait_until(lambda: page_state(browser)["done"], timeout), page_state(browser)
    return page_state(browser)


KINDS = ["flask", "fastapi"]


@pytest.mark.parametrize("mode", ["run", "direct", "ndjson"])
@pytest.mark.parametrize("kind", KINDS)
def test_page_shows_the_exact_answer(browser: Any, kind: str, mode: str, server: FakeLLMServer,
                                     runs: relay.MemoryRunStore) -> None:
    server.default_reply = Reply(text=TEXT, tokens=TOKENS, interval=0.005)
    client = llmstream.Client(base_url=server.base_url("openai"), api_key="k")
    with app_server(kind, client, runs) as web:
        ask(browser, f"{web.url}/?mode={mode}")
        state = wait_done(browser)
        assert state["answer"] == TEXT and state["error"] == ""
        browser.get("about:blank")


class CuttingProxy:
    """A TCP proxy that cuts the first event-stream connection after it has carried ``after`` text frames."""

    def __init__(self, upstream_port: int, after: int = 3) -> None:
        self.upstream_port = upstream_port
        self.after = after
        self.cut = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: List[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> "CuttingProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        _close(self.listener)  # shutdown() wakes the accept() (close() alone does not, on Linux)
        self.thread.join(5)
        for sock in self.sockets:
            _close(sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.sockets += [client, upstream]
            state = {"events": False}
            threading.Thread(target=self._pump, args=(client, upstream, state, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, state, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, state: dict, answer: bool) -> None:
        frames = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not answer and b"GET /runs/" in data and b"/events" in data:
                    state["events"] = True
                dst.sendall(data)
                if answer and state["events"] and not self.cut.is_set():
                    frames += data.count(b"event: text")
                    if frames >= self.after:
                        self.cut.set()  # mid-answer: the browser must reconnect by itself
                        break
        except OSError:
            pass
        _close(src)
        _close(dst)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@pytest.mark.parametrize("kind", KINDS)
def test_cut_connection_reconnects_and_shows_the_answer_once(browser: Any, kind: str, server: FakeLLMServer,
                                                              runs: relay.MemoryRunStore) -> None:
    server.default_reply = Reply(text=TEXT, tokens=TOKENS, interval=0.04)
    client = llmstream.Client(base_url=server.base_url("openai"), api_key="k")
    with app_server(kind, client, runs) as web, CuttingProxy(web.port) as proxy:
        ask(browser, f"http://127.0.0.1:{proxy.port}/?mode=run")
        state = wait_done(browser)
        assert proxy.cut.is_set()
        assert state["opens"] >= 2  # it did reconnect
        assert state["answer"] == TEXT
        assert len(server.requests) == 1  # one generation
        browser.get("about:blank")


def test_at_most_about_20_updates_a_second_from_1000_tokens_a_second(browser: Any, server: FakeLLMServer,
                                                                    runs: relay.MemoryRunStore) -> None:
    server.default_reply = Reply(token_count=1000, interval=0.001)
    client = llmstream.Client(base_url=server.base_url("openai"), api_key="k")
    with app_server("fastapi", client, runs) as web:
        ask(browser, f"{web.url}/?mode=direct")
        state = wait_done(browser)
        assert state["answer"] == " ".join(f"tok{i}" for i in range(1000))
        times = state["times"]
        busiest = max(sum(1 for t in times if start <= t < start + 1000) for start in times)
        assert busiest <= 22, busiest
        assert len(times) >= 5
        browser.get("about:blank")


@pytest.mark.parametrize("kind", KINDS)
def test_closing_the_page_stops_the_upstream(browser: Any, kind: str, server: FakeLLMServer,
                                             runs: relay.MemoryRunStore) -> None:
    server.default_reply = Reply(token_count=100_000, interval=0.01)
    client = llmstream.Client(base_url=server.base_url("openai"), api_key="k")
    with app_server(kind, client, runs) as web:
        ask(browser, f"{web.url}/?mode=direct")
        assert wait_until(lambda: len(page_state(browser)["answer"]) > 20, 10)
        assert server.active_connections == 1
        close_page(browser)  # the tab is closed
        left = time.monotonic()
        assert wait_until(lambda: server.active_connections == 0, 1.0), time.monotonic() - left


def test_navigating_away_stops_the_upstream(browser: Any, server: FakeLLMServer, runs: relay.MemoryRunStore) -> None:
    server.default_reply = Reply(token_count=100_000, interval=0.01)
    client = llmstream.Client(base_url=server.base_url("openai"), api_key="k")
    with app_server("fastapi", client, runs) as web:
        ask(browser, f"{web.url}/?mode=direct")
        assert wait_until(lambda: len(page_state(browser)["answer"]) > 20, 10)
        browser.get("about:blank")  # the page's pagehide handler closes its EventSource
        assert wait_until(lambda: server.active_connections == 0, 1.0)


@pytest.mark.parametrize("kind", KINDS)
def test_upstream_failure_shows_an_error_and_keeps_the_text(browser: Any, kind: str, server: FakeLLMServer,
                                                            runs: relay.MemoryRunStore) -> None:
    server.default_reply = Reply(text=TEXT, tokens=TOKENS, close_after_tokens=3, interval=0.005)
    client = llmstream.Client(base_url=server.base_url("openai"), api_key="k", retry=1)
    with app_server(kind, client, runs) as web:
        ask(browser, f"{web.url}/?mode=run")
        state = wait_done(browser)
        assert state["answer"] == "The quick brown"
        assert state["error"].startswith("IncompleteStreamError: ")
        assert state["status"] == "failed"
        browser.get("about:blank")


