"""``messaging dev``: the whole platform on one machine with nothing else installed.

SQLite in ./messaging.db, the in-process backplane, and a stand-in Connections service with demo
users, all in one process; it prints a token per demo user so a client can connect at once.
"""

from __future__ import annotations

import os

from messaging.auth import mint_token
from messaging.dev_connections import (
    DEMO_PAIRS,
    DEMO_USERS,
    ConnectionGraph,
    start_connections_server,
)
from messaging.logs import configure_logging
from messaging.serve import run
from messaging.settings import Settings


def run_dev(*, port: int) -> int:
    os.environ.setdefault("MESSAGING_HTTP_PORT", str(port))
    os.environ.setdefault("MESSAGING_CONNECTIONS_ADDRESS", "127.0.0.1:50052")
    os.environ.setdefault("MESSAGING_DEMO_CLIENT", "true")
    settings = Settings()
    configure_logging(
        settings.log_level,
        settings.effective_log_format,
        user_hash_key=settings.log_user_hash_secret.get_secret_value().encode(),
    )
    _, _, connections_port = settings.connections_address.rpartition(":")

    servers = []  # the grpc.aio server stops if it is garbage-collected: keep it referenced

    async def start_connections() -> None:
        # Started from the service's lifespan, so it shares uvicorn's event loop.
        server, _ = await start_connections_server(
            ConnectionGraph.demo(), port=int(connections_port)
        )
        servers.append(server)

    url = f"http://{settings.http_host}:{settings.http_port}"
    grpc_at = f"{settings.grpc_host}:{settings.grpc_port}"
    metrics_at = f"http://{settings.effective_metrics_host}:{settings.metrics_port}/metrics"
    print(f"messaging dev: Socket.IO and HTTP on {url}, gRPC on {grpc_at}, metrics {metrics_at}")
    if settings.demo_client:
        print(f"demo web client: open {url}/ and pick a demo user")
    print(f"demo connections: {', '.join(f'{a}-{b}' for a, b in DEMO_PAIRS)}")
    if settings.webhooks_console:
        print("webhook events are printed here (MESSAGING_WEBHOOKS_CONSOLE)")
    if settings.effective_attachments_backend == "local":
        print(f"attachments: stored in {settings.attachments_dir}, served by {url} (signed links)")
    for user in DEMO_USERS:
        print(f"  token for {user}: {mint_token(settings, user)}")
    print(
        f'try: python -c "import socketio; c = socketio.Client(); '
        f"c.connect('{url}', auth={{'token': '<alice token>'}}); "
        f"print(c.call('createConversation', {{'participantId': 'bob'}}))\"",
        flush=True,
    )
    run(settings, before_start=start_connections)
    return 0
