"""Autoscaling from real metrics: real service processes on the pods' IPs, real Socket.IO clients.

kwok runs no containers, so this test plays the kubelet for the server pods: for every running
pod it starts `messaging serve` bound to that pod's loopback IP (kwok hands them out from
127.0.100.0/24) on the ports the pod declares, and stops it when the pod goes away. The operator
then reads `messaging_connected_sockets` from the pods' /metrics exactly as in a cluster, on
the metrics port (http://<podIP>:9090).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import socketio

from tests.operator.conftest import RunningOperator, apply_example
from tests.operator.kubeapi import Kube

T = TypeVar("T")
SECRET = "live-autoscaling-secret-long-enough-for-hs256"
SERVER_PODS = "app.kubernetes.io/instance=chat,app.kubernetes.io/component=server"
WINDOW = 10  # scaleDownStabilizationSeconds of the cluster under test
TARGET = 5  # targetConnectionsPerPod
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


def service_env(pod_ip: str, workdir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MESSAGING_MODE": "dev",
        "MESSAGING_HTTP_HOST": pod_ip,
        "MESSAGING_HTTP_PORT": "8000",
        "MESSAGING_GRPC_HOST": pod_ip,
        "MESSAGING_GRPC_PORT": "50051",
        # Where the service serves /metrics (the operator sets these on its pods).
        "MESSAGING_METRICS_HOST": pod_ip,
        "MESSAGING_METRICS_PORT": "9090",
        "MESSAGING_DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/messaging.db",
        "MESSAGING_JWT_SECRET": SECRET,
        "MESSAGING_REPLICA_ID": workdir.name,
        "MESSAGING_LOG_LEVEL": "WARNING",
    }


def messaging_binary() -> str:
    """The `messaging` console script of the interpreter running the tests."""
    script = Path(sys.executable).parent / "messaging"
    if not script.exists():
        raise AssertionError(f"the `messaging` console script is not installed: {script}")
    return str(script)


@dataclass
class PodAgent:
    """Stands in for the kubelet of the server pods: one `messaging serve` per running pod."""

    kube: Kube
    workdir: Path
    processes: dict[str, tuple[str, subprocess.Popen[bytes]]] = field(default_factory=dict)

    def sync(self) -> None:
        pods = {
            p["metadata"]["uid"]: p
            for p in self.kube.list("Pod", SERVER_PODS)
            if p["status"].get("phase") == "Running"
            and p["status"].get("podIP")
            and not p["metadata"].get("deletionTimestamp")
        }
        for uid in [uid for uid in self.processes if uid not in pods]:
            self._stop(uid)
        for uid, pod in pods.items():
            if uid not in self.processes:
                self._start(uid, pod["metadata"]["name"], pod["status"]["podIP"])

    def _start(self, uid: str, name: str, ip: str) -> None:
        home = self.workdir / name
        home.mkdir(exist_ok=True)
        log = (home / "serve.log").open("ab")
        process = subprocess.Popen(
            [messaging_binary(), "serve"],
            env=service_env(ip, home),
            cwd=home,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[uid] = (ip, process)

    def _stop(self, uid: str) -> None:
        _, process = self.processes.pop(uid)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def stop_all(self) -> None:
        for uid in list(self.processes):
            self._stop(uid)


def answers(ip: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{ip}:8000/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


async def eventually(
    condition: Callable[[], T | None], *, within: float, what: str, interval: float = 0.3
) -> T:
    """wait_until for async tests: the blocking checks run in a thread, so the Socket.IO
    clients in this event loop keep answering pings meanwhile."""
    deadline = time.monotonic() + within
    while True:
        value = await asyncio.to_thread(condition)
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def kubelet(agent: PodAgent) -> AsyncIterator[PodAgent]:
    stop = asyncio.Event()

    async def loop() -> None:
        while not stop.is_set():
            await asyncio.to_thread(agent.sync)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.3)

    task = asyncio.create_task(loop())
    try:
        yield agent
    finally:
        stop.set()
        await task
        await asyncio.to_thread(agent.stop_all)


def mint_token(user: str) -> str:
    result = subprocess.run(
        [messaging_binary(), "token", user],
        env={**os.environ, "MESSAGING_JWT_SECRET": SECRET},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


async def connect(ip: str, token: str, count: int) -> list[socketio.AsyncClient]:
    clients = []
    for _ in range(count):
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(
            f"http://{ip}:8000", auth={"token": token}, transports=["websocket"], wait_timeout=10
        )
        clients.append(client)
    return clients


def replicas(kube: Kube) -> int:
    return int((kube.get("Deployment", "chat") or {})["spec"]["replicas"])


def serving_pods(kube: Kube, agent: PodAgent, count: int) -> dict[str, str] | None:
    """name -> IP of the running server pods once `count` of them answer over HTTP."""
    pods = {
        p["metadata"]["name"]: p["status"]["podIP"]
        for p in kube.list("Pod", SERVER_PODS)
        if p["status"].get("phase") == "Running"
        and p["status"].get("podIP")
        and not p["metadata"].get("deletionTimestamp")
    }
    if len(pods) != count or not all(answers(ip) for ip in pods.values()):
        return None
    return pods


def status(kube: Kube) -> dict[str, Any]:
    return dict((kube.get("MessagingCluster", "chat") or {}).get("status") or {})


@pytest.mark.timeout(600)
async def test_clients_connecting_scale_up_and_leaving_scale_down_after_the_window(
    operator: RunningOperator, kube: Kube, tmp_path: Path
) -> None:
    await asyncio.to_thread(
        apply_example,
        kube,
        "minimal.yaml",
        {
            "replicas": {"min": 1, "max": 4},
            "autoscaling": {
                "enabled": True,
                "targetConnectionsPerPod": TARGET,
                "scaleDownStabilizationSeconds": WINDOW,
            },
        },
    )
    alice, bob = mint_token("alice"), mint_token("bob")
    async with kubelet(PodAgent(kube, tmp_path)) as agent:
        pods = await eventually(
            lambda: serving_pods(kube, agent, 1), within=120, what="one serving pod"
        )
        ((first, first_ip),) = pods.items()
        await eventually(
            lambda: (kube.condition("chat", "ScalingActive") or {}).get("status") == "True",
            within=30,
            what="the autoscaler reading real metrics",
        )
        assert replicas(kube) == 1

        # 12 sockets on one pod, 5 per pod wanted: ceil(12 / 5) = 3 pods, at once.
        crowd = await connect(first_ip, alice, 12)
        await eventually(lambda: replicas(kube) == 3, within=30, what="scale-up to 3")
        await eventually(
            lambda: (
                (s := status(kube)).get("desiredReplicas") == 3 and s.get("connectedSockets") == 12
            ),
            within=30,
            what="the status reporting 12 sockets and 3 desired replicas",
        )
        assert (kube.condition("chat", "ScalingActive") or {})["status"] == "True"
        await eventually(
            lambda: "ScaledUp" in {e["reason"] for e in kube.events_for("chat")},
            within=30,
            what="the ScaledUp event",
        )
        pods = await eventually(
            lambda: serving_pods(kube, agent, 3), within=60, what="three serving pods"
        )

        # Two sockets on a new pod: 14 over 3 pods is within the 10% tolerance, so no change.
        keeper = next(name for name in pods if name != first)
        stayers = await connect(pods[keeper], bob, 2)
        await eventually(
            lambda: status(kube).get("connectedSockets") == 14, within=30, what="14 sockets seen"
        )
        assert replicas(kube) == 3

        # The crowd leaves: 2 sockets want 1 pod, but not before the window has passed.
        for client in crowd:
            await client.disconnect()
        left = time.monotonic()
        await eventually(
            lambda: status(kube).get("connectedSockets") == 2, within=30, what="2 sockets seen"
        )
        while time.monotonic() - left < WINDOW - 2:
            assert replicas(kube) == 3, "scaled down inside the stabilization window"
            await asyncio.sleep(0.5)
        await eventually(lambda: replicas(kube) == 1, within=30, what="scale-down to 1")

        # The least-connected pods were marked cheapest to delete, so the one with clients stays.
        survivors = await eventually(
            lambda: serving_pods(kube, agent, 1), within=60, what="one pod left"
        )
        assert list(survivors) == [keeper]
        kept = kube.get("Pod", keeper) or {}
        assert kept["metadata"]["annotations"][DELETION_COST] == "2"
        assert all(client.connected for client in stayers)
        await eventually(
            lambda: "ScaledDown" in {e["reason"] for e in kube.events_for("chat")},
            within=30,
            what="the ScaledDown event",
        )
        for client in stayers:
            await client.disconnect()
    scale_metrics = operator.metrics()
    assert 'messaging_operator_scale_decisions_total{direction="up"}' in scale_metrics
    assert 'messaging_operator_scale_decisions_total{direction="down"}' in scale_metrics
