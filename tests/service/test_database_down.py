"""With the database unreachable, requests fail with UNAVAILABLE and the replica reports unready."""

from __future__ import annotations

import httpx

from messaging.dev_connections import ConnectionGraph
from tests.support.servers import free_port
from tests.support.service import devices, running_service, service_settings, unique


async def test_an_unreachable_database_means_unavailable_and_not_ready() -> None:
    nowhere = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/messaging"
    graph = ConnectionGraph(all_connected=True)
    async with running_service(service_settings(nowhere), graph, "postgres") as svc:
        alice, bob = unique("alice"), unique("bob")
        async with devices(svc, alice) as [a]:
            created = await a.call("createConversation", {"participantId": bob})
            synced = await a.call("syncMessages", {})
            assert a.client.connected
        async with httpx.AsyncClient() as http:
            ready = await http.get(f"{svc.url}/readyz")
            alive = await http.get(f"{svc.url}/healthz")
    assert created["error"]["code"] == "UNAVAILABLE"
    assert synced["error"]["code"] == "UNAVAILABLE"
    assert ready.status_code == 503
    assert any("database" in problem for problem in ready.json()["problems"])
    assert alive.status_code == 200
