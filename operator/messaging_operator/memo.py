"""The operator's runtime state, shared by every handler through kopf's memo.

kopf shallow-copies the memo per object, so everything here lives in containers that all copies
share: the API clients opened at start-up, one gate per cluster, the cache of children that the
label-selected watches keep current, and what the operator remembers about each cluster between
passes (when it last did a full pass, the autoscaler's window).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import kopf

from messaging_operator.kube import Kind, KubeClient
from messaging_operator.scaling import Recommendation
from messaging_operator.telemetry import OperatorMetrics

log = logging.getLogger(__name__)

Body = dict[str, Any]


@dataclass(frozen=True)
class OperatorConfig:
    # A full pass per cluster this often even without events: the net under the watches (and
    # the way a rotated Secret, which is not watched, is noticed).
    resync_seconds: float = 300.0
    # How often a cluster that waits on something no watch reports (a missing Secret) looks again.
    recheck_seconds: float = 5.0
    autoscale_seconds: float = 15.0
    retry_seconds: float = 10.0
    # 0: the port the cluster's spec.service.metricsPort names (the pods' `metrics` port).
    pod_metrics_port: int = 0


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


def _version(body: Mapping[str, Any]) -> int | None:
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or "")
    except ValueError:
        return None


@dataclass
class ObjectCache:
    """The operator's children as the watches last reported them (or a write answered).

    Reading children from here instead of GETting them is what keeps an idle cluster free of
    API requests. It may lag behind the server: a pass that acts on a stale copy at worst sends
    one write too many, and the watch event that follows runs another pass.
    """

    objects: dict[tuple[str, str, str], Body] = field(default_factory=dict)

    def get(self, kind: Kind, namespace: str, name: str) -> Body | None:
        return self.objects.get((kind.plural, namespace, name))

    def put(self, kind: Kind, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (kind.plural, str(meta.get("namespace", "")), str(meta.get("name", "")))
        known = self.objects.get(key)
        new, old = _version(body), _version(known) if known is not None else None
        if new is not None and old is not None and new < old:
            return  # a watch event older than what a write already told us
        self.objects[key] = copy.deepcopy(dict(body))

    def drop(self, kind: Kind, namespace: str, name: str) -> None:
        self.objects.pop((kind.plural, namespace, name), None)

    def select(self, kind: Kind, namespace: str, labels: Mapping[str, str]) -> list[Body]:
        found = []
        for (plural, ns, _), body in self.objects.items():
            if plural != kind.plural or ns != namespace:
                continue
            have = (body.get("metadata") or {}).get("labels") or {}
            if all(have.get(k) == v for k, v in labels.items()):
                found.append(body)
        return found

    def forget_namespace_of(self, namespace: str, instance: str) -> None:
        for key in [
            k
            for k, body in self.objects.items()
            if k[1] == namespace
            and ((body.get("metadata") or {}).get("labels") or {}).get("app.kubernetes.io/instance")
            == instance
        ]:
            del self.objects[key]


@dataclass
class ClusterMemory:
    """What the operator keeps about one cluster between passes (lost on restart, by design)."""

    last_full_pass: float = 0.0  # time.monotonic() of the last finished pass
    recheck: bool = True  # the last pass waits on something no watch reports
    terminating: bool = False  # its namespace is being deleted: stop writing
    window: tuple[Recommendation, ...] | None = None  # the autoscaler's exact history


@dataclass
class Runtime:
    config: OperatorConfig = field(default_factory=OperatorConfig)
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    clients: dict[str, Any] = field(default_factory=dict)
    gates: dict[tuple[str, str], Gate] = field(default_factory=dict)
    cache: ObjectCache = field(default_factory=ObjectCache)
    clusters: dict[tuple[str, str], ClusterMemory] = field(default_factory=dict)

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

    def memory(self, namespace: str, name: str) -> ClusterMemory:
        return self.clusters.setdefault((namespace, name), ClusterMemory())

    def forget(self, namespace: str, name: str) -> None:
        self.gates.pop((namespace, name), None)
        self.clusters.pop((namespace, name), None)
        self.cache.forget_namespace_of(namespace, name)
        self.metrics.forget(namespace, name)
