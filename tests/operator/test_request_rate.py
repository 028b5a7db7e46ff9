"""Requests proportional to change: an idle cluster costs the API server no write at all and a
handful of reads per minute (the slow resync), measured from the API server's audit log.

The session's operator runs with test timings (a resync every few seconds); this test hands the
Lease to an operator with the shipped defaults for the measurement, and back afterwards. The
figures are printed (no timed assertion); `MESSAGING_TEST_IDLE_CLUSTERS=30` measures 30 clusters
(docs/messagingcluster.md keeps the numbers).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.operator.audit import now, requests, summary
from tests.operator.conftest import (
    RunningOperator,
    hand_over,
    restore_session_operator,
)
from tests.operator.kubeapi import Kube
from tests.support.k8s import K8sCluster, wait_until

CLUSTERS = int(os.environ.get("MESSAGING_TEST_IDLE_CLUSTERS", "3"))
WINDOW = float(os.environ.get("MESSAGING_TEST_IDLE_WINDOW", "60"))
# The shipped defaults, except a resync inside the window so its cost shows in the figure.
MEASURED = ("--all-namespaces", "--resync-seconds", "55", "--autoscale-seconds", "15")


def cluster(name: str) -> dict[str, object]:
    return {
        "apiVersion": "messaging.platform.io/v1alpha1",
        "kind": "MessagingCluster",
        "metadata": {"name": name},
        "spec": {
            "image": "ghcr.io/acme/messaging:1.4.0",
            "replicas": {"min": 1, "max": 3},
            "postgres": {"dsnSecretRef": {"name": "chat-db", "key": "dsn"}},
            "auth": {"jwtSecretRef": {"name": "chat-jwt", "key": "secret"}},
            "connectionsService": {"address": "connections.apps.svc:50051"},
        },
    }


def secret(name: str, key: str, value: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "stringData": {key: value},
    }


def test_idle_clusters_cost_no_writes_and_a_few_reads_per_minute(
    operator: RunningOperator, k8s_cluster: K8sCluster, kube: Kube, tmp_path: Path
) -> None:
    measuring = hand_over(k8s_cluster, operator, tmp_path, *MEASURED)
    try:
        kube.create(secret("chat-db", "dsn", "postgresql://m:pw@postgres.apps.svc:5432/m"))
        kube.create(secret("chat-jwt", "secret", "a-test-secret-that-is-at-least-32-bytes-long"))
        names = [f"idle-{i}" for i in range(CLUSTERS)]
        for name in names:
            kube.create(cluster(name))

        def all_running() -> bool:
            phases = [
                ((kube.get("MessagingCluster", n) or {}).get("status") or {}).get("phase")
                for n in names
            ]
            return all(p == "Running" for p in phases)

        wait_until(
            all_running, timeout=120 + 5 * CLUSTERS, interval=1, what="every cluster Running"
        )
        time.sleep(20)  # the last status writes and Events of the start-up
        since = now()
        time.sleep(WINDOW)
        found = requests(k8s_cluster, since, now())
        mine = [r for r in found if r.namespace == kube.namespace]
        writes = [r for r in mine if r.writes]
        per_cluster = len(mine) / CLUSTERS * 60 / WINDOW
        leases = [r for r in found if r.resource == "leases"]
        print(
            f"\nidle: {CLUSTERS} clusters, {len(mine)} requests in {WINDOW:.0f}s = "
            f"{per_cluster:.2f} per cluster per minute ({summary(mine)}); "
            f"operator-wide: {len(leases)} Lease requests, "
            f"{len([r for r in found if r.verb == 'watch'])} watch (re)starts"
        )
        assert writes == [], f"writes while nothing changed: {summary(writes)}"
        assert all(r.verb in ("get", "list") for r in mine), summary(mine)
    finally:
        restore_session_operator(k8s_cluster, operator, measuring, tmp_path)


def test_a_cluster_waiting_for_a_secret_looks_again_soon_while_idle_ones_do_not_poll(
    operator: RunningOperator, k8s_cluster: K8sCluster, kube: Kube, tmp_path: Path
) -> None:
    """Secrets are not watched (that would take list/watch on every Secret): a cluster that
    waits for one rechecks every few seconds, far sooner than the resync (55 s here)."""
    measuring = hand_over(k8s_cluster, operator, tmp_path, *MEASURED)
    try:
        kube.create(secret("chat-db", "dsn", "postgresql://m:pw@postgres.apps.svc:5432/m"))
        kube.create(cluster("waiting"))

        def reason() -> str:
            mc = kube.get("MessagingCluster", "waiting") or {}
            ready = [
                c for c in (mc.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"
            ]
            return str(ready[0]["reason"]) if ready else ""

        wait_until(lambda: reason() == "SecretNotFound", timeout=60, what="SecretNotFound")
        kube.create(secret("chat-jwt", "secret", "a-test-secret-that-is-at-least-32-bytes-long"))
        wait_until(
            lambda: reason() not in ("", "SecretNotFound"),
            timeout=30,  # well below the 55 s resync: only the recheck explains it
            what="the new Secret noticed",
        )
    finally:
        restore_session_operator(k8s_cluster, operator, measuring, tmp_path)
