"""Clients written with other implementations speak to the service from the shared protos."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.service.test_grpc import _seed
from tests.support.service import RunningService, devices, open_conversation, unique

NODE_CLIENTS = Path(__file__).resolve().parents[1] / "node"


async def node(script: str, *args: str) -> Any:
    """Run a Node.js client script (its packages are installed by hack/test.sh) and parse it."""
    binary = shutil.which("node")
    assert binary is not None, "Node.js is required for these tests"
    assert (NODE_CLIENTS / "node_modules").is_dir(), "run `npm ci` in tests/node (hack/test.sh)"
    process = await asyncio.create_subprocess_exec(
        binary, str(NODE_CLIENTS / script), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return json.loads(out.decode().strip().splitlines()[-1])


async def test_a_grpc_js_client_reads_history_from_the_protos_directory(
    svc: RunningService,
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice) as [a]:
        conversation = await open_conversation(svc, a, bob)
    ids = await _seed(svc, conversation, alice, 120)
    result = await node("grpc_history.mjs", svc.grpc_target, svc.token(bob), conversation, "50")
    assert result["ids"] == list(reversed(ids))
    assert result["pages"] == 3
    assert result["statuses"] == ["MESSAGE_STATUS_SENT"]


async def test_a_grpc_js_client_gets_standard_status_codes(svc: RunningService) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice) as [a]:
        conversation = await open_conversation(svc, a, bob)
    outsider = await node(
        "grpc_history.mjs", svc.grpc_target, svc.token(unique("eve")), conversation, "50"
    )
    unauthenticated = await node("grpc_history.mjs", svc.grpc_target, "junk", conversation, "50")
    assert outsider["error"]["code"] == 7  # PERMISSION_DENIED
    assert unauthenticated["error"]["code"] == 16  # UNAUTHENTICATED


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_the_official_js_client_talks_over_both_transports(
    svc: RunningService, transport: str
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    result = await node(
        "socketio_client.mjs",
        "roundtrip",
        svc.url,
        transport,
        svc.token(alice),
        svc.token(bob),
        bob,
    )
    assert "error" not in result, result
    assert result["transport"] == transport
    assert result["created"]["ok"] is True
    assert result["sent"]["data"]["clientMessageId"] == "js-1"
    received = dict(result["received"])
    assert received.pop("syncToken")  # the recipient's position, not the sender's
    assert received == result["sent"]["data"]
    assert result["marked"] == {"ok": True, "data": {"updated": 1}}
    assert result["statusEvent"]["status"] == "delivered"
    assert result["invalid"]["error"]["code"] == "VALIDATION_FAILED"
    assert result["stillConnected"] is True


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_the_official_js_client_edits_reacts_deletes_and_pages_over_both_transports(
    svc: RunningService, transport: str
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    result = await node(
        "socketio_client.mjs",
        "changes",
        svc.url,
        transport,
        svc.token(alice),
        svc.token(bob),
        bob,
    )
    assert "error" not in result, result
    edited = result["edited"]["data"]
    assert edited["content"] == "fixed" and edited["editedAt"] is not None
    updated = dict(result["updated"])
    assert updated.pop("syncToken") and updated == edited
    assert result["reacted"]["data"] == {"reactions": {"👍": [bob]}}
    assert result["reaction"]["reactions"] == {"👍": [bob]} and result["reaction"]["syncToken"]
    [entry] = result["listed"]["data"]["conversations"]
    assert entry["lastMessage"]["reactions"] == {"👍": [bob]}
    assert result["listed"]["data"]["nextPageToken"] is None
    deleted = result["deleted"]["data"]
    assert result["deletion"]["deletedAt"] == deleted["deletedAt"]
    [tombstone] = result["history"]["data"]["messages"]
    assert tombstone["content"] == "" and tombstone["deletedAt"] == deleted["deletedAt"]
    assert result["forbidden"]["error"]["code"] == "FORBIDDEN"


async def test_the_official_js_client_sees_unauthorized_in_connect_error(
    svc: RunningService,
) -> None:
    result = await node("socketio_client.mjs", "refused", svc.url, "websocket", "not-a-jwt")
    assert result["data"]["code"] == "UNAUTHORIZED"
    assert result["data"]["message"]


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_the_official_js_client_makes_and_uses_a_group(
    svc: RunningService, transport: str
) -> None:
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    svc.connect_users((alice, bob), (alice, carol))
    result = await node(
        "socketio_client.mjs",
        "group",
        svc.url,
        transport,
        svc.token(alice),
        svc.token(bob),
        bob,
        carol,
    )
    assert "error" not in result, result
    group = result["created"]["data"]
    assert (group["kind"], group["title"], group["createdBy"]) == ("group", "From JS", alice)
    assert result["createdEvent"]["change"] == {
        "type": "created",
        "userIds": sorted([bob, carol]),
        "by": alice,
    }
    assert result["received"]["id"] == result["sent"]["data"]["id"]
    assert result["read"] == {"ok": True, "data": {"updated": 1}}
    assert (result["statusEvent"]["userId"], result["statusEvent"]["status"]) == (bob, "read")
    receipts = {r["userId"]: r for r in result["receipts"]["data"]["receipts"]}
    assert receipts[bob]["readAt"] is not None and receipts[carol]["readAt"] is None
    assert result["left"] == {"ok": True, "data": {}}
    assert result["afterLeaving"]["error"]["code"] == "NOT_FOUND"
