"""What ``chat`` and ``debug`` share: their options, the offline fallback, the request, the text relay.

Strategy: both commands stream one answer to one prompt. :func:`add_stream_options`
declares their common options; :func:`open_stream` turns the parsed options
into a running :class:`~llmstream.TokenStream`, starting the built-in fake
server first when nothing is configured (no API key and no base URL), so a
fresh offline install works. :func:`relay` writes the answer's text to stdout
as it arrives and always ends the line it opened.

Secrets: the CLI never holds an API key itself; the client reads it from the
environment. :class:`Secrets` knows the values that must never be printed (the
keys in the environment, a password in a base URL) and :meth:`Secrets.scrub`
removes them from every line the CLI writes to stderr, as a last line of
defence behind the library's own redaction.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, TextIO, Tuple
from urllib.parse import urlsplit

from .._client import Client, build_messages
from .._events import Event, TextDelta
from .._providers import DEFAULT_PROVIDER, PROVIDERS, get_provider
from .._providers._base import Message, RequestSpec
from .._redact import MARKER as REDACTED
from .._redact import Redactor
from .._stream import TokenStream

__all__ = ["Exchange", "Exchanges", "Secrets", "StreamRequest", "Session", "WaitingIndicator", "add_stream_options", "open_stream",
           "read_prompt", "relay", "one_line", "stdout_for_text"]

#: Shorter values are not scrubbed: replacing every "ab" in the output would mangle it,
#: and no real key is that short.
MIN_SECRET_LENGTH = 6


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


def _temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value <= 2:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2, got {text}")
    return value


def add_stream_options(parser: argparse.ArgumentParser) -> None:
    """Add the prompt and the options every streaming command takes."""
    parser.add_argument("prompt", nargs="?", default=None,
                        help="the user message; '-' or nothing: read it from stdin (a pipe or a file)")
    parser.add_argument("--provider", choices=sorted(PROVIDERS), default=DEFAULT_PROVIDER,
                        help="the API to talk to (default: openai)")
    parser.add_argument("--model", help="model name (default: a common model of the provider)")
    parser.add_argument("--base-url", help="the provider's base URL (default: from the environment)")
    parser.add_argument("--system", help="a system prompt")
    parser.add_argument("--max-tokens", type=_int_at_least(1), help="limit the answer's length")
    parser.add_argument("--temperature", type=_temperature, metavar="T", help="sampling temperature (0 to 2)")
    parser.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                        help="the longest wait to connect, for the first token and between tokens")
    parser.add_argument("--retries", type=_int_at_least(0), metavar="N",
                        help="retry a failed stream up to N times (0: never; default 2)")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks and the llmstream debug log")


@dataclass(frozen=True)
class Secrets:
    """Values the CLI must never print, and how to remove them from text."""

    values: Tuple[str, ...] = ()

    @classmethod
    def from_environment(cls, base_url: Optional[str] = None) -> "Secrets":
        """Collect every provider's API key from the environment, and a password in ``base_url``."""
        found = [p.api_key_from_env(os.environ) or "" for p in PROVIDERS.values()]
        for url in (base_url, *(p.base_url_from_env(os.environ) or "" for p in PROVIDERS.values())):
            with contextlib.suppress(ValueError):  # an unparseable URL has no password to find
                found.append(urlsplit(url or "").password or "")
        # Longest first, so a key that contains another is removed whole.
        return cls(tuple(sorted({v for v in found if len(v) >= MIN_SECRET_LENGTH}, key=len, reverse=True)))

    def scrub(self, text: str) -> str:
        """Return ``text`` with every secret, or any 8-character fragment of one, replaced by ``<redacted>``."""
        # The library's own redaction step (fragments too: a key cut short by a
        # message's truncation must not leak its first half), then short values whole.
        text = Redactor(self.values)(text)
        for value in self.values:
            text = text.replace(value, REDACTED)
        return text


@dataclass(frozen=True)
class StreamRequest:
    """What one streaming command asks for, resolved from its options."""

    provider: str
    model: str
    messages: List[Message]
    params: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "StreamRequest":
        """Resolve the prompt, system prompt, model and output limit of the parsed options."""
        return cls(provider=args.provider, model=args.model or get_provider(args.provider).default_model,
                   messages=build_messages(args.prompt, None, args.system),
                   params=_limit_params(args.provider, args.max_tokens, getattr(args, "temperature", None)))

    def spec(self, base_url: str) -> RequestSpec:
        """Build the request as the stream's first attempt sends it, with a placeholder for the key.

        The provider builds it, so the report is right against real servers;
        the key itself never reaches this code: when the environment holds
        one, the placeholder stands in for it.
        """
        provider = get_provider(self.provider)
        has_key = bool(provider.api_key_from_env(os.environ))
        return provider.build_request(base_url=base_url, api_key=REDACTED if has_key else None,
                                      model=self.model, messages=self.messages, params=self.params)


def _limit_params(provider: str, max_tokens: Optional[int], temperature: Optional[float] = None) -> Dict[str, Any]:
    """The body params for ``--max-tokens`` and ``--temperature``, in the provider's own keys (it declares them)."""
    declared = get_provider(provider)
    params: Dict[str, Any] = {}
    parts = (declared.limit_params(max_tokens) if max_tokens is not None else {},
             declared.temperature_params(temperature) if temperature is not None else {})
    for part in parts:
        for key, value in part.items():
            # Both may live in one object (Ollama's "options", Gemini's "generationConfig").
            params[key] = {**params[key], **value} if isinstance(value, dict) and isinstance(params.get(key), dict) else value
    return params


def read_prompt(prompt: Optional[str], stdin: TextIO) -> str:
    """The prompt: the argument, or stdin when it is ``-`` or absent.

    Stdin is read only then (never alongside a prompt argument), so a command
    run from a script whose stdin stays open does not wait for it.

    Raises:
        ValueError: no prompt argument and stdin is a terminal, or stdin held only whitespace.
    """
    if prompt is not None and prompt != "-":
        return prompt
    if prompt is None and stdin.isatty():
        raise ValueError("no prompt: give one as an argument, or pipe it in (echo hi | llmstream chat)")
    text = stdin.read()
    if not text.strip():
        raise ValueError("the prompt read from stdin is empty")
    return text.rstrip("\n")


@dataclass(frozen=True)
class Session:
    """A running stream and what it was started with.

    Attributes:
        started_at: ``time.monotonic()`` right before the stream started.
    """

    stream: TokenStream
    client: Client
    request: StreamRequest
    started_at: float
    exchanges: Optional[Exchanges] = None


#: Seconds between the built-in server's tokens when ``chat`` falls back to it.
OFFLINE_TOKEN_INTERVAL = 0.03


@contextlib.contextmanager
def _offline_server(args: argparse.Namespace, err: TextIO) -> Iterator[Optional[str]]:
    """Yield the built-in server's base URL when no key or base URL is configured, else ``--base-url``."""
    provider = get_provider(args.provider)
    # A provider that needs no key (Ollama) is most likely running locally at its default host.
    configured = args.base_url or not provider.requires_api_key or any(
        (provider.api_key_from_env(os.environ), provider.base_url_from_env(os.environ))
    )
    if configured:
        yield args.base_url
        return
    from ..testing import FakeLLMServer, Reply

    # Paced like a real model (about 30 tokens/s), so a newcomer sees it stream.
    with FakeLLMServer(default_reply=Reply(interval=OFFLINE_TOKEN_INTERVAL)) as server:
        print(f"llmstream: no API key set ({provider.api_key_env or ', '.join(provider.env_vars)}); streaming from the built-in "
              f"fake server at {server.url}", file=err, flush=True)
        yield server.base_url(args.provider)


@contextlib.contextmanager
def open_stream(args: argparse.Namespace, err: TextIO, *, record: bool = False) -> Iterator[Session]:
    """Start the stream the options describe (and the offline server if needed); close both on exit.

    With ``record``, the session's :class:`Exchanges` holds every request sent.
    """
    request = StreamRequest.from_args(args)
    with _offline_server(args, err) as base_url:
        retries = getattr(args, "retries", None)
        client = Client(request.provider, base_url=base_url, timeout=getattr(args, "timeout", None),
                        retry=None if retries is None else retries + 1)
        exchanges = Exchanges() if record else None
        if exchanges is not None and not exchanges.attach(client):
            exchanges = None
        try:
            started_at = time.monotonic()
            with client.stream(messages=request.messages, model=request.model, **request.params) as stream:
                yield Session(stream, client, request, started_at, exchanges)
        finally:
            client.close()


#: Seconds before the "waiting for the first token" indicator appears, and between its frames.
WAITING_DELAY = 0.3
WAITING_FRAME = 0.1
SPINNER = "|/-\\"


class WaitingIndicator:
    """``| waiting for the first token... 1.2 s`` on a terminal's stderr until :meth:`stop`.

    Drawn by a thread of its own (the caller's thread is blocked in the
    stream), only after :data:`WAITING_DELAY` so a quick answer shows nothing,
    and erased without a trace when stopped. The lock makes sure nothing is
    drawn after the erase.
    """

    def __init__(self, err: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self._err = err
        self._clock = clock
        self._started = clock()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._drawn = False
        self._thread = threading.Thread(target=self._run, name="llmstream-cli-waiting", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        frame = 0
        while not self._stopped.wait(WAITING_DELAY if frame == 0 else WAITING_FRAME):
            with self._lock:
                if self._stopped.is_set():
                    return
                waited = self._clock() - self._started
                self._err.write(f"\r{SPINNER[frame % len(SPINNER)]} waiting for the first token... {waited:.1f} s")
                self._err.flush()
                self._drawn = True
            frame += 1

    def stop(self) -> None:
        """Erase the indicator (if drawn) and end its thread; idempotent."""
        with self._lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
            if self._drawn:
                with contextlib.suppress(OSError, ValueError):
                    self._err.write("\r\033[K")
                    self._err.flush()
        self._thread.join()


def _is_terminal(stream: Optional[TextIO]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed
        return False


def relay(stream: TokenStream, out: TextIO, observe: Callable[[Event], None], *, err: Optional[TextIO] = None,
          notice: Optional[Callable[[Event], Optional[str]]] = None) -> None:
    """Write the answer's text to ``out`` as it arrives; pass every event to ``observe`` first.

    ``notice(event)`` may return a line for ``err`` (a retry, a reset). A notice
    is always a line of its own: when the answer's line is open on the same
    terminal, the notice starts on the next line, never in the middle of the
    answer (the answer's own bytes on ``out`` are never changed). On a terminal,
    ``err`` shows a "waiting for the first token" indicator until the first
    event.

    The line the text opened is always ended, also when the stream fails or is
    interrupted, so the shell prompt and the error line start on a line of
    their own.
    """
    waiting = WaitingIndicator(err) if err is not None and _is_terminal(err) else None
    shared_terminal = _is_terminal(out) and _is_terminal(err)
    line_open = False
    try:
        for event in stream.events():
            if waiting is not None:
                waiting.stop()
                waiting = None
            observe(event)
            line = notice(event) if notice is not None else None
            if line is not None and err is not None:
                err.write(("\n" if line_open and shared_terminal else "") + line + "\n")
                err.flush()
            if isinstance(event, TextDelta) and event.text:
                out.write(event.text)
                out.flush()
                line_open = not event.text.endswith("\n")
    finally:
        if waiting is not None:
            waiting.stop()
        if line_open:
            out.write("\n")
            out.flush()


@dataclass(frozen=True)
class Exchange:
    """One request as sent and the head of its answer."""

    method: str
    url: str
    headers: Dict[str, Any]
    body: Any  # bytes, str or None, as requests sent it
    status: int
    reason: str
    response_headers: Dict[str, str]


class Exchanges:
    """Every HTTP request a client sends and the status and headers of its answer, in order.

    Recorded with a ``requests`` response hook on the client's session, so it
    sees each attempt exactly as sent (resume headers, a prefill in the body).
    An attempt that got no answer (refused, timed out before the headers) is
    not here; the timeline's ``Retrying`` events show it.
    """

    def __init__(self) -> None:
        self.items: List[Exchange] = []

    def attach(self, client: Client) -> bool:
        """Start recording ``client``'s requests; False when its session cannot be reached."""
        session = getattr(getattr(client, "_transport", None), "session", None)
        hooks = getattr(session, "hooks", None)
        if not isinstance(hooks, dict):
            return False
        hooks.setdefault("response", []).append(self._record)
        return True

    def _record(self, response: Any, *args: Any, **kwargs: Any) -> Any:
        # A copy of what the report shows, not the objects: a response holds its connection.
        request = response.request
        self.items.append(Exchange(request.method or "", request.url or "", dict(request.headers), request.body,
                                   response.status_code, response.reason or "", dict(response.headers)))
        return response


def one_line(text: str) -> str:
    """Collapse whitespace (line breaks of a server's message included) into single spaces."""
    return " ".join(text.split())


def stdout_for_text() -> TextIO:
    """``sys.stdout``, made unable to fail on characters its encoding lacks.

    Answers hold any Unicode; a console or pipe in a legacy encoding would
    otherwise end the stream with ``UnicodeEncodeError``.
    """
    out = sys.stdout
    encoding = (getattr(out, "encoding", None) or "").lower().replace("-", "")
    reconfigure = getattr(out, "reconfigure", None)
    if encoding not in ("utf8", "utf16", "utf32") and reconfigure is not None:
        reconfigure(errors="backslashreplace")
    return out
