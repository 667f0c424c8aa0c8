"""Prometheus metrics for every llmstream stream of the process (the ``prometheus`` extra).

Usage::

    import prometheus_client
    import llmstream.prometheus

    llmstream.prometheus.install()           # into prometheus_client.REGISTRY
    prometheus_client.start_http_server(9100)

Strategy: :func:`install` subscribes to the process-wide monitor
(``llmstream.monitor``). Each stream's :class:`~llmstream.StreamReport` arrives
once, at the stream's end, in the worker thread, and updates counters and
histograms (prometheus-client's own objects, thread-safe). The gauges are read
from ``monitor.snapshot()`` at scrape time by a custom collector, so they are
never stale and cost nothing between scrapes.

Metrics (names with the default ``namespace="llmstream"``; "per stream" histograms
take one observation per ended stream):

=========================================  =========  ========================  ==================================
name                                       type       labels                    meaning
=========================================  =========  ========================  ==================================
llmstream_streams_total                    counter    provider, model, outcome  ended streams; outcome: finished,
                                                                                failed, closed (by the caller)
llmstream_stream_errors_total              counter    provider, model, error    failed streams, by the final
                                                                                error's type name
llmstream_retries_total                    counter    provider, model, error    errors that were retried
llmstream_attempts_total                   counter    provider, model           HTTP attempts, retries included
llmstream_output_tokens_total              counter    provider, model           output tokens as reported, else
                                                                                text pieces (StreamMetrics.tokens)
llmstream_received_bytes_total             counter    provider, model           body bytes, all attempts
llmstream_cost_usd_total                   counter    provider, model, outcome  US dollars spent, all attempts
                                                                                (streams whose client has
                                                                                ``pricing`` for the model)
llmstream_wasted_output_tokens_total       counter    provider, model           output tokens paid for and not
                                                                                kept (failed attempts asked
                                                                                again, replays, resets)
llmstream_time_to_first_token_seconds      histogram  provider, model           per stream with content: start
                                                                                to first content
llmstream_stream_duration_seconds          histogram  provider, model, outcome  per stream: start to end
llmstream_inter_token_gap_seconds          histogram  provider, model           per stream with gaps: its MEDIAN
                                                                                gap between content arrivals
llmstream_inter_token_gap_max_seconds      histogram  provider, model           per stream with gaps: its LONGEST
                                                                                gap (a stall)
llmstream_tokens_per_second                histogram  provider, model           per stream: tokens/s from the first
                                                                                token to the end
llmstream_active_streams                   gauge                                streams started, not ended (now)
llmstream_waiting_streams                  gauge                                streams waiting for a concurrency
                                                                                slot or the rate limiter (now)
llmstream_circuit_breaker_state            gauge      base_url, state           1 for each breaker's current state
                                                                                (closed, half-open, open), 0 for
                                                                                the two others (state-set)
=========================================  =========  ========================  ==================================

Choices, and why:

* Inter-token gaps. A report carries a summary of a stream's gaps, not each
  gap, so a histogram of every gap cannot be built honestly. Each stream is
  one observation instead: its median gap (the pace a reader sees) and, in a
  second histogram, its longest gap (the stall a reader notices). Their
  ``_count`` counts streams, not gaps.
* ``model`` is a label: latency and speed depend on the model far more than on
  anything else, and an application uses a handful of models. To keep a
  program that passes arbitrary model strings from creating unbounded series,
  only the first ``max_models`` distinct models get their own label value;
  later ones are counted under ``model="other"`` (logged once).
* The circuit breaker is exported state-set style, as resilience4j and
  kube-state-metrics do (``{state="open"} 1``), not as a number code: the
  alert reads ``llmstream_circuit_breaker_state{state="open"} == 1`` without
  a legend. ``base_url`` is the client's URL with userinfo and query removed;
  no label ever holds an API key.
* ``error`` label values are exception type names: llmstream's error classes
  (a bug in the worker would show its own exception's name), a small set.

Limits: counts cover streams that end after :func:`install`. The scrape-time
gauges read this process's monitor, so prometheus-client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``) does not aggregate them across processes.

Needs the ``prometheus`` extra (prometheus-client). Nothing else in llmstream
imports this module; importing it without prometheus-client raises an
``ImportError`` naming the extra.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.metrics_core import Metric
except ImportError as exc:  # the optional extra is not installed
    raise ImportError('llmstream.prometheus needs prometheus-client: pip install "llmstream[prometheus]"') from exc

from ._events import MonitorSnapshot, StreamReport
from ._monitor import monitor

__all__ = ["Exporter", "install", "OTHER_MODEL", "CIRCUIT_STATES"]

logger = logging.getLogger("llmstream")

#: The ``model`` label value of models past ``max_models``.
OTHER_MODEL = "other"
#: The values of the ``state`` label of ``llmstream_circuit_breaker_state``.
CIRCUIT_STATES = ("closed", "half-open", "open")

# Buckets in seconds (or tokens/s), spanning what LLM APIs do: a TTFT from tens
# of milliseconds (a warm small model) to a minute (a reasoning model thinking).
_TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0)
_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_GAP_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SPEED_BUCKETS = (1.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 500.0, 1000.0)

_NAMESPACE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

# One exporter per (registry, namespace). The exporter holds its registry, so
# the id cannot be reused by another registry while the entry exists.
_installed: Dict[Tuple[int, str], "Exporter"] = {}
_installed_lock = threading.Lock()


class _MonitorCollector:
    """The scrape-time gauges, read from ``monitor.snapshot()``."""

    def __init__(self, namespace: str, snapshot: Callable[[], MonitorSnapshot]) -> None:
        self._ns = namespace
        self._snapshot = snapshot

    def describe(self) -> List[Metric]:
        # Naming the series lets the registry refuse a clash at register() time.
        return self._families(None)

    def collect(self) -> List[Metric]:
        return self._families(self._snapshot())

    def _families(self, snap: Optional[MonitorSnapshot]) -> List[Metric]:
        ns = self._ns
        active = GaugeMetricFamily(f"{ns}_active_streams", "Streams started and not ended.")
        waiting = GaugeMetricFamily(f"{ns}_waiting_streams",
                                    "Streams waiting for a concurrency slot or the rate limiter.")
        circuits = GaugeMetricFamily(f"{ns}_circuit_breaker_state",
                                     "Circuit breaker state by base URL: 1 for the current state, 0 for the others.",
                                     labels=["base_url", "state"])
        if snap is not None:
            active.add_metric([], snap.active)
            waiting.add_metric([], snap.waiting)
            for base_url, current in sorted(snap.circuits.items()):
                for state in CIRCUIT_STATES:
                    circuits.add_metric([base_url, state], 1.0 if state == current else 0.0)
        return [active, waiting, circuits]


class Exporter:
    """The Prometheus metrics of llmstream in one registry; made by :func:`install`.

    Attributes:
        registry: the ``CollectorRegistry`` the metrics are registered in.
        namespace: the prefix of every metric name.
        max_models: distinct ``model`` label values before ``"other"``.
    """

    def __init__(self, registry: CollectorRegistry, namespace: str, max_models: int) -> None:
        self.registry = registry
        self.namespace = namespace
        self.max_models = max_models
        self._lock = threading.Lock()
        self._models: Set[str] = set()
        self._unsubscribe: Optional[Callable[[], None]] = None
        by_model = ["provider", "model"]
        self._streams = Counter(f"{namespace}_streams_total", "Ended streams, by outcome (finished, failed, closed).",
                                [*by_model, "outcome"], registry=None)
        self._errors = Counter(f"{namespace}_stream_errors_total", "Failed streams, by the final error's type name.",
                               [*by_model, "error"], registry=None)
        self._retries = Counter(f"{namespace}_retries_total", "Errors that were retried, by type name.",
                                [*by_model, "error"], registry=None)
        self._attempts = Counter(f"{namespace}_attempts_total", "HTTP attempts, first ones and retries.",
                                 by_model, registry=None)
        self._tokens = Counter(f"{namespace}_output_tokens_total",
                               "Output tokens as reported by the provider, else text pieces.", by_model, registry=None)
        self._bytes = Counter(f"{namespace}_received_bytes_total", "Response body bytes received, all attempts.",
                              by_model, registry=None)
        self._cost = Counter(f"{namespace}_cost_usd", "US dollars spent by ended streams, all attempts (with pricing).",
                             [*by_model, "outcome"], registry=None)
        self._wasted = Counter(f"{namespace}_wasted_output_tokens_total",
                               "Output tokens paid for that the caller did not keep (failed attempts asked again, "
                               "replays, resets).", by_model, registry=None)
        self._ttft = Histogram(f"{namespace}_time_to_first_token_seconds",
                               "Per stream: seconds from its start to its first content.",
                               by_model, buckets=_TTFT_BUCKETS, registry=None)
        self._duration = Histogram(f"{namespace}_stream_duration_seconds",
                                   "Per ended stream: seconds from start to end.",
                                   [*by_model, "outcome"], buckets=_DURATION_BUCKETS, registry=None)
        self._gap = Histogram(f"{namespace}_inter_token_gap_seconds",
                              "Per stream: its median gap between content arrivals (one observation per stream).",
                              by_model, buckets=_GAP_BUCKETS, registry=None)
        self._gap_max = Histogram(f"{namespace}_inter_token_gap_max_seconds",
                                  "Per stream: its longest gap between content arrivals (one observation per stream).",
                                  by_model, buckets=_GAP_BUCKETS, registry=None)
        self._speed = Histogram(f"{namespace}_tokens_per_second",
                                "Per stream: tokens per second from the first token to the end.",
                                by_model, buckets=_SPEED_BUCKETS, registry=None)
        self._collectors: List[Union[Counter, Histogram, _MonitorCollector]] = [
            self._streams, self._errors, self._retries, self._attempts, self._tokens, self._bytes,
            self._cost, self._wasted, self._ttft, self._duration, self._gap, self._gap_max, self._speed,
            _MonitorCollector(namespace, monitor.snapshot),
        ]

    def __repr__(self) -> str:
        state = "installed" if self.installed else "uninstalled"
        return f"<Exporter namespace={self.namespace!r} max_models={self.max_models} {state}>"

    @property
    def installed(self) -> bool:
        """True between :func:`install` and :meth:`uninstall`."""
        return self._unsubscribe is not None

    def _start(self) -> None:
        """Register every collector (all or none) and subscribe to the monitor."""
        done: List[Union[Counter, Histogram, _MonitorCollector]] = []
        try:
            for collector in self._collectors:
                self.registry.register(collector)
                done.append(collector)
        except ValueError:  # a name clash with metrics already in the registry: leave it as it was
            for collector in done:
                self.registry.unregister(collector)
            raise
        self._unsubscribe = monitor.subscribe(self._record)

    def uninstall(self) -> None:
        """Stop recording and remove the metrics from the registry; idempotent.

        A stream ending during the call may still update the (now unregistered)
        metrics; nothing is exported after this returns. :func:`install` may be
        called again afterwards; its counts start from zero.
        """
        with _installed_lock:
            unsubscribe, self._unsubscribe = self._unsubscribe, None
            if unsubscribe is None:
                return
            unsubscribe()
            for collector in self._collectors:
                self.registry.unregister(collector)
            _installed.pop((id(self.registry), self.namespace), None)

    def _model_label(self, model: str) -> str:
        with self._lock:
            if model in self._models:
                return model
            if len(self._models) < self.max_models:
                self._models.add(model)
                return model
            full = len(self._models) == self.max_models
            if full:
                self._models.add(OTHER_MODEL)  # so the message below is logged once
        if full:
            logger.warning("llmstream.prometheus: more than %d models; further ones are counted as model=%r",
                           self.max_models, OTHER_MODEL)
        return OTHER_MODEL

    def _record(self, report: StreamReport) -> None:
        """The monitor listener: runs in the worker thread at each stream's end."""
        m = report.metrics
        labels = (report.provider, self._model_label(report.model))
        self._streams.labels(*labels, report.outcome).inc()
        if report.error is not None:
            self._errors.labels(*labels, report.error).inc()
        # ``errors`` lists the retried errors, then the final one if the stream failed.
        for name in m.errors[:-1] if report.error is not None else m.errors:
            self._retries.labels(*labels, name).inc()
        self._attempts.labels(*labels).inc(m.attempts)
        self._tokens.labels(*labels).inc(m.tokens)
        self._bytes.labels(*labels).inc(m.bytes_received)
        if report.cost is not None and math.isfinite(report.cost.total):
            self._cost.labels(*labels, report.outcome).inc(report.cost.total)
        self._wasted.labels(*labels).inc(m.wasted_output_tokens)
        self._duration.labels(*labels, report.outcome).observe(m.duration)
        _observe(self._ttft, labels, m.time_to_first_token)
        _observe(self._gap, labels, m.inter_token_gap.p50)
        _observe(self._gap_max, labels, m.inter_token_gap.max)
        _observe(self._speed, labels, m.tokens_per_second)


def _observe(histogram: Histogram, labels: Sequence[str], value: Optional[float]) -> None:
    if value is not None:
        histogram.labels(*labels).observe(value)


def install(registry: Optional[CollectorRegistry] = None, *, namespace: str = "llmstream",
            max_models: int = 50) -> Exporter:
    """Export llmstream's metrics to a Prometheus registry (see the module docstring for the list).

    Idempotent: installing again into the same registry with the same
    namespace returns the exporter already there, so streams are never
    counted twice.

    Args:
        registry: where to register; default ``prometheus_client.REGISTRY``.
        namespace: the prefix of every metric name.
        max_models: how many distinct models get their own ``model`` label
            value; streams of further models are counted as ``"other"``.

    Returns:
        The :class:`Exporter`; :meth:`Exporter.uninstall` undoes this.

    Raises:
        ValueError: ``namespace`` is not a valid metric name prefix,
            ``max_models`` is negative, the exporter already installed there
            has another ``max_models``, or a metric name is already taken in
            the registry (nothing is then registered).

    Usage::

        exporter = llmstream.prometheus.install(registry)
        ...
        exporter.uninstall()
    """
    if not _NAMESPACE.match(namespace):
        raise ValueError(f"namespace must match [a-zA-Z_][a-zA-Z0-9_]*, got {namespace!r}")
    if isinstance(max_models, bool) or not isinstance(max_models, int) or max_models < 0:
        raise ValueError(f"max_models must be an int >= 0, got {max_models!r}")
    target = REGISTRY if registry is None else registry
    with _installed_lock:
        existing = _installed.get((id(target), namespace))
        if existing is not None:
            if existing.max_models != max_models:
                raise ValueError(f"llmstream.prometheus is already installed in this registry with "
                                 f"max_models={existing.max_models}; uninstall() it first to change it")
            return existing
        exporter = Exporter(target, namespace, max_models)
        exporter._start()
        _installed[(id(target), namespace)] = exporter
        return exporter
