"""The pod's metrics page: every worker's page summed, series by series.

Each worker serves its own page (``metrics.Metrics.render``) on its private admin socket;
the supervisor parses them (prometheus-client's text parser) and adds up every sample of
the same name and labels: counters, histogram buckets, sums and counts, and the gauges of
what a process holds (tunnels, connections, bytes held), which add up to what the pod
holds. Two families are the pod's, not a sum (`POD_FAMILIES`): ``ipv4proxy_ready`` (the
supervisor's readiness: 1 when every worker is ready) and ``ipv4proxy_config_reloads``
(one SIGHUP is one reload, applied or refused once by the supervisor, not once per
worker). The supervisor's own series (`WorkerMetrics`) come last.

A worker that exits leaves its counters behind (`retire`): its last page's counters and
histograms are kept and added to every later page, so a restart does not make the pod's
counters go back (which Prometheus would read as a reset). What it counted after that
last scrape is lost; gauges of a gone worker are dropped (it holds nothing any more).

Rules: pure (pages in, a page out), so tests call it directly; why not prometheus-client's
multiprocess mode: it needs a shared directory of mmap files written on every update by
every process, and its own collectors in place of `Metrics`' registry; summing pages keeps
the workers' hot path and ``metrics.py`` exactly as in one process.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from ipv4proxy.metrics import Series

__all__ = [
    "POD_FAMILIES",
    "WORKER_SERIES",
    "Page",
    "WorkerMetrics",
    "parse",
    "render",
    "retire",
    "total",
]

Page = list[Metric]

# Families whose value is the pod's, set by the supervisor, never a sum of the workers'.
POD_FAMILIES = ("ipv4proxy_ready", "ipv4proxy_config_reloads")

# What a gone worker's page keeps: what only ever grows.
_KEPT_TYPES = ("counter", "histogram")


def parse(text: str) -> Page:
    """A worker's page as metric families. Raises ValueError for text that is not the
    Prometheus text format."""
    return list(text_string_to_metric_families(text))


def _key(sample: Sample) -> tuple[str, tuple[tuple[str, str], ...]]:
    return sample.name, tuple(sorted(sample.labels.items()))


def total(pages: Iterable[Page]) -> Page:
    """Every family of ``pages`` with the values of equal samples (name and labels) added;
    families and samples in the order they are first seen."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], Sample]] = {}
    for page in pages:
        for family in page:
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                values[family.name] = {}
            samples = values[family.name]
            for sample in family.samples:
                key = _key(sample)
                seen = samples.get(key)
                value = sample.value if seen is None else seen.value + sample.value
                samples[key] = Sample(sample.name, sample.labels, value)
    for name, merged in families.items():
        merged.samples = list(values[name].values())
    return list(families.values())


def retire(kept: Page, last: Page) -> Page:
    """What the pod keeps of a worker that exited: ``kept`` plus ``last``'s counters and
    histograms (its gauges dropped)."""
    return total([kept, [f for f in last if f.type in _KEPT_TYPES]])


def _pod_values(page: Page, values: Mapping[str, Mapping[tuple[str, ...], float]]) -> Page:
    """``page`` with the samples of each `POD_FAMILIES` family replaced by ``values``:
    family name -> label values (in the family's label order) -> value."""
    out: Page = []
    for family in page:
        own = values.get(family.name)
        if own is None:
            out.append(family)
            continue
        replaced = Metric(family.name, family.documentation, family.type, family.unit)
        names = list(family.samples[0].labels) if family.samples else []
        suffix = "_total" if family.type == "counter" else ""
        for labels, value in own.items():
            replaced.add_sample(family.name + suffix, dict(zip(names, labels, strict=True)), value)
        out.append(replaced)
    return out


class _Fixed:
    """A collector that yields the families it was given (for `generate_latest`)."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Sequence[Metric]:
        return self._families


def render(
    kept: Page,
    pages: Sequence[Page],
    pod: Mapping[str, Mapping[tuple[str, ...], float]],
    own: CollectorRegistry,
) -> bytes:
    """The pod's page: ``kept`` (gone workers) plus ``pages`` (the live ones) summed, the
    `POD_FAMILIES` from ``pod``, then the supervisor's ``own`` registry."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(_pod_values(total([kept, *pages]), pod)))
    return generate_latest(registry) + generate_latest(own)


# The supervisor's own series, on the pod's page after the summed ones (rendered into
# docs/reference/metrics.md after `metrics.SERIES`).
WORKER_SERIES = (
    Series(
        "workers",
        "ipv4proxy_workers",
        "gauge",
        "Worker processes running now (workers: N above 1 only)",
    ),
    Series(
        "restarts",
        "ipv4proxy_worker_restarts",
        "counter",
        "Worker processes started again after one exited unexpectedly (workers: N above 1 only)",
    ),
)


class WorkerMetrics:
    """The supervisor's own series (`WORKER_SERIES`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        workers, restarts = WORKER_SERIES
        self.workers = Gauge(workers.name, workers.help, registry=self.registry)
        self.restarts = Counter(restarts.name, restarts.help, registry=self.registry)
