"""Socket.IO's Admin UI: off by default, on with its own login, and users unaffected by it."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
import socketio

from messaging.settings import Settings
from tests.support.dev import running_dev
from tests.support.service import Device

PASSWORD = "admin-password-0123456789"


async def _admin(url: str, auth: dict[str, str]) -> tuple[socketio.AsyncClient, Any]:
    client = socketio.AsyncClient(reconnection=False)
    config: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def on_config(data: Any) -> None:
        if not config.done():
            config.set_result(data)

    client.on("config", on_config, namespace="/admin")

    await client.connect(url, auth=auth, namespaces=["/admin"], transports=["websocket"])
    return client, config


def _tokens(printed: list[str]) -> dict[str, str]:
    return {
        m.group(1): m.group(2)
        for line in printed
        if (m := re.match(r"\s+token for (\w+): (\S+)", line))
    }


async def test_the_admin_ui_logs_in_with_its_own_credentials_and_is_read_only(
    tmp_path: Path,
) -> None:
    env = {
        "MESSAGING_SOCKETIO_ADMIN_ENABLED": "true",
        "MESSAGING_SOCKETIO_ADMIN_PASSWORD": PASSWORD,
    }
    async with running_dev(tmp_path, **env) as dev:
        admin, config = await _admin(dev.url, {"username": "admin", "password": PASSWORD})
        try:
            data = await asyncio.wait_for(config, 10)
            assert data["supportedFeatures"] == ["AGGREGATED_EVENTS"]  # no EMIT, DISCONNECT...
            # Users' sockets work as before on the instrumented server.
            tokens = _tokens(dev.printed)
            alice, bob = Device(dev.url, tokens["alice"]), Device(dev.url, tokens["bob"])
            await alice.connect()
            await bob.connect()
            conversation = await alice.ok("createConversation", {"participantId": "bob"})
            sent = await alice.ok(
                "sendMessage", {"conversationId": conversation["id"], "content": "hi"}
            )
            assert await bob.next("newMessage") == sent
            await alice.disconnect()
            await bob.disconnect()
        finally:
            await admin.disconnect()

        for wrong in ({"username": "admin", "password": PASSWORD[:-1]}, {"token": "x"}, {}):
            with pytest.raises(socketio.exceptions.ConnectionError):
                await _admin(dev.url, wrong)


async def test_the_admin_ui_is_off_by_default(tmp_path: Path) -> None:
    async with running_dev(tmp_path) as dev:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await _admin(dev.url, {"username": "admin", "password": ""})


def test_the_admin_ui_needs_a_real_password() -> None:
    with pytest.raises(ValueError, match="MESSAGING_SOCKETIO_ADMIN_PASSWORD"):
        Settings(socketio_admin_enabled=True)
    with pytest.raises(ValueError, match="at least 16"):
        Settings(socketio_admin_enabled=True, socketio_admin_password="short")
    assert Settings(socketio_admin_enabled=True, socketio_admin_password=PASSWORD)
