"""A webhook receiver for benchmarks: answers every POST with 204 and counts it.

``bench.run --webhook`` starts it and gives the project's replicas one endpoint pointing here,
so the send path pays for writing every event to the outbox and the replicas for delivering it.

    python -m bench.webhook_sink PORT
"""

from __future__ import annotations

import sys

from aiohttp import web

received = {"events": 0}


async def _receive(request: web.Request) -> web.Response:
    await request.read()
    received["events"] += 1
    return web.Response(status=204)


async def _count(request: web.Request) -> web.Response:
    return web.json_response(received)


def main(argv: list[str]) -> None:
    app = web.Application()
    app.router.add_post("/hooks", _receive)
    app.router.add_get("/count", _count)
    web.run_app(app, host="127.0.0.1", port=int(argv[0]), access_log=None, print=None)


if __name__ == "__main__":
    main(sys.argv[1:])
