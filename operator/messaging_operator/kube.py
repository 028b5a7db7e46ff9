"""A small asyncio client for the Kubernetes API, speaking plain dicts.

Why not the `kubernetes` package's typed client: the builders produce plain dicts and server-side
apply takes them as they are, the operator runs on kopf's event loop (no thread pool needed), and
aiohttp is already kopf's own transport. Credentials come from `kopf.login_via_client`, so the
operator authenticates exactly as kopf does (kubeconfig in development, the service account in a
pod). Every aiohttp error is turned into the operator's KubeError family here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
import kopf

from messaging_operator.errors import (
    KubeConflictError,
    KubeError,
    KubeForbiddenError,
    KubeInvalidError,
    KubeNotFoundError,
    KubeUnavailableError,
)
from messaging_operator.spec import API_VERSION, FIELD_MANAGER, KIND, PLURAL

Body = dict[str, Any]
Login = Callable[[], Awaitable[kopf.ConnectionInfo]]


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    plural: str

    def collection(self, namespace: str) -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        return f"{prefix}/namespaces/{namespace}/{self.plural}"

    def item(self, namespace: str, name: str, subresource: str | None = None) -> str:
        path = f"{self.collection(namespace)}/{name}"
        return f"{path}/{subresource}" if subresource else path


CLUSTER = Kind(API_VERSION, KIND, PLURAL)
DEPLOYMENT = Kind("apps/v1", "Deployment", "deployments")
JOB = Kind("batch/v1", "Job", "jobs")
SERVICE = Kind("v1", "Service", "services")
SECRET = Kind("v1", "Secret", "secrets")
POD = Kind("v1", "Pod", "pods")
PDB = Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets")
LEASE = Kind("coordination.k8s.io/v1", "Lease", "leases")
EVENT = Kind("v1", "Event", "events")

_KINDS = {
    (k.api_version, k.kind): k
    for k in (CLUSTER, DEPLOYMENT, JOB, SERVICE, SECRET, POD, PDB, LEASE, EVENT)
}


def kind_of(body: Mapping[str, Any]) -> Kind:
    try:
        return _KINDS[(body["apiVersion"], body["kind"])]
    except KeyError:
        raise ValueError(f"unknown kind {body.get('apiVersion')}/{body.get('kind')}") from None


_ERRORS: dict[int, type[KubeError]] = {
    403: KubeForbiddenError,
    404: KubeNotFoundError,
    409: KubeConflictError,
    422: KubeInvalidError,
}


_UNDECODABLE = "failed to convert new object"
_LIST_PAGE = 500
# 429 Too Many Requests (API Priority and Fairness): wait as told, a few times, then give up.
_THROTTLE_RETRIES = 3
_MAX_RETRY_AFTER = 10.0


def _retry_after(header: str | None) -> float:
    try:
        return min(_MAX_RETRY_AFTER, max(0.0, float(header or "1")))
    except ValueError:
        return 1.0


def _decode(payload: bytes) -> Any:
    """JSON, or a plain-text body (the API server answers some 404s and 503s in text)."""
    if not payload:
        return {}
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return {"message": payload.decode(errors="replace").strip()[:500]}


def _session(info: kopf.ConnectionInfo, timeout_s: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=info.as_ssl_context()),
        headers={**info.as_http_headers(), "User-Agent": FIELD_MANAGER},
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    )


class KubeClient:
    """The operator's only way to the API server; one per operator, opened at start-up."""

    def __init__(self, info: kopf.ConnectionInfo, login: Login, *, timeout_s: float = 30.0) -> None:
        self._server = info.server.rstrip("/")
        self._login = login
        self._timeout = timeout_s
        self._session = _session(info, timeout_s)

    @classmethod
    async def connect(cls, login: Login, *, timeout_s: float = 30.0) -> KubeClient:
        return cls(await login(), login, timeout_s=timeout_s)

    async def close(self) -> None:
        await self._session.close()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: object = None,
        content_type: str = "application/json",
    ) -> Any:
        data = None if body is None else json.dumps(body)
        relogged = False
        throttled = 0
        while True:
            try:
                async with self._session.request(
                    method,
                    self._server + path,
                    params=params,
                    data=data,
                    headers={"Content-Type": content_type} if data is not None else None,
                ) as response:
                    payload = await response.read()
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
            except (aiohttp.ClientError, TimeoutError) as e:
                raise KubeUnavailableError(f"{method} {path}: {type(e).__name__}: {e}") from e
            if status == 401 and not relogged:
                # Projected service-account tokens rotate: log in again once, then retry.
                relogged = True
                await self._relogin()
                continue
            if status == 429 and throttled < _THROTTLE_RETRIES:
                throttled += 1
                await asyncio.sleep(_retry_after(retry_after))
                continue
            break
        decoded = _decode(payload)
        if status >= 400:
            body = decoded if isinstance(decoded, dict) else {}
            causes = tuple(
                str(c.get("reason", "")) for c in (body.get("details") or {}).get("causes") or []
            )
            error = _ERRORS.get(status, KubeError)
            if status == 500 and str(body.get("message", "")).startswith(_UNDECODABLE):
                # Server-side apply reports a field it cannot decode (a malformed quantity, say)
                # as an internal error; it is our request that is wrong, so retrying cannot help.
                error = KubeInvalidError
            raise error(
                f"{method} {path}: {status} {body.get('message', '')}".strip(),
                status=status,
                reason=str(body.get("reason", "")),
                causes=causes,
                retry_after=_retry_after(retry_after) if status == 429 else None,
            )
        return decoded

    async def _relogin(self) -> None:
        info = await self._login()
        old, self._session = self._session, _session(info, self._timeout)
        await old.close()

    async def get(self, kind: Kind, namespace: str, name: str) -> Body:
        return cast(Body, await self._request("GET", kind.item(namespace, name)))

    async def find(self, kind: Kind, namespace: str, name: str) -> Body | None:
        try:
            return await self.get(kind, namespace, name)
        except KubeNotFoundError:
            return None

    async def list(
        self, kind: Kind, namespace: str, selector: str, *, page_size: int = _LIST_PAGE
    ) -> list[Body]:
        """Every page: the API server cuts long lists into chunks linked by `continue`."""
        items: list[Body] = []
        params = {"labelSelector": selector, "limit": str(page_size)}
        while True:
            result = await self._request("GET", kind.collection(namespace), params=params)
            items.extend(result.get("items") or [])
            token = (result.get("metadata") or {}).get("continue")
            if not token:
                return items
            params = {**params, "continue": str(token)}

    async def create(self, body: Mapping[str, Any]) -> Body:
        kind = kind_of(body)
        namespace = body["metadata"]["namespace"]
        return cast(
            Body,
            await self._request(
                "POST",
                kind.collection(namespace),
                params={"fieldManager": FIELD_MANAGER},
                body=body,
            ),
        )

    async def apply(self, body: Mapping[str, Any]) -> Body:
        """Server-side apply as the operator's field manager, taking over any field it sets.

        Forcing is what restores drift: a field someone edited is set back, while fields the
        operator never sets (other controllers' annotations, say) are left alone.
        """
        kind = kind_of(body)
        meta = body["metadata"]
        return cast(
            Body,
            await self._request(
                "PATCH",
                kind.item(meta["namespace"], meta["name"]),
                params={"fieldManager": FIELD_MANAGER, "force": "true"},
                body=body,
                content_type="application/apply-patch+yaml",
            ),
        )

    async def merge_patch(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> Body:
        return cast(
            Body,
            await self._request(
                "PATCH",
                kind.item(namespace, name, subresource),
                params={"fieldManager": FIELD_MANAGER},
                body=patch,
                content_type="application/merge-patch+json",
            ),
        )

    async def replace(self, body: Mapping[str, Any]) -> Body:
        """PUT: an update guarded by the body's resourceVersion (409 when someone was first)."""
        kind = kind_of(body)
        meta = body["metadata"]
        return cast(
            Body,
            await self._request(
                "PUT",
                kind.item(meta["namespace"], meta["name"]),
                params={"fieldManager": FIELD_MANAGER},
                body=body,
            ),
        )

    async def delete(self, kind: Kind, namespace: str, name: str) -> None:
        """Delete with background propagation; an object already gone is not an error."""
        with contextlib.suppress(KubeNotFoundError):
            await self._request(
                "DELETE",
                kind.item(namespace, name),
                body={"propagationPolicy": "Background"},
            )


async def login(logger: kopf.Logger, settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    """Credentials the way kopf's default login finds them: in-cluster first, then kubeconfig."""
    info = await asyncio.to_thread(kopf.login_via_client, logger=logger, settings=settings)
    if info is None:
        raise kopf.LoginError("the kubernetes client library found no credentials")
    return info
