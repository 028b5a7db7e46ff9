"""The API client against a real HTTP server: the right requests, and only our own errors out."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import kopf
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from messaging_operator.errors import (
    KubeConflictError,
    KubeError,
    KubeForbiddenError,
    KubeInvalidError,
    KubeNotFoundError,
    KubeUnavailableError,
    OperatorError,
)
from messaging_operator.kube import DEPLOYMENT, SERVICE, KubeClient


@dataclass
class FakeApiServer:
    """Answers with queued (status, body) pairs and records every request it saw."""

    answers: list[tuple[int, Any]] = field(default_factory=list)
    seen: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "content_type": request.headers.get("Content-Type"),
                "authorization": request.headers.get("Authorization"),
                "body": json.loads(body) if body else None,
            }
        )
        status, payload = self.answers.pop(0) if self.answers else (200, {})
        if isinstance(payload, web.Response):
            return payload  # a hand-made answer: plain text, extra headers
        if status == -1:
            await asyncio.sleep(float(payload))  # type: ignore[arg-type]
            return web.json_response({})
        return web.json_response(payload, status=status)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeApiServer, str]]:
    api = FakeApiServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", api.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield api, f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


def logins(server: str, *tokens: str) -> tuple[list[str], Any]:
    used: list[str] = []
    remaining = list(tokens)

    async def login() -> kopf.ConnectionInfo:
        token = remaining.pop(0)
        used.append(token)
        return kopf.ConnectionInfo(server=server, token=token)

    return used, login


async def client(server: str, *tokens: str, timeout_s: float = 5.0) -> KubeClient:
    _, login = logins(server, *(tokens or ("t1",)))
    return await KubeClient.connect(login, timeout_s=timeout_s)


async def test_server_side_apply_sends_the_object_as_the_operators_field_manager(
    fake: tuple[FakeApiServer, str],
) -> None:
    api, server = fake
    kube = await client(server)
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "chat", "namespace": "apps"},
        "spec": {"replicas": 2},
    }
    api.answers.append((200, body))
    assert await kube.apply(body) == body
    request = api.seen[0]
    assert request["method"] == "PATCH"
    assert request["path"] == "/apis/apps/v1/namespaces/apps/deployments/chat"
    assert request["content_type"] == "application/apply-patch+yaml"
    assert request["query"] == {"fieldManager": "messaging-operator", "force": "true"}
    assert request["authorization"] == "Bearer t1"
    assert request["body"] == body
    await kube.close()


async def test_core_and_group_paths_lists_and_status_patches(
    fake: tuple[FakeApiServer, str],
) -> None:
    api, server = fake
    kube = await client(server)
    api.answers.append((200, {"items": [{"metadata": {"name": "a"}}]}))
    items = await kube.list(SERVICE, "apps", "app=x")
    assert items == [{"metadata": {"name": "a"}}]
    assert api.seen[0]["path"] == "/api/v1/namespaces/apps/services"
    assert api.seen[0]["query"] == {"labelSelector": "app=x", "limit": "500"}
    await kube.merge_patch(DEPLOYMENT, "apps", "chat", {"status": {}}, subresource="status")
    assert api.seen[1]["path"] == "/apis/apps/v1/namespaces/apps/deployments/chat/status"
    assert api.seen[1]["content_type"] == "application/merge-patch+json"
    await kube.close()


@pytest.mark.parametrize(
    ("status", "error", "retryable"),
    [
        (403, KubeForbiddenError, False),
        (404, KubeNotFoundError, False),
        (409, KubeConflictError, True),
        (422, KubeInvalidError, False),
        (500, KubeError, True),
    ],
)
async def test_http_errors_become_the_operators_own_errors(
    fake: tuple[FakeApiServer, str], status: int, error: type[KubeError], retryable: bool
) -> None:
    api, server = fake
    kube = await client(server)
    api.answers.append((status, {"kind": "Status", "message": "nope", "reason": "Because"}))
    with pytest.raises(error) as caught:
        await kube.get(DEPLOYMENT, "apps", "chat")
    assert caught.value.status == status
    assert caught.value.reason == "Because"
    assert "nope" in str(caught.value)
    assert caught.value.retryable is retryable
    await kube.close()


async def test_find_and_delete_treat_a_missing_object_as_absent(
    fake: tuple[FakeApiServer, str],
) -> None:
    api, server = fake
    kube = await client(server)
    api.answers += [(404, {}), (404, {})]
    assert await kube.find(DEPLOYMENT, "apps", "chat") is None
    await kube.delete(DEPLOYMENT, "apps", "chat")
    assert api.seen[1]["method"] == "DELETE"
    assert api.seen[1]["body"] == {"propagationPolicy": "Background"}
    await kube.close()


async def test_an_expired_token_logs_in_again_once(fake: tuple[FakeApiServer, str]) -> None:
    api, server = fake
    used, login = logins(server, "old", "new")
    kube = await KubeClient.connect(login)
    api.answers += [(401, {}), (200, {"metadata": {"name": "chat"}})]
    assert await kube.get(DEPLOYMENT, "apps", "chat") == {"metadata": {"name": "chat"}}
    assert used == ["old", "new"]
    assert [r["authorization"] for r in api.seen] == ["Bearer old", "Bearer new"]
    await kube.close()


async def test_no_connection_is_unavailable_never_an_aiohttp_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    kube = await client(f"http://127.0.0.1:{port}")
    with pytest.raises(KubeUnavailableError) as caught:
        await kube.get(DEPLOYMENT, "apps", "chat")
    assert caught.value.retryable
    assert isinstance(caught.value, OperatorError)
    assert isinstance(caught.value.__cause__, aiohttp.ClientError)
    await kube.close()


async def test_a_slow_server_is_unavailable(fake: tuple[FakeApiServer, str]) -> None:
    api, server = fake
    kube = await client(server, timeout_s=0.2)
    api.answers.append((-1, 2.0))
    with pytest.raises(KubeUnavailableError):
        await kube.get(DEPLOYMENT, "apps", "chat")
    await kube.close()


async def test_the_causes_of_a_refusal_are_kept(fake: tuple[FakeApiServer, str]) -> None:
    api, server = fake
    kube = await client(server)
    api.answers.append(
        (
            403,
            {
                "message": "unable to create new content in namespace x",
                "reason": "Forbidden",
                "details": {"causes": [{"reason": "NamespaceTerminating"}]},
            },
        )
    )
    with pytest.raises(KubeForbiddenError) as caught:
        await kube.get(DEPLOYMENT, "apps", "chat")
    assert caught.value.causes == ("NamespaceTerminating",)
    await kube.close()


async def test_an_object_the_server_cannot_decode_is_invalid_not_retryable(
    fake: tuple[FakeApiServer, str],
) -> None:
    api, server = fake
    kube = await client(server)
    api.answers.append(
        (
            500,
            {
                "message": "failed to convert new object (ns/chat; apps/v1, Kind=Deployment) to "
                "proper version: quantities must match the regular expression",
                "reason": "InternalError",
            },
        )
    )
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "c", "namespace": "n"},
    }
    with pytest.raises(KubeInvalidError) as caught:
        await kube.apply(body)
    assert not caught.value.retryable
    await kube.close()


async def test_a_plain_text_error_body_is_still_our_error(fake: tuple[FakeApiServer, str]) -> None:
    """The API server answers some 404s (an unknown path) in text/plain, not as a Status."""
    api, server = fake
    kube = await client(server)
    api.answers.append((404, web.Response(status=404, text="404 page not found\n")))
    with pytest.raises(KubeNotFoundError) as caught:
        await kube.get(DEPLOYMENT, "apps", "chat")
    assert "404 page not found" in str(caught.value)
    api.answers.append((404, web.Response(status=404, text="404 page not found")))
    assert await kube.find(DEPLOYMENT, "apps", "chat") is None
    await kube.close()


async def test_too_many_requests_waits_as_told_then_succeeds(
    fake: tuple[FakeApiServer, str],
) -> None:
    api, server = fake
    kube = await client(server)
    throttled = web.json_response(
        {"kind": "Status", "message": "too many requests"},
        status=429,
        headers={"Retry-After": "0"},
    )
    api.answers += [(429, throttled), (200, {"metadata": {"name": "chat"}})]
    assert await kube.get(DEPLOYMENT, "apps", "chat") == {"metadata": {"name": "chat"}}
    assert len(api.seen) == 2
    await kube.close()


async def test_persistent_throttling_is_a_retryable_error_with_the_servers_delay(
    fake: tuple[FakeApiServer, str],
) -> None:
    api, server = fake
    kube = await client(server)
    for _ in range(4):
        answer = web.json_response(
            {"message": "slow down"}, status=429, headers={"Retry-After": "0"}
        )
        api.answers.append((429, answer))
    with pytest.raises(KubeError) as caught:
        await kube.get(DEPLOYMENT, "apps", "chat")
    assert caught.value.status == 429 and caught.value.retryable
    assert caught.value.retry_after == 0.0
    assert len(api.seen) == 4  # the first try and three waits
    await kube.close()


async def test_a_list_follows_every_continue_page(fake: tuple[FakeApiServer, str]) -> None:
    api, server = fake
    kube = await client(server)
    api.answers += [
        (200, {"metadata": {"continue": "page2"}, "items": [{"metadata": {"name": "a"}}]}),
        (200, {"metadata": {"continue": ""}, "items": [{"metadata": {"name": "b"}}]}),
    ]
    items = await kube.list(SERVICE, "apps", "app=x")
    assert [i["metadata"]["name"] for i in items] == ["a", "b"]
    assert api.seen[1]["query"] == {"labelSelector": "app=x", "limit": "500", "continue": "page2"}
    await kube.close()
