"""The runtime's small machines: the per-cluster gate and the watch-fed cache."""

from __future__ import annotations

import asyncio

import kopf
import pytest

from messaging_operator.kube import DEPLOYMENT, POD
from messaging_operator.memo import Gate, ObjectCache


async def test_child_events_during_a_pass_coalesce_into_one_more_pass() -> None:
    gate = Gate()
    started = asyncio.Event()
    release = asyncio.Event()
    passes: list[int] = []

    async def reconcile() -> None:
        passes.append(len(passes))
        if len(passes) == 1:
            started.set()
            await release.wait()

    running = asyncio.create_task(gate.run(reconcile))
    await started.wait()
    for _ in range(5):  # a burst of child events while the first pass runs
        await gate.kick(reconcile)
    release.set()
    await running
    assert passes == [0, 1]
    await gate.kick(reconcile)  # idle gate: runs at once
    assert passes == [0, 1, 2]


async def test_a_failing_pass_after_a_child_event_does_not_escape_the_watcher() -> None:
    gate = Gate()

    async def failing() -> None:
        raise kopf.TemporaryError("api down", delay=1)

    await gate.kick(failing)  # logged, not raised: the resync timer retries
    with pytest.raises(kopf.TemporaryError):
        await gate.run(failing)  # a change handler does get the error, for kopf's retries


def test_the_cache_keeps_the_newest_version_and_selects_by_labels() -> None:
    cache = ObjectCache()
    meta = {"name": "chat", "namespace": "apps", "labels": {"app.kubernetes.io/instance": "chat"}}
    cache.put(DEPLOYMENT, {"metadata": {**meta, "resourceVersion": "12"}, "spec": {"replicas": 3}})
    # A watch event older than what a write answered does not overwrite it.
    cache.put(DEPLOYMENT, {"metadata": {**meta, "resourceVersion": "9"}, "spec": {"replicas": 1}})
    got = cache.get(DEPLOYMENT, "apps", "chat")
    assert got is not None and got["spec"]["replicas"] == 3
    assert cache.get(POD, "apps", "chat") is None
    assert len(cache.select(DEPLOYMENT, "apps", {"app.kubernetes.io/instance": "chat"})) == 1
    assert cache.select(DEPLOYMENT, "apps", {"app.kubernetes.io/instance": "other"}) == []
    cache.forget_namespace_of("apps", "chat")
    assert cache.get(DEPLOYMENT, "apps", "chat") is None
