"""Read a `Metrics` page back through prometheus-client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from ipv4proxy.metrics import Metrics


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    page = metrics.render().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float:
    """A sample's value; 0.0 when the series is absent."""
    return samples(metrics).get((name, frozenset(labels.items())), 0.0)


def text_sum(text: str, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` with ``labels`` in a scraped /metrics page."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
