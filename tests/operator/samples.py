"""Representative MessagingCluster bodies shared by the operator's unit tests."""

from __future__ import annotations

import copy
from typing import Any

MINIMAL_SPEC: dict[str, Any] = {
    "image": "ghcr.io/acme/messaging:1.4.0",
    "postgres": {"dsnSecretRef": {"name": "chat-db", "key": "dsn"}},
    "auth": {"jwtSecretRef": {"name": "chat-jwt", "key": "secret"}},
    "connectionsService": {"address": "connections.apps.svc:50051"},
}

PRODUCTION_SPEC: dict[str, Any] = {
    **MINIMAL_SPEC,
    "imagePullSecrets": [{"name": "ghcr"}],
    "replicas": {"min": 3, "max": 30},
    "autoscaling": {
        "enabled": True,
        "targetConnectionsPerPod": 5000,
        "scaleDownStabilizationSeconds": 600,
    },
    "redis": {"external": {"urlSecretRef": {"name": "chat-redis-url", "key": "url"}}},
    "auth": {
        "algorithms": ["RS256"],
        "publicKeySecretRef": {"name": "chat-jwt", "key": "public.pem"},
        "issuer": "https://id.acme.example",
        "audience": "chat",
    },
    "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
    "service": {"type": "LoadBalancer", "sessionAffinity": "ClientIP"},
    "drain": {"windowSeconds": 20, "shutdownDeadlineSeconds": 45, "preStopSleepSeconds": 10},
    "logLevel": "WARNING",
    "override": {
        "podTemplate": {
            "spec": {
                "nodeSelector": {"pool": "realtime"},
                "containers": [
                    {
                        "name": "messaging",
                        "env": [{"name": "MESSAGING_MAX_PAYLOAD_BYTES", "value": "32768"}],
                    }
                ],
            }
        }
    },
}


def cluster_body(
    spec: dict[str, Any], name: str = "chat", namespace: str = "apps"
) -> dict[str, Any]:
    return {
        "apiVersion": "messaging.platform.io/v1alpha1",
        "kind": "MessagingCluster",
        "metadata": {"name": name, "namespace": namespace, "uid": "u-1", "generation": 1},
        "spec": copy.deepcopy(spec),
    }
