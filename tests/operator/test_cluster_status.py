"""What the status says matches what happens: the README's phase order, Running through a
healthy rollout, no Warning on a healthy start-up, no socket count without metrics, and a paused
cluster is not "Migrating". Under kwok no pod serves /metrics, so the autoscaler never has any."""

from __future__ import annotations

import time

from tests.operator.conftest import RESYNC_SECONDS, RunningOperator, apply_example
from tests.operator.kubeapi import Kube
from tests.operator.test_cluster_upgrades import NEW, OLD, running_on, status
from tests.support.k8s import wait_until

ORDER = ["Pending", "Migrating", "Running"]


def test_a_new_cluster_goes_pending_migrating_running_without_a_warning(
    operator: RunningOperator, kube: Kube
) -> None:
    apply_example(kube)
    seen: list[str] = []

    def running() -> bool:
        phase = status(kube).get("phase")
        if phase and (not seen or seen[-1] != phase):
            seen.append(phase)
        return phase == "Running"

    wait_until(running, timeout=90, interval=0.05, what="phase Running")
    assert all(p in ORDER for p in seen), seen
    assert [ORDER.index(p) for p in seen] == sorted(ORDER.index(p) for p in seen), seen
    time.sleep(RESYNC_SECONDS)
    warnings = [
        (e["reason"], e["message"]) for e in kube.events_for("chat") if e["type"] == "Warning"
    ]
    assert warnings == []


def test_the_operator_exports_the_phase_and_ready_condition_it_wrote(
    operator: RunningOperator, kube: Kube
) -> None:
    apply_example(kube)
    wait_until(lambda: status(kube).get("phase") == "Running", timeout=90, what="phase Running")
    ns = kube.namespace
    phase = f'messaging_operator_cluster_phase{{name="chat",namespace="{ns}",phase="Running"}} 1.0'
    ready = (
        "messaging_operator_cluster_condition"
        f'{{name="chat",namespace="{ns}",status="True",type="Ready"}} 1.0'
    )
    wait_until(
        lambda: phase in operator.metrics() and ready in operator.metrics(),
        timeout=30,
        what="the phase and Ready condition on the operator's /metrics",
    )


def test_without_readable_metrics_the_socket_count_is_absent_not_zero(
    operator: RunningOperator, kube: Kube
) -> None:
    apply_example(kube)
    running_on(kube, OLD)
    wait_until(
        lambda: (
            (kube.condition("chat", "ScalingActive") or {}).get("reason") == "FailedGetPodsMetric"
        ),
        timeout=30,
        what="ScalingActive FailedGetPodsMetric",
    )
    time.sleep(RESYNC_SECONDS)
    assert "connectedSockets" not in status(kube)


def test_a_healthy_rollout_stays_running(operator: RunningOperator, kube: Kube) -> None:
    apply_example(kube)
    running_on(kube, OLD)
    generation = (kube.get("Deployment", "chat") or {})["metadata"]["generation"]
    kube.merge_patch("MessagingCluster", "chat", {"spec": {"logLevel": "DEBUG"}})
    phases: set[str] = set()

    def rolled_out() -> bool:
        phases.add(str(status(kube).get("phase")))
        dep = kube.get("Deployment", "chat") or {}
        st = dep.get("status") or {}
        return bool(
            dep["metadata"]["generation"] > generation
            and st.get("observedGeneration") == dep["metadata"]["generation"]
            and st.get("updatedReplicas") == st.get("replicas") == st.get("readyReplicas")
        )

    wait_until(rolled_out, timeout=60, interval=0.05, what="the rollout finished")
    time.sleep(RESYNC_SECONDS)
    phases.add(str(status(kube).get("phase")))
    assert phases == {"Running"}
    reasons = {e["reason"] for e in kube.events_for("chat")}
    assert "PhaseDegraded" not in reasons


def test_a_paused_cluster_with_a_pending_image_is_not_migrating(
    operator: RunningOperator, kube: Kube
) -> None:
    apply_example(kube)
    running_on(kube, OLD)
    kube.merge_patch("MessagingCluster", "chat", {"spec": {"paused": True}})
    wait_until(
        lambda: (kube.condition("chat", "ReconciliationPaused") or {}).get("status") == "True",
        timeout=30,
        what="ReconciliationPaused=True",
    )
    kube.merge_patch("MessagingCluster", "chat", {"spec": {"image": NEW}})
    wait_until(lambda: status(kube).get("image") == NEW, timeout=30, what="the new spec seen")
    st = status(kube)
    assert st["phase"] == "Running" and st["currentImage"] == OLD
    ready = kube.condition("chat", "Ready") or {}
    assert ready.get("reason") == "Paused" and NEW in ready.get("message", "")
