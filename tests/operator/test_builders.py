"""The desired children for representative specs, checked without a cluster."""

from __future__ import annotations

import json
from typing import Any

from messaging.settings import Settings
from messaging_operator import builders, observe
from messaging_operator.builders import Owner
from messaging_operator.spec import parse_spec
from tests.operator.samples import MINIMAL_SPEC, PRODUCTION_SPEC, cluster_body

OWNER = Owner.from_body(cluster_body(MINIMAL_SPEC))
COMMON_LABEL_KEYS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
}


def every_child(spec_raw: dict[str, Any]) -> list[dict[str, Any]]:
    spec = parse_spec(spec_raw)
    children = [
        builders.messaging_deployment(OWNER, spec, image=spec.image, replicas=3, secrets_hash="h"),
        builders.migration_job(OWNER, spec, spec.image),
        builders.http_service(OWNER, spec),
        builders.grpc_service(OWNER, spec),
        builders.pod_disruption_budget(OWNER, spec),
    ]
    if spec.redis.managed is not None:
        children += [
            builders.redis_secret(OWNER, "pw"),
            builders.redis_deployment(OWNER, spec, "h"),
            builders.redis_service(OWNER),
        ]
    return children


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_every_child_is_owned_by_the_cluster_and_carries_the_common_labels() -> None:
    for spec in (MINIMAL_SPEC, PRODUCTION_SPEC):
        for child in every_child(spec):
            meta = child["metadata"]
            assert meta["namespace"] == "apps"
            assert meta["ownerReferences"] == [
                {
                    "apiVersion": "messaging.platform.io/v1alpha1",
                    "kind": "MessagingCluster",
                    "name": "chat",
                    "uid": "u-1",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ], child["kind"]
            assert set(meta["labels"]) == COMMON_LABEL_KEYS
            assert meta["labels"]["app.kubernetes.io/managed-by"] == "messaging-operator"
            assert meta["labels"]["app.kubernetes.io/instance"] == "chat"


def test_the_minimal_spec_gets_managed_redis_and_every_child() -> None:
    kinds = sorted(
        (child["kind"], child["metadata"]["name"]) for child in every_child(MINIMAL_SPEC)
    )
    job = builders.migration_job_name("chat", MINIMAL_SPEC["image"])
    assert kinds == sorted(
        [
            ("Deployment", "chat"),
            ("Deployment", "chat-redis"),
            ("Job", job),
            ("PodDisruptionBudget", "chat"),
            ("Secret", "chat-redis"),
            ("Service", "chat"),
            ("Service", "chat-grpc"),
            ("Service", "chat-redis"),
        ]
    )


def test_deployment_probes_grace_period_and_pre_stop_fit_the_drain() -> None:
    spec = parse_spec(PRODUCTION_SPEC)
    dep = builders.messaging_deployment(OWNER, spec, image="img:2", replicas=4, secrets_hash="abc")
    assert dep["spec"]["replicas"] == 4
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "img:2"
    assert container["command"] == ["messaging"] and container["args"] == ["serve"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["lifecycle"]["preStop"] == {"sleep": {"seconds": 10}}
    # preStop + the service's shutdown deadline, and a margin, all fit in the grace period.
    assert pod["terminationGracePeriodSeconds"] > 10 + 45
    env = env_of(container)
    assert env["MESSAGING_DRAIN_WINDOW_SECONDS"] == "20"
    assert env["MESSAGING_SHUTDOWN_DEADLINE_SECONDS"] == "45"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "http": 8000,
        "grpc": 50051,
        "metrics": 9090,
    }
    assert env["MESSAGING_METRICS_HOST"] == "0.0.0.0"
    assert env["MESSAGING_METRICS_PORT"] == "9090"
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    assert (
        dep["spec"]["template"]["metadata"]["annotations"][builders.CONFIG_HASH_ANNOTATION] == "abc"
    )


def test_settings_reach_the_pods_as_env_and_secrets_only_by_reference() -> None:
    spec = parse_spec(MINIMAL_SPEC)
    container = builders.messaging_deployment(
        OWNER, spec, image=spec.image, replicas=2, secrets_hash="h"
    )["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    assert env["MESSAGING_MODE"] == "production"
    assert env["MESSAGING_HTTP_HOST"] == "0.0.0.0"
    assert env["MESSAGING_REPLICA_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["MESSAGING_DATABASE_URL"] == {"secretKeyRef": {"name": "chat-db", "key": "dsn"}}
    assert env["MESSAGING_JWT_SECRET"] == {"secretKeyRef": {"name": "chat-jwt", "key": "secret"}}
    assert json.loads(env["MESSAGING_JWT_ALGORITHMS"]) == ["HS256"]
    assert env["MESSAGING_CONNECTIONS_ADDRESS"] == "connections.apps.svc:50051"
    assert env["MESSAGING_LOG_FORMAT"] == "json"
    assert "MESSAGING_JWT_PUBLIC_KEY" not in env


def test_managed_redis_url_expands_the_password_defined_before_it() -> None:
    spec = parse_spec(MINIMAL_SPEC)
    names = [e["name"] for e in builders.messaging_env(OWNER, spec)]
    assert names.index("REDIS_PASSWORD") < names.index("MESSAGING_REDIS_URL")
    env = env_of({"env": builders.messaging_env(OWNER, spec)})
    assert env["MESSAGING_REDIS_URL"] == "redis://:$(REDIS_PASSWORD)@chat-redis.apps.svc:6379/0"
    assert env["REDIS_PASSWORD"] == {"secretKeyRef": {"name": "chat-redis", "key": "password"}}


def test_external_redis_and_public_key_auth_come_from_their_secrets() -> None:
    spec = parse_spec(PRODUCTION_SPEC)
    env = env_of({"env": builders.messaging_env(OWNER, spec)})
    assert env["MESSAGING_REDIS_URL"] == {"secretKeyRef": {"name": "chat-redis-url", "key": "url"}}
    assert "REDIS_PASSWORD" not in env
    assert env["MESSAGING_JWT_PUBLIC_KEY"] == {
        "secretKeyRef": {"name": "chat-jwt", "key": "public.pem"}
    }
    assert "MESSAGING_JWT_SECRET" not in env
    assert env["MESSAGING_JWT_ISSUER"] == "https://id.acme.example"
    assert env["MESSAGING_JWT_AUDIENCE"] == "chat"


def test_the_override_patches_the_pod_template_strategically() -> None:
    spec = parse_spec(PRODUCTION_SPEC)
    pod = builders.messaging_deployment(
        OWNER, spec, image=spec.image, replicas=3, secrets_hash="h"
    )["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "realtime"}
    assert len(pod["containers"]) == 1
    env = env_of(pod["containers"][0])
    assert env["MESSAGING_MAX_PAYLOAD_BYTES"] == "32768"
    assert env["MESSAGING_MODE"] == "production"  # merged by name, not replaced
    assert pod["imagePullSecrets"] == [{"name": "ghcr"}]


def test_topology_spread_covers_zones_and_hosts_for_the_server_pods_only() -> None:
    spec = parse_spec(MINIMAL_SPEC)
    pod = builders.messaging_pod_template(OWNER, spec, spec.image, "h")["spec"]
    keys = [c["topologyKey"] for c in pod["topologySpreadConstraints"]]
    assert keys == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    for constraint in pod["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "server"
    disabled = parse_spec({**MINIMAL_SPEC, "topologySpread": {"enabled": False}})
    assert (
        "topologySpreadConstraints"
        not in builders.messaging_pod_template(OWNER, disabled, disabled.image, "h")["spec"]
    )


def test_one_migration_job_per_image_named_by_its_hash() -> None:
    spec = parse_spec(MINIMAL_SPEC)
    first = builders.migration_job(OWNER, spec, "img:1")
    second = builders.migration_job(OWNER, spec, "img:2")
    assert first["metadata"]["name"] != second["metadata"]["name"]
    assert first["metadata"]["name"] == builders.migration_job_name("chat", "img:1")
    assert len(first["metadata"]["name"]) <= 63
    assert first["metadata"]["annotations"][builders.IMAGE_ANNOTATION] == "img:1"
    pod = first["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    container = pod["containers"][0]
    assert container["args"] == ["migrate"] and container["image"] == "img:1"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert first["spec"]["backoffLimit"] == 1
    # Job pods must never be selected by the server's Services or PDB.
    server = builders.selector_labels("chat", builders.SERVER)
    job_labels = first["spec"]["template"]["metadata"]["labels"]
    assert not all(job_labels.get(k) == v for k, v in server.items())


def test_services_expose_http_and_grpc_but_never_metrics() -> None:
    minimal = parse_spec(MINIMAL_SPEC)
    http = builders.http_service(OWNER, minimal)
    assert http["spec"]["sessionAffinity"] == "None"
    assert "sessionAffinityConfig" not in http["spec"]
    assert {p["name"]: (p["port"], p["targetPort"]) for p in http["spec"]["ports"]} == {
        "http": (8000, "http"),
    }
    grpc = builders.grpc_service(OWNER, minimal)
    assert grpc["metadata"]["name"] == "chat-grpc"
    assert grpc["spec"]["ports"][0]["port"] == 50051
    assert grpc["spec"]["ports"][0]["targetPort"] == "grpc"
    sticky = builders.http_service(OWNER, parse_spec(PRODUCTION_SPEC))
    assert sticky["spec"]["sessionAffinity"] == "ClientIP"
    assert sticky["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] == 10800
    assert sticky["spec"]["type"] == "LoadBalancer"


def test_the_disruption_budget_selects_the_server_pods() -> None:
    pdb = builders.pod_disruption_budget(OWNER, parse_spec(MINIMAL_SPEC))
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == builders.selector_labels("chat", "server")


def test_managed_redis_requires_its_password_and_rolls_when_it_changes() -> None:
    spec = parse_spec(MINIMAL_SPEC)
    one = builders.redis_deployment(OWNER, spec, builders.config_hash({"password": "a"}))
    two = builders.redis_deployment(OWNER, spec, builders.config_hash({"password": "b"}))
    assert one["spec"]["template"] != two["spec"]["template"]
    container = one["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["--requirepass", "$(REDIS_PASSWORD)"]
    assert one["spec"]["strategy"] == {"type": "Recreate"}
    secret = builders.redis_secret(OWNER, "pw")
    assert secret["data"] == {"password": "cHc="}


def test_the_config_hash_is_stable_and_changes_with_any_value() -> None:
    assert builders.config_hash({"a": "1", "b": "2"}) == builders.config_hash({"b": "2", "a": "1"})
    assert builders.config_hash({"a": "1"}) != builders.config_hash({"a": "2"})


def test_the_contracts_new_fields_reach_the_pods() -> None:
    spec = parse_spec(
        {
            **MINIMAL_SPEC,
            "cors": {"allowedOrigins": ["https://chat.example.com"]},
            "webhooks": [
                {
                    "url": "https://hooks.example.com/in",
                    "secretRef": {"name": "hooks", "key": "whsec"},
                    "events": ["message.created"],
                }
            ],
            "attachments": {
                "s3": {
                    "endpoint": "https://minio.example:9000",
                    "bucket": "chat-files",
                    "region": "eu-west-1",
                    "credentialsSecretRef": {"name": "s3"},
                }
            },
            "redis": {"external": {"urlSecretRef": {"name": "r", "key": "url"}, "cluster": True}},
            "tls": {"secretName": "grpc-tls", "clientAuth": True},
        }
    )
    dep = builders.messaging_deployment(OWNER, spec, image="img:1", replicas=2, secrets_hash="x")
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = env_of(container)
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert json.loads(env["MESSAGING_CORS_ALLOWED_ORIGINS"]) == ["https://chat.example.com"]
    assert json.loads(env["MESSAGING_WEBHOOKS"]) == [
        {
            "url": "https://hooks.example.com/in",
            "secretEnv": "MESSAGING_WEBHOOK_0_SECRET",
            "events": ["message.created"],
        }
    ]
    assert refs["MESSAGING_WEBHOOK_0_SECRET"] == {"name": "hooks", "key": "whsec"}
    assert env["MESSAGING_ATTACHMENTS_BACKEND"] == "s3"
    assert env["MESSAGING_S3_BUCKET"] == "chat-files"
    assert env["MESSAGING_S3_ENDPOINT_URL"] == "https://minio.example:9000"
    assert env["MESSAGING_S3_REGION"] == "eu-west-1"
    assert refs["MESSAGING_S3_ACCESS_KEY_ID"] == {"name": "s3", "key": "accessKeyId"}
    assert refs["MESSAGING_S3_SECRET_ACCESS_KEY"] == {"name": "s3", "key": "secretAccessKey"}
    assert env["MESSAGING_REDIS_CLUSTER"] == "true"
    assert env["MESSAGING_GRPC_TLS_CERT_FILE"] == "/etc/messaging/grpc-tls/tls.crt"
    assert env["MESSAGING_GRPC_TLS_KEY_FILE"] == "/etc/messaging/grpc-tls/tls.key"
    assert env["MESSAGING_GRPC_TLS_CLIENT_CA_FILE"] == "/etc/messaging/grpc-tls/ca.crt"
    assert {"name": "grpc-tls", "secret": {"secretName": "grpc-tls"}} in pod["volumes"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "grpc-tls")
    assert mount == {"name": "grpc-tls", "mountPath": "/etc/messaging/grpc-tls", "readOnly": True}


def test_an_external_redis_cluster_reaches_the_pods_as_settings_the_service_accepts() -> None:
    spec = parse_spec(
        {
            **MINIMAL_SPEC,
            "redis": {"external": {"urlSecretRef": {"name": "r", "key": "url"}, "cluster": True}},
        }
    )
    dep = builders.messaging_deployment(OWNER, spec, image="img:1", replicas=2, secrets_hash="x")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    url_ref = next(e for e in container["env"] if e["name"] == "MESSAGING_REDIS_URL")
    assert url_ref["valueFrom"]["secretKeyRef"] == {"name": "r", "key": "url"}
    assert env["MESSAGING_REDIS_CLUSTER"] == "true"
    assert not any(e["name"] == "REDIS_PASSWORD" for e in container["env"])  # not managed Redis
    # The service reads the switch (a cluster URL names one node).
    settings = Settings(
        redis_url="redis://:pw@redis-cluster.apps.svc:6379",
        redis_cluster=env["MESSAGING_REDIS_CLUSTER"],
    )
    assert settings.redis_cluster is True


def test_without_the_optional_fields_attachments_are_off_and_nothing_else_is_set() -> None:
    dep = builders.messaging_deployment(
        OWNER, parse_spec(MINIMAL_SPEC), image="img:1", replicas=2, secrets_hash="x"
    )
    env = env_of(dep["spec"]["template"]["spec"]["containers"][0])
    assert env["MESSAGING_ATTACHMENTS_BACKEND"] == "off"
    assert env["MESSAGING_CORS_ALLOWED_ORIGINS"] == "[]"
    for name in (
        "MESSAGING_WEBHOOKS",
        "MESSAGING_REDIS_CLUSTER",
        "MESSAGING_GRPC_TLS_CERT_FILE",
        "MESSAGING_DATABASE_READ_URL",
    ):
        assert name not in env


def test_a_read_replica_dsn_reaches_the_pods_by_secret_reference_and_rolls_them() -> None:
    raw = {
        **MINIMAL_SPEC,
        "postgres": {
            **MINIMAL_SPEC["postgres"],
            "readDsnSecretRef": {"name": "chat-db-replica", "key": "dsn"},
        },
    }
    spec = parse_spec(raw)
    dep = builders.messaging_deployment(OWNER, spec, image="img:1", replicas=2, secrets_hash="x")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    [read_url] = [e for e in container["env"] if e["name"] == "MESSAGING_DATABASE_READ_URL"]
    assert read_url == {
        "name": "MESSAGING_DATABASE_READ_URL",
        "valueFrom": {"secretKeyRef": {"name": "chat-db-replica", "key": "dsn"}},
    }
    # Part of the Secrets the operator checks and hashes into the pod template.
    assert observe.secret_refs(spec)["readDsn"].name == "chat-db-replica"
