"""Webhooks: events per second delivered, and what one endpoint costs the send path.

    .venv/bin/python -m bench.webhooks            # 4 alternating send-path runs of 10 s
    .venv/bin/python -m bench.webhooks --quick    # 2 runs of 6 s, 2,000 events delivered

1. A private PostgreSQL (``bench.cluster``'s settings), the Connections stand-in, ``messaging
   migrate``, and a webhook receiver in this process (aiohttp, answers 204 and counts).
2. The send path: one ``messaging serve`` replica (in-process backplane) under ``messaging
   bench`` (closed loop, ``--window`` in flight per sender), started afresh for each run, runs
   alternating between no endpoint, one endpoint wanting every type (so each message also
   writes its ``message.created`` row and its notification check in the batch's statement, and
   the same process's dispatcher sends while the load runs), and the same endpoint with the
   dispatcher idle during the run ("recorded only": the cost of the transactional write alone).
   Reports acked messages/s of each and the ratios to "none".
3. Delivery: with the endpoint, ``--events`` events written into the outbox in one transaction
   (``Outbox.record_many``), then the time until the replica's dispatcher has delivered them all
   to the receiver: events/s delivered (one replica, default concurrency 32).

Everything shares this machine's cores (load generator, replica, PostgreSQL, receiver); the load
average is printed, as other work on the machine moves the figures. Results:
bench/results/webhooks.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import create_async_engine

from bench import cluster
from messaging.outbox import Outbox, endpoints_from, message_reported
from messaging.records import MessageRecord
from messaging.settings import Settings
from tests.support import servers

SECRET = "whsec_" + base64.b64encode(b"benchmark-webhook-secret-32bytes").decode()


class Counter:
    def __init__(self) -> None:
        self.count = 0
        self._changed = asyncio.Condition()

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.count += 1
        async with self._changed:
            self._changed.notify_all()
        return web.Response(status=204)

    async def reach(self, count: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.count >= count)


async def start_receiver(counter: Counter, port: int) -> web.AppRunner:
    app = web.Application()
    app.router.add_post("/hooks", counter.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def send_path_run(
    procs: cluster.Processes,
    env: dict[str, str],
    args: argparse.Namespace,
    name: str,
) -> dict[str, Any]:
    service = await asyncio.to_thread(procs.service, name, env)
    out = procs.workdir / f"{name}.json"
    bench = await asyncio.create_subprocess_exec(
        *cluster.SERVICE, "bench", service.url,
        "--users", str(args.users), "--window", str(args.window),
        "--duration", str(args.duration), "--warmup", "2",
        "--jwt-secret", cluster.JWT_SECRET, "--out", str(out), "--quiet",
        cwd=str(servers.REPO),
    )  # fmt: skip
    await bench.wait()
    service.proc.stop()
    result: dict[str, Any] = json.loads(out.read_text())
    return result


async def delivery_run(
    procs: cluster.Processes, env: dict[str, str], counter: Counter, events: int
) -> dict[str, float]:
    service = await asyncio.to_thread(procs.service, "replica-delivery", env)
    settings = Settings(
        database_url=env["MESSAGING_DATABASE_URL"],
        webhooks=json.loads(env["MESSAGING_WEBHOOKS"]),
    )
    outbox = Outbox(endpoints_from(settings))
    engine = create_async_engine(settings.database_url)
    start_count = counter.count
    async with engine.begin() as conn:
        for first in range(0, events, 1000):
            batch = [
                ("message.reported", message_reported_sample(n)) for n in range(first, first + 1000)
            ]
            await outbox.record_many(conn, batch[: events - first])
    await engine.dispose()
    started = time.perf_counter()
    await counter.reach(start_count + events)
    seconds = time.perf_counter() - started
    service.proc.stop()
    return {"events": events, "seconds": round(seconds, 2), "per_s": round(events / seconds, 1)}


def message_reported_sample(n: int) -> dict[str, Any]:
    message = MessageRecord(
        uuid.uuid4(), uuid.uuid4(), f"author-{n}", "x" * 64, "sent", datetime.now(UTC), None
    )
    return message_reported(
        report_id=uuid.uuid4(),
        message=message,
        reporter_id=f"reporter-{n}",
        reason="spam",
        reported_at=datetime.now(UTC),
    )


async def run(args: argparse.Namespace, procs: cluster.Processes) -> dict[str, Any]:
    pg = procs.postgres()
    connections = procs.connections()
    counter = Counter()
    port = servers.free_port()
    receiver = await start_receiver(counter, port)
    try:
        hooks = json.dumps([{"url": f"http://127.0.0.1:{port}/hooks", "secret": SECRET}])
        databases = iter(range(1_000))

        async def fresh(**more: str) -> dict[str, str]:
            """A new migrated database per run: no run inherits another's outbox or checks."""
            name = f"webhooks_{next(databases)}"
            await asyncio.to_thread(pg.create_database, name)
            url = pg.url(name)
            env = cluster.service_env(
                database_url=url, connections=connections, workdir=procs.workdir
            )
            await asyncio.to_thread(cluster.migrate, env)
            return {**env, **more}

        base: dict[str, str] = {}
        hooked = {"MESSAGING_WEBHOOKS": hooks}
        # Recorded but not sent during the run: the dispatcher's first pass comes at start-up,
        # the next a minute later. What the transactional write alone costs the send path.
        recorded_only = {**hooked, "MESSAGING_WEBHOOK_POLL_SECONDS": "60"}
        variants = (("none", base), ("one endpoint", hooked), ("recorded only", recorded_only))
        runs: dict[str, list[float]] = {label: [] for label, _ in variants}
        for index in range(args.rounds):
            for label, more in variants:
                name = f"replica-{label.replace(' ', '-')}-{index}"
                result = await send_path_run(procs, await fresh(**more), args, name)
                acked = result["rates"]["acked_per_s"]
                runs[label].append(acked)
                print(f"send path, {label}: {acked:,.0f} acked/s", flush=True)
        delivered_during_load = counter.count
        env = await fresh(**hooked)
        delivery = await delivery_run(procs, env, counter, args.events)
        print(f"delivery: {delivery['per_s']:,.0f} events/s ({delivery['events']} events)")
    finally:
        await receiver.cleanup()
    mean = {k: sum(v) / len(v) for k, v in runs.items()}
    return {
        "send_path_acked_per_s": runs,
        "send_path_mean": mean,
        "ratio_one_endpoint_to_none": round(mean["one endpoint"] / mean["none"], 3),
        "ratio_recorded_only_to_none": round(mean["recorded only"] / mean["none"], 3),
        "delivered_during_load": delivered_during_load,
        "delivery": delivery,
        "load": {"users": args.users, "window": args.window, "duration_s": args.duration},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--events", type=int, default=5000)
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds, args.events = 6.0, 1, 2000
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="messaging-bench-webhooks-") as tmp:
        procs = cluster.Processes(Path(tmp))
        try:
            result = cluster.run_async(run(args, procs))
        except servers.ServerError as exc:
            print(f"webhooks benchmark failed: {exc}", file=sys.stderr)
            return 1
        finally:
            procs.close()
    result["load_average_before_after"] = [load_before[0], os.getloadavg()[0]]
    cluster.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (cluster.RESULTS_DIR / "webhooks.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(cluster.interruptible(main))
