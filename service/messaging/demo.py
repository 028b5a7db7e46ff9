"""The demo web client of ``messaging dev``: a page at ``/`` that signs in as a demo user.

Plain HTML and JavaScript with the official socket.io-client (vendored in ``static/demo/``, no
build step), so a client developer sees every event working before writing a line. The page gets
its token from ``POST /demo/token``, which mints one for the demo users only; both exist only
while ``MESSAGING_DEMO_CLIENT`` is on, which ``messaging dev`` sets and production mode refuses.
Every response carries a strict Content-Security-Policy: scripts and styles from this origin
only, no inline code, no framing, connections to this origin only.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from messaging.auth import mint_token
from messaging.dev_connections import DEMO_USERS
from messaging.settings import Settings

STATIC = Path(__file__).parent / "static" / "demo"
FILES = {"app.js": "text/javascript", "app.css": "text/css", "socket.io.min.js": "text/javascript"}

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
# Demo tokens are short-lived: the page asks for a fresh one when it connects again.
TOKEN_TTL_SECONDS = 3600


def add_demo_client(api: FastAPI, settings: Settings) -> None:
    """Serve the page, its files and the demo-token endpoint on ``api`` (dev mode only)."""
    if not settings.demo_client:
        return

    @api.get("/", include_in_schema=False)
    async def index() -> Response:
        return _file("index.html", "text/html; charset=utf-8")

    @api.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204, headers=SECURITY_HEADERS)  # browsers ask; none to give

    @api.get("/demo/users", include_in_schema=False)
    async def demo_users() -> Response:
        return JSONResponse({"users": list(DEMO_USERS)}, headers=SECURITY_HEADERS)

    @api.get("/demo/{name}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        if name not in FILES:  # a fixed list: no path from the request reaches the disk
            return JSONResponse({"detail": "Not Found"}, status_code=404, headers=SECURITY_HEADERS)
        return _file(name, FILES[name])

    @api.post("/demo/token", include_in_schema=False)
    async def demo_token(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        user = body.get("user") if isinstance(body, dict) else None
        if user not in DEMO_USERS:
            return JSONResponse(
                {"detail": f"user must be one of {', '.join(DEMO_USERS)}"},
                status_code=422,
                headers=SECURITY_HEADERS,
            )
        token = mint_token(settings, user, ttl_seconds=TOKEN_TTL_SECONDS)
        return JSONResponse({"user": user, "token": token}, headers=SECURITY_HEADERS)


def _file(name: str, media_type: str) -> Response:
    return FileResponse(STATIC / name, media_type=media_type, headers=SECURITY_HEADERS)
