"""``serve``: run the fake LLM server from a terminal until Ctrl+C, scriptable from the command line.

Usage::

    python -m llmstream.testing --port 8765 --fault close_after_tokens=5 --fault-times 1
    llmstream serve-fake --fault 'tool_calls=[["get_weather", {"city": "Paris"}]]' --fault text='""'

Every ``--fault NAME=VALUE`` sets one :class:`Reply` field (any field, not
only faults). VALUE is JSON when it parses as JSON (``5``, ``1.5``, ``true``,
``null``, ``"a, b"``, ``[2, 1.5]``, ``{"Retry-After": "1"}``); otherwise
``inf``, ``True``/``False``/``None``, numbers separated by commas
(``stall_after_tokens=2,1.5``), else the text as it is, commas and all
(``text=Hello, world``). A field that holds text takes VALUE as text unless it
is a JSON string. An unknown NAME is refused with the valid ones and the
nearest match.

``--fault-times N`` applies the ``--fault`` fields to the first N answers
only; later answers are clean (``--text`` and ``--interval`` still apply):
"break once, then recover". ``--interval`` paces the tokens (default
:data:`DEFAULT_INTERVAL`, about 30 tokens/s, so the answer visibly streams, as
``llmstream chat`` does); ``--interval 0`` streams at full speed.

What it prints: on stdout the URLs and the ``export`` lines that point the
official SDKs and llmstream at it (a newcomer with no key runs the README's
snippets against it); on stderr one line per request received (``--quiet``:
none).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import sys
import threading
import time
import typing
from typing import Any, Dict, List, NamedTuple, Optional, TextIO, Tuple

from ._formats import FORMATS, PROVIDERS
from ._reply import Reply
from ._server import FakeLLMServer
from ._state import RecordedRequest

__all__ = ["DEFAULT_INTERVAL", "FAKE_API_KEY", "ServeOptions", "environment", "parse_args", "serve"]

_FIELDS = {f.name: f for f in dataclasses.fields(Reply)}
#: Fields whose value is text: a VALUE that is not a JSON string is taken as it is.
_TEXT_FIELDS = {name for name, hint in typing.get_type_hints(Reply).items() if hint in (str, Optional[str])}
#: Seconds between tokens by default: about 30 tokens/s, like a real model.
DEFAULT_INTERVAL = 0.03
#: The API key the printed environment sets: any value works, the fake server checks none.
FAKE_API_KEY = "fake-key"


def _plain(text: str) -> Any:
    """A VALUE that is not JSON."""
    lowered = text.strip().lower()
    if lowered in ("inf", "+inf", "infinity"):
        return float("inf")
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    if "," in text:
        parts = [_plain(part) for part in text.split(",")]
        if all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in parts):
            return tuple(parts)
        return text
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _value(name: str, text: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        value = _plain(text)
    if name in _TEXT_FIELDS and not isinstance(value, str) and not (value is None and text.strip() in ("null", "None")):
        return text  # text=42 means the text "42"
    if name == "raw_body" and isinstance(value, str):
        return value.encode("utf-8")
    if name == "tool_calls" and isinstance(value, dict):
        return tuple(value.items())  # {"get_weather": {"city": "Paris"}} is one call per key
    if isinstance(value, list):
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    return value


def _fault(text: str) -> Tuple[str, Any]:
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    if name not in _FIELDS:
        near = difflib.get_close_matches(name, _FIELDS, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise argparse.ArgumentTypeError(
            f"unknown Reply field {name!r}{hint}; valid fields: {', '.join(_FIELDS)}")
    return name, _value(name, value)


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, got {port}")
    return port


def _seconds(value: str) -> float:
    seconds = float(value)
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {value!r}")
    return seconds


class ServeOptions(NamedTuple):
    """The parsed command line of ``llmstream serve-fake``.

    Attributes:
        reply: the default reply (every answer after ``script``).
        script: the replies of the first answers (``--fault-times``), else empty.
    """

    host: str
    port: int
    reply: Reply
    max_concurrent: Optional[int] = None
    limit_retry_after: float = 1.0
    script: Tuple[Reply, ...] = ()
    quiet: bool = False


def parse_args(argv: Optional[List[str]]) -> ServeOptions:
    """Parse the command line into :class:`ServeOptions`.

    Raises:
        SystemExit: bad arguments (argparse prints the usage).
    """
    parser = argparse.ArgumentParser(prog="llmstream serve-fake",
                                     description="Run llmstream's fake LLM server (OpenAI, Anthropic, Ollama).")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=0, help="port (default 0: a free port, printed)")
    parser.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                        help="stream at most N answers at once; more get 429 with Retry-After")
    parser.add_argument("--limit-retry-after", type=float, default=1.0, metavar="SECONDS",
                        help="the Retry-After of those 429 answers (default 1)")
    parser.add_argument("--text", default=None, help="the text every answer streams")
    parser.add_argument("--interval", type=_seconds, default=DEFAULT_INTERVAL, metavar="SECONDS",
                        help=f"seconds between tokens (default {DEFAULT_INTERVAL}: visibly streams; 0: full speed)")
    parser.add_argument("--fault", type=_fault, action="append", default=[], metavar="NAME=VALUE",
                        help="set a Reply field, VALUE as JSON, e.g. close_after_tokens=5 or "
                             "'tool_calls=[[\"f\", {\"x\": 1}]]' (repeatable)")
    parser.add_argument("--fault-times", type=int, default=None, metavar="N",
                        help="apply the --fault fields to the first N answers only, then answer cleanly")
    parser.add_argument("--quiet", action="store_true", help="no request log on stderr")
    args = parser.parse_args(argv)
    base: Dict[str, Any] = {"interval": args.interval}
    if args.text is not None:
        base["text"] = args.text
    faulted = {**base, **dict(args.fault)}
    if args.fault_times is not None and args.fault_times < 0:
        parser.error("--fault-times must be >= 0")
    try:
        if args.fault_times is None:
            reply, script = Reply(**faulted), ()
        else:
            reply, script = Reply(**base), (Reply(**faulted),) * args.fault_times
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    if args.max_concurrent is not None and args.max_concurrent < 1:
        parser.error("--max-concurrent must be >= 1")
    return ServeOptions(args.host, args.port, reply, args.max_concurrent, args.limit_retry_after, script, args.quiet)


def environment(server: FakeLLMServer) -> Dict[str, str]:
    """The environment variables that point llmstream and the official SDKs at ``server``."""
    env = {
        "OPENAI_BASE_URL": server.base_url("openai"),
        "OPENAI_API_KEY": FAKE_API_KEY,
        "ANTHROPIC_BASE_URL": server.base_url("anthropic"),
        "ANTHROPIC_API_KEY": FAKE_API_KEY,
        "OLLAMA_HOST": server.url.split("://", 1)[1],
    }
    # The formats that say it themselves (one row may serve several providers: count it once).
    for fmt in {id(f): f for f in FORMATS.values()}.values():
        if fmt.environment is not None:
            env.update(fmt.environment(server.url, FAKE_API_KEY))
    return env


def describe_request(request: RecordedRequest) -> str:
    """One line of the request log: time, method, path, and the model and ``stream`` of a JSON body."""
    at = time.strftime("%H:%M:%S")
    line = f"{at} {request.method} {request.path}"
    body = request.json
    if isinstance(body, dict):
        if "model" in body:
            line += f" model={body['model']}"
        if "stream" in body:
            line += f" stream={json.dumps(body['stream'])}"
    return line


def serve(argv: Optional[List[str]] = None, *, out: Optional[TextIO] = None, err: Optional[TextIO] = None,
          until: Optional[threading.Event] = None) -> int:
    """Run the fake server until Ctrl+C (or until ``until`` is set); return the exit status.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
        out: where the URLs and the environment are printed (default ``sys.stdout``).
        err: where the request log goes (default ``sys.stderr``).
        until: an event that stops the server when set (for embedding and tests).
    """
    options = parse_args(argv)
    out = out or sys.stdout
    err = err or sys.stderr
    stop = until or threading.Event()
    with FakeLLMServer(options.host, options.port, default_reply=options.reply,
                       max_concurrent=options.max_concurrent, limit_retry_after=options.limit_retry_after) as server:
        server.script(*options.script)
        log = None if options.quiet else err
        logged = [0]  # requests whose line was printed: read again after Ctrl+C
        try:
            print(f"llmstream fake LLM server listening on {server.url}", file=out)
            for provider in PROVIDERS:
                print(f"  {provider:<17} base_url={server.base_url(provider)}", file=out)
            print("Point llmstream and the official SDKs at it (any key works):", file=out)
            for name, value in environment(server).items():
                print(f"  export {name}={value}", file=out)
            print("Press Ctrl+C to stop.", file=out, flush=True)
            _log_requests(server, stop, log, logged)
        except KeyboardInterrupt:
            # Ctrl+C is the way to stop, wherever it lands once the server runs: while the
            # banner is still printed (a client that read the first line may already have
            # been served), or after a request was recorded and before its line was printed
            # (a loaded machine). Print what was received, then stop.
            _print_new(server.requests, logged, log)
    return 0


def _log_requests(server: FakeLLMServer, stop: threading.Event, err: Optional[TextIO], logged: List[int]) -> None:
    """Print one line per request until ``stop`` is set; ``logged[0]`` counts the lines printed."""
    while not stop.is_set():
        try:
            # Short waits keep Ctrl+C and ``until`` responsive on every platform.
            log = server.wait_for_requests(logged[0] + 1, timeout=0.5)
        except TimeoutError:
            continue
        _print_new(log, logged, err)


def _print_new(log: List[RecordedRequest], logged: List[int], err: Optional[TextIO]) -> None:
    """Print the requests of ``log`` past ``logged[0]``, counting each once its line is out."""
    for request in log[logged[0]:]:
        if err is not None:
            print(describe_request(request), file=err, flush=True)
        logged[0] += 1
