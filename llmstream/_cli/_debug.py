"""``llmstream debug "prompt"``: stream once, then print what happened, secrets redacted.

Strategy: the stream runs exactly as ``chat`` runs it (same options, same
offline fallback, text on stdout). Every event is recorded in a
:class:`~._timeline.Timeline`; when the stream ends, however it ends
(finished, failed, or interrupted by Ctrl+C), the report goes to stderr:
the timeline, a summary of ``stream.metrics``, the request and the outcome.
Then a failure propagates to the CLI's error handler (exit status 1) and an
interrupt to its Ctrl+C handler (130).

The request is rebuilt by the provider from the same options
(:meth:`StreamRequest.spec`), so the report is right against real servers;
it is the first attempt's request (a resumed attempt adds a cursor or the
delivered text). Secrets are removed three times over: the key never enters
the spec (a placeholder stands in), secret-looking header values are
replaced, and the whole report is scrubbed of the environment's keys.
"""

from __future__ import annotations

import argparse
from typing import List, Mapping, Optional, TextIO, Union

from .._events import Distribution, StreamMetrics
from .._providers._base import RequestSpec
from .._transport import redact_url
from ._chat import format_ms
from .._redact import MARKER as REDACTED
from .._redact import SECRET_HEADER_WORDS, is_secret_header
from ._session import Secrets, Session, add_stream_options, one_line, open_stream, relay, stdout_for_text
from ._timeline import Timeline

__all__ = ["add_debug_command", "run_debug", "render_report", "redact_headers", "SECRET_HEADER_WORDS"]

#: A header whose lower-cased name contains one of these has its value replaced
#: (authorization, x-api-key, api-key, x-goog-api-key, cookie, *-token, *-secret...).


def add_debug_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Declare ``debug`` and its options (those of ``chat`` without ``--events``)."""
    debug = commands.add_parser(
        "debug", help="stream once, then print a debug report on stderr",
        description="Stream once (text on stdout), then print a report on stderr: the timeline of events, "
                    "metrics (chunks, bytes, read times, gaps), retries and errors, the request "
                    "(secrets redacted) and the outcome.")
    add_stream_options(debug)


def redact_headers(headers: Mapping[str, Union[str, bytes]]) -> List[str]:
    """``Name: value`` lines, with the value of every secret-looking header replaced by ``<redacted>``."""
    lines = []
    for name, value in headers.items():
        shown = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        lines.append(f"{name}: {REDACTED if is_secret_header(name) else shown}")
    return lines


def _dist(dist: Distribution, *names: str) -> str:
    if not dist.count:
        return "-"
    return ", ".join(f"{name} {format_ms(getattr(dist, name))}" for name in names) + f" (n={dist.count})"


def _sizes(dist: Distribution) -> str:
    if not dist.count or dist.min is None or dist.max is None or dist.mean is None:
        return "-"
    return f"min {dist.min:.0f} B, avg {dist.mean:.1f} B, max {dist.max:.0f} B"


def _summary(m: StreamMetrics) -> List[str]:
    counted = "reported by the provider" if m.output_tokens is not None else "counted text deltas"
    speed = "-" if m.tokens_per_second is None else f"{m.tokens_per_second:.1f}"
    retries = f" ({m.retries} {'retry' if m.retries == 1 else 'retries'})" if m.retries else ""
    rows = [
        ("time to first token", format_ms(m.time_to_first_token)),
        ("duration", format_ms(m.duration)),
        ("text deltas", str(m.text_deltas)),
        ("tokens", f"{m.tokens} ({counted})"),
        ("tokens/s", speed),
        ("chunks", str(m.chunks)),
        ("bytes received", str(m.bytes_received)),
        ("chunk size", _sizes(m.chunk_size)),
        ("read time", _dist(m.read_time, "p50", "p99", "max")),
        ("chunk gap", _dist(m.chunk_gap, "p50", "p99", "max")),
        ("attempts", f"{m.attempts}{retries}"),
        ("errors", ", ".join(m.errors) or "none"),
        ("queued", format_ms(m.queued)),
    ]
    return [f"  {label:<20} {value}" for label, value in rows]


def _request(spec: RequestSpec) -> List[str]:
    lines = [f"  {spec.method} {redact_url(spec.url)}"]
    lines.extend(f"  {line}" for line in redact_headers(spec.headers))
    if spec.json is not None:
        lines.append(f"  body: JSON with {', '.join(spec.json)}")
    return lines


def render_report(timeline: Timeline, metrics: StreamMetrics, spec: RequestSpec, outcome: str) -> str:
    """The whole report, one string ending with a line break (not yet scrubbed)."""
    lines = ["", "llmstream debug report", "timeline (ms since the start):"]
    lines.extend(timeline.lines() or ["  (no events)"])
    lines.append("metrics:")
    lines.extend(_summary(metrics))
    lines.append("request (first attempt):")
    lines.extend(_request(spec))
    lines.append(f"outcome: {outcome}")
    return "\n".join(lines) + "\n"


def _outcome(session: Session, error: Optional[BaseException]) -> str:
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (Ctrl+C)"
    if error is not None:
        return f"failed: {type(error).__name__}: {one_line(str(error))}"
    return f"finished (finish_reason {session.stream.result.finish_reason!r})"


def _report(session: Session, timeline: Timeline, error: Optional[BaseException], err: TextIO,
            secrets: Secrets) -> None:
    timeline.add("end" if error is None else f"end: {type(error).__name__}")
    spec = session.request.spec(session.client.base_url)
    report = render_report(timeline, session.stream.metrics, spec, _outcome(session, error))
    err.write(secrets.scrub(report))
    err.flush()


def run_debug(args: argparse.Namespace, err: TextIO, secrets: Secrets) -> int:
    """Stream once, print the report; return 0, or re-raise what ended the stream after the report."""
    out = stdout_for_text()
    with open_stream(args, err) as session:
        timeline = Timeline(start=session.started_at)
        try:
            relay(session.stream, out, timeline.add)
        except BaseException as exc:  # report whatever ended the stream (Ctrl+C included), then re-raise it
            session.stream.close()  # after an interrupt it is still streaming: stop it so the metrics are final
            _report(session, timeline, exc, err, secrets)
            raise
        _report(session, timeline, None, err, secrets)
    return 0
