"""Pure readings of what the API server holds: Jobs, pods, Deployments, Secrets, ownership.

Nothing here does I/O: the pass (children.py) fetches, these functions interpret, so every rule
about what an observed object means is tested without a cluster.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from messaging_operator import builders, status
from messaging_operator.spec import ClusterSpec, SecretKeyRef

APPLIED_ANNOTATION = "messaging.platform.io/applied"


def decode(secret: Mapping[str, Any] | None, key: str) -> str | None:
    raw = ((secret or {}).get("data") or {}).get(key)
    if raw is None:
        return None
    return base64.b64decode(raw).decode(errors="replace")


def secret_refs(spec: ClusterSpec) -> dict[str, SecretKeyRef]:
    """Every Secret key the pods read, by the label the config hash and messages use."""
    refs = {"dsn": spec.postgres.dsn_secret_ref}
    if spec.postgres.read_dsn_secret_ref is not None:
        refs["readDsn"] = spec.postgres.read_dsn_secret_ref
    if spec.auth.jwt_secret_ref is not None:
        refs["jwt"] = spec.auth.jwt_secret_ref
    if spec.auth.public_key_secret_ref is not None:
        refs["publicKey"] = spec.auth.public_key_secret_ref
    if spec.redis.external is not None:
        refs["redisUrl"] = spec.redis.external.url_secret_ref
    for i, hook in enumerate(spec.webhooks):
        refs[f"webhook{i}"] = hook.secret_ref
    if spec.attachments.s3 is not None:
        creds = spec.attachments.s3.credentials_secret_ref
        refs["s3AccessKeyId"] = SecretKeyRef(name=creds.name, key=creds.access_key_id_key)
        refs["s3SecretAccessKey"] = SecretKeyRef(name=creds.name, key=creds.secret_access_key_key)
    if spec.tls is not None:
        refs["tlsCert"] = SecretKeyRef(name=spec.tls.secret_name, key="tls.crt")
        refs["tlsKey"] = SecretKeyRef(name=spec.tls.secret_name, key="tls.key")
        if spec.tls.client_auth:
            refs["tlsClientCa"] = SecretKeyRef(name=spec.tls.secret_name, key="ca.crt")
    return refs


def redis_url_problem(url: str, *, cluster: bool = False) -> str | None:
    """Why a Redis URL cannot work, or None; pods given a bad one would only crash-loop.

    A Redis Cluster (``spec.redis.external.cluster``) has only database 0; the service refuses
    a cluster URL naming another.
    """
    try:
        parts = urlsplit(url.strip())
        _ = parts.port  # raises on a non-numeric port
    except ValueError as e:
        return f"not a URL ({e})"
    if parts.scheme not in ("redis", "rediss"):
        return "not a redis:// or rediss:// URL"
    if not parts.hostname:
        return "the URL names no host"
    if cluster and parts.path.strip("/") not in ("", "0"):
        return "a Redis Cluster has only database 0"
    return None


@dataclass(frozen=True)
class SecretReading:
    """The values behind the spec's references, and one clear sentence per failing one."""

    values: dict[str, str]
    missing: list[str]  # a Secret or a key that is not there
    invalid: list[str]  # there, but unusable (a Redis URL that cannot work)

    @property
    def problems(self) -> list[str]:
        return self.missing + self.invalid


def secret_problems(
    refs: Mapping[str, SecretKeyRef],
    secrets: Mapping[str, Mapping[str, Any] | None],
    *,
    redis_cluster: bool = False,
) -> SecretReading:
    reading = SecretReading({}, [], [])
    for label, ref in refs.items():
        secret = secrets.get(ref.name)
        value = decode(secret, ref.key)
        if secret is None:
            reading.missing.append(f"Secret {ref.name} does not exist (needed for key {ref.key})")
        elif value is None:
            reading.missing.append(f"Secret {ref.name} has no key {ref.key}")
        elif (
            label == "redisUrl"
            and (why := redis_url_problem(value, cluster=redis_cluster)) is not None
        ):
            reading.invalid.append(f"Secret {ref.name} key {ref.key}: {why}")
        else:
            reading.values[label] = value
    return reading


def owned_by(body: Mapping[str, Any], uid: str) -> bool:
    """Whether the object names this MessagingCluster as its controller: ours to change."""
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("uid") == uid and ref.get("controller") is True:
            return True
    return False


def applied_hash(desired: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(desired, sort_keys=True).encode()).hexdigest()[:16]


def stamp(desired: Mapping[str, Any]) -> dict[str, Any]:
    """The desired object with a digest of itself, so a removed field is noticed as a change."""
    stamped = json.loads(json.dumps(desired))
    meta = stamped.setdefault("metadata", {})
    meta.setdefault("annotations", {})[APPLIED_ANNOTATION] = applied_hash(desired)
    return dict(stamped)


def _contains(observed: Any, desired: Any) -> bool:
    if isinstance(desired, Mapping):
        return isinstance(observed, Mapping) and all(
            _contains(observed.get(k), v) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(observed, list)
            and len(observed) == len(desired)
            and all(_contains(o, d) for o, d in zip(observed, desired, strict=True))
        )
    if isinstance(desired, bool) or isinstance(observed, bool):
        return observed is desired
    return bool(observed == desired)


def needs_apply(stamped: Mapping[str, Any], observed: Mapping[str, Any] | None) -> bool:
    """Whether applying `stamped` (from `stamp`) would change anything the operator manages.

    Equal digests mean the same desired object was applied before; then only drift (a field we
    set, edited since) makes a write worth it. Fields others added are not ours to compare.
    """
    if observed is None:
        return True
    want = ((stamped.get("metadata") or {}).get("annotations") or {}).get(APPLIED_ANNOTATION)
    have = ((observed.get("metadata") or {}).get("annotations") or {}).get(APPLIED_ANNOTATION)
    return want != have or not _contains(observed, stamped)


def job_state(job: Mapping[str, Any] | None) -> tuple[status.JobState, str]:
    if job is None:
        return "absent", ""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return "succeeded", ""
        if cond.get("type") == "Failed":
            return "failed", cond.get("message") or cond.get("reason") or "the job failed"
    return "running", ""


def job_image(job: Mapping[str, Any]) -> str:
    return str(
        ((job.get("metadata") or {}).get("annotations") or {}).get(builders.IMAGE_ANNOTATION, "")
    )


def termination_message(pod: Mapping[str, Any]) -> str | None:
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
        message = (terminated.get("message") or "").strip()
        if message:
            return message
    return None


def schema_version_from(message: str | None) -> str | None:
    """`messaging migrate` writes the bare revision ("0003"); tolerate `schema_version=0003`."""
    if not message:
        return None
    last = message.strip().splitlines()[-1].strip()
    return last.removeprefix("schema_version=").strip() or None


def template_of(dep: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if dep is None:
        return None
    template = (dep.get("spec") or {}).get("template")
    return dict(template) if isinstance(template, Mapping) else None


def deployment_state(dep: Mapping[str, Any] | None) -> status.DeploymentState | None:
    if dep is None:
        return None
    spec = dep.get("spec") or {}
    st = dep.get("status") or {}
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
    image = next(
        (c.get("image", "") for c in containers if c.get("name") == builders.MESSAGING_CONTAINER),
        "",
    )
    want = int(spec.get("replicas", 1))
    updated = int(st.get("updatedReplicas") or 0)
    # Every pod runs the latest template (a scale-down in progress is still rolled out).
    rolled_out = (
        int(st.get("observedGeneration") or 0)
        >= int((dep.get("metadata") or {}).get("generation") or 0)
        and updated >= want
        and int(st.get("replicas") or 0) <= updated
    )
    return status.DeploymentState(
        image=image,
        replicas=int(st.get("replicas") or 0),
        ready_replicas=int(st.get("readyReplicas") or 0),
        updated_replicas=updated,
        spec_replicas=want,
        rolled_out=rolled_out,
    )


def live_replicas(dep: Mapping[str, Any] | None) -> int | None:
    if dep is None:
        return None
    value = (dep.get("spec") or {}).get("replicas")
    return int(value) if isinstance(value, int) else None
