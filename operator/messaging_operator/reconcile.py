"""Bringing a MessagingCluster's children in line with its spec: the operator's only writer.

One idempotent pass (`reconcile`) reads the cluster and its children, applies what the builders
say (server-side apply, so edited fields are restored and deleted children recreated), starts the
migration Job for a new image and moves the Deployment only after it succeeded, then writes the
status the `status` module computes and posts the Events of every transition.

The pass runs from kopf's change handlers (create/update/resume), from a resync timer, from the
autoscaler, and whenever a child changes. A per-cluster gate makes those runs one at a time, and
coalesces a burst of child events into one extra pass.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import aiohttp
import kopf

from messaging_operator import builders, status
from messaging_operator.builders import Body, Owner
from messaging_operator.errors import (
    InvalidSpecError,
    KubeConflictError,
    KubeError,
    KubeForbiddenError,
    KubeInvalidError,
)
from messaging_operator.kube import CLUSTER, DEPLOYMENT, JOB, PDB, POD, SECRET, KubeClient
from messaging_operator.spec import (
    GROUP,
    KIND,
    MANAGED_BY,
    PLURAL,
    REDIS_PORT,
    VERSION,
    ClusterSpec,
    SecretKeyRef,
    check_name,
    parse_spec,
)
from messaging_operator.telemetry import OperatorMetrics

log = logging.getLogger(__name__)

# ---- the operator's runtime, shared through kopf's memo ---------------------------------------


@dataclass(frozen=True)
class OperatorConfig:
    resync_seconds: float = 30.0
    autoscale_seconds: float = 15.0
    retry_seconds: float = 10.0
    pod_metrics_port: int = 8000


@dataclass
class Gate:
    """One reconcile at a time per cluster; events arriving meanwhile ask for one more pass."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: bool = False

    async def run(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run now, waiting for a running pass; errors of this run propagate to the caller."""
        async with self.lock:
            self.pending = False
            await fn()
            await self._drain(fn)

    async def kick(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run unless a pass is already running, in which case that pass runs once more."""
        if self.lock.locked():
            self.pending = True
            return
        async with self.lock:
            self.pending = False
            try:
                await fn()
            except (kopf.PermanentError, kopf.TemporaryError) as e:
                log.info("reconcile after a child event did not finish: %s", e)
            await self._drain(fn)

    async def _drain(self, fn: Callable[[], Awaitable[None]]) -> None:
        while self.pending:
            self.pending = False
            try:
                await fn()
            except (kopf.PermanentError, kopf.TemporaryError) as e:
                log.info("follow-up reconcile did not finish: %s", e)


@dataclass
class Runtime:
    """kopf's memo: shallow-copied per object, so the containers inside are shared by all."""

    config: OperatorConfig = field(default_factory=OperatorConfig)
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    clients: dict[str, Any] = field(default_factory=dict)
    gates: dict[tuple[str, str], Gate] = field(default_factory=dict)

    @property
    def api(self) -> KubeClient:
        api = self.clients.get("api")
        if not isinstance(api, KubeClient):
            raise kopf.TemporaryError("the API client is not open yet", delay=1)
        return api

    @property
    def http(self) -> aiohttp.ClientSession:
        session = self.clients.get("http")
        if not isinstance(session, aiohttp.ClientSession):
            raise kopf.TemporaryError("the metrics client is not open yet", delay=1)
        return session

    def gate(self, namespace: str, name: str) -> Gate:
        return self.gates.setdefault((namespace, name), Gate())


# ---- what the autoscaler hands to a pass ----------------------------------------------------


@dataclass(frozen=True)
class ScalingVerdict:
    desired: int
    condition: status.Condition
    record: Mapping[str, Any]  # status.scaling: the window's history and the last scale time
    sockets: int


# ---- reading children -------------------------------------------------------------------------


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _decode(secret: Mapping[str, Any], key: str) -> str | None:
    raw = (secret.get("data") or {}).get(key)
    if raw is None:
        return None
    return base64.b64decode(raw).decode(errors="replace")


async def read_secret_refs(
    api: KubeClient, namespace: str, refs: Mapping[str, SecretKeyRef]
) -> tuple[dict[str, str], list[str]]:
    """The values behind the spec's secret references, and the ones that are missing."""
    cache: dict[str, Body | None] = {}
    values: dict[str, str] = {}
    missing: list[str] = []
    for label, ref in refs.items():
        if ref.name not in cache:
            cache[ref.name] = await api.find(SECRET, namespace, ref.name)
        secret = cache[ref.name]
        value = _decode(secret, ref.key) if secret is not None else None
        if value is None:
            missing.append(f"{ref.name}/{ref.key}")
        else:
            values[label] = value
    return values, missing


def secret_refs(spec: ClusterSpec) -> dict[str, SecretKeyRef]:
    refs = {"dsn": spec.postgres.dsn_secret_ref}
    if spec.auth.jwt_secret_ref is not None:
        refs["jwt"] = spec.auth.jwt_secret_ref
    if spec.auth.public_key_secret_ref is not None:
        refs["publicKey"] = spec.auth.public_key_secret_ref
    if spec.redis.external is not None:
        refs["redisUrl"] = spec.redis.external.url_secret_ref
    return refs


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
        int(st.get("observedGeneration") or 0) >= int(dep["metadata"].get("generation") or 0)
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


def desired_replicas(
    spec: ClusterSpec,
    verdict: ScalingVerdict | None,
    previous: Mapping[str, Any],
    deployment: Mapping[str, Any] | None,
) -> int:
    """The one replica count: the autoscaler's, else /scale's count when it is switched off."""
    if not spec.autoscaling.enabled:
        return spec.fixed_replicas()
    low, high = spec.replicas.min, spec.replicas.max
    if verdict is not None:
        wanted = verdict.desired
    elif isinstance(previous.get("desiredReplicas"), int):
        wanted = previous["desiredReplicas"]
    elif deployment is not None:
        wanted = int((deployment.get("spec") or {}).get("replicas", low))
    else:
        wanted = low
    return max(low, min(high, wanted))


# ---- the pass ---------------------------------------------------------------------------------


def post_event(body: Mapping[str, Any], event: status.Event) -> None:
    # kopf.event() only reads apiVersion, kind and metadata from the body; a plain dict serves.
    kopf.event(cast(kopf.Body, body), type=event.type, reason=event.reason, message=event.message)


@dataclass
class Pass:
    """The I/O of one reconcile of one cluster; the decisions are in builders and status."""

    api: KubeClient
    body: Body
    events: list[status.Event] = field(default_factory=list)

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def previous(self) -> Mapping[str, Any]:
        return cast(Mapping[str, Any], self.body.get("status") or {})

    async def ensure_redis_password(self, owner: Owner, *, paused: bool) -> str | None:
        secret = await self.api.find(SECRET, self.namespace, builders.redis_name(self.name))
        if secret is None:
            if paused:
                return None
            try:
                secret = await self.api.create(
                    builders.redis_secret(owner, secrets.token_urlsafe(32))
                )
                self.events.append(
                    status.Event("Normal", "RedisPasswordCreated", "generated the Redis password")
                )
            except KubeConflictError:
                secret = await self.api.get(SECRET, self.namespace, builders.redis_name(self.name))
        elif not paused:
            # Re-assert labels and the owner reference without touching the password.
            desired = builders.redis_secret(owner, "")
            del desired["data"]
            secret = await self.api.apply(desired)
        return _decode(secret, builders.REDIS_PASSWORD_KEY)

    async def redis(
        self, owner: Owner, spec: ClusterSpec, values: dict[str, str], *, paused: bool
    ) -> tuple[status.RedisState, dict[str, Any]]:
        """Managed Redis (password Secret, Deployment, Service) or an external URL's Secret."""
        ns, name = self.namespace, self.name
        if spec.redis.external is not None:
            ref = spec.redis.external.url_secret_ref
            where = f"secret key {ref.name}/{ref.key}"
            state = (
                status.RedisState(True, "ExternalRedis", f"using the URL in {where}")
                if "redisUrl" in values
                else status.RedisState(False, "SecretNotFound", f"no {where}")
            )
            return state, {"managed": False, "urlSecretRef": {"name": ref.name, "key": ref.key}}
        password = await self.ensure_redis_password(owner, paused=paused)
        if password is not None:
            values["redisPassword"] = password
        if paused or password is None:
            deployment = await self.api.find(DEPLOYMENT, ns, builders.redis_name(name))
        else:
            redis_hash = builders.config_hash({"password": password})
            deployment = await self.api.apply(builders.redis_deployment(owner, spec, redis_hash))
            await self.api.apply(builders.redis_service(owner))
        ready = int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)
        state = (
            status.RedisState(True, "RedisReady", "the managed Redis is ready")
            if ready > 0
            else status.RedisState(False, "RedisNotReady", "the managed Redis has no ready pod")
        )
        return state, {
            "managed": True,
            "address": f"{builders.redis_name(name)}.{ns}.svc:{REDIS_PORT}",
            "passwordSecretRef": {
                "name": builders.redis_name(name),
                "key": builders.REDIS_PASSWORD_KEY,
            },
        }

    async def migration(
        self, owner: Owner, spec: ClusterSpec, *, may_start: bool
    ) -> status.MigrationState:
        """The migration Job of spec.image: started when absent, read when finished."""
        image = spec.image
        name = builders.migration_job_name(self.name, image)
        job = await self.api.find(JOB, self.namespace, name)
        if job is None and may_start:
            try:
                job = await self.api.create(builders.migration_job(owner, spec, image))
                self.events.append(
                    status.Event("Normal", "MigrationStarted", f"job {name} migrates for {image}")
                )
            except KubeConflictError:
                job = await self.api.find(JOB, self.namespace, name)
        state, message = job_state(job)
        before = self.previous.get("migration") or {}
        if before.get("image") == image and before.get("state") == state:
            # Already read on an earlier pass: keep the schema version and the failure reason.
            schema = self.previous.get("schemaVersion") if state == "succeeded" else None
            message = before.get("message", message)
            return status.MigrationState(image, name, state, message, schema)
        schema = None
        if state in ("succeeded", "failed"):
            wanted_phase = "Succeeded" if state == "succeeded" else "Failed"
            for pod in await self.api.list(POD, self.namespace, f"job-name={name}"):
                if (pod.get("status") or {}).get("phase") != wanted_phase:
                    continue
                text = termination_message(pod)
                if state == "succeeded":
                    schema = schema_version_from(text) or schema
                elif text:
                    message = f"{message}: {text.splitlines()[-1][:300]}"
                    break
        return status.MigrationState(image, name, state, message, schema)

    async def image_to_run(
        self, spec: ClusterSpec, migration: status.MigrationState, running: str | None
    ) -> str | None:
        """spec.image once migrated; until then whatever already runs (or ran) stays."""
        if migration.state == "succeeded":
            return spec.image
        if running:
            return running
        last = self.previous.get("currentImage")
        if isinstance(last, str) and last:
            # The Deployment was deleted while an upgrade is pending: bring back the old image.
            job_name = builders.migration_job_name(self.name, last)
            if job_state(await self.api.find(JOB, self.namespace, job_name))[0] == "succeeded":
                return last
        return None

    async def prune_jobs(self, keep: set[str]) -> None:
        """Delete finished migration Jobs of images that are neither wanted nor running."""
        selector = builders.label_selector(builders.selector_labels(self.name, builders.MIGRATION))
        for job in await self.api.list(JOB, self.namespace, selector):
            meta = job["metadata"]
            image = (meta.get("annotations") or {}).get(builders.IMAGE_ANNOTATION)
            if image in keep or job_state(job)[0] == "running":
                continue
            await self.api.delete(JOB, self.namespace, meta["name"])

    async def write_status(self, new: Mapping[str, Any]) -> None:
        previous = self.previous
        patch: dict[str, Any] = dict(new)
        for key in previous:
            if key not in new and key != "kopf":
                patch[key] = None  # a merge patch removes keys only when told to
        if all(previous.get(k) == v for k, v in patch.items()):
            return
        self.body = await self.api.merge_patch(
            CLUSTER, self.namespace, self.name, {"status": patch}, subresource="status"
        )

    def post_events(self) -> None:
        for event in self.events:
            post_event(self.body, event)
        self.events.clear()


async def reconcile(
    api: KubeClient, namespace: str, name: str, verdict: ScalingVerdict | None = None
) -> str | None:
    """One full pass over a cluster; returns its phase, or None when the cluster is gone.

    Raises InvalidSpecError for a spec that only an edit can fix (after reporting it in the
    status), and KubeError for API failures.
    """
    body = await api.find(CLUSTER, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    run = Pass(api=api, body=body)
    try:
        check_name(name)
        spec = parse_spec(body.get("spec") or {})
        return await _reconcile_valid(run, Owner.from_body(body), spec, verdict)
    except (InvalidSpecError, KubeInvalidError) as e:
        reason = "InvalidSpec" if isinstance(e, InvalidSpecError) else "ChildRejected"
        await _report_invalid(run, reason, str(e))
        raise InvalidSpecError(str(e)) from e
    except KubeForbiddenError as e:
        if "NamespaceTerminating" in e.causes:
            return None  # the namespace and everything in it are on their way out
        # RBAC is fixed by an administrator, not by waiting; say so where users look.
        run.events.append(status.Event("Warning", "Forbidden", str(e)))
        run.post_events()
        raise


def _server_selector(name: str) -> str:
    return builders.label_selector(builders.selector_labels(name, builders.SERVER))


async def _report_invalid(run: Pass, reason: str, message: str) -> None:
    raw = run.body.get("spec") or {}
    previous = run.previous
    obs = status.Observation(
        generation=int(run.body["metadata"].get("generation") or 0),
        target_image=str(raw.get("image", "")),
        selector=_server_selector(run.name),
        desired_replicas=int(previous.get("desiredReplicas") or 0),
        min_replicas=0,
        paused=bool(raw.get("paused", False)),
        autoscaling_enabled=bool((raw.get("autoscaling") or {}).get("enabled", True)),
        spec_error=message,
        spec_error_reason=reason,
        extra={
            key: previous[key]
            for key in ("replicas", "readyReplicas", "connectedSockets", "scaling", "redis")
            if key in previous
        },
    )
    new, events = status.compute_status(obs, previous, now=now_iso())
    run.events.extend(events)
    await run.write_status(new)
    run.post_events()


async def _reconcile_valid(
    run: Pass, owner: Owner, spec: ClusterSpec, verdict: ScalingVerdict | None
) -> str:
    api, ns, name, previous = run.api, run.namespace, run.name, run.previous
    paused = spec.paused
    values, missing = await read_secret_refs(api, ns, secret_refs(spec))
    redis_state, redis_status = await run.redis(owner, spec, values, paused=paused)
    # Migrations first: the Deployment moves to spec.image only after its Job succeeded.
    migration = await run.migration(owner, spec, may_start=not (paused or missing))
    deployment = await api.find(DEPLOYMENT, ns, name)
    observed = deployment_state(deployment)
    image = await run.image_to_run(spec, migration, observed.image if observed else None)
    replicas = desired_replicas(spec, verdict, previous, deployment)

    if not paused:
        if image is not None and not missing:
            deployment = await api.apply(
                builders.messaging_deployment(
                    owner,
                    spec,
                    image=image,
                    replicas=replicas,
                    secrets_hash=builders.config_hash(values),
                )
            )
        await api.apply(builders.http_service(owner, spec))
        await api.apply(builders.grpc_service(owner, spec))
        if spec.pod_disruption_budget.enabled:
            await api.apply(builders.pod_disruption_budget(owner, spec))
        else:
            await api.delete(PDB, ns, name)
        await run.prune_jobs({spec.image, *([image] if image else [])})

    carried = {
        "scaling": previous.get("scaling"),
        "connectedSockets": previous.get("connectedSockets"),
    }
    if verdict is not None:
        carried = {"scaling": dict(verdict.record), "connectedSockets": verdict.sockets}
    obs = status.Observation(
        generation=int(run.body["metadata"].get("generation") or 0),
        target_image=spec.image,
        selector=_server_selector(name),
        desired_replicas=replicas,
        min_replicas=spec.replicas.min,
        paused=paused,
        autoscaling_enabled=spec.autoscaling.enabled,
        missing_secrets=tuple(missing),
        redis=redis_state,
        migration=migration,
        deployment=deployment_state(deployment),
        scaling=verdict.condition if verdict is not None else None,
        redis_status=redis_status,
        extra={key: value for key, value in carried.items() if value is not None},
    )
    new, events = status.compute_status(obs, previous, now=now_iso())
    run.events.extend(events)
    await run.write_status(new)
    run.post_events()
    return str(new["phase"])


# ---- kopf handlers ----------------------------------------------------------------------------


async def run_reconcile(
    memo: Runtime, namespace: str, name: str, verdict: ScalingVerdict | None = None
) -> None:
    """A pass with kopf's outcome semantics: a bad spec is permanent, API trouble is retried."""
    metrics = memo.metrics
    started = time.monotonic()
    try:
        phase = await reconcile(memo.api, namespace, name, verdict)
    except InvalidSpecError as e:
        metrics.reconciles.labels("invalid_spec").inc()
        raise kopf.PermanentError(str(e)) from e
    except KubeError as e:
        metrics.reconciles.labels("api_error").inc()
        delay = memo.config.retry_seconds * (1 if e.retryable else 6)
        raise kopf.TemporaryError(str(e), delay=delay) from e
    finally:
        metrics.reconcile_seconds.observe(time.monotonic() - started)
    if phase is None:
        metrics.forget(namespace, name)
    metrics.reconciles.labels("success").inc()


async def on_cluster_change(name: str, namespace: str | None, memo: Runtime, **_: Any) -> None:
    """create/update/resume: the spec (or the operator) changed, so reconcile now."""
    assert namespace is not None  # the CRD is namespaced
    await memo.gate(namespace, name).run(lambda: run_reconcile(memo, namespace, name))


async def on_resync(name: str, namespace: str | None, memo: Runtime, **_: Any) -> None:
    """The safety net: children nobody watches (Secrets) and anything an event missed."""
    assert namespace is not None
    await memo.gate(namespace, name).run(lambda: run_reconcile(memo, namespace, name))


def _owning_cluster(body: Mapping[str, Any]) -> str | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
            return str(ref["name"])
    return None


async def on_child_event(
    event: Mapping[str, Any], body: Mapping[str, Any], memo: Runtime, **_: Any
) -> None:
    """A child changed or vanished: reconcile its owner (restores drift, follows rollouts)."""
    if event.get("type") is None:
        return  # the initial listing: the resume handlers cover it
    owner = _owning_cluster(body)
    namespace = body.get("metadata", {}).get("namespace")
    if owner is None or namespace is None:
        return
    await memo.gate(namespace, owner).kick(lambda: run_reconcile(memo, namespace, owner))


async def on_cluster_deleted(name: str, namespace: str | None, memo: Runtime, **_: Any) -> None:
    if namespace is not None:
        memo.gates.pop((namespace, name), None)
        memo.metrics.forget(namespace, name)


CHILD_RESOURCES = (
    ("apps", "v1", "deployments"),
    ("batch", "v1", "jobs"),
    ("", "v1", "services"),
    ("policy", "v1", "poddisruptionbudgets"),
)


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Attach the reconcile handlers to an explicit registry (no import-time global state)."""
    cluster = (GROUP, VERSION, PLURAL)
    kopf.on.resume(*cluster, registry=registry, id="reconcile-resume")(on_cluster_change)
    kopf.on.create(*cluster, registry=registry, id="reconcile-create")(on_cluster_change)
    kopf.on.update(*cluster, registry=registry, id="reconcile-update")(on_cluster_change)
    kopf.on.delete(*cluster, registry=registry, id="forget", optional=True)(on_cluster_deleted)
    kopf.timer(*cluster, registry=registry, id="resync", interval=config.resync_seconds)(on_resync)
    for group, version, plural in CHILD_RESOURCES:
        kopf.on.event(
            group,
            version,
            plural,
            registry=registry,
            id=f"child-{plural}",
            labels={"app.kubernetes.io/managed-by": MANAGED_BY},
        )(on_child_event)
