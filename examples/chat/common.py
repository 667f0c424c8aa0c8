"""What both chat examples share: the command line, and a client for a real provider or the built-in fake server."""

from __future__ import annotations

import argparse
import os
from contextlib import ExitStack
from pathlib import Path
from typing import List, Optional, Tuple

import llmstream
from llmstream.testing import FakeLLMServer, Reply

PAGE = (Path(__file__).parent / "chat.html").read_text(encoding="utf-8")
FAKE_TEXT = ("This answer comes from llmstream's built-in fake LLM server, one word at a time, "
             "relayed to your browser as server-sent events. Close the tab and the model stops; "
             "drop the connection and the page picks up where it left off.")


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A chat page streaming from an LLM through llmstream.relay.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port (printed)")
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--fake-interval", type=float, default=0.05,
                        help="seconds between the fake server's words (without OPENAI_API_KEY)")
    parser.add_argument("--fake-fault", action="append", default=[], metavar="NAME=VALUE",
                        help="a fault of the fake server's answers, e.g. close_after_tokens=5")
    return parser.parse_args(argv)


def make_client(args: argparse.Namespace, stack: ExitStack) -> Tuple[llmstream.Client, str]:
    """A client for OpenAI when OPENAI_API_KEY is set, else for the fake server (started here)."""
    if os.environ.get("OPENAI_API_KEY"):
        return llmstream.Client(), "OpenAI"
    faults = {}
    for item in args.fake_fault:
        name, _, value = item.partition("=")
        faults[name] = float(value) if "." in value else int(value)
    fake = stack.enter_context(FakeLLMServer(default_reply=Reply(text=FAKE_TEXT, interval=args.fake_interval, **faults)))
    return llmstream.Client(base_url=fake.base_url("openai"), api_key="fake", retry=4), f"the fake server at {fake.url}"
