"""``llmstream chat "prompt"``: stream an answer to the terminal.

Strategy: the text goes to stdout as it arrives, nothing else does, so the
output can be piped. With ``--events``, the model, retries, resets and a final
metrics line go to stderr, each on a line of its own in brackets (never in the
middle of the answer's line on a terminal); the metrics line is printed also
when the stream fails, before the error line. A ``Reset`` (a
replayed answer that did not repeat the text shown) is always announced: the
text above it on the terminal is no longer the answer.
"""

from __future__ import annotations

import argparse
from typing import Optional, TextIO

from .._events import Distribution, Event, Reset, Retrying, StreamMetrics
from .._exceptions import StreamError
from .._transport import redact_url
from ._session import Secrets, Session, add_stream_options, one_line, open_stream, relay, stdout_for_text

__all__ = ["add_chat_command", "run_chat", "format_ms", "metrics_line", "model_line"]


def add_chat_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Declare ``chat`` and its options."""
    chat = commands.add_parser("chat", help="stream an answer to a prompt",
                               description="Stream an answer to the terminal as its tokens arrive.")
    add_stream_options(chat)
    chat.add_argument("--events", action="store_true", help="show the model, retries and timings on stderr")


def format_ms(seconds: Optional[float]) -> str:
    """``12.3 ms``, or ``-`` when there is no measurement."""
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _gap(dist: Distribution) -> str:
    if not dist.count:
        return "-"
    return f"p50 {format_ms(dist.p50)} p99 {format_ms(dist.p99)}"


def metrics_line(metrics: StreamMetrics, outcome: str) -> str:
    """The one-line summary ``chat --events`` ends with."""
    speed = "-" if metrics.tokens_per_second is None else f"{metrics.tokens_per_second:.1f}"
    return (f"[{outcome}: {metrics.tokens} tokens, {speed} tokens/s, first token "
            f"{format_ms(metrics.time_to_first_token)}, inter-token gap {_gap(metrics.inter_token_gap)}, "
            f"{metrics.attempts} attempt(s)]")


def describe_retry(event: Retrying) -> str:
    """``attempt 2 in 0.11 s after IncompleteStreamError: ...`` (the message on one line)."""
    cause = event.cause
    return (f"attempt {event.attempt} in {event.delay:.2f} s after "
            f"{type(cause).__name__}: {one_line(str(cause))}")


def model_line(session: Session) -> str:
    """``[model gpt-4o-mini · openai · http://...]``: what ``chat --events`` starts with."""
    return f"[model {session.request.model} · {session.request.provider} · {redact_url(session.client.base_url)}]"


def run_chat(args: argparse.Namespace, err: TextIO, secrets: Secrets) -> int:
    """Stream the answer; return the exit status (errors propagate to the caller)."""
    out = stdout_for_text()

    def notice(event: Event) -> Optional[str]:
        if isinstance(event, Retrying) and args.events:
            return secrets.scrub(f"[retry: {describe_retry(event)}]")
        if isinstance(event, Reset):
            # Always said: the text already on the terminal is no longer the answer.
            return f"[reset: the answer starts again; discard the {len(event.discarded_text)} characters above]"
        return None

    with open_stream(args, err) as session:
        if args.events:
            print(secrets.scrub(model_line(session)), file=err, flush=True)
        try:
            relay(session.stream, out, lambda event: None, err=err, notice=notice)
        except StreamError:
            if args.events:
                print(metrics_line(session.stream.metrics, "failed"), file=err, flush=True)
            raise
        if args.events:
            print(metrics_line(session.stream.metrics, f"finished ({session.stream.result.finish_reason})"),
                  file=err, flush=True)
    return 0
