"""A plain-dict view of the test control plane for the operator's integration tests.

Deliberately independent of the operator's own API client (messaging_operator.kube): the tests
check what the API server holds, through a different code path than the one under test.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import requests

from tests.support.k8s import K8sCluster, wait_until

GROUP_PATH = "/apis/messaging.platform.io/v1alpha1"

# kind -> collection path template (namespaced)
PATHS = {
    "MessagingCluster": GROUP_PATH + "/namespaces/{ns}/messagingclusters",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "Job": "/apis/batch/v1/namespaces/{ns}/jobs",
    "Service": "/api/v1/namespaces/{ns}/services",
    "Secret": "/api/v1/namespaces/{ns}/secrets",
    "Pod": "/api/v1/namespaces/{ns}/pods",
    "PodDisruptionBudget": "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
    "Event": "/api/v1/namespaces/{ns}/events",
    "ReplicaSet": "/apis/apps/v1/namespaces/{ns}/replicasets",
    "ResourceQuota": "/api/v1/namespaces/{ns}/resourcequotas",
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
}


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body

    @property
    def message(self) -> str:
        return str(self.body.get("message", "")) if isinstance(self.body, dict) else str(self.body)


@dataclass
class Kube:
    cluster: K8sCluster
    namespace: str
    session: requests.Session = field(init=False)

    def __post_init__(self) -> None:
        self.session = requests.Session()
        # Otherwise $REQUESTS_CA_BUNDLE silently replaces `verify` (and proxies apply to loopback).
        self.session.trust_env = False
        self.session.verify = str(self.cluster.ca_cert)
        self.session.cert = (str(self.cluster.client_cert), str(self.cluster.client_key))

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> Any:
        response = self.session.request(
            method,
            self.cluster.server + path,
            data=None if body is None else json.dumps(body),
            headers={"Content-Type": content_type},
            params=params,
            timeout=30,
        )
        payload = response.json() if response.content else {}
        if response.status_code >= 400:
            raise ApiError(response.status_code, payload)
        return payload

    def path(self, kind: str, name: str | None = None, sub: str | None = None) -> str:
        base = PATHS[kind].format(ns=self.namespace)
        if name:
            base += f"/{name}"
        if sub:
            base += f"/{sub}"
        return base

    def get(self, kind: str, name: str, sub: str | None = None) -> dict[str, Any] | None:
        try:
            return dict(self._call("GET", self.path(kind, name, sub)))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def list(self, kind: str, selector: str | None = None) -> builtins.list[dict[str, Any]]:
        params = {"labelSelector": selector} if selector else None
        return list(self._call("GET", self.path(kind), params=params).get("items") or [])

    def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self._call("POST", self.path(body["kind"]), body))

    def merge_patch(
        self, kind: str, name: str, patch: Mapping[str, Any], sub: str | None = None
    ) -> dict[str, Any]:
        return dict(
            self._call("PATCH", self.path(kind, name, sub), patch, "application/merge-patch+json")
        )

    def delete(self, kind: str, name: str) -> None:
        try:
            self._call("DELETE", self.path(kind, name), {"propagationPolicy": "Background"})
        except ApiError as e:
            if e.status != 404:
                raise

    def events_for(self, name: str) -> builtins.list[dict[str, Any]]:
        return [
            e
            for e in self.list("Event")
            if e.get("involvedObject", {}).get("kind") == "MessagingCluster"
            and e.get("involvedObject", {}).get("name") == name
        ]

    def await_event(
        self, name: str, reason: str, *, type: str | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        """The first Event `reason` about MessagingCluster `name`, waited for.

        The operator posts a pass's Events after it writes the status (so a failed status write
        never posts them twice), so a test that has just seen the status must wait for them."""

        def posted() -> dict[str, Any] | None:
            for e in self.events_for(name):
                if e.get("reason") == reason and (type is None or e.get("type") == type):
                    return e
            return None

        return wait_until(posted, timeout=timeout, what=f"the {type or ''} Event {reason}")

    def condition(self, name: str, kind: str) -> dict[str, Any] | None:
        mc = self.get("MessagingCluster", name) or {}
        for cond in (mc.get("status") or {}).get("conditions") or []:
            if cond.get("type") == kind:
                return dict(cond)
        return None
