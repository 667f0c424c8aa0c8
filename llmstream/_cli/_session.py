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

__all__ = ["Secrets", "StreamRequest", "Session", "add_stream_options", "open_stream", "relay", "one_line",
           "stdout_for_text"]

#: Shorter values are not scrubbed: replacing every "ab" in the output would mangle it,
#: and no real key is that short.
MIN_SECRET_LENGTH = 6


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_stream_options(parser: argparse.ArgumentParser) -> None:
    """Add the prompt and the options every streaming command takes."""
    parser.add_argument("prompt", help="the user message")
    parser.add_argument("--provider", choices=sorted(PROVIDERS), default=DEFAULT_PROVIDER,
                        help="the API to talk to (default: openai)")
    parser.add_argument("--model", help="model name (default: a common model of the provider)")
    parser.add_argument("--base-url", help="the provider's base URL (default: from the environment)")
    parser.add_argument("--system", help="a system prompt")
    parser.add_argument("--max-tokens", type=_positive_int, help="limit the answer's length")
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
                   params=_limit_params(args.provider, args.max_tokens))

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


def _limit_params(provider: str, max_tokens: Optional[int]) -> Dict[str, Any]:
    if max_tokens is None:
        return {}
    return get_provider(provider).limit_params(max_tokens)


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
def open_stream(args: argparse.Namespace, err: TextIO) -> Iterator[Session]:
    """Start the stream the options describe (and the offline server if needed); close both on exit."""
    request = StreamRequest.from_args(args)
    with _offline_server(args, err) as base_url:
        client = Client(request.provider, base_url=base_url)
        try:
            started_at = time.monotonic()
            with client.stream(messages=request.messages, model=request.model, **request.params) as stream:
                yield Session(stream, client, request, started_at)
        finally:
            client.close()


def relay(stream: TokenStream, out: TextIO, observe: Callable[[Event], None]) -> None:
    """Write the answer's text to ``out`` as it arrives; pass every event to ``observe`` first.

    The line the text opened is always ended, also when the stream fails or is
    interrupted, so the shell prompt and the error line start on a line of
    their own.
    """
    line_open = False
    try:
        for event in stream.events():
            observe(event)
            if isinstance(event, TextDelta) and event.text:
                out.write(event.text)
                out.flush()
                line_open = not event.text.endswith("\n")
    finally:
        if line_open:
            out.write("\n")
            out.flush()


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
