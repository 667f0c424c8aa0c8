"""``serve``: run the fake LLM server from a terminal until Ctrl+C.

Usage::

    python -m llmstream.testing --port 8765 --fault close_after_tokens=5 --fault stall_before_first_byte=2

Every ``--fault NAME=VALUE`` sets one :class:`Reply` field of the default reply
(any field, not only faults): ints, floats (``inf``), ``true``/``false``,
comma-separated tuples (``stall_after_tokens=3,1.5``), else strings.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
from typing import Any, Dict, List, NamedTuple, Optional, TextIO, Tuple

from ._formats import PROVIDERS
from ._reply import Reply
from ._server import FakeLLMServer

__all__ = ["parse_args", "serve"]

_FIELDS = {f.name for f in dataclasses.fields(Reply)}


def _value(text: str) -> Any:
    if "," in text:
        return tuple(_value(part) for part in text.split(","))
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _fault(text: str) -> Tuple[str, Any]:
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or name not in _FIELDS:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with NAME a Reply field, got {text!r}")
    return name, _value(value)


class ServeOptions(NamedTuple):
    """The parsed command line of ``llmstream serve-fake``."""

    host: str
    port: int
    reply: Reply
    max_concurrent: Optional[int] = None
    limit_retry_after: float = 1.0


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
    parser.add_argument("--fault", type=_fault, action="append", default=[], metavar="NAME=VALUE",
                        help="set a Reply field of every answer, e.g. close_after_tokens=5 (repeatable)")
    args = parser.parse_args(argv)
    fields: Dict[str, Any] = dict(args.fault)
    if args.text is not None:
        fields["text"] = args.text
    try:
        reply = Reply(**fields)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    if args.max_concurrent is not None and args.max_concurrent < 1:
        parser.error("--max-concurrent must be >= 1")
    return ServeOptions(args.host, args.port, reply, args.max_concurrent, args.limit_retry_after)


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, got {port}")
    return port


def serve(argv: Optional[List[str]] = None, *, out: Optional[TextIO] = None,
          until: Optional[threading.Event] = None) -> int:
    """Run the fake server until Ctrl+C (or until ``until`` is set); return the exit status.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
        out: where the URLs are printed (default ``sys.stdout``).
        until: an event that stops the server when set (for embedding and tests).
    """
    options = parse_args(argv)
    out = out or sys.stdout
    stop = until or threading.Event()
    with FakeLLMServer(options.host, options.port, default_reply=options.reply,
                       max_concurrent=options.max_concurrent, limit_retry_after=options.limit_retry_after) as server:
        print(f"llmstream fake LLM server listening on {server.url}", file=out)
        for provider in PROVIDERS:
            print(f"  {provider:<17} base_url={server.base_url(provider)}", file=out)
        print("Press Ctrl+C to stop.", file=out, flush=True)
        try:
            while not stop.wait(0.5):  # short waits keep Ctrl+C responsive on every platform
                pass
        except KeyboardInterrupt:
            pass
    return 0
