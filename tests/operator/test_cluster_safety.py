"""The operator never damages a cluster: one migration at a time, nothing of anyone else's taken
over, a failed upgrade changes nothing, and what it removes is only what it made.

Under kwok a migration pod completes as soon as it runs; a ResourceQuota that leaves no room
for a new pod keeps a migration Job running (and, with a short activeDeadlineSeconds, fails it).
"""

from __future__ import annotations

import base64
import time
from typing import Any

from messaging_operator.builders import migration_job_name
from tests.operator.audit import now, requests, summary
from tests.operator.conftest import RESYNC_SECONDS, RunningOperator, apply_example
from tests.operator.kubeapi import Kube
from tests.operator.test_cluster_upgrades import (
    NEW,
    OLD,
    deployed_image,
    job_state,
    no_new_pods,
    running_on,
    status,
)
from tests.support.k8s import K8sCluster, wait_until

NEWER = "ghcr.io/acme/messaging:1.6.0"
MIGRATIONS = "app.kubernetes.io/instance=chat,app.kubernetes.io/component=migration"


def secret(name: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def ready_reason(kube: Kube) -> tuple[str, str]:
    cond = kube.condition("chat", "Ready") or {}
    return str(cond.get("reason", "")), str(cond.get("message", ""))


def test_image_changes_in_a_row_never_run_two_migrations_at_once(
    operator: RunningOperator, kube: Kube
) -> None:
    apply_example(kube, spec={"migrations": {"activeDeadlineSeconds": 120}})
    running_on(kube, OLD)
    no_new_pods(kube)  # NEW's migration pod cannot start, so its Job keeps running
    kube.merge_patch("MessagingCluster", "chat", {"spec": {"image": NEW}})
    wait_until(
        lambda: kube.get("Job", migration_job_name("chat", NEW)),
        timeout=30,
        what="the migration Job of the first new image",
    )
    kube.merge_patch("MessagingCluster", "chat", {"spec": {"image": NEWER}})

    def at_most_one_running() -> None:
        running = [j["metadata"]["name"] for j in kube.list("Job", MIGRATIONS) if not job_state(j)]
        assert len(running) <= 1, f"migrations running at once: {running}"

    # Several passes later the second image still waits for the first Job, and says so.
    deadline = time.monotonic() + 3 * RESYNC_SECONDS
    while time.monotonic() < deadline:
        at_most_one_running()
        time.sleep(0.1)
    assert kube.get("Job", migration_job_name("chat", NEWER)) is None
    cond = kube.condition("chat", "MigrationsComplete") or {}
    assert cond.get("reason") == "MigrationPending"
    assert migration_job_name("chat", NEW) in cond.get("message", "")

    kube.delete("ResourceQuota", "no-new-pods")  # the first Job runs to its end, then the next

    def newer_rolled_out() -> bool:
        at_most_one_running()
        return deployed_image(kube) == NEWER

    wait_until(newer_rolled_out, timeout=120, interval=0.1, what=f"the Deployment on {NEWER}")
    running_on(kube, NEWER)


def test_a_users_secret_named_like_the_redis_secret_is_never_adopted_changed_or_deleted(
    operator: RunningOperator, kube: Kube
) -> None:
    """examples/production.yaml once named its own Redis-URL Secret `chat-redis`, the managed
    Redis password's name; with the CRD's default (managed Redis) that Secret was taken over."""
    mine = kube.create(secret("chat-redis", url="redis://cache.example:6379/0"))
    apply_example(kube)

    def conflict() -> bool:
        return ready_reason(kube)[0] == "NameConflict"

    wait_until(conflict, timeout=60, what="Ready=False NameConflict")
    _, message = ready_reason(kube)
    assert "Secret chat-redis" in message and "not created by this MessagingCluster" in message
    wait_until(lambda: status(kube).get("phase") == "Failed", timeout=30, what="phase Failed")
    kube.await_event("chat", "NameConflict", type="Warning")
    time.sleep(2 * RESYNC_SECONDS)  # several passes: still untouched
    after = kube.get("Secret", "chat-redis") or {}
    assert after["metadata"]["resourceVersion"] == mine["metadata"]["resourceVersion"]
    assert not after["metadata"].get("ownerReferences")
    assert after["data"] == mine["data"]
    assert kube.get("Job", migration_job_name("chat", OLD)) is None  # nothing started on it

    kube.delete("MessagingCluster", "chat")
    wait_until(lambda: kube.get("MessagingCluster", "chat") is None, timeout=60, what="deleted")
    time.sleep(2)  # the garbage collector would have acted on an owner reference by now
    survivor = kube.get("Secret", "chat-redis") or {}
    assert survivor.get("metadata", {}).get("uid") == mine["metadata"]["uid"]


def test_a_missing_key_of_the_external_redis_secret_is_named(
    operator: RunningOperator, kube: Kube
) -> None:
    kube.create(secret("chat-redis-url", uri="redis://cache.example:6379/0"))
    external = {"external": {"urlSecretRef": {"name": "chat-redis-url", "key": "url"}}}
    apply_example(kube, spec={"redis": external})
    wait_until(lambda: ready_reason(kube)[0] == "SecretNotFound", timeout=60, what="SecretNotFound")
    assert ready_reason(kube)[1] == "Secret chat-redis-url has no key url"
    redis = kube.condition("chat", "RedisReady") or {}
    assert redis.get("message") == "Secret chat-redis-url has no key url"
    assert status(kube).get("phase") == "Pending"


def test_an_invalid_external_redis_url_is_never_reported_ready(
    operator: RunningOperator, kube: Kube
) -> None:
    kube.create(secret("chat-redis-url", url="cache.example:6379"))
    external = {"external": {"urlSecretRef": {"name": "chat-redis-url", "key": "url"}}}
    apply_example(kube, spec={"redis": external})
    wait_until(
        lambda: ready_reason(kube)[0] == "InvalidRedisURL", timeout=60, what="InvalidRedisURL"
    )
    assert "not a redis:// or rediss:// URL" in ready_reason(kube)[1]
    assert (kube.condition("chat", "RedisReady") or {}).get("status") == "False"
    assert kube.get("Deployment", "chat") is None  # pods would only crash-loop on it
    # Fixed in place: the cluster comes up.
    kube.merge_patch(
        "Secret", "chat-redis-url", {"stringData": {"url": "redis://cache.example:6379/0"}}
    )
    running_on(kube, OLD)


def test_a_failed_upgrade_holds_back_the_whole_new_pod_template(
    operator: RunningOperator, kube: Kube
) -> None:
    apply_example(kube, spec={"migrations": {"activeDeadlineSeconds": 10}})
    running_on(kube, OLD)
    old_template = (kube.get("Deployment", "chat") or {})["spec"]["template"]
    no_new_pods(kube)
    kube.merge_patch("MessagingCluster", "chat", {"spec": {"image": NEW, "logLevel": "DEBUG"}})
    wait_until(
        lambda: job_state(kube.get("Job", migration_job_name("chat", NEW))) == "Failed",
        timeout=90,
        what="the new image's migration failed",
    )
    wait_until(
        lambda: (
            (kube.condition("chat", "MigrationsComplete") or {}).get("reason") == "MigrationFailed"
        ),
        timeout=30,
        what="MigrationFailed reported",
    )
    time.sleep(2 * RESYNC_SECONDS)  # several passes after the failure
    assert (kube.get("Deployment", "chat") or {})["spec"]["template"] == old_template
    # Reverting the image lets the rest of the new template through: it is migrated.
    kube.delete("ResourceQuota", "no-new-pods")
    kube.merge_patch("MessagingCluster", "chat", {"spec": {"image": OLD}})

    def debug_logging() -> bool:
        dep = kube.get("Deployment", "chat") or {}
        env = {
            e["name"]: e.get("value")
            for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        return env.get("MESSAGING_LOG_LEVEL") == "DEBUG"

    wait_until(debug_logging, timeout=60, what="the rest of the template rolled out")


def test_deleting_a_finished_migration_job_does_not_run_the_migration_again(
    operator: RunningOperator, kube: Kube
) -> None:
    apply_example(kube)
    running_on(kube, OLD)
    job = migration_job_name("chat", OLD)
    kube.delete("Job", job)
    wait_until(lambda: kube.get("Job", job) is None, timeout=30, what="the Job deleted")
    time.sleep(3 * RESYNC_SECONDS)
    assert kube.get("Job", job) is None
    started = [e for e in kube.events_for("chat") if e["reason"] == "MigrationStarted"]
    assert sum(int(e.get("count") or 1) for e in started) == 1
    assert status(kube).get("phase") == "Running"


def test_switching_to_external_redis_removes_the_managed_one(
    operator: RunningOperator, kube: Kube
) -> None:
    apply_example(kube)
    running_on(kube, OLD)
    for kind in ("Deployment", "Service", "Secret"):
        assert kube.get(kind, "chat-redis") is not None
    kube.create(secret("chat-redis-url", url="redis://cache.example:6379/0"))
    external = {"urlSecretRef": {"name": "chat-redis-url", "key": "url"}}
    kube.merge_patch(
        "MessagingCluster", "chat", {"spec": {"redis": {"managed": None, "external": external}}}
    )

    def managed_gone() -> bool:
        return all(kube.get(kind, "chat-redis") is None for kind in ("Deployment", "Service"))

    wait_until(managed_gone, timeout=60, what="the managed Redis removed")
    wait_until(
        lambda: (status(kube).get("redis") or {}).get("managed") is False,
        timeout=30,
        what="status.redis.managed false",
    )


def test_a_namespace_being_deleted_gets_no_retried_creates_or_events(
    operator: RunningOperator, k8s_cluster: K8sCluster
) -> None:
    """A ConfigMap with a finalizer holds the namespace in Terminating for as long as the test
    wants, while the namespace controller deletes everything else (the cluster included)."""
    namespace = f"terminating-{int(time.time() * 1000) % 10**8}"
    k8s_cluster.kubectl("create", "namespace", namespace)
    wait_until(
        lambda: (
            k8s_cluster.kubectl("get", "sa", "default", "-n", namespace, check=False).returncode
            == 0
        ),
        timeout=60,
        what="the namespace's default ServiceAccount",
    )
    kube = Kube(k8s_cluster, namespace)
    hold = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "hold", "finalizers": ["messaging.test/hold"]},
    }
    try:
        kube.create(hold)
        apply_example(kube)
        running_on(kube, OLD)
        since = now()
        k8s_cluster.kubectl("delete", "namespace", namespace, "--wait=false")
        wait_until(
            lambda: kube.get("MessagingCluster", "chat") is None,
            timeout=60,
            what="the cluster deleted with its namespace",
        )
        time.sleep(3 * RESYNC_SECONDS)
        refused = [
            r for r in requests(k8s_cluster, since) if r.namespace == namespace and r.code == 403
        ]
        # At most the one write that revealed the termination (and one racing it), never the
        # retries of Events and creates that used to follow.
        assert len(refused) <= 2, summary(refused)
    finally:
        kube.merge_patch("ConfigMap", "hold", {"metadata": {"finalizers": None}})
        kube.session.close()
