"""Socket.IO's Admin UI (https://socket.io/docs/v4/admin-ui/), off unless a setting turns it on.

python-socketio's ``instrument()`` serves the UI's protocol on the ``/admin`` namespace of the
same port; the UI (hosted at https://admin.socket.io, or self-hosted from the
``@socket.io/admin-ui`` package) connects there with its own username and password, never with a
user's JWT: the ``/`` namespace's handshake stays the only way in for clients. Defaults are the
careful ones: read-only (the UI cannot disconnect sockets or move them between rooms) and
``production`` reporting mode (no per-event reporting, so the send path does not pay for it).
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import socketio

from messaging.settings import Settings

log = logging.getLogger(__name__)

NAMESPACE = "/admin"


def check_credentials(settings: Settings, auth: Any) -> bool:
    """The UI's login against the configured one, in constant time."""
    if not isinstance(auth, dict):
        return False
    username, password = auth.get("username"), auth.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        return False
    expected = settings.socketio_admin_password.get_secret_value()
    same_user = hmac.compare_digest(username.encode(), settings.socketio_admin_username.encode())
    same_password = hmac.compare_digest(password.encode(), expected.encode())
    return same_user and same_password


def instrument(server: socketio.AsyncServer, settings: Settings) -> None:
    """Turn the Admin UI on for ``server`` when ``MESSAGING_SOCKETIO_ADMIN_ENABLED`` says so."""
    if not settings.socketio_admin_enabled:
        return
    server.instrument(
        auth=lambda auth: check_credentials(settings, auth),
        mode=settings.socketio_admin_mode,
        read_only=settings.socketio_admin_read_only,
        server_id=settings.replica_id,
        namespace=NAMESPACE,
    )
    log.info(
        "Socket.IO Admin UI on namespace %s (%s, %s)",
        NAMESPACE,
        settings.socketio_admin_mode,
        "read-only" if settings.socketio_admin_read_only else "read-write",
    )
