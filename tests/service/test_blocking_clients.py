"""Blocking and reports through the official JavaScript client (socket.io-client)."""

from __future__ import annotations

import uuid

import pytest

from tests.service.test_other_clients import node
from tests.support.service import RunningService, unique


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_the_official_js_client_reports_blocks_and_is_refused(
    svc: RunningService, transport: str
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    result = await node(
        "socketio_client.mjs",
        "moderation",
        svc.url,
        transport,
        svc.token(alice),
        svc.token(bob),
        bob,
    )
    assert "error" not in result, result
    assert result["reported"]["ok"] is True
    uuid.UUID(result["reported"]["data"]["reportId"])
    assert result["blocked"] == {"ok": True, "data": {}}
    assert result["listed"] == {"ok": True, "data": {"userIds": [bob]}}
    assert result["refused"]["ok"] is False
    assert result["refused"]["error"]["code"] == "FORBIDDEN"
    assert result["unblocked"] == {"ok": True, "data": {}}
