"""Reading messaging_connected_sockets from pods' /metrics pages over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from messaging_operator.scraping import metrics_url, parse_connected_sockets, read_pods

PAGE = """# HELP messaging_connected_sockets Sockets connected to this process.
# TYPE messaging_connected_sockets gauge
messaging_connected_sockets 1234.0
# HELP process_cpu_seconds_total CPU.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 3.5
"""


def test_the_gauge_is_read_from_a_prometheus_page() -> None:
    assert parse_connected_sockets(PAGE) == 1234.0


def test_labelled_series_are_summed() -> None:
    page = (
        "# TYPE messaging_connected_sockets gauge\n"
        'messaging_connected_sockets{transport="websocket"} 10\n'
        'messaging_connected_sockets{transport="polling"} 5\n'
    )
    assert parse_connected_sockets(page) == 15.0


def test_a_page_without_the_gauge_or_not_prometheus_at_all_is_missing() -> None:
    assert parse_connected_sockets("# TYPE other gauge\nother 1\n") is None
    assert parse_connected_sockets("<html>not metrics</html>\n") is None


def test_ipv6_pod_addresses_are_bracketed() -> None:
    assert metrics_url("fd00::5", 8000) == "http://[fd00::5]:8000/metrics"
    assert metrics_url("10.0.0.5", 8000) == "http://10.0.0.5:8000/metrics"


@pytest.fixture
async def pod_server() -> AsyncIterator[int]:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        assert server.port is not None
        yield server.port
    finally:
        await server.close()


async def test_answering_pods_report_values_and_silent_ones_none(pod_server: int) -> None:
    async with aiohttp.ClientSession() as session:
        values = await read_pods(session, [("up", "127.0.0.1"), ("down", "127.0.0.2")], pod_server)
    assert values == {"up": 1234.0, "down": None}
