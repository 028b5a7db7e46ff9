"""The harness's ports: a replica must never lose its port to a client socket or another worker.

CI once failed because a replica's gRPC port, taken from ``bind(0)``, had meanwhile become the local
port of some outbound connection ("address already in use"): the kernel draws both from the same
ephemeral range. These pin down the rules that make that impossible.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.support import servers


def test_ports_come_from_outside_the_kernels_ephemeral_range() -> None:
    low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    for port in servers.free_ports(50):
        assert not low <= port <= high


def test_a_process_never_offers_the_same_port_twice() -> None:
    offered = [servers.free_port() for _ in range(300)] + servers.free_ports(300)
    assert len(set(offered)) == len(offered)


def test_a_port_something_listens_on_is_skipped() -> None:
    upcoming = servers.free_port() + 1  # the walk is sequential within a slice
    with socket.socket() as listener:
        listener.bind((servers.LOOPBACK, upcoming))
        listener.listen()
        assert upcoming not in servers.free_ports(5)


def test_two_xdist_workers_walk_disjoint_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    first = set(servers._port_slice())
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    second = set(servers._port_slice())
    assert first and second and not first & second
