"""examples/chat: each app runs with its one command against the built-in fake server, and serves the chat."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import requests

from helpers import read_until
from relay_servers import parse_ndjson, parse_sse, text_of

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "chat"
sys.path.insert(0, str(EXAMPLES))
from common import FAKE_TEXT  # noqa: E402


def start_example(script: str, *extra: str) -> Iterator[str]:
    env = {k: v for k, v in __import__("os").environ.items() if k != "OPENAI_API_KEY"}
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / script), "--port", "0", "--fake-interval", "0.002", *extra],
                            stdout=subprocess.PIPE, env=env)
    try:
        line = read_until(proc, b"\n").decode()  # bounded, unlike readline()
        assert line.startswith("chat page on http://"), line
        yield line.split()[3].rstrip("/")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture(params=["flask_app.py", "fastapi_app.py"])
def example(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from start_example(request.param)


def test_example_serves_page_runs_and_relays(example: str) -> None:
    page = requests.get(example + "/", timeout=10)
    assert page.status_code == 200 and "<title>llmstream chat</title>" in page.text
    run_id = requests.post(example + "/runs", json={"prompt": "hi"}, timeout=10).json()["id"]
    events = parse_sse(requests.get(f"{example}/runs/{run_id}/events", timeout=20).content)
    assert text_of(events) == FAKE_TEXT and events[-1][1] == "done"
    # A reconnect from the middle gets the rest, once.
    middle = events[len(events) // 2][0]
    rest = parse_sse(requests.get(f"{example}/runs/{run_id}/events", headers={"Last-Event-ID": middle}, timeout=20).content)
    assert text_of(events[: len(events) // 2 + 1] + rest) == FAKE_TEXT
    assert text_of(parse_sse(requests.get(example + "/chat?q=hi", timeout=20).content)) == FAKE_TEXT
    lines = parse_ndjson(requests.get(example + "/chat.ndjson?q=hi", timeout=20).content)
    assert "".join(x["data"]["text"] for x in lines if x["event"] == "text") == FAKE_TEXT
    assert requests.post(f"{example}/runs/nope/stop", timeout=10).json() == {"stopped": False}
