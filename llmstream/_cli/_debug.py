"""``llmstream debug "prompt"``: stream once, then print what happened, secrets redacted.

Strategy: the stream runs exactly as ``chat`` runs it (same options, same
offline fallback, text on stdout). Every event is recorded in a
:class:`~._timeline.Timeline`; when the stream ends, however it ends
(finished, failed, or interrupted by Ctrl+C), the report goes to stderr:
the timeline, a summary of ``stream.metrics``, the request and the outcome.
Then a failure propagates to the CLI's error handler (exit status 1) and an
interrupt to its Ctrl+C handler (130).

The report names the model, provider and base URL, then shows every
attempt's request exactly as sent (recorded by a ``requests`` hook on the
client's session: a resumed attempt's ``Last-Event-ID`` header or prefilled
assistant message is there) with the body's values (long strings shortened to
:data:`BODY_TEXT_WIDTH` characters with their length said), and the answer's
status and headers (request ids). When the session cannot be reached, the
first request is rebuilt by the provider from the same options
(:meth:`StreamRequest.spec`) instead. The error itself is said once, by the
CLI's error line after the report; the report's outcome only names it.

Secrets are removed three times over: secret-looking header values are
replaced (``_redact.is_secret_header``), and the whole report passes the
library's redaction step (:class:`~llmstream._redact.Redactor`) with the
environment's keys (:meth:`Secrets.scrub`); a rebuilt request never holds the
key at all (a placeholder stands in).
"""

from __future__ import annotations

import argparse
import json
from typing import Any, List, Mapping, Optional, TextIO, Union

from .._events import Distribution, StreamMetrics
from .._providers._base import RequestSpec
from .._transport import redact_url
from ._chat import format_ms
from .._redact import MARKER as REDACTED
from .._redact import SECRET_HEADER_WORDS, is_secret_header
from ._session import Exchange, Exchanges, Secrets, Session, add_stream_options, open_stream, relay, stdout_for_text
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


#: Characters of a string in a request body shown before it is shortened.
BODY_TEXT_WIDTH = 200


def shorten_values(value: Any) -> Any:
    """``value`` with every string longer than :data:`BODY_TEXT_WIDTH` cut, its length said."""
    if isinstance(value, str) and len(value) > BODY_TEXT_WIDTH:
        return f"{value[:BODY_TEXT_WIDTH]}... ({len(value)} chars)"
    if isinstance(value, dict):
        return {key: shorten_values(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shorten_values(item) for item in value]
    return value


def _body(body: Union[bytes, str, None, Any]) -> List[str]:
    if body is None:
        return []
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        shown = json.dumps(shorten_values(json.loads(body)), ensure_ascii=False, indent=2)
    except (TypeError, ValueError):
        shown = repr(shorten_values(str(body)))
    return ["  body:", *(f"    {line}" for line in shown.splitlines())]


def _request(spec: RequestSpec) -> List[str]:
    lines = [f"  {spec.method} {redact_url(spec.url)}"]
    lines.extend(f"  {line}" for line in redact_headers(spec.headers))
    if spec.json is not None:
        lines.extend(_body(json.dumps(spec.json)))
    return lines


def _exchange(number: int, exchange: Exchange) -> List[str]:
    lines = [f"attempt {number}:", f"  {exchange.method} {redact_url(exchange.url)}"]
    lines.extend(f"  {line}" for line in redact_headers(exchange.headers))
    lines.extend(_body(exchange.body))
    lines.append(f"  response: {exchange.status} {exchange.reason}".rstrip())
    lines.extend(f"    {line}" for line in redact_headers(exchange.response_headers))
    return lines


def render_report(timeline: Timeline, metrics: StreamMetrics, spec: RequestSpec, outcome: str,
                  exchanges: Optional[Exchanges] = None, model: str = "") -> str:
    """The whole report, one string ending with a line break (not yet scrubbed)."""
    lines = ["", "llmstream debug report"]
    if model:
        lines.append(model)
    lines.append("timeline (ms since the start):")
    lines.extend(timeline.lines() or ["  (no events)"])
    lines.append("metrics:")
    lines.extend(_summary(metrics))
    if exchanges is None or not exchanges.items:
        # Nothing recorded (no answer came, or the session was out of reach): the first request, rebuilt.
        lines.append("request (first attempt):" if exchanges is None else
                     "request (first attempt, as built; no answer came):")
        lines.extend(_request(spec))
    else:
        lines.append(f"requests ({len(exchanges.items)} answered; an attempt without an answer is in the timeline):")
        for number, exchange in enumerate(list(exchanges.items), 1):
            lines.extend(_exchange(number, exchange))
    lines.append(f"outcome: {outcome}")
    return "\n".join(lines) + "\n"


def _outcome(session: Session, error: Optional[BaseException]) -> str:
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (Ctrl+C)"
    if error is not None:
        return f"failed with {type(error).__name__} (the error line below)"
    return f"finished (finish_reason {session.stream.result.finish_reason!r})"


def _report(session: Session, timeline: Timeline, error: Optional[BaseException], err: TextIO,
            secrets: Secrets) -> None:
    timeline.add("end" if error is None else f"end: {type(error).__name__}")
    spec = session.request.spec(session.client.base_url)
    model = (f"model: {session.request.model} (provider {session.request.provider}, "
             f"base URL {redact_url(session.client.base_url)})")
    report = render_report(timeline, session.stream.metrics, spec, _outcome(session, error), session.exchanges, model)
    err.write(secrets.scrub(report))
    err.flush()


def run_debug(args: argparse.Namespace, err: TextIO, secrets: Secrets) -> int:
    """Stream once, print the report; return 0, or re-raise what ended the stream after the report."""
    out = stdout_for_text()
    with open_stream(args, err, record=True) as session:
        timeline = Timeline(start=session.started_at)
        try:
            relay(session.stream, out, timeline.add, err=err)
        except BaseException as exc:  # report whatever ended the stream (Ctrl+C included), then re-raise it
            session.stream.close()  # after an interrupt it is still streaming: stop it so the metrics are final
            _report(session, timeline, exc, err, secrets)
            raise
        _report(session, timeline, None, err, secrets)
    return 0
