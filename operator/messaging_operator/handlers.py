"""kopf's handlers: when a pass runs, and how the watches keep the children's cache current.

A pass runs when the spec changes (create/update/resume), when a child changes or vanishes
(label-selected watches, so only the operator's own objects are streamed), and from a cheap
timer that acts only when the last pass waits on something no watch reports (a missing Secret)
or when the slow resync is due. Nothing here polls the API server on its own.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import kopf

from messaging_operator.kube import DEPLOYMENT, JOB, PDB, POD, SERVICE, Kind
from messaging_operator.memo import OperatorConfig, Runtime
from messaging_operator.reconcile import run_reconcile
from messaging_operator.spec import GROUP, KIND, MANAGED_BY, PLURAL, VERSION

# Children streamed by label-selected watches into the cache. Pods only feed the autoscaler:
# their churn (readiness, IPs) never starts a pass by itself.
WATCHED_CHILDREN: tuple[tuple[str, str, Kind], ...] = (
    ("apps", "v1", DEPLOYMENT),
    ("batch", "v1", JOB),
    ("", "v1", SERVICE),
    ("policy", "v1", PDB),
    ("", "v1", POD),
)
MANAGED_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"


async def on_cluster_change(name: str, namespace: str | None, memo: Runtime, **_: Any) -> None:
    """create/update/resume: the spec (or the operator) changed, so reconcile now."""
    assert namespace is not None  # the CRD is namespaced
    memo.memory(namespace, name).terminating = False
    await memo.gate(namespace, name).run(lambda: run_reconcile(memo, namespace, name))


async def on_tick(name: str, namespace: str | None, memo: Runtime, **_: Any) -> None:
    """The net under the watches: a pass only when one is owed; otherwise no request at all."""
    assert namespace is not None
    memory = memo.memory(namespace, name)
    due = time.monotonic() - memory.last_full_pass >= memo.config.resync_seconds
    if memory.terminating or not (memory.recheck or due):
        return
    await memo.gate(namespace, name).run(lambda: run_reconcile(memo, namespace, name))


def _owning_cluster(body: Mapping[str, Any]) -> str | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
            return str(ref["name"])
    return None


def child_handler(kind: Kind) -> Any:
    async def on_child_event(
        event: Mapping[str, Any], body: Mapping[str, Any], memo: Runtime, **_: Any
    ) -> None:
        """Keep the cache current; a change of one of ours runs its owner's pass."""
        meta = body.get("metadata", {})
        namespace, name = meta.get("namespace"), meta.get("name")
        if namespace is None or name is None:
            return
        if event.get("type") == "DELETED":
            memo.cache.drop(kind, namespace, name)
        else:
            memo.cache.put(kind, body)
        owner = _owning_cluster(body)
        if event.get("type") is None or kind is POD or owner is None:
            return  # the initial listing (the resume handlers cover it), or a pod
        await memo.gate(namespace, owner).kick(lambda: run_reconcile(memo, namespace, owner))

    on_child_event.__name__ = f"on_{kind.plural}_event"
    return on_child_event


async def on_cluster_deleted(name: str, namespace: str | None, memo: Runtime, **_: Any) -> None:
    if namespace is not None:
        memo.forget(namespace, name)


def label_selectors(settings: kopf.OperatorSettings) -> None:
    """Server-side filtering: the API server streams only objects the operator labelled."""
    for group, _, kind in WATCHED_CHILDREN:
        settings.watching.label_selectors[group, kind.plural] = MANAGED_SELECTOR


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Attach the reconcile handlers to an explicit registry (no import-time global state)."""
    cluster = (GROUP, VERSION, PLURAL)
    kopf.on.resume(*cluster, registry=registry, id="reconcile-resume")(on_cluster_change)
    kopf.on.create(*cluster, registry=registry, id="reconcile-create")(on_cluster_change)
    kopf.on.update(*cluster, registry=registry, id="reconcile-update")(on_cluster_change)
    kopf.on.delete(*cluster, registry=registry, id="forget", optional=True)(on_cluster_deleted)
    kopf.timer(*cluster, registry=registry, id="resync", interval=config.recheck_seconds)(on_tick)
    for group, version, kind in WATCHED_CHILDREN:
        kopf.on.event(
            group,
            version,
            kind.plural,
            registry=registry,
            id=f"child-{kind.plural}",
            labels={"app.kubernetes.io/managed-by": MANAGED_BY},
        )(child_handler(kind))
