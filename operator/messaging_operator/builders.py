"""Desired child objects of a MessagingCluster, as plain dicts ready for server-side apply.

Everything here is a pure function of the spec and a few observed facts passed in (the image the
Deployment may run, its replica count, a hash of the referenced secrets), so every object the
operator writes can be checked without a cluster.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from messaging_operator.overrides import strategic_merge
from messaging_operator.spec import (
    API_VERSION,
    GRPC_CONTAINER_PORT,
    HTTP_CONTAINER_PORT,
    KIND,
    MANAGED_BY,
    PART_OF,
    REDIS_PORT,
    ClusterSpec,
    SecretKeyRef,
)

SERVER = "server"
REDIS = "redis"
MIGRATION = "migration"

IMAGE_ANNOTATION = "messaging.platform.io/image"
CONFIG_HASH_ANNOTATION = "messaging.platform.io/config-hash"
REDIS_PASSWORD_KEY = "password"  # noqa: S105 - the key name inside the Secret
MESSAGING_CONTAINER = "messaging"
GRPC_TLS_DIR = "/etc/messaging/grpc-tls"
GRPC_TLS_VOLUME = "grpc-tls"

Body = dict[str, Any]


@dataclass(frozen=True)
class Owner:
    """The MessagingCluster that every child points back to."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Owner:
        meta = body["metadata"]
        return cls(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])

    def reference(self) -> Body:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


# ---- names ----------------------------------------------------------------------------------


def image_hash(image: str) -> str:
    """A short, stable digest of an image reference, used to name its migration Job."""
    return hashlib.sha256(image.encode()).hexdigest()[:10]


def migration_job_name(cluster: str, image: str) -> str:
    return f"{cluster}-migrate-{image_hash(image)}"


def redis_name(cluster: str) -> str:
    return f"{cluster}-redis"


def grpc_service_name(cluster: str) -> str:
    return f"{cluster}-grpc"


# ---- labels and metadata ----------------------------------------------------------------------


def selector_labels(cluster: str, component: str) -> dict[str, str]:
    """The immutable part of the labels: what Deployments, Services and the PDB select on."""
    return {
        "app.kubernetes.io/name": "redis" if component == REDIS else "messaging",
        "app.kubernetes.io/instance": cluster,
        "app.kubernetes.io/component": component,
    }


def common_labels(cluster: str, component: str) -> dict[str, str]:
    return {
        **selector_labels(cluster, component),
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": PART_OF,
    }


def label_selector(labels: Mapping[str, str]) -> str:
    """The string form the API's labelSelector query and the /scale subresource use."""
    return ",".join(f"{key}={value}" for key, value in labels.items())


def _metadata(
    owner: Owner, name: str, component: str, annotations: Mapping[str, str] | None = None
) -> Body:
    meta: Body = {
        "name": name,
        "namespace": owner.namespace,
        "labels": common_labels(owner.name, component),
        "ownerReferences": [owner.reference()],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def config_hash(values: Mapping[str, str]) -> str:
    """A digest of the referenced secret values, so pods roll when a secret is rotated."""
    return hashlib.sha256(json.dumps(dict(sorted(values.items()))).encode()).hexdigest()[:16]


# ---- managed Redis --------------------------------------------------------------------------


def redis_secret(owner: Owner, password: str) -> Body:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(owner, redis_name(owner.name), REDIS),
        "type": "Opaque",
        "data": {REDIS_PASSWORD_KEY: base64.b64encode(password.encode()).decode()},
    }


def redis_deployment(owner: Owner, spec: ClusterSpec, password_hash: str) -> Body:
    managed = spec.redis.managed
    if managed is None:
        raise ValueError("redis_deployment needs spec.redis.managed")
    password_ref = {"secretKeyRef": {"name": redis_name(owner.name), "key": REDIS_PASSWORD_KEY}}
    container: Body = {
        "name": "redis",
        "image": managed.image,
        "imagePullPolicy": "IfNotPresent",
        # The backplane holds pub/sub and short-lived presence only: nothing to persist.
        "args": ["--requirepass", "$(REDIS_PASSWORD)", "--save", "", "--appendonly", "no"],
        "env": [
            {"name": "REDIS_PASSWORD", "valueFrom": password_ref},
            {"name": "REDISCLI_AUTH", "valueFrom": password_ref},
        ],
        "ports": [{"name": "redis", "containerPort": REDIS_PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "exec": {"command": ["redis-cli", "ping"]},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
        },
        "livenessProbe": {
            "tcpSocket": {"port": "redis"},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "resources": dict(managed.resources),
        "securityContext": _container_security_context(),
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner, redis_name(owner.name), REDIS),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector_labels(owner.name, REDIS)},
            "template": {
                "metadata": {
                    "labels": common_labels(owner.name, REDIS),
                    "annotations": {CONFIG_HASH_ANNOTATION: password_hash},
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    # The official image's redis user, so the pod runs as non-root.
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 999,
                        "runAsGroup": 999,
                        "fsGroup": 999,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [{"name": "data", "emptyDir": {}}],
                },
            },
        },
    }


def redis_service(owner: Owner) -> Body:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, redis_name(owner.name), REDIS),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner.name, REDIS),
            "ports": [
                {"name": "redis", "port": REDIS_PORT, "targetPort": "redis", "protocol": "TCP"}
            ],
        },
    }


def managed_redis_url_template(owner: Owner) -> str:
    """The Redis URL with `$(REDIS_PASSWORD)` for the kubelet to expand from the pod's env.

    The generated password is URL-safe (token_urlsafe), so no escaping is needed.
    """
    host = f"{redis_name(owner.name)}.{owner.namespace}.svc"
    return f"redis://:$(REDIS_PASSWORD)@{host}:{REDIS_PORT}/0"


# ---- the messaging pods -----------------------------------------------------------------------


def _secret_env(name: str, ref: SecretKeyRef) -> Body:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def messaging_env(owner: Owner, spec: ClusterSpec) -> list[Body]:
    """The service's settings (MESSAGING_*), secrets by reference, never by value."""
    env: list[Body] = [
        {"name": "MESSAGING_MODE", "value": "production"},
        {"name": "MESSAGING_HTTP_HOST", "value": "0.0.0.0"},
        {"name": "MESSAGING_HTTP_PORT", "value": str(HTTP_CONTAINER_PORT)},
        {"name": "MESSAGING_GRPC_HOST", "value": "0.0.0.0"},
        {"name": "MESSAGING_GRPC_PORT", "value": str(GRPC_CONTAINER_PORT)},
        {"name": "MESSAGING_REPLICA_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        _secret_env("MESSAGING_DATABASE_URL", spec.postgres.dsn_secret_ref),
    ]
    if spec.postgres.read_dsn_secret_ref is not None:
        env.append(_secret_env("MESSAGING_DATABASE_READ_URL", spec.postgres.read_dsn_secret_ref))
    if spec.redis.managed is not None:
        env.append(
            {
                "name": "REDIS_PASSWORD",
                "valueFrom": {
                    "secretKeyRef": {"name": redis_name(owner.name), "key": REDIS_PASSWORD_KEY}
                },
            }
        )
        # Must come after REDIS_PASSWORD: $(VAR) only expands variables defined earlier.
        env.append({"name": "MESSAGING_REDIS_URL", "value": managed_redis_url_template(owner)})
    elif spec.redis.external is not None:
        env.append(_secret_env("MESSAGING_REDIS_URL", spec.redis.external.url_secret_ref))
        if spec.redis.external.cluster:
            env.append({"name": "MESSAGING_REDIS_CLUSTER", "value": "true"})
    auth = spec.auth
    env.append({"name": "MESSAGING_JWT_ALGORITHMS", "value": json.dumps(list(auth.algorithms))})
    if auth.jwt_secret_ref is not None:
        env.append(_secret_env("MESSAGING_JWT_SECRET", auth.jwt_secret_ref))
    if auth.public_key_secret_ref is not None:
        env.append(_secret_env("MESSAGING_JWT_PUBLIC_KEY", auth.public_key_secret_ref))
    if auth.issuer:
        env.append({"name": "MESSAGING_JWT_ISSUER", "value": auth.issuer})
    if auth.audience:
        env.append({"name": "MESSAGING_JWT_AUDIENCE", "value": auth.audience})
    env += [
        {"name": "MESSAGING_CONNECTIONS_ADDRESS", "value": spec.connections_service.address},
        {
            "name": "MESSAGING_SOCKETIO_TRANSPORTS",
            "value": json.dumps(list(spec.socketio.transports)),
        },
        {"name": "MESSAGING_DRAIN_WINDOW_SECONDS", "value": str(spec.drain.window_seconds)},
        {
            "name": "MESSAGING_SHUTDOWN_DEADLINE_SECONDS",
            "value": str(spec.drain.shutdown_deadline_seconds),
        },
        {"name": "MESSAGING_LOG_FORMAT", "value": "json"},
        {"name": "MESSAGING_LOG_LEVEL", "value": spec.log_level},
        {"name": "MESSAGING_METRICS_HOST", "value": "0.0.0.0"},
        {"name": "MESSAGING_METRICS_PORT", "value": str(spec.service.metrics_port)},
        {"name": "MESSAGING_CORS_ALLOWED_ORIGINS", "value": json.dumps(spec.cors.allowed_origins)},
    ]
    env += _webhook_env(spec) + _attachments_env(spec) + _tls_env(spec)
    return env


def _webhook_env(spec: ClusterSpec) -> list[Body]:
    """MESSAGING_WEBHOOKS lists the endpoints; each secret comes in its own variable by reference,
    named in the list (`secretEnv`), so no secret value is ever in the pod spec."""
    if not spec.webhooks:
        return []
    env: list[Body] = []
    hooks = []
    for i, hook in enumerate(spec.webhooks):
        secret_env = f"MESSAGING_WEBHOOK_{i}_SECRET"
        env.append(_secret_env(secret_env, hook.secret_ref))
        hooks.append({"url": hook.url, "secretEnv": secret_env, "events": list(hook.events)})
    env.append({"name": "MESSAGING_WEBHOOKS", "value": json.dumps(hooks)})
    return env


def _attachments_env(spec: ClusterSpec) -> list[Body]:
    s3 = spec.attachments.s3
    if s3 is None:
        return [{"name": "MESSAGING_ATTACHMENTS_BACKEND", "value": "off"}]
    creds = s3.credentials_secret_ref
    env: list[Body] = [
        {"name": "MESSAGING_ATTACHMENTS_BACKEND", "value": "s3"},
        {"name": "MESSAGING_S3_BUCKET", "value": s3.bucket},
    ]
    if s3.endpoint:
        env.append({"name": "MESSAGING_S3_ENDPOINT_URL", "value": s3.endpoint})
    if s3.region:
        env.append({"name": "MESSAGING_S3_REGION", "value": s3.region})
    env += [
        _secret_env(
            "MESSAGING_S3_ACCESS_KEY_ID", SecretKeyRef(name=creds.name, key=creds.access_key_id_key)
        ),
        _secret_env(
            "MESSAGING_S3_SECRET_ACCESS_KEY",
            SecretKeyRef(name=creds.name, key=creds.secret_access_key_key),
        ),
    ]
    return env


def _tls_env(spec: ClusterSpec) -> list[Body]:
    if spec.tls is None:
        return []
    env: list[Body] = [
        {"name": "MESSAGING_GRPC_TLS_CERT_FILE", "value": f"{GRPC_TLS_DIR}/tls.crt"},
        {"name": "MESSAGING_GRPC_TLS_KEY_FILE", "value": f"{GRPC_TLS_DIR}/tls.key"},
    ]
    if spec.tls.client_auth:
        env.append({"name": "MESSAGING_GRPC_TLS_CLIENT_CA_FILE", "value": f"{GRPC_TLS_DIR}/ca.crt"})
    return env


def _container_security_context() -> Body:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _pod_security_context() -> Body:
    # The image must declare a numeric USER for runAsNonRoot to be verifiable by the kubelet.
    return {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def _image_pull_secrets(spec: ClusterSpec) -> list[Body]:
    return [{"name": ref.name} for ref in spec.image_pull_secrets]


def messaging_pod_template(owner: Owner, spec: ClusterSpec, image: str, secrets_hash: str) -> Body:
    """The messaging pod: probes on /healthz and /readyz, a drain-sized grace period, spreading."""
    container: Body = {
        "name": MESSAGING_CONTAINER,
        "image": image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["messaging"],
        "args": ["serve"],
        "ports": [
            {"name": "http", "containerPort": HTTP_CONTAINER_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_CONTAINER_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": spec.service.metrics_port, "protocol": "TCP"},
        ],
        "env": messaging_env(owner, spec),
        "resources": dict(spec.resources),
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 2,
            "timeoutSeconds": 2,
            "failureThreshold": 30,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        # /readyz turns 503 the moment SIGTERM arrives, so endpoints drop the pod early.
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
        "securityContext": _container_security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108 - an emptyDir
    }
    if spec.drain.pre_stop_sleep_seconds > 0:
        # Keeps serving while kube-proxy and load balancers remove the endpoint.
        container["lifecycle"] = {
            "preStop": {"sleep": {"seconds": spec.drain.pre_stop_sleep_seconds}}
        }
    pod_spec: Body = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": spec.drain.termination_grace_period_seconds,
        "securityContext": _pod_security_context(),
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if spec.tls is not None:
        container["volumeMounts"].append(
            {"name": GRPC_TLS_VOLUME, "mountPath": GRPC_TLS_DIR, "readOnly": True}
        )
        pod_spec["volumes"].append(
            {"name": GRPC_TLS_VOLUME, "secret": {"secretName": spec.tls.secret_name}}
        )
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = _image_pull_secrets(spec)
    spread = spec.topology_spread
    if spread.enabled:
        pod_spec["topologySpreadConstraints"] = [
            {
                "maxSkew": spread.max_skew,
                "topologyKey": key,
                "whenUnsatisfiable": spread.when_unsatisfiable,
                "labelSelector": {"matchLabels": selector_labels(owner.name, SERVER)},
                "matchLabelKeys": ["pod-template-hash"],
            }
            for key in spread.topology_keys
        ]
    template: Body = {
        "metadata": {
            "labels": common_labels(owner.name, SERVER),
            "annotations": {
                CONFIG_HASH_ANNOTATION: secrets_hash,
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(spec.service.metrics_port),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": pod_spec,
    }
    if spec.override.pod_template:
        template = strategic_merge(template, spec.override.pod_template)
    return template


def messaging_deployment(
    owner: Owner, spec: ClusterSpec, *, image: str, replicas: int, secrets_hash: str
) -> Body:
    """The service's Deployment; `image` is the one whose migrations have already succeeded."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner, owner.name, SERVER, {IMAGE_ANNOTATION: image}),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector_labels(owner.name, SERVER)},
            # Never below the current capacity during a rollout: each dropped pod drops sockets.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
            },
            "template": messaging_pod_template(owner, spec, image, secrets_hash),
        },
    }


def migration_job(owner: Owner, spec: ClusterSpec, image: str) -> Body:
    """`messaging migrate` for one image; the Deployment moves to `image` only once it succeeds."""
    container: Body = {
        "name": "migrate",
        "image": image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["messaging"],
        "args": ["migrate"],
        "env": messaging_env(owner, spec),
        "resources": dict(spec.resources),
        "securityContext": _container_security_context(),
        # Success writes the schema revision there; a failure falls back to the log's tail,
        # which becomes the reason the operator reports.
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108 - an emptyDir
    }
    pod_spec: Body = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": _pod_security_context(),
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = _image_pull_secrets(spec)
    name = migration_job_name(owner.name, image)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(owner, name, MIGRATION, {IMAGE_ANNOTATION: image}),
        "spec": {
            "backoffLimit": spec.migrations.backoff_limit,
            "activeDeadlineSeconds": spec.migrations.active_deadline_seconds,
            "template": {
                "metadata": {
                    "labels": common_labels(owner.name, MIGRATION),
                    "annotations": {IMAGE_ANNOTATION: image},
                },
                "spec": pod_spec,
            },
        },
    }


# ---- Services and the disruption budget -------------------------------------------------------


def http_service(owner: Owner, spec: ClusterSpec) -> Body:
    """HTTP and Socket.IO only: /metrics stays off this (possibly public) Service; Prometheus
    scrapes the pods' `metrics` port directly (the chart's PodMonitor). ClientIP affinity keeps
    long-polling sticky."""
    options = spec.service
    service_spec: Body = {
        "type": options.type,
        "selector": selector_labels(owner.name, SERVER),
        "sessionAffinity": options.session_affinity,
        "ports": [
            {
                "name": "http",
                "port": options.http_port,
                "targetPort": "http",
                "protocol": "TCP",
                "appProtocol": "http",
            },
        ],
    }
    if options.session_affinity == "ClientIP":
        service_spec["sessionAffinityConfig"] = {
            "clientIP": {"timeoutSeconds": options.session_affinity_timeout_seconds}
        }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, owner.name, SERVER, options.annotations),
        "spec": service_spec,
    }


def grpc_service(owner: Owner, spec: ClusterSpec) -> Body:
    options = spec.service
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, grpc_service_name(owner.name), SERVER, options.annotations),
        "spec": {
            "type": options.type,
            "selector": selector_labels(owner.name, SERVER),
            "ports": [
                {
                    "name": "grpc",
                    "port": options.grpc_port,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "kubernetes.io/h2c",
                }
            ],
        },
    }


def pod_disruption_budget(owner: Owner, spec: ClusterSpec) -> Body:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner, owner.name, SERVER),
        "spec": {
            "maxUnavailable": spec.pod_disruption_budget.max_unavailable,
            "selector": {"matchLabels": selector_labels(owner.name, SERVER)},
        },
    }


# ---- Events -----------------------------------------------------------------------------------


def kubernetes_event(
    involved: Mapping[str, Any], *, type_: str, reason: str, message: str, now: str
) -> Body:
    """A core/v1 Event about the MessagingCluster, as `kubectl describe` shows it."""
    meta = involved["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": MANAGED_BY},
        "reportingComponent": MANAGED_BY,
        "reportingInstance": MANAGED_BY,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
