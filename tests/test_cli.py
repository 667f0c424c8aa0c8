"""The ``llmstream`` command line: chat, debug, serve-fake, errors, Ctrl+C, and secrets.

In-process ``main([...])`` with capsys wherever a process of its own is not
needed (fast); real ``python -m llmstream`` subprocesses for what only a
process shows: the offline fallback as a user meets it, Ctrl+C (a real
SIGINT), the fake server's startup line, and what reaches the terminal under
``--verbose``. Every wait is bounded.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

import llmstream
from llmstream._cli import main
from llmstream._cli._debug import redact_headers
from llmstream._cli._timeline import Timeline
from llmstream.testing import DEFAULT_TEXT, FakeLLMServer, Reply

from helpers import read_until

ROOT = Path(__file__).resolve().parent.parent
PROVIDERS = ["openai", "openai-responses", "anthropic", "ollama"]
ENV_SETTINGS = ["OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL",
                "OLLAMA_HOST", "OLLAMA_API_KEY"]
SECRET = "sk-test-SECRET123"
#: An immediate retry: the server asks for no wait, so no backoff jitter slows the test.
RETRY_NOW = Reply(status=503, headers={"retry-after-ms": "0"})
SUBPROCESS_TIMEOUT = 30.0
MS = r"\d+\.\d ms"


@pytest.fixture(autouse=True)
def no_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """No API key or base URL from the machine running the tests."""
    for name in ENV_SETTINGS:
        monkeypatch.delenv(name, raising=False)


def cli_env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_SETTINGS}
    env.update(PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8", **extra)
    return env


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmstream", *args], capture_output=True, text=True,
                          encoding="utf-8", env=cli_env(**env), cwd=ROOT, timeout=SUBPROCESS_TIMEOUT)


def start_cli(*args: str, **env: str) -> subprocess.Popen:
    # A SIGINT ignored by whoever started pytest (a background job) would be inherited
    # and Python would then not raise KeyboardInterrupt: restore the default first.
    return subprocess.Popen([sys.executable, "-m", "llmstream", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=cli_env(**env), cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def interrupt(proc: subprocess.Popen) -> Tuple[int, bytes, bytes]:
    """Send SIGINT; return the exit status and the rest of stdout and stderr."""
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def lines_of(text: str) -> List[str]:
    return text.splitlines()


def report_value(err: str, label: str) -> str:
    """The value of one metrics row of the debug report (``  chunks   12`` -> ``12``)."""
    [value] = [line[23:] for line in err.splitlines() if line.startswith(f"  {label:<20} ")]
    return value


# -- chat ----------------------------------------------------------------------------------------


def test_offline_chat_streams_from_the_builtin_server() -> None:
    result = run_cli("chat", "hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout == DEFAULT_TEXT + "\n"
    [line] = lines_of(result.stderr)
    assert re.fullmatch(r"llmstream: no API key set \(OPENAI_API_KEY\); streaming from the built-in "
                        r"fake server at http://127\.0\.0\.1:\d+", line)


@pytest.mark.parametrize("provider", [pytest.param(p, id=p) for p in PROVIDERS])
def test_chat_streams_from_a_base_url(provider: str, server: FakeLLMServer,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    server.script(Reply(text="Bonjour, monde — ça va ?"))
    assert main(["chat", "hi", "--provider", provider, "--base-url", server.base_url(provider)]) == 0
    assert capsys.readouterr() == ("Bonjour, monde — ça va ?\n", "")
    assert server.requests[0].json["messages" if provider != "openai-responses" else "input"][-1] == {
        "role": "user", "content": "hi"}


@pytest.mark.parametrize("provider, expected", [
    pytest.param("openai", {"model": "gpt-4o-mini", "max_tokens": 7,
                            "messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "hi"}]}, id="openai"),
    pytest.param("openai-responses", {"model": "gpt-4o-mini", "max_output_tokens": 7,
                                      "input": [{"role": "system", "content": "Be brief."},
                                                {"role": "user", "content": "hi"}]}, id="openai-responses"),
    pytest.param("anthropic", {"model": "claude-sonnet-4-5", "max_tokens": 7, "system": "Be brief.",
                               "messages": [{"role": "user", "content": "hi"}]}, id="anthropic"),
    pytest.param("ollama", {"model": "llama3.2", "options": {"num_predict": 7},
                            "messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "hi"}]}, id="ollama"),
])
def test_system_and_max_tokens_reach_the_request(provider: str, expected: Dict[str, object],
                                                 server: FakeLLMServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "hi", "--provider", provider, "--base-url", server.base_url(provider),
                 "--system", "Be brief.", "--max-tokens", "7"]) == 0
    body = server.requests[0].json
    assert {key: body.get(key) for key in expected} == expected
    assert capsys.readouterr().out == DEFAULT_TEXT + "\n"


def test_model_option_is_sent(server: FakeLLMServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "hi", "--base-url", server.base_url(), "--model", "my-model"]) == 0
    assert server.requests[0].json["model"] == "my-model"


def test_events_show_the_retry_and_a_metrics_line(server: FakeLLMServer,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    server.script(RETRY_NOW)
    assert main(["chat", "hi", "--base-url", server.base_url(), "--events"]) == 0
    out, err = capsys.readouterr()
    assert out == DEFAULT_TEXT + "\n"
    model, retry, metrics = lines_of(err)
    assert model == f"[model gpt-4o-mini · openai · {server.base_url()}]"
    assert retry == "[retry: attempt 2 in 0.00 s after ServerError: HTTP 503 Service Unavailable: Service Unavailable]"
    assert re.fullmatch(rf"\[finished \(stop\): 18 tokens, (\d+\.\d|-) tokens/s, first token {MS}, "
                        rf"chunk gap (p50 {MS} p99 {MS}|-), 2 attempt\(s\)\]", metrics), metrics


def test_events_print_the_metrics_line_before_the_error(server: FakeLLMServer,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    server.script(Reply(status=401))
    assert main(["chat", "hi", "--base-url", server.base_url(), "--events"]) == 1
    _, metrics, error = lines_of(capsys.readouterr().err)
    assert re.fullmatch(r"\[failed: 0 tokens, - tokens/s, first token -, chunk gap -, 1 attempt\(s\)\]", metrics)
    assert error == "llmstream: error: AuthenticationError: HTTP 401 Unauthorized: Unauthorized"


# -- errors --------------------------------------------------------------------------------------


def test_an_error_is_one_line_and_exit_status_1(server: FakeLLMServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.script(Reply(status=401))
    assert main(["chat", "hi", "--base-url", server.base_url()]) == 1
    assert capsys.readouterr() == ("", "llmstream: error: AuthenticationError: HTTP 401 Unauthorized: Unauthorized\n")


def test_a_failure_mid_stream_ends_the_text_line(server: FakeLLMServer, capsys: pytest.CaptureFixture[str]) -> None:
    # The stall makes sure the two tokens reach the client before the error event does.
    server.script(Reply(error_event_at=2, error_event_type="invalid_request_error", error="bad\nthing",
                        stall_after_tokens=(2, 0.2)))
    assert main(["chat", "hi", "--base-url", server.base_url()]) == 1
    assert capsys.readouterr() == ("Hello from\n", "llmstream: error: ProviderError: bad thing\n")


def test_verbose_shows_the_traceback(server: FakeLLMServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.script(Reply(status=401))
    assert main(["chat", "hi", "--base-url", server.base_url(), "--verbose"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err
    assert re.search(r"^[\w.]*AuthenticationError: HTTP 401 Unauthorized: Unauthorized$", err, re.MULTILINE)
    assert err.endswith("\nllmstream: error: AuthenticationError: HTTP 401 Unauthorized: Unauthorized\n")


def test_a_busy_port_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError) as expected, socket.socket() as other:
            other.bind(("127.0.0.1", port))
        assert main(["serve-fake", "--port", str(port)]) == 1
    assert capsys.readouterr() == ("", f"llmstream: error: OSError: {expected.value}\n")


@pytest.mark.parametrize("argv, message", [
    pytest.param(["chat", "hi", "--max-tokens", "0"], "argument --max-tokens: must be at least 1, got 0", id="max-tokens"),
    pytest.param(["chat", "hi", "--provider", "nope"], "argument --provider: invalid choice: 'nope'", id="provider"),
    pytest.param(["debug"], "no prompt: give one as an argument, or pipe it in", id="no-prompt"),
    pytest.param(["chat", "-"], "the prompt read from stdin is empty", id="empty-stdin"),
    pytest.param(["chat", "hi", "--temperature", "3"], "argument --temperature: must be between 0 and 2", id="temperature"),
    pytest.param(["chat", "hi", "--timeout", "0"], "argument --timeout: must be more than 0 seconds", id="timeout"),
    pytest.param(["chat", "hi", "--retries", "-1"], "argument --retries: must be at least 0", id="retries"),
])
def test_bad_usage_exits_2(argv: List[str], message: str, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", Terminal(""))  # a terminal with nothing typed
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


# -- Ctrl+C ----------------------------------------------------------------------------------------


def test_ctrl_c_exits_130_quietly(server: FakeLLMServer) -> None:
    server.script(Reply(stall_after_tokens=(2, float("inf"))))
    proc = start_cli("chat", "hi", "--base-url", server.base_url())
    server.wait_for_requests(1, timeout=SUBPROCESS_TIMEOUT)
    seen = read_until(proc, b" from")
    status, out, err = interrupt(proc)
    assert (status, seen + out, err) == (130, b"Hello from\n", b"")


def test_ctrl_c_in_debug_still_prints_the_report(server: FakeLLMServer) -> None:
    server.script(Reply(stall_after_tokens=(2, float("inf"))))
    proc = start_cli("debug", "hi", "--base-url", server.base_url())
    server.wait_for_requests(1, timeout=SUBPROCESS_TIMEOUT)
    seen = read_until(proc, b" from")
    status, out, err = interrupt(proc)
    assert (status, seen + out) == (130, b"Hello from\n")
    lines = err.decode().splitlines()
    assert re.fullmatch(rf" +{MS}  end: KeyboardInterrupt", lines[lines.index("metrics:") - 1])
    assert lines[-1] == "outcome: interrupted (Ctrl+C)"
    assert "Traceback" not in err.decode()


# -- serve-fake ------------------------------------------------------------------------------------


@pytest.fixture
def fake_server_process(request: pytest.FixtureRequest) -> Iterator[Tuple[subprocess.Popen, str]]:
    proc = start_cli("serve-fake", "--port", "0", *request.param)
    try:
        startup = read_until(proc, b"\n").decode()
        url = re.match(r"llmstream fake LLM server listening on (http://127\.0\.0\.1:\d+)\n", startup)
        assert url, startup
        yield proc, url.group(1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("fake_server_process", [pytest.param([], id="clean")], indirect=True)
def test_serve_fake_serves_until_ctrl_c(fake_server_process: Tuple[subprocess.Popen, str]) -> None:
    proc, url = fake_server_process
    with llmstream.Client(base_url=url + "/v1", api_key="test") as client:
        assert client.complete("hi", model="m").text == DEFAULT_TEXT
    status, _, err = interrupt(proc)
    # The request log: one line per request on stderr.
    assert (status, re.sub(rb"\d\d:\d\d:\d\d ", b"", err)) == (0, b"POST /v1/chat/completions model=m stream=true\n")


@pytest.mark.parametrize("fake_server_process", [pytest.param(["--fault", "close_after_tokens=2"], id="fault")],
                         indirect=True)
def test_serve_fake_applies_a_fault(fake_server_process: Tuple[subprocess.Popen, str]) -> None:
    proc, url = fake_server_process
    with llmstream.Client(base_url=url + "/v1", api_key="test", retry=1) as client:
        with pytest.raises(llmstream.IncompleteStreamError) as failure:
            client.complete("hi", model="m")
    assert failure.value.partial_text == "Hello from"
    assert interrupt(proc)[0] == 0


# -- debug -----------------------------------------------------------------------------------------


def test_debug_report(server: FakeLLMServer, capsys: pytest.CaptureFixture[str],
                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert main(["debug", "hi", "--base-url", server.base_url(), "--max-tokens", "9"]) == 0
    out, err = capsys.readouterr()
    assert out == DEFAULT_TEXT + "\n"
    lines = lines_of(err)
    assert lines[:4] == ["", "llmstream debug report",
                         f"model: gpt-4o-mini (provider openai, base URL {server.base_url()})",
                         "timeline (ms since the start):"]
    timeline = lines[4:lines.index("metrics:")]
    events = [re.fullmatch(rf" +{MS}  (.*)", line).group(1) for line in timeline]  # type: ignore[union-attr]
    assert events[:2] == ["TextDelta 'Hello'", "TextDelta ' from'"]
    assert events[-3:] == ["Finish reason='stop'", "Usage input_tokens=12 output_tokens=18", "end"]
    assert len(events) == 18 + 3
    chunks = int(report_value(err, "chunks"))
    assert chunks >= 1
    assert int(report_value(err, "bytes received")) > 0
    assert re.fullmatch(r"min \d+ B, avg \d+\.\d B, max \d+ B", report_value(err, "chunk size"))
    assert re.fullmatch(rf"p50 {MS}, p99 {MS}, max {MS} \(n={chunks}\)", report_value(err, "read time"))
    assert (report_value(err, "tokens"), report_value(err, "attempts"), report_value(err, "errors")) == (
        "18 (reported by the provider)", "1", "none")
    requests_at = lines.index("requests (1 answered; an attempt without an answer is in the timeline):")
    request = lines[requests_at + 1:lines.index("  body:")]
    assert request[:2] == ["attempt 1:", f"  POST {server.base_url()}/chat/completions"]
    assert {"  Content-Type: application/json", "  Accept: text/event-stream",
            "  Authorization: <redacted>"} <= set(request)
    body = lines[lines.index("  body:") + 1:lines.index("  response: 200 OK")]
    assert json.loads("\n".join(body)) == {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                                           "stream": True, "stream_options": {"include_usage": True},
                                           "max_tokens": 9}
    response = lines[lines.index("  response: 200 OK") + 1:-1]
    assert {"    x-request-id: req_fake", "    Content-Type: text/event-stream; charset=utf-8"} <= set(response)
    assert lines[-1] == "outcome: finished (finish_reason 'stop')"
    assert SECRET not in err


@pytest.mark.parametrize("fault, retry_line, error", [
    pytest.param(RETRY_NOW, "Retrying attempt=2 delay=0 ms cause=ServerError: HTTP 503 Service Unavailable: "
                            "Service Unavailable", "ServerError", id="status-503"),
    pytest.param(Reply(close_after_tokens=3), r"Retrying attempt=2 delay=\d+ ms cause=IncompleteStreamError: .+",
                 "IncompleteStreamError", id="cut-mid-stream"),
])
def test_debug_report_shows_retries_and_errors(fault: Reply, retry_line: str, error: str, server: FakeLLMServer,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    server.script(fault)
    assert main(["debug", "hi", "--base-url", server.base_url()]) == 0
    out, err = capsys.readouterr()
    assert out == DEFAULT_TEXT + "\n"
    assert [line for line in lines_of(err) if re.fullmatch(rf" +{MS}  {retry_line}", line)] != []
    assert (report_value(err, "attempts"), report_value(err, "errors")) == ("2 (1 retry)", error)


def test_debug_report_on_failure_then_exit_1(server: FakeLLMServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.script(RETRY_NOW, Reply(status=401))
    assert main(["debug", "hi", "--base-url", server.base_url()]) == 1
    out, err = capsys.readouterr()
    lines = lines_of(err)
    assert out == ""
    assert re.fullmatch(rf" +{MS}  end: AuthenticationError", lines[lines.index("metrics:") - 1])
    assert report_value(err, "errors") == "ServerError, AuthenticationError"
    # The error is said once: the outcome names it, the error line says it.
    assert lines[-2:] == ["outcome: failed with AuthenticationError (the error line below)",
                          "llmstream: error: AuthenticationError: HTTP 401 Unauthorized: Unauthorized"]
    assert err.count("HTTP 401 Unauthorized") == 1
    assert [line for line in lines if line.startswith("  response: ")] == [
        "  response: 503 Service Unavailable", "  response: 401 Unauthorized"]


def test_debug_collapses_long_runs_of_text_deltas(server: FakeLLMServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.script(Reply(token_count=120))
    assert main(["debug", "hi", "--base-url", server.base_url()]) == 0
    err = capsys.readouterr().err
    texts = [line.split("ms  ", 1)[1] for line in lines_of(err) if "ms  TextDelta" in line]
    assert texts == [f"TextDelta {'tok0' if i == 0 else f' tok{i}'!r}" for i in [*range(20), *range(100, 120)]]
    assert f"{'':13}... 80 more text deltas ..." in lines_of(err)


def test_timeline_keeps_other_events_where_they_happened() -> None:
    ticks = iter(range(1000))
    timeline = Timeline(start=0.0, clock=lambda: next(ticks) / 1000)
    for i in range(30):
        timeline.add(llmstream.TextDelta(f"t{i}"))
    timeline.add(llmstream.Retrying(2, 0.25, llmstream.IncompleteStreamError("cut\nshort")))
    for i in range(30, 60):
        timeline.add(llmstream.TextDelta(f"t{i}"))
    lines = timeline.lines()
    assert lines[19:24] == [
        "      19.0 ms  TextDelta 't19'",
        f"{'':13}... 10 more text deltas ...",
        "      30.0 ms  Retrying attempt=2 delay=250 ms cause=IncompleteStreamError: cut short",
        f"{'':13}... 10 more text deltas ...",
        "      41.0 ms  TextDelta 't40'",
    ]
    assert len(lines) == 20 + 1 + 1 + 1 + 20


def test_timeline_shows_everything_up_to_50_deltas() -> None:
    timeline = Timeline()
    for i in range(50):
        timeline.add(llmstream.TextDelta("x" * 100 if i == 0 else "y"))
    lines = timeline.lines()
    assert len(lines) == 50
    assert lines[0].endswith(f"TextDelta {'x' * 40!r}... (100 chars)")


@pytest.mark.parametrize("name, shown", [
    pytest.param("Authorization", "<redacted>", id="authorization"),
    pytest.param("x-api-key", "<redacted>", id="x-api-key"),
    pytest.param("api-key", "<redacted>", id="api-key"),
    pytest.param("X-Goog-Api-Key", "<redacted>", id="goog"),
    pytest.param("X-Session-Token", "<redacted>", id="token"),
    pytest.param("Client-Secret", "<redacted>", id="secret"),
    pytest.param("Cookie", "<redacted>", id="cookie"),
    pytest.param("anthropic-version", "v", id="plain"),
])
def test_secret_headers_are_redacted(name: str, shown: str) -> None:
    assert redact_headers({name: "v"}) == [f"{name}: {shown}"]


def test_no_secret_reaches_the_terminal(server: FakeLLMServer) -> None:
    # The server echoes the key in its error message, as some real ones do; --verbose
    # adds the debug log and the traceback. The key must show up nowhere.
    server.script(RETRY_NOW, Reply(status=401, error=f"Incorrect API key provided: {SECRET}"))
    result = run_cli("debug", "hi", "--base-url", server.base_url(), "--verbose",
                     OPENAI_API_KEY=SECRET)
    assert server.requests[0].header("Authorization") == f"Bearer {SECRET}"
    assert result.returncode == 1
    assert "SECRET123" not in result.stdout + result.stderr
    assert "  Authorization: <redacted>" in result.stderr
    assert "Traceback (most recent call last):" in result.stderr
    assert "llmstream INFO" in result.stderr  # the retry's log line was there to be scrubbed
    assert result.stderr.endswith("llmstream: error: AuthenticationError: HTTP 401 Unauthorized: "
                                  "Incorrect API key provided: <redacted>\n")


def test_chat_events_never_show_the_key(server: FakeLLMServer, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    server.script(Reply(status=500, error=f"bad key {SECRET}", headers={"retry-after-ms": "0"}))
    assert main(["chat", "hi", "--base-url", server.base_url(), "--events"]) == 0
    out, err = capsys.readouterr()
    assert "[retry: attempt 2 in 0.00 s after ServerError: HTTP 500 Internal Server Error: bad key <redacted>]" in err
    assert SECRET not in out + err


# -- everyday options (issue 14) -------------------------------------------------------------------


@pytest.mark.parametrize("argv, stdin", [
    pytest.param(["chat", "-"], "What is 2+2?\n", id="dash"),
    pytest.param(["chat"], "What is 2+2?\n", id="pipe"),
])
def test_prompt_from_stdin(argv: List[str], stdin: str, server: FakeLLMServer) -> None:
    done = subprocess.run([sys.executable, "-m", "llmstream", *argv, "--base-url", server.base_url()],
                          input=stdin, capture_output=True, text=True, encoding="utf-8", env=cli_env(), cwd=ROOT,
                          timeout=SUBPROCESS_TIMEOUT)
    assert (done.returncode, done.stdout, done.stderr) == (0, DEFAULT_TEXT + "\n", "")
    assert server.requests[0].json["messages"] == [{"role": "user", "content": "What is 2+2?"}]


def test_a_prompt_argument_never_reads_stdin(server: FakeLLMServer, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("not this"))
    assert main(["chat", "hi", "--base-url", server.base_url()]) == 0
    assert server.requests[0].json["messages"] == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("provider, expected", [
    pytest.param("openai", {"temperature": 0.2}, id="openai"),
    pytest.param("anthropic", {"temperature": 0.2}, id="anthropic"),
    pytest.param("ollama", {"options": {"num_predict": 7, "temperature": 0.2}}, id="ollama"),
])
def test_temperature_reaches_the_request(provider: str, expected: Dict[str, object], server: FakeLLMServer,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "hi", "--provider", provider, "--base-url", server.base_url(provider),
                 "--temperature", "0.2"] + (["--max-tokens", "7"] if provider == "ollama" else [])) == 0
    body = server.requests[0].json
    assert {key: body[key] for key in expected} == expected


def test_retries_option(server: FakeLLMServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.script(RETRY_NOW, RETRY_NOW)
    assert main(["chat", "hi", "--base-url", server.base_url(), "--retries", "0"]) == 1
    assert capsys.readouterr().err.startswith("llmstream: error: ServerError: HTTP 503")
    assert len(server.requests) == 1
    assert main(["chat", "hi", "--base-url", server.base_url(), "--retries", "1"]) == 0  # 503 once more, then text
    assert len(server.requests) == 3


def test_timeout_option(server: FakeLLMServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.script(Reply(stall_before_first_byte=5))
    assert main(["chat", "hi", "--base-url", server.base_url(), "--timeout", "0.3", "--retries", "0"]) == 1
    assert capsys.readouterr().err.startswith("llmstream: error: StreamTimeoutError: ")


def test_ollama_not_running_gives_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there once the socket is closed
    assert main(["chat", "hi", "--provider", "ollama", "--base-url", f"http://127.0.0.1:{port}", "--retries", "0"]) == 1
    error, hint_line = lines_of(capsys.readouterr().err)
    assert error.startswith("llmstream: error: APIConnectionError: ")
    assert hint_line == (f"llmstream: hint: is Ollama running at http://127.0.0.1:{port}? Start it (`ollama serve`, "
                         "or the Ollama app) and pull the model (`ollama pull llama3.2`), or point OLLAMA_HOST or "
                         "--base-url at it")


def test_ollama_model_not_pulled_gives_a_hint(server: FakeLLMServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.script(Reply(status=404, error="model 'qwen3' not found, try pulling it first"))
    assert main(["chat", "hi", "--provider", "ollama", "--model", "qwen3", "--base-url", server.base_url("ollama")]) == 1
    assert lines_of(capsys.readouterr().err)[-1] == (
        "llmstream: hint: pull the model first: `ollama pull qwen3` (`ollama list` shows the ones you have)")


def test_no_hint_for_other_providers(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert main(["chat", "hi", "--base-url", f"http://127.0.0.1:{port}/v1", "--retries", "0"]) == 1
    assert "hint" not in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "win32", reason="no closed-pipe signal semantics on Windows")
def test_a_closed_pipe_ends_quietly_with_141(server: FakeLLMServer) -> None:
    server.script(Reply(token_count=200_000))
    command = (f"{shlex.quote(sys.executable)} -m llmstream chat hi --base-url {server.base_url()}; "
               "echo \"status $?\" >&2")
    done = subprocess.run(["bash", "-c", f"({command}) | head -c 9"], capture_output=True, text=True,
                          env=cli_env(), cwd=ROOT, timeout=SUBPROCESS_TIMEOUT)
    assert (done.stdout, done.stderr) == ("tok0 tok1", "status 141\n")
    # The stream was closed: the server is not left writing the rest of the answer.
    server.wait_for_requests(1)
    deadline = time.monotonic() + 10
    while server.active_connections and time.monotonic() < deadline:
        time.sleep(0.01)  # the server's handler notices the closed socket on its next write
    assert server.active_connections == 0


def _pty_run(argv: List[str], *, both: bool) -> Tuple[int, str, str]:
    """Run the CLI with stderr (and stdout too when ``both``) on a pseudo-terminal; return status, stdout, pty text."""
    import pty

    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "llmstream", *argv], env=cli_env(), cwd=ROOT,
                                stdout=follower if both else subprocess.PIPE, stderr=follower, stdin=subprocess.DEVNULL)
        os.close(follower)
        follower = -1
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: every writer of the terminal is gone
                break
            if not chunk:
                break
            seen += chunk
        out = proc.stdout.read() if proc.stdout is not None else b""
        proc.wait(timeout=SUBPROCESS_TIMEOUT)
        if proc.stdout is not None:
            proc.stdout.close()
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    return proc.returncode, out.decode(), seen.decode()


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_waiting_indicator_on_a_terminal_only(server: FakeLLMServer) -> None:
    server.script(Reply(stall_before_first_byte=0.8), Reply(stall_before_first_byte=0.8))
    status, out, terminal = _pty_run(["chat", "hi", "--base-url", server.base_url()], both=False)
    assert (status, out) == (0, DEFAULT_TEXT + "\n")
    assert re.search(r"\r[|/\\-] waiting for the first token\.\.\. 0\.\d s", terminal), repr(terminal)
    assert terminal.endswith("\r\x1b[K")  # erased: nothing of it is left on the screen
    done = run_cli("chat", "hi", "--base-url", server.base_url())  # stderr is a pipe here
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_a_retry_notice_is_never_in_the_middle_of_the_answer(server: FakeLLMServer) -> None:
    server.script(Reply(close_after_tokens=2, stall_after_tokens=(2, 0.3)), Reply())
    status, _, terminal = _pty_run(["chat", "hi", "--base-url", server.base_url(), "--events"], both=True)
    assert status == 0
    lines = terminal.replace("\r\n", "\n").split("\n")
    [notice] = [line for line in lines if "[retry:" in line]
    assert notice.startswith("[retry: attempt 2 in ")  # a line of its own, not "Hello from[retry: ..."
    assert "Hello from\n[retry: attempt 2" in terminal.replace("\r\n", "\n")


def test_notices_leave_the_piped_answer_unchanged(server: FakeLLMServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.script(Reply(close_after_tokens=2, event_ids=True), Reply(event_ids=True))
    assert main(["chat", "hi", "--base-url", server.base_url(), "--events"]) == 0
    out, err = capsys.readouterr()
    assert out == DEFAULT_TEXT + "\n"
    assert "\n[retry: attempt 2 in " in err and "\n\n" not in err


def test_debug_shows_every_attempts_request(server: FakeLLMServer, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    server.script(Reply(close_after_tokens=2), Reply())
    long_prompt = "why " * 100
    assert main(["debug", long_prompt, "--provider", "anthropic", "--base-url", server.base_url("anthropic")]) == 0
    out, err = capsys.readouterr()
    assert out == DEFAULT_TEXT + "\n"
    assert "requests (2 answered; an attempt without an answer is in the timeline):" in err
    first, second = err.split("attempt 2:\n")
    assert "  x-api-key: <redacted>" in first and "  x-api-key: <redacted>" in second and SECRET not in err
    assert '"content": "' + long_prompt[:200] + '... (400 chars)"' in err  # long content shortened
    # The resumed attempt sends the delivered text as a prefill (Anthropic continues it).
    assert '"role": "assistant",\n          "content": "Hello from"' in second
    assert second.count("    request-id: req_fake") == 1 and first.count("    request-id: req_fake") == 1


def test_debug_without_any_answer_shows_the_request_as_built(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert main(["debug", "hi", "--base-url", f"http://127.0.0.1:{port}/v1", "--retries", "0"]) == 1
    lines = lines_of(capsys.readouterr().err)
    at = lines.index("request (first attempt, as built; no answer came):")
    assert lines[at + 1] == f"  POST http://127.0.0.1:{port}/v1/chat/completions"
    assert "  body:" in lines[at:] and lines[-2] == "outcome: failed with APIConnectionError (the error line below)"


def test_debug_shows_the_resume_header(server: FakeLLMServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.script(Reply(close_after_tokens=2, event_ids=True), Reply(event_ids=True))
    assert main(["debug", "hi", "--base-url", server.base_url()]) == 0
    first, second = capsys.readouterr().err.split("attempt 2:\n")
    assert "Last-Event-ID" not in first and "  Last-Event-ID: 3\n" in second


def test_timeline_names_an_output_item_by_its_type_or_its_part_kind() -> None:
    from llmstream._cli._timeline import describe

    assert [describe(llmstream.OutputItem(item)) for item in (
        {"type": "thinking", "thinking": "x", "signature": "s"},
        {"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "c2ln"},  # a Gemini part: no type
        {"thoughtSignature": "c2ln", "text": "Hi"},
        {"text": "hmm", "thought": True},
    )] == ["OutputItem type='thinking'", "OutputItem type='functionCall'", "OutputItem type='text'",
           "OutputItem type='thought'"]
