"""What SREs see: metrics that follow the traffic, a dashboard and alerts over them, JSON logs."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from tests.support.replicas import Cluster, Replica, devices_on, logs_on_failure
from tests.support.service import unique

FILES = Path(__file__).resolve().parents[2] / "charts" / "messaging-operator" / "files"
DASHBOARD = FILES / "grafana-dashboard.json"
RULES = FILES / "prometheus-rules.yaml"
METRIC = re.compile(r"\b(messaging_[a-z_]+)")

IDLE_CLIENT = """
import socketio, sys, time
client = socketio.Client(reconnection=False)
client.connect(sys.argv[1], auth={"token": sys.argv[2]}, transports=["websocket"])
print("connected", flush=True)
time.sleep(3600)
"""


async def until(replica: Replica, key: str, value: float, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while (current := await replica.metric(key)) != value:
        assert time.monotonic() < deadline, f"{key} is {current}, expected {value}"
        await asyncio.sleep(0.1)


async def test_the_connection_gauge_follows_clean_and_abrupt_disconnects(cluster: Cluster) -> None:
    [replica] = await cluster.start(1)
    users = [unique("u") for _ in range(3)]
    with logs_on_failure(cluster):
        placed = (users[0], replica), (users[0], replica), (users[1], replica)
        async with devices_on(cluster, *placed) as [first, _, _]:
            await until(replica, "messaging_connected_sockets", 3)
            assert await replica.metric("messaging_connected_users") == 2
            killed = [
                subprocess.Popen(  # noqa: ASYNC220 - a client process to kill, not awaited
                    [sys.executable, "-c", IDLE_CLIENT, replica.url, cluster.token(users[2])],
                    stdout=subprocess.PIPE,
                )
                for _ in range(2)
            ]
            for process in killed:
                assert process.stdout is not None
                assert process.stdout.readline().strip() == b"connected"
            await until(replica, "messaging_connected_sockets", 5)
            assert await replica.metric("messaging_connected_users") == 3
            for process in killed:
                process.kill()  # no goodbye: the TCP connection just drops
                process.wait()
            await until(replica, "messaging_connected_sockets", 3)
            await first.disconnect()
            await until(replica, "messaging_connected_sockets", 2)
        await until(replica, "messaging_connected_sockets", 0)
        assert await replica.metric("messaging_connected_users") == 0


async def test_counters_and_histograms_move_with_traffic(cluster: Cluster) -> None:
    a, b = await cluster.start(2)
    alice, bob = unique("alice"), unique("bob")
    with logs_on_failure(cluster):
        before = await a.metrics()
        async with devices_on(cluster, (alice, a), (bob, b)) as [a1, b1]:
            conversation = (await a1.ok("createConversation", {"participantId": bob}))["id"]
            for i in range(4):
                await a1.ok("sendMessage", {"conversationId": conversation, "content": str(i)})
            await a1.ok(
                "sendMessage",
                {"conversationId": conversation, "content": "0", "clientMessageId": "k"},
            )
            await a1.ok(
                "sendMessage",
                {"conversationId": conversation, "content": "0", "clientMessageId": "k"},
            )
            await a1.call("sendMessage", {"conversationId": conversation, "content": ""})
            for _ in range(5):
                await b1.next("newMessage")
            # The repeat's fan-out may still be on its way to b: it must reach b while bob's
            # socket is there (with no socket of bob's, b has nothing to deduplicate against).
            deadline = time.monotonic() + 10
            while (  # noqa: ASYNC110 - polling another process's metrics
                await b.metric("messaging_delivery_duplicates_dropped_total") < 1
                and time.monotonic() < deadline
            ):
                await asyncio.sleep(0.05)
            await b1.nothing("newMessage")  # dropped, not delivered a second time
        after = await a.metrics()
        received_on_b = await b.metric("messaging_backplane_received_total")
        dropped_on_b = await b.metric("messaging_delivery_duplicates_dropped_total")

    def moved(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved('messaging_messages_sent_total{outcome="stored"}') == 5
    assert moved('messaging_messages_sent_total{outcome="duplicate"}') == 1
    assert moved('messaging_socket_events_total{event="sendMessage",outcome="ok"}') == 6
    assert (
        moved('messaging_socket_events_total{event="sendMessage",outcome="VALIDATION_FAILED"}') == 1
    )
    assert moved("messaging_send_to_commit_seconds_count") == 6
    assert moved('messaging_socket_event_seconds_count{event="sendMessage"}') == 7
    assert moved('messaging_commit_to_deliver_seconds_count{path="local"}') == 5
    assert moved('messaging_connections_checks_total{result="connected",source="rpc"}') == 7
    assert moved('messaging_socket_connects_total{outcome="accepted"}') == 1
    assert moved('messaging_backplane_published_total{outcome="published"}') >= 5
    # The repeat is fanned out again (its first sender may have died before fanning it out);
    # b's replica already delivered it and drops it by its log position.
    assert received_on_b == 6
    assert dropped_on_b == 1
    # The group committer keeps its connection a moment after the last batch, then returns it.
    await until(a, 'messaging_db_pool_connections{state="in_use"}', 0.0)
    assert await a.metric('messaging_db_pool_connections{state="idle"}') >= 1


async def test_grpc_requests_are_counted_by_method_and_code(cluster: Cluster) -> None:
    import grpc  # noqa: PLC0415

    from messaging.proto.messaging.v1 import messaging_pb2 as pb  # noqa: PLC0415
    from messaging.proto.messaging.v1 import messaging_pb2_grpc as pb_grpc  # noqa: PLC0415

    [replica] = await cluster.start(1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.grpc_port}") as channel:
        stub = pb_grpc.MessagingServiceStub(channel)
        await stub.ListConversations(
            pb.ListConversationsRequest(),
            metadata=[("authorization", f"Bearer {cluster.token(unique())}")],
        )
        try:
            await stub.ListConversations(pb.ListConversationsRequest())
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
    samples = await replica.metrics()
    assert samples['messaging_grpc_requests_total{code="OK",method="ListConversations"}'] == 1
    assert (
        samples['messaging_grpc_requests_total{code="UNAUTHENTICATED",method="ListConversations"}']
        == 1
    )
    assert samples['messaging_grpc_request_seconds_count{method="ListConversations"}'] == 2


async def _exported(replica: Replica) -> set[str]:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{replica.metrics_url}/metrics")).text
    return {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and line[0] != "#"
    }


def _queried(expressions: list[str]) -> set[str]:
    names = set()
    for expr in expressions:
        names.update(METRIC.findall(expr))
    return names


async def test_the_dashboard_parses_and_every_metric_it_queries_is_exported(
    cluster: Cluster,
) -> None:
    [replica] = await cluster.start(1)
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    expressions += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    queried = _queried(expressions)
    exported = await _exported(replica)
    assert len(queried) >= 15
    assert {p["title"] for p in dashboard["panels"]} >= {
        "Connected sockets",
        "Messages per second by outcome",
        "Latency p99",
        "Server error ratio",
        "Backplane",
        "Ready pods",
    }
    missing = sorted(queried - exported)
    assert not missing, f"the dashboard queries metrics the service does not export: {missing}"


async def test_the_alert_rules_are_valid_and_use_only_exported_metrics(cluster: Cluster) -> None:
    [replica] = await cluster.start(1)
    checked = await asyncio.to_thread(
        subprocess.run,
        ["promtool", "check", "rules", str(RULES)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    queried = _queried([r["expr"] for r in rules])
    exported = await _exported(replica)
    missing = sorted(queried - exported)
    assert not missing, f"alerts use metrics the service does not export: {missing}"
    assert all(r["annotations"]["summary"] and r["labels"]["severity"] for r in rules)


async def test_metric_names_follow_prometheus_conventions(cluster: Cluster) -> None:
    [replica] = await cluster.start(1)
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{replica.metrics_url}/metrics")).text
    linted = await asyncio.to_thread(
        subprocess.run,
        ["promtool", "check", "metrics"],
        input=text,
        check=False,
        capture_output=True,
        text=True,
    )
    problems = [
        line for line in (linted.stdout + linted.stderr).splitlines() if "messaging_" in line
    ]
    assert not problems, problems


async def test_logs_are_one_json_object_per_line_with_request_context(cluster: Cluster) -> None:
    [replica] = await cluster.start(1, log_level="INFO")
    alice, bob = unique("alice"), unique("bob")
    cluster.graph.fail_with = __import__("grpc").StatusCode.UNAVAILABLE
    try:
        async with devices_on(cluster, (alice, replica)) as [a1]:
            reply = await a1.call("createConversation", {"participantId": bob})
            assert reply["error"]["code"] == "UNAVAILABLE"
    finally:
        cluster.graph.fail_with = None
    await asyncio.sleep(0.3)
    lines = [line for line in replica.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines[-200:]]  # every line parses
    failed = [r for r in records if r.get("event") == "createConversation"]
    assert failed, records
    record = failed[-1]
    assert record["level"] == "warning"
    assert set(record) >= {"ts", "level", "logger", "msg", "request_id", "sid", "user"}
    assert alice not in replica.log(), "raw user ids must not be logged"
    connected = [r for r in records if r["msg"] == "socket connected"]
    assert connected and connected[-1]["user"] == record["user"]
