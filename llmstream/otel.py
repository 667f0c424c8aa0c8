"""OpenTelemetry traces and metrics for every llmstream stream (the ``otel`` extra), in the GenAI conventions.

Usage::

    import llmstream.otel

    llmstream.otel.install()   # the global tracer and meter providers, or pass your own

Strategy: :func:`install` registers an observer factory with the process-wide
monitor (``llmstream.monitor.observe``). Each new stream asks it for an
observer once, in the caller's thread, so the stream's span is a child of
whatever span is current there. The observer is told of each attempt (it
opens a child span and returns the W3C ``traceparent`` header for the
request) and of the stream's end (a :class:`~llmstream.StreamReport` with
every attempt), where it ends the spans with the times the worker measured
and records the metrics. Nothing is done per token, and with nothing
installed a stream pays one attribute read.

Traces (GenAI semantic conventions, https://opentelemetry.io/docs/specs/semconv/gen-ai/):

* One ``CLIENT`` span per stream, named ``chat {model}``, with
  ``gen_ai.operation.name`` (``chat``), ``gen_ai.provider.name`` (``openai``,
  ``anthropic``, ``azure.ai.openai``, ``gcp.gemini``... from the provider and
  the server's host; ``ollama`` for Ollama, which the conventions do not
  list), ``gen_ai.request.model``, ``gen_ai.request.stream``,
  ``gen_ai.request.max_tokens``/``temperature``/``top_p`` when sent,
  ``gen_ai.response.id``, ``gen_ai.response.model``,
  ``gen_ai.response.finish_reasons`` (``["error"]`` when none came),
  ``gen_ai.usage.input_tokens``/``output_tokens`` and, when reported,
  ``gen_ai.usage.cache_read.input_tokens``, ``gen_ai.usage.cache_write.input_tokens``,
  ``gen_ai.usage.reasoning.output_tokens`` (tokens of every attempt: what was
  billed), ``gen_ai.response.time_to_first_chunk``, ``server.address``,
  ``server.port``, ``error.type`` (llmstream's error class name) and an
  ``ERROR`` status on failure. llmstream's own: ``llmstream.outcome``
  (finished, failed, closed), ``llmstream.attempts``,
  ``llmstream.usage.wasted_output_tokens``, ``llmstream.cost.usd`` and
  ``llmstream.cost.at_least`` with pricing.
* One ``INTERNAL`` child span per attempt, ``llmstream.attempt``
  (``llmstream.attempt.number``, ``llmstream.attempt.resume``,
  ``llmstream.attempt.delay``, ``error.type`` when it failed). The
  ``traceparent`` sent with a request names its attempt's span.
* Span events on the stream's span: ``llmstream.retry`` (``llmstream.attempt.number``
  of the attempt about to start, ``llmstream.retry.cause``, ``llmstream.retry.delay``,
  ``llmstream.retry.resume``) and ``llmstream.reset`` (``llmstream.attempt.number``,
  ``llmstream.reset.discarded_chars``).
* Content only on opt-in (``install(capture_content=True)`` or
  ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``):
  ``gen_ai.input.messages``, ``gen_ai.system_instructions`` and
  ``gen_ai.output.messages`` as JSON strings in the conventions' parts format.

Metrics (histograms with the conventions' units and bucket advice), with
``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.model``,
``gen_ai.response.model``, ``server.address``, ``server.port`` (and
``error.type`` on the duration of a failed stream):

* default (the conventions as of v1.36): ``gen_ai.client.operation.duration`` (s),
  ``gen_ai.client.token.usage`` ({token}, ``gen_ai.token.type`` input/output),
  ``gen_ai.client.operation.time_to_first_chunk`` (s),
  ``gen_ai.client.operation.time_per_output_chunk`` (s, one observation per
  chunk after the first);
* with ``OTEL_SEMCONV_STABILITY_OPT_IN`` holding ``gen_ai_latest_experimental``
  (read at :func:`install`), the newer names instead:
  ``gen_ai.client.inference.duration``, ``...time_to_first_chunk``,
  ``...time_per_output_chunk``, the counters ``gen_ai.client.inference.usage.input_tokens``,
  ``...output_tokens``, ``...cache_read.input_tokens``, ``...cache_write.input_tokens``,
  ``...reasoning.output_tokens`` (``gen_ai.token.modality`` = ``unknown``: llmstream
  does not break usage down by modality) and the histograms
  ``gen_ai.client.inference.operation.input_tokens`` / ``output_tokens``.

Choices: a "chunk" is a socket read that brought content, as in
``StreamMetrics.inter_token_gap``; each gap is recorded at its 2%-wide
bucket's middle, and time spent blocked on a slow caller is left out. The
gaps are recorded at the stream's end, before the caller sees it: a stream of
more than :data:`MAX_CHUNK_OBSERVATIONS` chunks records that many, spread as
its gaps were (a record costs about 10 us, so the end is never held back more
than about 0.1 s).
``duration`` and the time to first chunk run from the stream's start
(queueing for a concurrency slot included), as ``StreamMetrics`` measures them. The ``traceparent`` header is W3C Trace Context whatever the global
propagator is; ``install(propagate=False)`` sends none, and a request that
already carries one keeps its own.

Needs the ``otel`` extra (opentelemetry-api; an SDK to export). Nothing else
in llmstream imports this module.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as exc:  # the optional extra is not installed
    raise ImportError('llmstream.otel needs opentelemetry-api: pip install "llmstream[otel]"') from exc

from ._cost import account
from ._events import AttemptReport, StreamReport
from ._monitor import StreamStart, monitor
from ._version import __version__

__all__ = ["install", "uninstall", "Instrumentation", "provider_name", "STABILITY_ENV", "CAPTURE_CONTENT_ENV"]

logger = logging.getLogger("llmstream")

STABILITY_ENV = "OTEL_SEMCONV_STABILITY_OPT_IN"
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
LATEST = "gen_ai_latest_experimental"

#: The conventions' bucket advice.
SECONDS_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)

#: At most this many ``time_per_output_chunk`` observations per stream (see :meth:`Instrumentation.record`).
MAX_CHUNK_OBSERVATIONS = 10_000

#: ``gen_ai.provider.name`` by the server's host (the conventions' well-known values).
_HOSTS = (
    ("openai.azure.com", "azure.ai.openai"),
    ("services.ai.azure.com", "azure.ai.inference"),
    ("models.inference.ai.azure.com", "azure.ai.inference"),
    ("generativelanguage.googleapis.com", "gcp.gemini"),
    ("aiplatform.googleapis.com", "gcp.vertex_ai"),
    ("api.groq.com", "groq"),
    ("api.deepseek.com", "deepseek"),
    ("api.mistral.ai", "mistral_ai"),
    ("api.x.ai", "x_ai"),
    ("api.perplexity.ai", "perplexity"),
    ("api.moonshot.ai", "moonshot_ai"),
    ("api.moonshot.cn", "moonshot_ai"),
    ("api.cohere.com", "cohere"),
    ("api.cohere.ai", "cohere"),
)
#: ``gen_ai.provider.name`` by llmstream's provider, when the host says nothing more.
_PROVIDERS = {"openai": "openai", "openai-responses": "openai", "anthropic": "anthropic", "ollama": "ollama"}


def provider_name(provider: str, url: str) -> str:
    """The conventions' ``gen_ai.provider.name`` for an llmstream provider talking to ``url``."""
    host = (urlsplit(url).hostname or "").lower()
    for suffix, name in _HOSTS:
        if host == suffix or host.endswith("." + suffix):
            return name
    if host.endswith("-aiplatform.googleapis.com"):  # regional endpoints: us-central1-aiplatform...
        return "gcp.vertex_ai"
    if host.startswith("bedrock-runtime.") and host.endswith(".amazonaws.com"):
        return "aws.bedrock"
    return _PROVIDERS.get(provider, provider)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("true", "1", "yes")


def _latest() -> bool:
    return LATEST in [v.strip() for v in os.environ.get(STABILITY_ENV, "").split(",")]


# -- content (opt-in) ----------------------------------------------------------------


def _parts(content: Any) -> List[Dict[str, Any]]:
    """A message's content as the conventions' parts: text as text, anything else by its type."""
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    parts: List[Dict[str, Any]] = []
    for block in content if isinstance(content, list) else ():
        if isinstance(block, Mapping) and isinstance(block.get("text"), str):
            parts.append({"type": "text", "content": block["text"]})
        elif isinstance(block, Mapping):
            parts.append({"type": str(block.get("type", "unknown"))})
    return parts


def _input_content(body: Optional[Mapping[str, Any]]) -> Dict[str, str]:
    if not body:
        return {}
    found: Dict[str, str] = {}
    messages = body.get("messages", body.get("input"))
    if isinstance(messages, list):
        converted = [{"role": str(m.get("role", "user")), "parts": _parts(m.get("content"))}
                     for m in messages if isinstance(m, Mapping)]
        found["gen_ai.input.messages"] = json.dumps(converted, ensure_ascii=False)
    system = body.get("system", body.get("instructions"))
    if system is not None:
        found["gen_ai.system_instructions"] = json.dumps(_parts(system), ensure_ascii=False)
    return found


# -- the observer of one stream -------------------------------------------------------------


class _StreamSpan:
    """Follows one stream: its span, its attempts' spans, and its metrics at the end."""

    def __init__(self, inst: "Instrumentation", start: StreamStart) -> None:
        self._inst = inst
        self.wants_text = inst.capture_content
        self._start = start
        # monotonic -> epoch nanoseconds, for the times the worker measured.
        self._epoch = time.time_ns() - int(time.monotonic() * 1e9)
        self._base = _base_attributes(start)
        # The caller's context now; the span itself opens (back-dated to the
        # stream's start) when the stream runs, so a stream dropped before it
        # ever ran leaves no span open.
        self._parent = otel_context.get_current()
        self._opened: Optional[trace.Span] = None
        self._attempts: List[trace.Span] = []

    @property
    def _span(self) -> trace.Span:
        if self._opened is None:
            start = self._start
            attributes: Dict[str, Any] = {**self._base, "gen_ai.request.stream": True}
            attributes.update(_request_parameters(start.body))
            if self._inst.capture_content:
                attributes.update(_input_content(start.body))
            self._opened = self._inst.tracer.start_span(
                f"chat {start.model}", context=self._parent, kind=trace.SpanKind.CLIENT, attributes=attributes,
                start_time=self._ns(start.started_at),
            )
        return self._opened

    def _ns(self, monotonic: float) -> int:
        return self._epoch + int(monotonic * 1e9)

    def attempt_started(self, number: int, resume: Optional[str]) -> Mapping[str, str]:
        parent = trace.set_span_in_context(self._span)
        attributes: Dict[str, Any] = {"llmstream.attempt.number": number}
        if resume is not None:
            attributes["llmstream.attempt.resume"] = resume
        span = self._inst.tracer.start_span("llmstream.attempt", context=parent, kind=trace.SpanKind.INTERNAL,
                                            attributes=attributes)
        self._attempts.append(span)
        if not self._inst.propagate:
            return {}
        carrier: Dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(span, parent))
        return carrier

    def stream_ended(self, report: StreamReport, gaps: Sequence[Tuple[float, int]], text: Optional[str]) -> None:
        self._end_attempts(report.attempts)
        tokens = account(report.attempts, complete=report.outcome == "finished")
        response_model = tokens.response_model
        attributes = self._final_attributes(report, tokens, text)
        span = self._span
        span.set_attributes(attributes)
        if report.error is not None:
            span.set_status(trace.Status(trace.StatusCode.ERROR, report.error))
        end = report.started_at + report.metrics.duration
        span.end(end_time=self._ns(end))
        labels = dict(self._base)
        if response_model:
            labels["gen_ai.response.model"] = response_model
        self._inst.record(report, tokens, labels, gaps)

    def _end_attempts(self, attempts: Sequence[AttemptReport]) -> None:
        for index, record in enumerate(attempts):
            if index >= len(self._attempts):
                break
            span = self._attempts[index]
            if record.delay:
                span.set_attribute("llmstream.attempt.delay", record.delay)
            if record.response_id:
                span.set_attribute("gen_ai.response.id", record.response_id)
            if record.error is not None:
                span.set_attribute("error.type", record.error)
                span.set_status(trace.Status(trace.StatusCode.ERROR, record.error))
            if index + 1 < len(attempts):
                following = attempts[index + 1]
                self._span.add_event("llmstream.retry", {
                    "llmstream.attempt.number": following.number,
                    "llmstream.retry.cause": record.error or "unknown",
                    "llmstream.retry.delay": following.delay,
                    "llmstream.retry.resume": following.resume or "none",
                }, timestamp=self._ns(record.ended))
            if record.reset is not None:
                self._span.add_event("llmstream.reset", {
                    "llmstream.attempt.number": record.number,
                    "llmstream.reset.discarded_chars": record.discarded_chars,
                }, timestamp=self._ns(record.reset))
            span.end(end_time=self._ns(record.ended))
        for span in self._attempts[len(attempts):]:  # never reported (cannot happen; never left open)
            span.end()

    def _final_attributes(self, report: StreamReport, tokens: Any, text: Optional[str]) -> Dict[str, Any]:
        m = report.metrics
        out: Dict[str, Any] = {
            "llmstream.outcome": report.outcome,
            "llmstream.attempts": m.attempts,
            "gen_ai.response.finish_reasons": [report.finish_reason or "error"],
        }
        response_id = next((a.response_id for a in reversed(report.attempts) if a.response_id), None)
        if response_id:
            out["gen_ai.response.id"] = response_id
        if tokens.response_model:
            out["gen_ai.response.model"] = tokens.response_model
        paid = tokens.paid
        if _input_reported(report.attempts):
            out["gen_ai.usage.input_tokens"] = paid.input
        if m.attempts:
            out["gen_ai.usage.output_tokens"] = paid.output
        for key, value in (("gen_ai.usage.cache_read.input_tokens", paid.cache_read),
                           ("gen_ai.usage.cache_write.input_tokens", paid.cache_write),
                           ("gen_ai.usage.reasoning.output_tokens", paid.reasoning)):
            if value:
                out[key] = value
        out["llmstream.usage.wasted_output_tokens"] = m.wasted_output_tokens
        if m.time_to_first_token is not None:
            out["gen_ai.response.time_to_first_chunk"] = m.time_to_first_token
        if report.error is not None:
            out["error.type"] = report.error
        if report.cost is not None:
            out["llmstream.cost.usd"] = report.cost.total
            out["llmstream.cost.at_least"] = report.cost.at_least
        if text is not None:
            message = {"role": "assistant", "parts": [{"type": "text", "content": text}],
                       "finish_reason": report.finish_reason or "error"}
            out["gen_ai.output.messages"] = json.dumps([message], ensure_ascii=False)
        return out


def _input_reported(attempts: Sequence[AttemptReport]) -> bool:
    return any(a.usage is not None and a.usage.input_tokens is not None for a in attempts)


def _base_attributes(start: StreamStart) -> Dict[str, Any]:
    parts = urlsplit(start.url)
    attributes: Dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider_name(start.provider, start.url),
        "gen_ai.request.model": start.model,
    }
    if parts.hostname:
        attributes["server.address"] = parts.hostname
        attributes["server.port"] = parts.port or (443 if parts.scheme == "https" else 80)
    return attributes


def _request_parameters(body: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    if not body:
        return {}
    options = body.get("options") if isinstance(body.get("options"), Mapping) else {}
    found: Dict[str, Any] = {}
    for key, names in (("gen_ai.request.max_tokens", ("max_tokens", "max_completion_tokens", "max_output_tokens")),
                       ("gen_ai.request.temperature", ("temperature",)), ("gen_ai.request.top_p", ("top_p",))):
        for name in names:
            value = body.get(name, options.get(name) if isinstance(options, Mapping) else None)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                found[key] = value
                break
    if "gen_ai.request.max_tokens" not in found and isinstance(options, Mapping):
        value = options.get("num_predict")
        if isinstance(value, int) and not isinstance(value, bool):
            found["gen_ai.request.max_tokens"] = value
    return found


# -- installation --------------------------------------------------------------------------


class Instrumentation:
    """llmstream's OpenTelemetry instrumentation; made by :func:`install`.

    Attributes:
        tracer: the tracer spans are made with.
        latest: True when the newer ``gen_ai.client.inference.*`` metric names are used.
        capture_content: True when prompts and answers go on the spans.
        propagate: True when requests carry a ``traceparent`` header.
    """

    def __init__(self, tracer_provider: Optional[trace.TracerProvider],
                 meter_provider: Optional[otel_metrics.MeterProvider], *, capture_content: bool,
                 propagate: bool) -> None:
        self.tracer = trace.get_tracer("llmstream", __version__, tracer_provider=tracer_provider)
        meter = otel_metrics.get_meter("llmstream", __version__, meter_provider=meter_provider)
        self.latest = _latest()
        self.capture_content = capture_content
        self.propagate = propagate
        self._remove: Optional[Callable[[], None]] = None
        prefix = "gen_ai.client.inference" if self.latest else "gen_ai.client.operation"

        def seconds(name: str, description: str) -> Any:
            return meter.create_histogram(name, unit="s", description=description,
                                          explicit_bucket_boundaries_advisory=list(SECONDS_BUCKETS))

        def tokens(name: str, description: str) -> Any:
            return meter.create_histogram(name, unit="{token}", description=description,
                                          explicit_bucket_boundaries_advisory=list(TOKEN_BUCKETS))

        self._duration = seconds(
            "gen_ai.client.inference.duration" if self.latest else "gen_ai.client.operation.duration",
            "GenAI operation duration.")
        self._ttfc = seconds(f"{prefix}.time_to_first_chunk", "Time to receive the first chunk.")
        self._tpoc = seconds(f"{prefix}.time_per_output_chunk", "Time per output chunk after the first one.")
        if self.latest:
            self._counters = {
                kind: meter.create_counter(f"gen_ai.client.inference.usage.{kind}", unit="{token}",
                                           description=f"Tokens used: {kind.replace('.', ' ')}.")
                for kind in ("input_tokens", "output_tokens", "cache_read.input_tokens",
                             "cache_write.input_tokens", "reasoning.output_tokens")
            }
            self._per_operation = {
                kind: tokens(f"gen_ai.client.inference.operation.{kind}", f"{kind.replace('_', ' ')} per operation.")
                for kind in ("input_tokens", "output_tokens")
            }
        else:
            self._usage = tokens("gen_ai.client.token.usage", "Number of input and output tokens used.")

    def __repr__(self) -> str:
        state = "installed" if self.installed else "uninstalled"
        return f"<llmstream.otel.Instrumentation latest={self.latest} capture_content={self.capture_content} {state}>"

    @property
    def installed(self) -> bool:
        """True between :func:`install` and :meth:`uninstall`."""
        return self._remove is not None

    def _observer(self, start: StreamStart) -> _StreamSpan:
        return _StreamSpan(self, start)

    def uninstall(self) -> None:
        """Stop following new streams (streams already running still end their spans); idempotent."""
        global _current
        with _lock:
            remove, self._remove = self._remove, None
            if _current is self:
                _current = None
        if remove is not None:
            remove()

    def record(self, report: StreamReport, tokens: Any, labels: Dict[str, Any],
               gaps: Sequence[Tuple[float, int]]) -> None:
        """The metrics of one ended stream."""
        m = report.metrics
        duration_labels = dict(labels, **({"error.type": report.error} if report.error else {}))
        self._duration.record(m.duration, duration_labels)
        if m.time_to_first_token is not None:
            self._ttfc.record(m.time_to_first_token, labels)
        total = sum(count for _, count in gaps)
        # One observation per chunk after the first; past the cap (a record costs
        # ~10 us, and this runs before the caller sees the end) the counts are
        # scaled down so the distribution keeps its shape.
        scale = min(1.0, MAX_CHUNK_OBSERVATIONS / total) if total else 1.0
        for value, count in gaps:
            for _ in range(count if scale == 1.0 else max(1, round(count * scale))):
                self._tpoc.record(value, labels)
        paid = tokens.paid
        has_input = _input_reported(report.attempts)
        if not self.latest:
            if has_input:
                self._usage.record(paid.input, dict(labels, **{"gen_ai.token.type": "input"}))
            if m.attempts:
                self._usage.record(paid.output, dict(labels, **{"gen_ai.token.type": "output"}))
            return
        counted = dict(labels, **{"gen_ai.token.modality": "unknown"})
        values = {"input_tokens": paid.input, "output_tokens": paid.output, "cache_read.input_tokens": paid.cache_read,
                  "cache_write.input_tokens": paid.cache_write, "reasoning.output_tokens": paid.reasoning}
        for kind, counter in self._counters.items():
            counter.add(values[kind], counted)
        if has_input:
            self._per_operation["input_tokens"].record(paid.input, labels)
        self._per_operation["output_tokens"].record(paid.output, labels)


_lock = threading.Lock()
_current: Optional[Instrumentation] = None


def install(tracer_provider: Optional[trace.TracerProvider] = None,
            meter_provider: Optional[otel_metrics.MeterProvider] = None, *,
            capture_content: Optional[bool] = None, propagate: bool = True) -> Instrumentation:
    """Trace and measure every llmstream stream started from now on (see the module docstring).

    Installing again replaces the previous installation (one at a time, so no
    stream is traced twice).

    Args:
        tracer_provider: default: the global one (``opentelemetry.trace``).
        meter_provider: default: the global one (``opentelemetry.metrics``).
        capture_content: put prompts and answers on the spans; default: the
            ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` environment
            variable (``true``), else off.
        propagate: send a W3C ``traceparent`` header with each request.

    Returns:
        The :class:`Instrumentation`; its ``uninstall()`` (or :func:`uninstall`) undoes this.
    """
    global _current
    capture = _env_flag(CAPTURE_CONTENT_ENV) if capture_content is None else bool(capture_content)
    inst = Instrumentation(tracer_provider, meter_provider, capture_content=capture, propagate=propagate)
    with _lock:
        previous, _current = _current, inst
        inst._remove = monitor.observe(inst._observer)
    if previous is not None:
        previous.uninstall()
    return inst


def uninstall() -> None:
    """Undo :func:`install` (idempotent)."""
    with _lock:
        current = _current
    if current is not None:
        current.uninstall()
