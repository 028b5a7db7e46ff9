"""The lean Counter and Histogram of messaging.metrics expose exactly what prometheus_client's do.

They add under prometheus_client's own per-value locks, reaching into its value objects (a
private interface, bounded in pyproject.toml): if a release changes those internals, this fails
instead of the metrics going quietly wrong.
"""

from __future__ import annotations

import random

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from messaging import metrics

BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)
EDGES = [0.0, 0.001, 0.0010001, 0.01, 0.1, 1.0, 10.0, 10.5, 1e9, -1.0, float("inf")]


def exposition(counter_cls: type, histogram_cls: type, amounts: list[float]) -> bytes:
    registry = CollectorRegistry()
    counter = counter_cls("c_total", "c", ["k"], registry=registry)
    plain = counter_cls("p_total", "p", registry=registry)
    histogram = histogram_cls("h", "h", ["k"], buckets=BUCKETS, registry=registry)
    series = counter.labels(k="a")
    timed = histogram.labels(k="a")
    for amount in amounts:
        if amount >= 0:
            series.inc(amount)
            plain.inc(amount)
        timed.observe(amount)
    # Everything but the series' creation times, which differ between the two registries.
    lines = generate_latest(registry).splitlines()
    return b"\n".join(line for line in lines if b"_created" not in line)


def test_lean_metrics_expose_the_same_text_as_prometheus_clients_over_edges_and_random_values() -> (
    None
):
    rng = random.Random(7)
    amounts = EDGES + [rng.choice([rng.random(), rng.expovariate(3.0) * 20]) for _ in range(2000)]
    lean = exposition(metrics.Counter, metrics.Histogram, amounts)
    stock = exposition(prometheus_client.Counter, prometheus_client.Histogram, amounts)
    assert lean == stock


def test_what_the_stock_classes_refuse_the_lean_ones_refuse_too() -> None:
    registry = CollectorRegistry()
    counter = metrics.Counter("r_total", "r", ["k"], registry=registry)
    with pytest.raises(ValueError):
        counter.inc()  # a labelled parent is not a series
    with pytest.raises(ValueError):
        counter.labels(k="a").inc(-1)  # counters only go up
