"""The operator's own Prometheus metrics, on a registry of their own (never the global one)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from messaging_operator.status import (
    CONDITION_TYPES,
    DEGRADED,
    FAILED,
    MIGRATING,
    PENDING,
    RUNNING,
)

PHASES = (PENDING, MIGRATING, RUNNING, DEGRADED, FAILED)
CONDITION_STATUSES = ("True", "False", "Unknown")


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

        # kube-state-metrics' shape: one series per possible value, 1 for the current one, so
        # `== 1` selects and alerts keep their labels (MessagingClusterNotReady reads these).
        self.cluster_phase = Gauge(
            "messaging_operator_cluster_phase",
            "1 for the MessagingCluster's current status.phase, 0 for the other phases.",
            ["namespace", "name", "phase"],
            registry=self.registry,
        )
        self.cluster_condition = Gauge(
            "messaging_operator_cluster_condition",
            "1 for the current status (True, False, Unknown) of each MessagingCluster condition.",
            ["namespace", "name", "type", "status"],
            registry=self.registry,
        )

    def record_status(
        self, namespace: str, name: str, phase: str, conditions: Mapping[str, str]
    ) -> None:
        """The status the operator just wrote; a condition it did not write counts Unknown."""
        for candidate in PHASES:
            self.cluster_phase.labels(namespace, name, candidate).set(int(candidate == phase))
        for kind in CONDITION_TYPES:
            current = conditions.get(kind, "Unknown")
            for value in CONDITION_STATUSES:
                self.cluster_condition.labels(namespace, name, kind, value).set(
                    int(value == current)
                )

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted cluster's series so they do not linger at their last value."""
        for gauge in (self.desired_replicas, self.connected_sockets):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)
        for candidate in PHASES:
            with contextlib.suppress(KeyError):
                self.cluster_phase.remove(namespace, name, candidate)
        for kind in CONDITION_TYPES:
            for value in CONDITION_STATUSES:
                with contextlib.suppress(KeyError):
                    self.cluster_condition.remove(namespace, name, kind, value)

    def serve(self, port: int, addr: str = "0.0.0.0") -> tuple[WSGIServer, Thread]:
        return start_http_server(port, addr=addr, registry=self.registry)
