"""examples/grafana-dashboard.json: every query names metrics (and labels) that llmstream.prometheus really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, Iterator, List, Set

import pytest

prometheus_client = pytest.importorskip("prometheus_client")

import llmstream.prometheus  # noqa: E402

DASHBOARD = Path(__file__).resolve().parent.parent / "examples" / "grafana-dashboard.json"
METRIC = re.compile(r"\b(llmstream_[a-zA-Z0-9_]+)")
SELECTOR = re.compile(r"\b(llmstream_[a-zA-Z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r"\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*\"(?:[^\"\\]|\\.)*\"\s*,?")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def queries(node: object) -> Iterator[str]:
    """Every PromQL string of the dashboard: panel targets and template variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str) and value != "prometheus":
                yield value
            else:
                yield from queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from queries(item)


def exported() -> Dict[str, Set[str]]:
    """Series name -> its label names, as the exporter registers them in a fresh registry."""
    registry = prometheus_client.CollectorRegistry()
    exporter = llmstream.prometheus.install(registry)
    try:
        found: Dict[str, Set[str]] = {}
        for collector in exporter._collectors:
            for family in collector.describe():
                labels = set(getattr(collector, "_labelnames", ()))
                if family.type == "counter":
                    found[family.name + "_total"] = labels
                elif family.type == "histogram":
                    for suffix in ("_bucket", "_sum", "_count"):
                        found[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
                else:
                    found[family.name] = {"base_url", "state"} if family.name.endswith("circuit_breaker_state") else set()
        return found
    finally:
        exporter.uninstall()


def test_the_dashboard_is_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["title"] == "llmstream" and dashboard["panels"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_every_query_names_an_exported_metric_with_its_labels() -> None:
    series = exported()
    assert "llmstream_cost_usd_total" in series and "llmstream_streams_total" in series
    found: List[str] = list(queries(json.loads(DASHBOARD.read_text(encoding="utf-8"))))
    assert len(found) > 20
    used: Set[str] = set()
    for query in found:
        names = METRIC.findall(query)
        assert names, f"names no llmstream metric: {query}"
        for name in names:
            assert name in series, f"{name} is not exported (query: {query})"
            used.add(name)
        for name, matchers in SELECTOR.findall(query):
            labels = {m.group(1) for m in MATCHER.finditer(matchers)}
            assert MATCHER.sub("", matchers).strip() == "", f"cannot read the matchers of {query}"
            assert labels <= series[name], f"{name} has no label {labels - series[name]} (query: {query})"
        grouped = {label.strip() for group in GROUPING.findall(query) for label in group.split(",") if label.strip()}
        allowed = set().union(*(series[n] for n in names))
        assert grouped <= allowed, f"grouping by {grouped - allowed}, which {names} lack (query: {query})"
    # every counter and histogram family appears on the dashboard
    families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in series}
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    assert families - shown == set()
