"""A new image is migrated before it is rolled out; a failed migration keeps the old pods serving.

Under kwok a migration pod completes as soon as it runs. To make one fail, the tests leave no
room for its pod (a ResourceQuota), so the Job runs into its activeDeadlineSeconds.
"""

from __future__ import annotations

from typing import Any

from messaging_operator.builders import migration_job_name
from tests.operator.conftest import RunningOperator, apply_example
from tests.operator.kubeapi import Kube
from tests.support.k8s import wait_until

OLD = "ghcr.io/acme/messaging:1.4.0"
NEW = "ghcr.io/acme/messaging:1.5.0"


def deployed_image(kube: Kube) -> str | None:
    dep = kube.get("Deployment", "chat")
    return dep["spec"]["template"]["spec"]["containers"][0]["image"] if dep else None


def status(kube: Kube) -> dict[str, Any]:
    return dict((kube.get("MessagingCluster", "chat") or {}).get("status") or {})


def job_state(job: dict[str, Any] | None) -> str | None:
    for cond in ((job or {}).get("status") or {}).get("conditions") or []:
        if cond["status"] == "True" and cond["type"] in ("Complete", "Failed"):
            return str(cond["type"])
    return None


def running_on(kube: Kube, image: str) -> None:
    def check() -> bool:
        st = status(kube)
        return st.get("phase") == "Running" and st.get("currentImage") == image

    wait_until(check, timeout=90, what=f"Running on {image}")


def test_changing_the_image_runs_its_migration_before_the_rollout(
    operator: RunningOperator, kube: Kube
) -> None:
    apply_example(kube)
    running_on(kube, OLD)
    kube.merge_patch("MessagingCluster", "chat", {"spec": {"image": NEW}})
    new_job = migration_job_name("chat", NEW)

    def rolled_in_order() -> bool:
        image = deployed_image(kube)  # read first: a Job seen unfinished after was unfinished then
        job = kube.get("Job", new_job)
        if image == NEW:
            assert job_state(job) == "Complete", "rolled out before its migration finished"
            return True
        assert image == OLD
        return False

    wait_until(rolled_in_order, timeout=60, interval=0.05, what=f"the Deployment on {NEW}")
    running_on(kube, NEW)
    st = status(kube)
    assert st["migration"] == {"image": NEW, "jobName": new_job, "state": "succeeded"}
    # The old image's Job is pruned once nothing runs it any more.
    old_job = migration_job_name("chat", OLD)
    wait_until(lambda: kube.get("Job", old_job) is None, timeout=30, what="the old Job pruned")


def no_new_pods(kube: Kube) -> None:
    """A quota of exactly the pods that run now: the next migration pod is refused, so its Job
    fails with DeadlineExceeded (a real failure of Kubernetes', no simulation involved)."""
    running = len([p for p in kube.list("Pod") if p["status"].get("phase") != "Succeeded"])
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "no-new-pods", "namespace": kube.namespace},
            "spec": {"hard": {"pods": str(running)}},
        }
    )


def test_a_failing_migration_keeps_the_old_deployment_until_the_image_is_reverted(
    operator: RunningOperator, kube: Kube
) -> None:
    apply_example(kube, spec={"migrations": {"activeDeadlineSeconds": 10}})
    running_on(kube, OLD)
    old_template = (kube.get("Deployment", "chat") or {})["spec"]["template"]
    no_new_pods(kube)
    kube.merge_patch("MessagingCluster", "chat", {"spec": {"image": NEW}})
    new_job = migration_job_name("chat", NEW)
    wait_until(
        lambda: job_state(kube.get("Job", new_job)) == "Failed",
        timeout=90,
        what="the new image's migration Job failed",
    )

    def reported() -> dict[str, Any] | None:
        cond = kube.condition("chat", "MigrationsComplete") or {}
        return cond if cond.get("reason") == "MigrationFailed" else None

    cond = wait_until(reported, timeout=30, what="MigrationsComplete=False/MigrationFailed")
    assert cond["status"] == "False"
    assert NEW in cond["message"] and "deadline" in cond["message"]
    st = status(kube)
    assert st["phase"] == "Degraded"
    assert st["currentImage"] == OLD and st["image"] == NEW
    assert (kube.condition("chat", "Ready") or {}).get("reason") == "MigrationFailed"
    dep = kube.get("Deployment", "chat") or {}
    assert dep["spec"]["template"] == old_template
    assert dep["status"].get("readyReplicas") == 2
    kube.await_event("chat", "MigrationFailed", type="Warning")

    # Reverting the image recovers at once: its migration already succeeded.
    kube.merge_patch("MessagingCluster", "chat", {"spec": {"image": OLD}})
    running_on(kube, OLD)
    assert (kube.condition("chat", "MigrationsComplete") or {}).get("status") == "True"
    wait_until(lambda: kube.get("Job", new_job) is None, timeout=30, what="failed Job pruned")


def test_a_failing_first_migration_never_creates_the_deployment(
    operator: RunningOperator, kube: Kube
) -> None:
    no_new_pods(kube)
    apply_example(kube, spec={"migrations": {"activeDeadlineSeconds": 10}})

    def failed() -> bool:
        return status(kube).get("phase") == "Failed"

    wait_until(failed, timeout=90, what="phase Failed")
    assert kube.get("Deployment", "chat") is None
    assert (kube.condition("chat", "MigrationsComplete") or {}).get("reason") == "MigrationFailed"
    # Fixed (here: room for pods again, and a new image): the cluster comes up.
    kube.delete("ResourceQuota", "no-new-pods")
    kube.merge_patch("MessagingCluster", "chat", {"spec": {"image": NEW}})
    running_on(kube, NEW)
