"""The API server refuses bad MessagingClusters (schema, CEL rules) before the operator does."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.operator.kubeapi import ApiError, Kube
from tests.operator.samples import MINIMAL_SPEC

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
