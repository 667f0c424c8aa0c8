"""The ``llmstream`` command: ``llmstream chat "prompt"`` streams an answer to the terminal.

With no API key and no base URL, ``chat`` starts the built-in fake server
(``llmstream.testing``) and streams from it, so a fresh offline install shows
the library working. Errors print one line (exit 1) unless ``--verbose``;
Ctrl+C stops cleanly with exit status 130.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import Any, Dict, Iterator, List, Optional

from . import Client, Retrying, StreamError, TextDelta, __version__
from ._providers import PROVIDERS

__all__ = ["main"]

DEFAULT_MODELS = {
    "openai": "gpt-4o-mini",
    "openai-responses": "gpt-4o-mini",
    "anthropic": "claude-sonnet-4-5",
    "ollama": "llama3.2",
}
#: Each API's own name for the output limit.
MAX_TOKENS_PARAM = {
    "openai": "max_tokens",
    "openai-responses": "max_output_tokens",
    "anthropic": "max_tokens",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmstream", description="Stream LLM answers to the terminal.")
    parser.add_argument("--version", action="version", version=f"llmstream {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    chat = commands.add_parser("chat", help="stream an answer to a prompt")
    chat.add_argument("prompt")
    chat.add_argument("--provider", choices=sorted(PROVIDERS), default="openai")
    chat.add_argument("--model", help="model name (default: a common model of the provider)")
    chat.add_argument("--base-url", help="the provider's base URL (default: from the environment)")
    chat.add_argument("--system", help="a system prompt")
    chat.add_argument("--max-tokens", type=int, help="limit the answer's length")
    chat.add_argument("--events", action="store_true", help="show retries and timings on stderr")
    chat.add_argument("--verbose", action="store_true", help="show tracebacks and debug logs")
    serve = commands.add_parser("serve-fake", help="run the built-in fake LLM server until Ctrl+C")
    serve.add_argument("args", nargs=argparse.REMAINDER, help="options of the fake server (--port, --fault ...)")
    return parser


@contextlib.contextmanager
def _offline_server(args: argparse.Namespace) -> Iterator[Optional[str]]:
    """Yield a base URL of the built-in server when no key or base URL is configured."""
    provider = PROVIDERS[args.provider]
    configured = args.base_url or any(
        os.environ.get(name) for name in (provider.api_key_env, provider.base_url_env) if name
    )
    if configured:
        yield args.base_url
        return
    from .testing import FakeLLMServer

    with FakeLLMServer() as server:
        print(f"llmstream: no API key set ({provider.api_key_env}); streaming from the built-in "
              f"fake server at {server.url}", file=sys.stderr)
        yield server.base_url(args.provider)


def _chat(args: argparse.Namespace) -> int:
    params: Dict[str, Any] = {}
    if args.max_tokens is not None:
        if args.provider == "ollama":
            params["options"] = {"num_predict": args.max_tokens}
        else:
            params[MAX_TOKENS_PARAM[args.provider]] = args.max_tokens
    with _offline_server(args) as base_url:
        client = Client(args.provider, base_url=base_url)
        with client.stream(args.prompt, model=args.model or DEFAULT_MODELS[args.provider],
                           system=args.system, **params) as stream:
            for event in stream.events():
                if isinstance(event, TextDelta):
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
                elif args.events and isinstance(event, Retrying):
                    print(f"\n[retry {event.attempt} in {event.delay:.2f}s: {event.cause}]", file=sys.stderr)
            sys.stdout.write("\n")
            if args.events:
                m = stream.metrics
                ttft = "-" if m.time_to_first_token is None else f"{m.time_to_first_token * 1000:.0f} ms"
                print(f"[{m.text_deltas} pieces, first token {ttft}, {m.duration:.2f}s, "
                      f"{m.attempts} attempt(s), finish {stream.result.finish_reason}]", file=sys.stderr)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    if getattr(args, "verbose", False):
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.command == "serve-fake":
            from .testing import serve

            return serve(args.args)
        return _chat(args)
    except KeyboardInterrupt:
        print("\nllmstream: interrupted", file=sys.stderr)
        return 130
    except (StreamError, ValueError) as exc:
        if getattr(args, "verbose", False):
            raise
        print(f"\nllmstream: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
