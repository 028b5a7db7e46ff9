"""`kubectl explain` documents the MessagingCluster's fields from the CRD's descriptions."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.k8s import K8sCluster, wait_until


@pytest.mark.parametrize(
    ("field", "words"),
    [
        ("messagingcluster.spec.tls.clientAuth", "mutual TLS"),
        ("messagingcluster.spec.webhooks.secretRef", "signing secret"),
        ("messagingcluster.spec.attachments.s3.bucket", "MESSAGING_S3_BUCKET"),
        ("messagingcluster.spec.redis.external.cluster", "sharded pub/sub"),
        ("messagingcluster.spec.cors.allowedOrigins", "MESSAGING_CORS_ALLOWED_ORIGINS"),
        ("messagingcluster.status.connectedSockets", "absent (unknown, not 0)"),
        ("messagingcluster.spec.replicas.max", "Upper bound"),
    ],
)
def test_kubectl_explain_documents_the_new_fields(
    k8s_cluster: K8sCluster, messaging_crd: Path, field: str, words: str
) -> None:
    def explained() -> str | None:
        result = k8s_cluster.kubectl("explain", field, check=False)
        return result.stdout if result.returncode == 0 else None

    text = wait_until(explained, timeout=60, what=f"kubectl explain {field}")
    assert words in " ".join(text.split())
