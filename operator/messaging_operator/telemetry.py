"""The operator's own Prometheus metrics, on a registry of their own (never the global one)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


@dataclass
class OperatorMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.reconciles = Counter(
            "messaging_operator_reconciles_total",
            "Reconciliations of MessagingClusters, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "messaging_operator_reconcile_duration_seconds",
            "Time spent reconciling one MessagingCluster.",
            registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.scale_decisions = Counter(
            "messaging_operator_scale_decisions_total",
            "Autoscaler passes, by the direction they chose (up, down, none).",
            ["direction"],
            registry=self.registry,
        )
        self.desired_replicas = Gauge(
            "messaging_operator_desired_replicas",
            "The replica count the autoscaler chose, per MessagingCluster.",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.connected_sockets = Gauge(
            "messaging_operator_observed_connected_sockets",
            "Sockets the autoscaler read across a MessagingCluster's pods.",
            ["namespace", "name"],
            registry=self.registry,
        )

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted cluster's series so they do not linger at their last value."""
        for gauge in (self.desired_replicas, self.connected_sockets):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)

    def serve(self, port: int, addr: str = "0.0.0.0") -> tuple[WSGIServer, Thread]:
        return start_http_server(port, addr=addr, registry=self.registry)
