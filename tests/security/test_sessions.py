"""Sessions end when their token does: ``sessionExpired``, a disconnect the clients respect, and
``reauthenticate`` to extend them. Against a real process, with both official clients.

The replica runs with a 1 s leeway and a 0.2 s sweep so that tokens of a few seconds expire
within the test; the waits are generous (several seconds past each deadline) for a loaded
machine, and what is asserted is the order of events, never how fast they came.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import socketio
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.security.auth_attacks import claims, deployment, public_pem, rs256, start
from tests.security.auth_attacks import strict_settings as strict
from tests.service.test_other_clients import node
from tests.support.replicas import Replica, logs_on_failure
from tests.support.servers import RedisControl

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
LEEWAY = 1.0


@pytest_asyncio.fixture(scope="module")
async def replica(cluster_database: str, redis_server: RedisControl) -> AsyncIterator[Replica]:
    async with deployment(cluster_database, redis_server) as cluster:
        with logs_on_failure(cluster):
            yield await start(
                cluster,
                **strict(
                    public_pem(KEY), jwt_leeway_seconds=str(LEEWAY), session_sweep_seconds="0.2"
                ),
            )


def token(user: str, ttl: float) -> str:
    return rs256(KEY, claims(sub=user, exp=int(time.time() + ttl)))


class Watched:
    """A python-socketio client with reconnection ON (as apps run it), recording what happens."""

    def __init__(self, url: str, auth_token: str) -> None:
        self.url = url
        self.token = auth_token
        self.order: list[str] = []
        self.client = socketio.AsyncClient(reconnection=True, reconnection_delay=0.1)
        self.ended = asyncio.Event()

        async def on_connect() -> None:
            self.order.append("connect")

        async def on_expired(data: Any = None) -> None:
            self.order.append(f"sessionExpired:{data!r}")

        async def on_disconnect(reason: Any = None) -> None:
            self.order.append(f"disconnect:{reason}")
            self.ended.set()

        self.client.on("connect", on_connect)
        self.client.on("sessionExpired", on_expired)
        self.client.on("disconnect", on_disconnect)

    async def connect(self) -> None:
        await self.client.connect(
            self.url, auth={"token": self.token}, transports=["websocket"], wait_timeout=10
        )

    async def call(self, event: str, payload: Any) -> Any:
        return await self.client.call(event, payload, timeout=10)


async def test_an_expired_session_gets_session_expired_then_a_disconnect_and_no_reconnect(
    replica: Replica,
) -> None:
    user = claims()["sub"]
    watched = Watched(replica.url, token(user, ttl=2))
    await watched.connect()
    await asyncio.wait_for(watched.ended.wait(), 30)
    await asyncio.sleep(3)  # reconnection would have happened by now (delay 0.1 s)
    assert watched.order == ["connect", "sessionExpired:{}", "disconnect:server disconnect"]
    assert not watched.client.connected
    await watched.client.disconnect()
    assert await replica.metric("messaging_sessions_expired_total") >= 1


async def test_reauthenticate_extends_the_session(replica: Replica) -> None:
    user = claims()["sub"]
    watched = Watched(replica.url, token(user, ttl=2))
    await watched.connect()
    fresh = token(user, ttl=600)
    reply = await watched.call("reauthenticate", {"token": fresh})
    assert reply["ok"] is True, reply
    expires_at = reply["data"]["expiresAt"]
    assert expires_at.endswith("Z")
    await asyncio.sleep(2 + LEEWAY + 3)  # well past the first token's end
    assert watched.order == ["connect"]
    assert (await watched.call("syncMessages", {}))["ok"] is True
    await watched.client.disconnect()


@pytest.mark.parametrize("what", ["another user's token", "an invalid token", "no token"])
async def test_a_bad_reauthenticate_is_unauthorized_and_the_old_expiry_stays(
    replica: Replica, what: str
) -> None:
    user = claims()["sub"]
    watched = Watched(replica.url, token(user, ttl=3))
    await watched.connect()
    payload: dict[str, Any] = {
        "another user's token": {"token": token("someone-else", ttl=600)},
        "an invalid token": {"token": rs256(KEY, claims(sub=user), {"alg": ["RS256"]})},
        "no token": {},
    }[what]
    reply = await watched.call("reauthenticate", payload)
    assert reply["ok"] is False
    assert reply["error"]["code"] == "UNAUTHORIZED", reply
    await asyncio.wait_for(watched.ended.wait(), 30)  # still ends at the first token's expiry
    assert watched.order == ["connect", "sessionExpired:{}", "disconnect:server disconnect"]
    await watched.client.disconnect()


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_the_official_js_client_does_not_reconnect_after_its_session_expired(
    replica: Replica, transport: str
) -> None:
    user = claims()["sub"]
    result = await node(
        "socketio_client.mjs", "expire", replica.url, transport, token(user, ttl=2), "3000"
    )
    assert "error" not in result, result
    assert result["order"] == ["connect", "sessionExpired", "disconnect"], result
    assert result["disconnects"] == ["io server disconnect"]
    assert result["sessionExpired"] == [{}]
    assert result["connects"] == 1
    assert result["connectedAtEnd"] is False
    assert result["active"] is False  # the client has given up: no reconnection scheduled
