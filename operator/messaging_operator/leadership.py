"""Leader election on a coordination.k8s.io Lease, the way client-go's leaderelection does it.

Only the holder of the Lease runs the operator's handlers; a standby waits, trying every
`retry_seconds`, and takes over once the holder has not renewed for `lease_seconds` (measured
on the standby's own clock from when it last saw the Lease change, so clocks need not agree).
The leader gives up (and the process exits, to come back as a standby) when it could not renew
for `renew_deadline_seconds`, which is shorter than the lease: the old leader has stopped acting
before anyone else may start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

from messaging_operator.errors import KubeConflictError, KubeError
from messaging_operator.kube import LEASE, KubeClient

log = logging.getLogger(__name__)


class LostLeadershipError(Exception):
    """The Lease could not be renewed in time: stop acting at once."""


def micro_time(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class LeaderElection:
    api: KubeClient
    namespace: str
    name: str
    identity: str
    lease_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0
    # What this process last saw of the Lease: its resourceVersion and when (monotonic).
    _seen: tuple[str, float] = field(default=("", 0.0), init=False)
    _leading: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if not self.retry_seconds < self.renew_deadline_seconds < self.lease_seconds:
            raise ValueError("need retry < renew deadline < lease duration")

    @property
    def leading(self) -> bool:
        return self._leading

    def _body(
        self, lease: dict[str, Any] | None, transitions: int, acquired: str
    ) -> dict[str, Any]:
        body: dict[str, Any] = dict(lease or {})
        body.update(
            {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    **(lease or {}).get("metadata", {}),
                    "name": self.name,
                    "namespace": self.namespace,
                },
                "spec": {
                    "holderIdentity": self.identity,
                    "leaseDurationSeconds": max(1, round(self.lease_seconds)),
                    "acquireTime": acquired,
                    "renewTime": micro_time(),
                    "leaseTransitions": transitions,
                },
            }
        )
        return body

    async def try_acquire_or_renew(self) -> bool:
        lease = await self.api.find(LEASE, self.namespace, self.name)
        now = time.monotonic()
        if lease is None:
            try:
                await self.api.create(self._body(None, 0, micro_time()))
            except KubeConflictError:
                return False
            self._leading = True
            return True
        version = str(lease["metadata"].get("resourceVersion", ""))
        if version != self._seen[0]:
            self._seen = (version, now)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or self.lease_seconds)
        if holder and holder != self.identity and now - self._seen[1] < duration:
            self._leading = False
            return False  # someone else holds it and renewed within its duration
        transitions = int(spec.get("leaseTransitions") or 0)
        acquired = spec.get("acquireTime") or micro_time()
        if holder != self.identity:
            transitions, acquired = transitions + 1, micro_time()
        try:
            updated = await self.api.replace(self._body(lease, transitions, acquired))
        except KubeConflictError:
            return False  # another candidate was faster
        self._seen = (str(updated["metadata"].get("resourceVersion", "")), time.monotonic())
        self._leading = True
        return True

    async def acquire(self) -> None:
        """Wait (as a standby) until this process holds the Lease."""
        announced = False
        while True:
            try:
                if await self.try_acquire_or_renew():
                    log.info(
                        "leader election: %s now leads (lease %s/%s)",
                        self.identity,
                        self.namespace,
                        self.name,
                    )
                    return
            except KubeError as e:
                log.warning("leader election: cannot read the lease: %s", e)
            if not announced:
                log.info("leader election: %s is a standby", self.identity)
                announced = True
            await asyncio.sleep(self.retry_seconds)

    async def keep(self) -> NoReturn:
        """Renew until it fails for longer than the renew deadline; then raise."""
        last_renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.retry_seconds)
            try:
                async with asyncio.timeout(self.renew_deadline_seconds):
                    renewed = await self.try_acquire_or_renew()
            except (KubeError, TimeoutError) as e:
                log.warning("leader election: renewing failed: %s", e)
                renewed = False
            if renewed:
                last_renewed = time.monotonic()
            elif not self._leading or time.monotonic() - last_renewed > self.renew_deadline_seconds:
                self._leading = False
                raise LostLeadershipError(f"{self.identity} lost the lease {self.name}")

    async def release(self) -> None:
        """Hand the Lease back on a clean exit, so a standby takes over at once."""
        if not self._leading:
            return
        self._leading = False
        try:
            lease = await self.api.find(LEASE, self.namespace, self.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"]["holderIdentity"] = ""
            lease["spec"]["leaseDurationSeconds"] = 1
            await self.api.replace(lease)
        except KubeError as e:
            log.warning("leader election: could not release the lease: %s", e)
