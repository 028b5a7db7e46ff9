"""One operator acts at a time: a standby waits on the Lease and takes over when the leader dies.

The session's operator leads; a second one, with the same ServiceAccount and flags, is started
next to it. It must not act (no reconcile, no Event) while the leader lives, and must take over
after the leader is SIGKILLed (no clean hand-over: the Lease simply stops being renewed).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from messaging_operator.builders import migration_job_name
from tests.operator.conftest import (
    SESSION_ARGS,
    RunningOperator,
    apply_example,
    leads,
    restore_session_operator,
    start_operator,
    stop_operator,
)
from tests.operator.kubeapi import Kube
from tests.operator.test_cluster_upgrades import NEW, OLD, running_on
from tests.support.k8s import K8sCluster, wait_until

SUCCESS = 'messaging_operator_reconciles_total{outcome="success"}'


def event_counts(kube: Kube, reason: str) -> list[int]:
    return [int(e.get("count") or 1) for e in kube.events_for("chat") if e["reason"] == reason]


def test_a_standby_never_acts_and_takes_over_when_the_leader_is_killed(
    operator: RunningOperator, k8s_cluster: K8sCluster, kube: Kube, tmp_path: Path
) -> None:
    standby = start_operator(k8s_cluster, tmp_path, *SESSION_ARGS, kubeconfig=operator.kubeconfig)
    acting = standby
    try:
        assert leads(k8s_cluster, operator) and not leads(k8s_cluster, standby)
        apply_example(kube)
        running_on(kube, OLD)
        # Exactly one writer: every Event once, and the standby did not run a single pass.
        assert event_counts(kube, "MigrationStarted") == [1]
        assert event_counts(kube, "PhaseRunning") == [1]
        assert SUCCESS not in standby.metrics()
        os.killpg(operator.process.pid, signal.SIGKILL)
        operator.process.wait(timeout=10)
        wait_until(lambda: leads(k8s_cluster, standby), timeout=60, what="the standby leading")
        kube.merge_patch("MessagingCluster", "chat", {"spec": {"image": NEW}})
        running_on(kube, NEW)
        wait_until(
            lambda: any(
                e["reason"] == "MigrationStarted"
                and migration_job_name("chat", NEW) in e["message"]
                for e in kube.events_for("chat")
            ),
            timeout=30,
            what="the new leader's MigrationStarted Event",
        )
        new_jobs = [
            e
            for e in kube.events_for("chat")
            if e["reason"] == "MigrationStarted" and migration_job_name("chat", NEW) in e["message"]
        ]
        assert [int(e.get("count") or 1) for e in new_jobs] == [1]
        assert SUCCESS in standby.metrics()
    finally:
        if standby.process.poll() is not None:  # it failed: bring a fresh one for the session
            acting = start_operator(
                k8s_cluster, tmp_path, *SESSION_ARGS, kubeconfig=operator.kubeconfig
            )
            wait_until(lambda: leads(k8s_cluster, acting), timeout=60, what="a leader again")
        restore_session_operator(k8s_cluster, operator, acting, tmp_path)
        if standby is not acting:
            stop_operator(standby)
