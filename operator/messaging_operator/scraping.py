"""Reading `messaging_connected_sockets` from the messaging pods, the autoscaler's only input.

The operator reads every ready pod's /metrics directly (like the HPA's per-pod metrics, without a
metrics adapter in between). A pod that does not answer is reported as missing, which the scaling
rules treat conservatively; it never counts as zero connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

CONNECTED_SOCKETS = "messaging_connected_sockets"


def parse_connected_sockets(text: str) -> float | None:
    """The gauge's value (summed over label sets) from a Prometheus text page, None if absent."""
    try:
        for family in text_string_to_metric_families(text):
            if family.name == CONNECTED_SOCKETS:
                return sum(sample.value for sample in family.samples)
    except ValueError:
        return None
    return None


def metrics_url(pod_ip: str, port: int) -> str:
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    return f"http://{host}:{port}/metrics"


async def read_connected_sockets(
    session: aiohttp.ClientSession, pod_ip: str, port: int, *, timeout_s: float = 2.0
) -> float | None:
    try:
        async with session.get(
            metrics_url(pod_ip, port), timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as response:
            if response.status != 200:
                return None
            return parse_connected_sockets(await response.text())
    except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
        return None


async def read_pods(
    session: aiohttp.ClientSession, pods: Iterable[tuple[str, str]], port: int
) -> dict[str, float | None]:
    """Concurrently read each (name, IP); the answer maps pod names to values or None."""
    pods = list(pods)
    values = await asyncio.gather(*(read_connected_sockets(session, ip, port) for _, ip in pods))
    return {name: value for (name, _), value in zip(pods, values, strict=True)}
