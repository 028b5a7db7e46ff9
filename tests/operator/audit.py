"""The API server's audit log as a list of the operator's requests, for counting them.

The test control plane logs every request of a ServiceAccount (tests/support/k8s.py); the
operator under test is one, so this is an independent count of what it asked the server.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tests.operator.conftest import OPERATOR_ACCOUNT, OPERATOR_NAMESPACE
from tests.support.k8s import K8sCluster

OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"


@dataclass(frozen=True)
class Request:
    at: datetime
    verb: str
    resource: str  # "deployments", "messagingclusters/status", ...
    namespace: str
    name: str
    code: int

    @property
    def writes(self) -> bool:
        return self.verb in ("create", "update", "patch", "delete")


def now() -> datetime:
    return datetime.now(UTC)


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def requests(cluster: K8sCluster, since: datetime, until: datetime | None = None) -> list[Request]:
    """The operator's finished requests received in [since, until)."""
    log = cluster.audit_log
    assert log is not None, "the control plane runs without an audit log"
    found: dict[str, Request] = {}
    for line in Path(log).read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line being written right now
        if (event.get("user") or {}).get("username") != OPERATOR_USER:
            continue
        if event.get("stage") not in ("ResponseComplete", "ResponseStarted", "Panic"):
            continue
        at = _parse_time(event["requestReceivedTimestamp"])
        if at < since or (until is not None and at >= until):
            continue
        ref = event.get("objectRef") or {}
        resource = ref.get("resource", "")
        if ref.get("subresource"):
            resource += "/" + ref["subresource"]
        found[event["auditID"]] = Request(
            at=at,
            verb=event.get("verb", ""),
            resource=resource,
            namespace=ref.get("namespace", ""),
            name=ref.get("name", ""),
            code=int((event.get("responseStatus") or {}).get("code") or 0),
        )
    return sorted(found.values(), key=lambda r: r.at)


def summary(found: list[Request]) -> str:
    counts = Counter(f"{r.verb} {r.resource} {r.code}" for r in found)
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
