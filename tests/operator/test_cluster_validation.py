"""The API server refuses bad MessagingClusters (schema, CEL rules) before the operator does."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pytest

from tests.operator.conftest import RESYNC_SECONDS, RunningOperator, apply_example
from tests.operator.kubeapi import ApiError, Kube
from tests.operator.samples import MINIMAL_SPEC
from tests.support.k8s import wait_until

pytestmark = pytest.mark.usefixtures("messaging_crd")


def manifest(name: str = "chat", **spec: Any) -> dict[str, Any]:
    body = copy.deepcopy(MINIMAL_SPEC)
    body.update(spec)
    return {
        "apiVersion": "messaging.platform.io/v1alpha1",
        "kind": "MessagingCluster",
        "metadata": {"name": name},
        "spec": body,
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (manifest(replicas={"min": 5, "max": 2}), "replicas.min must not exceed replicas.max"),
        (
            manifest(
                redis={"managed": {}, "external": {"urlSecretRef": {"name": "r", "key": "url"}}}
            ),
            "redis needs exactly one of managed or external",
        ),
        (manifest(redis={}), "redis needs exactly one of managed or external"),
        (manifest(auth={"algorithms": ["HS256"]}), "auth.jwtSecretRef is required"),
        (
            manifest(auth={"algorithms": ["RS256"], "jwtSecretRef": {"name": "j", "key": "k"}}),
            "auth.publicKeySecretRef is required",
        ),
        (
            manifest(auth={"algorithms": ["none"], "jwtSecretRef": {"name": "j", "key": "k"}}),
            "Unsupported value",
        ),
        (
            manifest(drain={"windowSeconds": 30, "shutdownDeadlineSeconds": 20}),
            "drain.shutdownDeadlineSeconds must exceed drain.windowSeconds",
        ),
        (manifest(name="x" * 41), "at most 40 characters"),
        (manifest(name="2chat"), "DNS-1035"),
        (manifest(autoscaling={"targetConnectionsPerPod": 0}), "targetConnectionsPerPod"),
        (manifest(service={"sessionAffinity": "Cookie"}), "sessionAffinity"),
        (manifest(image=""), "spec.image"),
        ({**manifest(), "spec": {"image": "x"}}, "Required value"),
    ],
)
def test_invalid_specs_are_rejected_by_the_api_server(
    kube: Kube, body: dict[str, Any], message: str
) -> None:
    with pytest.raises(ApiError) as caught:
        kube.create(body)
    assert caught.value.status == 422
    assert message in caught.value.message
    assert kube.list("MessagingCluster") == []


def test_the_api_server_fills_in_the_documented_defaults(kube: Kube) -> None:
    created = kube.create(manifest())
    spec = created["spec"]
    assert spec["replicas"] == {"min": 2, "max": 10}
    assert spec["autoscaling"] == {
        "enabled": True,
        "targetConnectionsPerPod": 5000,
        "scaleDownStabilizationSeconds": 300,
        "tolerance": 0.1,
    }
    assert spec["redis"] == {"managed": {"image": "redis:7.2"}}
    assert spec["auth"]["algorithms"] == ["HS256"]
    assert spec["service"]["sessionAffinity"] == "None"
    assert spec["drain"] == {
        "windowSeconds": 10,
        "shutdownDeadlineSeconds": 25,
        "preStopSleepSeconds": 5,
    }
    assert spec["paused"] is False


def test_kubectl_server_side_dry_run_accepts_every_example(kube: Kube) -> None:
    for example in sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml")):
        kube.cluster.kubectl("apply", "--dry-run=server", "-n", kube.namespace, "-f", str(example))


def invalid_spec_events(kube: Kube, reason: str) -> int:
    return sum(
        int(e.get("count") or 1)
        for e in kube.events_for("chat")
        if e["type"] == "Warning" and e["reason"] == reason
    )


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        # The API server accepts the MessagingCluster (podTemplate is free-form) but refuses the
        # Deployment built from it: a quantity that is not one.
        (
            {
                "spec": {
                    "containers": [
                        {"name": "messaging", "resources": {"requests": {"cpu": "lots"}}}
                    ]
                }
            },
            "ChildRejected",
        ),
        # The operator itself cannot merge it: containers must be a list.
        ({"spec": {"containers": {"name": "messaging"}}}, "InvalidSpec"),
    ],
)
def test_a_spec_only_the_operator_can_judge_becomes_a_condition_and_one_event_not_a_loop(
    operator: RunningOperator, kube: Kube, override: dict[str, Any], reason: str
) -> None:
    apply_example(kube, spec={"override": {"podTemplate": override}})

    def failed() -> dict[str, Any] | None:
        cond = kube.condition("chat", "Ready") or {}
        return cond if cond.get("reason") == reason else None

    cond = wait_until(failed, timeout=60, what=f"Ready=False/{reason}")
    assert cond["status"] == "False" and cond["message"]
    st = (kube.get("MessagingCluster", "chat") or {})["status"]
    assert st["phase"] == "Failed"
    wait_until(lambda: invalid_spec_events(kube, reason) >= 1, timeout=30, what="the Warning")
    # Several resync periods later: still one Warning, and no retry storm.
    before = reconciles(operator, "invalid_spec")
    time.sleep(4 * RESYNC_SECONDS)
    assert invalid_spec_events(kube, reason) == 1
    assert reconciles(operator, "invalid_spec") - before <= 4 * 2 + 2  # resync + autoscale pace
    assert kube.get("Deployment", "chat") is None
    # Fixing the spec brings the cluster up.
    kube.merge_patch("MessagingCluster", "chat", {"spec": {"override": {"podTemplate": None}}})
    wait_until(
        lambda: (
            ((kube.get("MessagingCluster", "chat") or {}).get("status") or {}).get("phase")
            == "Running"
        ),
        timeout=90,
        what="phase Running after the fix",
    )


def reconciles(operator: RunningOperator, outcome: str) -> float:
    for line in operator.metrics().splitlines():
        if line.startswith(f'messaging_operator_reconciles_total{{outcome="{outcome}"}}'):
            return float(line.split()[-1])
    return 0.0
