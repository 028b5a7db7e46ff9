"""The I/O of one reconcile pass: reading the children, writing the ones that differ.

Every write goes through `Pass.ensure`, which holds the three rules the operator lives by:
an object it did not create is never adopted, changed or deleted (a name clash is reported as a
conflict instead); an object that already matches is not written at all; and whatever the API
answers updates the cache, so the next pass compares against what the server really holds.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from messaging_operator import builders, observe, status
from messaging_operator.builders import Body, Owner
from messaging_operator.errors import (
    KubeConflictError,
    KubeError,
    KubeForbiddenError,
    KubeNotFoundError,
)
from messaging_operator.kube import (
    CLUSTER,
    DEPLOYMENT,
    JOB,
    PDB,
    POD,
    SECRET,
    SERVICE,
    Kind,
    KubeClient,
    kind_of,
)
from messaging_operator.memo import ObjectCache
from messaging_operator.spec import REDIS_PORT, ClusterSpec

log = logging.getLogger(__name__)

# Kinds whose objects the label-selected watches keep in the cache; others are read with a GET.
WATCHED = frozenset({DEPLOYMENT.plural, JOB.plural, SERVICE.plural, PDB.plural})
# Kinds created once and never changed (a migration Job per image): a plain create, so the
# operator needs no patch permission on them.
CREATE_ONLY = frozenset({JOB.plural})


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def post_event(api: KubeClient, body: Mapping[str, Any], event: status.Event) -> bool:
    """Post one Event, once: Events are auxiliary, so a refusal is logged, never retried.

    Returns False when the namespace is being deleted (nothing more should be written there).
    """
    try:
        await api.create(
            builders.kubernetes_event(
                body, type_=event.type, reason=event.reason, message=event.message, now=now_iso()
            )
        )
    except KubeForbiddenError as e:
        if e.namespace_terminating:
            return False
        log.warning("could not post the Event %s: %s", event.reason, e)
    except KubeError as e:
        log.warning("could not post the Event %s: %s", event.reason, e)
    return True


@dataclass
class Pass:
    """One reconcile of one cluster: its API calls, the conflicts met, the Events to post."""

    api: KubeClient
    cache: ObjectCache
    body: Body
    events: list[status.Event] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    created: set[tuple[str, str]] = field(default_factory=set)  # (plural, name) made this pass

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def uid(self) -> str:
        return str(self.body["metadata"]["uid"])

    @property
    def previous(self) -> Mapping[str, Any]:
        return cast(Mapping[str, Any], self.body.get("status") or {})

    # ---- reading ---------------------------------------------------------------------------

    async def observed(self, kind: Kind, name: str) -> Body | None:
        """The child as the cache knows it, or from the API server for kinds not watched."""
        if kind.plural in WATCHED:
            return self.cache.get(kind, self.namespace, name)
        return await self.api.find(kind, self.namespace, name)

    def _conflict(self, kind: Kind, name: str) -> None:
        self.conflicts.append(
            f"{kind.kind} {name} exists and was not created by this MessagingCluster"
        )

    async def mine(self, kind: Kind, name: str) -> tuple[Body | None, bool]:
        """(object, ours): the object is left alone unless `ours`."""
        body = await self.observed(kind, name)
        if body is None:
            return None, True
        if observe.owned_by(body, self.uid):
            return body, True
        self._conflict(kind, name)
        return body, False

    # ---- writing ---------------------------------------------------------------------------

    async def ensure(self, desired: Mapping[str, Any]) -> Body | None:
        """Create or update one child so it matches `desired`; None when the name is taken.

        Absent: created. Present and ours: applied only when it differs. Present and not
        ours: left alone, and reported as a conflict.
        """
        kind = kind_of(desired)
        name = str(desired["metadata"]["name"])
        stamped = observe.stamp(desired)
        current = await self.observed(kind, name)
        if current is None and kind.plural in WATCHED:
            # The cache has not seen it: someone else's object (not labelled as ours), or one
            # the watch has not delivered yet. Look before writing anything.
            current = await self.api.find(kind, self.namespace, name)
        if current is not None:
            self._remember(kind, current)
            if not observe.owned_by(current, self.uid):
                self._conflict(kind, name)
                return None
            if not observe.needs_apply(stamped, current):
                return current
        if current is None and kind.plural in CREATE_ONLY:
            try:
                created = await self.api.create(stamped)
            except KubeConflictError:
                self._conflict(kind, name)  # appeared since the look: not ours to take
                return None
            self._remember(kind, created)
            self.created.add((kind.plural, name))
            return created
        if current is not None and kind.plural in CREATE_ONLY:
            return current  # never changed once created
        # Server-side apply creates as well as updates, so the operator is one field manager
        # from the start and a field it stops setting is removed on the next apply.
        applied = await self.api.apply(stamped)
        self._remember(kind, applied)
        if current is None:
            self.created.add((kind.plural, name))
        return applied

    async def remove(self, kind: Kind, name: str) -> None:
        """Delete a child that is ours; anything else of that name is not touched."""
        current = await self.observed(kind, name)
        if current is None or not observe.owned_by(current, self.uid):
            return
        await self.api.delete(kind, self.namespace, name)
        self.cache.drop(kind, self.namespace, name)

    async def set_replicas(self, name: str, replicas: int) -> Body | None:
        """Only the count of a Deployment whose template is held back (a pending migration)."""
        current = self.cache.get(DEPLOYMENT, self.namespace, name)
        if current is None or observe.live_replicas(current) == replicas:
            return current
        patched = await self.api.merge_patch(
            DEPLOYMENT, self.namespace, name, {"spec": {"replicas": replicas}}
        )
        self._remember(DEPLOYMENT, patched)
        return patched

    def _remember(self, kind: Kind, body: Mapping[str, Any]) -> None:
        if kind.plural in WATCHED:
            self.cache.put(kind, body)

    # ---- managed Redis ---------------------------------------------------------------------

    async def redis_password(self, owner: Owner, *, paused: bool) -> str | None:
        name = builders.redis_name(self.name)
        secret, ours = await self.mine(SECRET, name)
        if not ours:
            return None
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
                secret = await self.api.get(SECRET, self.namespace, name)
                if not observe.owned_by(secret, self.uid):
                    self._conflict(SECRET, name)
                    return None
        return observe.decode(secret, builders.REDIS_PASSWORD_KEY)

    async def redis(
        self,
        owner: Owner,
        spec: ClusterSpec,
        values: dict[str, str],
        problems: list[str],
        *,
        paused: bool,
    ) -> tuple[status.RedisState, dict[str, Any]]:
        """Managed Redis (password Secret, Deployment, Service), or the external URL's state."""
        ns, name = self.namespace, self.name
        if spec.redis.external is not None:
            ref = spec.redis.external.url_secret_ref
            if not paused:
                await self.remove_managed_redis()
            where = f"Secret {ref.name} "
            problem = next((p for p in problems if p.startswith(where)), None)
            if "redisUrl" in values:
                state = status.RedisState(
                    True, "ExternalRedis", f"using the URL in Secret {ref.name} key {ref.key}"
                )
            elif problem is not None and problem.startswith(f"{where}key "):
                state = status.RedisState(False, "InvalidRedisURL", problem)
            else:
                state = status.RedisState(False, "SecretNotFound", problem or f"no {where}")
            record: dict[str, Any] = {
                "managed": False,
                "urlSecretRef": {"name": ref.name, "key": ref.key},
            }
            if spec.redis.external.cluster:
                record["cluster"] = True
            return state, record
        record = {
            "managed": True,
            "address": f"{builders.redis_name(name)}.{ns}.svc:{REDIS_PORT}",
            "passwordSecretRef": {
                "name": builders.redis_name(name),
                "key": builders.REDIS_PASSWORD_KEY,
            },
        }
        password = await self.redis_password(owner, paused=paused)
        if password is not None:
            values["redisPassword"] = password
        if paused or password is None:
            deployment, _ = await self.mine(DEPLOYMENT, builders.redis_name(name))
        else:
            redis_hash = builders.config_hash({"password": password})
            deployment = await self.ensure(builders.redis_deployment(owner, spec, redis_hash))
            await self.ensure(builders.redis_service(owner))
        if self.conflicts:
            return status.RedisState(False, "NameConflict", "; ".join(self.conflicts)), record
        ready = int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)
        state = (
            status.RedisState(True, "RedisReady", "the managed Redis is ready")
            if ready > 0
            else status.RedisState(False, "RedisNotReady", "the managed Redis has no ready pod yet")
        )
        return state, record

    async def remove_managed_redis(self) -> None:
        """After a switch to external Redis the managed one stops (ours only). Its password
        Secret stays, for a switch back, until the cluster is deleted: the operator has no
        permission to delete Secrets."""
        name = builders.redis_name(self.name)
        await self.remove(DEPLOYMENT, name)
        await self.remove(SERVICE, name)

    # ---- migrations ------------------------------------------------------------------------

    def migration_jobs(self) -> list[Body]:
        return self.cache.select(
            JOB, self.namespace, builders.selector_labels(self.name, builders.MIGRATION)
        )

    async def migration(
        self, owner: Owner, spec: ClusterSpec, *, may_start: bool
    ) -> status.MigrationState:
        """The migration of spec.image: started when absent and no other Job of this cluster
        runs; a success the status already recorded stands even if its Job was deleted."""
        image = spec.image
        name = builders.migration_job_name(self.name, image)
        job, ours = await self.mine(JOB, name)
        if not ours:
            return status.MigrationState(image, name, "absent", self.conflicts[-1])
        before = self.previous.get("migration") or {}
        if job is None and before.get("image") == image and before.get("state") == "succeeded":
            schema = self.previous.get("schemaVersion")
            return status.MigrationState(image, name, "succeeded", "", schema)
        if job is None:
            job = await self._listed_job(name)
        if job is None:
            busy = [
                j["metadata"]["name"]
                for j in self.migration_jobs()
                if observe.job_state(j)[0] == "running" and j["metadata"]["name"] != name
            ]
            if busy:
                return status.MigrationState(
                    image, name, "absent", f"waiting for job {busy[0]} to finish first"
                )
            if may_start:
                job = await self._start_job(owner, spec, name)
                if job is None:
                    return status.MigrationState(image, name, "absent", self.conflicts[-1])
        state, message = observe.job_state(job)
        if before.get("image") == image and before.get("state") == state:
            # Already read on an earlier pass: keep the schema version and the failure reason.
            schema = self.previous.get("schemaVersion") if state == "succeeded" else None
            message = before.get("message", message)
            return status.MigrationState(image, name, state, message, schema)
        schema, message = await self._read_finished(name, state, message)
        return status.MigrationState(image, name, state, message, schema)

    async def _listed_job(self, name: str) -> Body | None:
        """Authoritative, not the cache: a Job the watch has not shown yet (just after a
        restart, say) must still keep a second migration from starting."""
        jobs = await self.api.list(
            JOB,
            self.namespace,
            builders.label_selector(builders.selector_labels(self.name, builders.MIGRATION)),
        )
        for found in jobs:
            self._remember(JOB, found)
        return next((j for j in jobs if j["metadata"]["name"] == name), None)

    async def _start_job(self, owner: Owner, spec: ClusterSpec, name: str) -> Body | None:
        job = await self.ensure(builders.migration_job(owner, spec, spec.image))
        if job is not None and (JOB.plural, name) in self.created:
            self.events.append(
                status.Event("Normal", "MigrationStarted", f"job {name} migrates for {spec.image}")
            )
        return job

    async def _read_finished(
        self, name: str, state: status.JobState, message: str
    ) -> tuple[str | None, str]:
        """The schema version of a success, or the last log line of a failure, from its pod."""
        schema = None
        if state not in ("succeeded", "failed"):
            return schema, message
        wanted_phase = "Succeeded" if state == "succeeded" else "Failed"
        for pod in await self.api.list(POD, self.namespace, f"job-name={name}"):
            if (pod.get("status") or {}).get("phase") != wanted_phase:
                continue
            text = observe.termination_message(pod)
            if state == "succeeded":
                schema = observe.schema_version_from(text) or schema
            elif text:
                return schema, f"{message}: {text.splitlines()[-1][:300]}"
        return schema, message

    async def prune_jobs(self, keep: set[str]) -> None:
        """Delete finished migration Jobs of images that are neither wanted nor running."""
        for job in self.migration_jobs():
            if observe.job_image(job) in keep or observe.job_state(job)[0] == "running":
                continue
            await self.remove(JOB, job["metadata"]["name"])

    # ---- status and Events -----------------------------------------------------------------

    async def write_status(self, new: Mapping[str, Any]) -> None:
        previous = self.previous
        patch: dict[str, Any] = dict(new)
        for key in previous:
            if key not in new and key != "kopf":
                patch[key] = None  # a merge patch removes keys only when told to
        if all(previous.get(k) == v for k, v in patch.items()):
            return
        try:
            self.body = await self.api.merge_patch(
                CLUSTER, self.namespace, self.name, {"status": patch}, subresource="status"
            )
        except KubeNotFoundError:
            log.info("%s/%s was deleted before its status was written", self.namespace, self.name)

    async def post_events(self) -> bool:
        """False when the namespace turned out to be terminating."""
        events, self.events = self.events, []
        for event in events:
            if not await post_event(self.api, self.body, event):
                return False
        return True
