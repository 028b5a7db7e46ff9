"""What a replica exposes, and to whom: ports, CORS, TLS. Real processes, real clients.

- ``/metrics`` only on the metrics port (the public Service does not expose it); the probes on both.
- CORS: production allows only listed browser origins (HTTP and Engine.IO, polling and websocket),
  dev any origin but never with credentials; clients that send no Origin are not browsers and pass.
- gRPC over TLS and mutual TLS, and TLS to the Connections service; certificates made here.
- A port already taken is a start-up error, never a second server silently sharing it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import websockets

from messaging.dev_connections import ConnectionGraph, start_connections_server
from tests.security.tls_material import Identity, Pki, make_pki
from tests.support.replicas import Cluster, Replica, grpc_status, logs_on_failure
from tests.support.service import Device

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

APP = "https://app.example"
EVIL = "https://evil.example"


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    with tempfile.TemporaryDirectory(prefix="messaging-pki-") as directory:
        yield make_pki(Path(directory))


async def _started(cluster: Cluster, **settings: str) -> Replica:
    (replica,) = await cluster.start(1, **settings)
    return replica


# --- ports ---------------------------------------------------------------------------------------


async def test_metrics_are_served_on_the_metrics_port_only(cluster: Cluster) -> None:
    with logs_on_failure(cluster):
        replica = await _started(cluster)
        async with httpx.AsyncClient(timeout=5) as http:
            assert (await http.get(f"{replica.url}/metrics")).status_code == 404
            scraped = await http.get(f"{replica.metrics_url}/metrics")
            assert scraped.status_code == 200
            assert "messaging_connected_sockets" in scraped.text
            for base in (replica.url, replica.metrics_url):
                assert (await http.get(f"{base}/healthz")).status_code == 200
                assert (await http.get(f"{base}/readyz")).status_code == 200


async def test_a_second_process_on_the_same_grpc_port_fails_to_start(cluster: Cluster) -> None:
    """With grpc's default SO_REUSEPORT the second one started silently and took half the
    clients (to another database, in the issue's case)."""
    with logs_on_failure(cluster):
        first = await _started(cluster)
        second = cluster.add(grpc_port=str(first.grpc_port))
        second.start()
        assert await second.wait_exit(timeout=60) != 0
        assert "cannot listen for gRPC" in second.log()
        assert f"127.0.0.1:{first.grpc_port}" in second.log()
        assert (await first.readyz())[0] == 200  # the first one is untouched


async def test_a_second_process_on_the_same_metrics_port_fails_to_start(cluster: Cluster) -> None:
    with logs_on_failure(cluster):
        first = await _started(cluster)
        second = cluster.add(metrics_port=str(first.metrics_port))
        second.start()
        assert await second.wait_exit(timeout=60) != 0
        assert "address already in use" in second.log().lower()


# --- CORS ----------------------------------------------------------------------------------------


async def _polling_open(replica: Replica, origin: str | None) -> httpx.Response:
    headers = {"Origin": origin} if origin else {}
    async with httpx.AsyncClient(timeout=5) as http:
        return await http.get(
            f"{replica.url}/socket.io/",
            params={"EIO": "4", "transport": "polling"},
            headers=headers,
        )


async def _websocket_opens(replica: Replica, origin: str | None) -> bool:
    url = f"ws://127.0.0.1:{replica.http_port}/socket.io/?EIO=4&transport=websocket"
    try:
        async with websockets.connect(
            url,
            origin=websockets.Origin(origin) if origin else None,
            open_timeout=10,
        ) as ws:
            return str(await ws.recv()).startswith("0")
    except websockets.InvalidStatus:
        return False


async def test_production_allows_only_the_listed_browser_origins(cluster: Cluster) -> None:
    with logs_on_failure(cluster):
        replica = await _started(cluster, cors_allowed_origins=f'["{APP}"]')
        allowed = await _polling_open(replica, APP)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == APP
        assert (await _polling_open(replica, EVIL)).status_code == 400
        assert await _websocket_opens(replica, APP)
        assert not await _websocket_opens(replica, EVIL)
        assert await _websocket_opens(replica, None)  # native apps and servers send no Origin
        async with httpx.AsyncClient(timeout=5) as http:
            listed = await http.get(f"{replica.url}/healthz", headers={"Origin": APP})
            assert listed.headers["access-control-allow-origin"] == APP
            foreign = await http.get(f"{replica.url}/healthz", headers={"Origin": EVIL})
            assert "access-control-allow-origin" not in foreign.headers
            preflight = await http.options(
                f"{replica.url}/healthz",
                headers={"Origin": EVIL, "Access-Control-Request-Method": "GET"},
            )
            assert "access-control-allow-origin" not in preflight.headers


async def test_production_with_no_list_lets_no_foreign_origin_in(cluster: Cluster) -> None:
    with logs_on_failure(cluster):
        replica = await _started(cluster)
        assert (await _polling_open(replica, EVIL)).status_code == 400
        assert not await _websocket_opens(replica, EVIL)
        device = Device(replica.url, cluster.token("native-app-user"))
        await device.connect()  # no Origin header: not a browser
        await device.disconnect()


async def test_dev_allows_any_origin_but_never_with_credentials(
    cluster: Cluster, tmp_path: Path
) -> None:
    with logs_on_failure(cluster):
        replica = await _started(
            cluster, mode="dev", database_url=f"sqlite+aiosqlite:///{tmp_path}/dev.db"
        )
        opened = await _polling_open(replica, EVIL)
        assert opened.status_code == 200
        assert opened.headers["access-control-allow-origin"] == EVIL
        assert opened.headers.get("access-control-allow-credentials") != "true"
        assert await _websocket_opens(replica, EVIL)
        async with httpx.AsyncClient(timeout=5) as http:
            reply = await http.get(f"{replica.url}/healthz", headers={"Origin": EVIL})
            assert reply.headers["access-control-allow-origin"] == "*"
            assert reply.headers.get("access-control-allow-credentials") != "true"


# --- TLS -----------------------------------------------------------------------------------------


async def test_grpc_serves_tls_to_clients_that_trust_its_ca(cluster: Cluster, pki: Pki) -> None:
    with logs_on_failure(cluster):
        replica = await _started(
            cluster, grpc_tls_cert_file=str(pki.server.cert), grpc_tls_key_file=str(pki.server.key)
        )
        target, token = f"127.0.0.1:{replica.grpc_port}", cluster.token("tls-user")
        trusted = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
        assert await grpc_status(target, token, trusted) == grpc.StatusCode.OK
        assert await grpc_status(target, token, None) == grpc.StatusCode.UNAVAILABLE


async def test_grpc_mutual_tls_admits_only_clients_with_a_certificate_of_its_ca(
    cluster: Cluster, pki: Pki
) -> None:
    with logs_on_failure(cluster):
        replica = await _started(
            cluster,
            grpc_tls_cert_file=str(pki.server.cert),
            grpc_tls_key_file=str(pki.server.key),
            grpc_tls_client_ca_file=str(pki.ca),
        )
        target, token = f"127.0.0.1:{replica.grpc_port}", cluster.token("mtls-user")
        ca = pki.ca.read_bytes()

        def as_(identity: Identity | None) -> grpc.ChannelCredentials:
            if identity is None:
                return grpc.ssl_channel_credentials(root_certificates=ca)
            return grpc.ssl_channel_credentials(
                root_certificates=ca,
                private_key=identity.key.read_bytes(),
                certificate_chain=identity.cert.read_bytes(),
            )

        refused = grpc.StatusCode.UNAVAILABLE
        assert await grpc_status(target, token, as_(pki.client)) == grpc.StatusCode.OK
        assert await grpc_status(target, token, as_(None)) == refused
        assert await grpc_status(target, token, as_(pki.stranger)) == refused


async def test_the_connections_client_speaks_mutual_tls(cluster: Cluster, pki: Pki) -> None:
    graph = ConnectionGraph(all_connected=True)
    credentials = grpc.ssl_server_credentials(
        [(pki.server.key.read_bytes(), pki.server.cert.read_bytes())],
        root_certificates=pki.ca.read_bytes(),
        require_client_auth=True,
    )
    server, port = await start_connections_server(graph, credentials=credentials)
    try:
        with logs_on_failure(cluster):
            tls = await _started(
                cluster,
                connections_address=f"127.0.0.1:{port}",
                connections_tls_ca_file=str(pki.ca),
                connections_tls_cert_file=str(pki.client.cert),
                connections_tls_key_file=str(pki.client.key),
            )
            plain = await _started(cluster, connections_address=f"127.0.0.1:{port}")
            for replica, expected in ((tls, True), (plain, False)):
                device = Device(replica.url, cluster.token(f"tls-{expected}"))
                await device.connect()
                reply = await device.call("createConversation", {"participantId": "peer"})
                await device.disconnect()
                if expected:
                    assert reply["ok"] is True, reply
                else:  # fails closed: never allowed on a guess
                    assert reply["error"]["code"] == "UNAVAILABLE", reply
            assert graph.calls >= 1
    finally:
        await server.stop(0)
