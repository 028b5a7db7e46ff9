"""What reading history from a streaming replica costs: statements per read on each server, and
the latency of ``Chat.history`` on the primary alone against the primary plus a replica.

    .venv/bin/python -m bench.read_replica            # 2,000 reads per arm and concurrency
    .venv/bin/python -m bench.read_replica --quick    # 300

A private PostgreSQL primary (bench settings, see ``bench.cluster``) and a hot standby made from
it with ``pg_basebackup -R``; one conversation of 2,000 messages with reactions. Two ``Chat``s
built by the app factory (``build_service``, nothing started): one with
``MESSAGING_DATABASE_READ_URL`` and one without. Each round reads pages of 50 (a random depth)
through ``Chat.history``, sequentially and with 16 reads in flight, alternating the arms round by
round (A/B interleaved: the machine is shared and its load moves). Statements are counted per
engine with SQLAlchemy's ``before_cursor_execute`` event (load-independent), latency is wall
time (load-dependent: the load average is recorded). Writes bench/results/read_replica.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from bench import cluster
from messaging.app import build_service
from messaging.bench.accounting import LatencySummary
from messaging.chat import Chat
from messaging.cursor import encode_page_token
from messaging.ids import uuid7_at
from messaging.metrics import READ_REPLICA_READS
from messaging.records import NewMessage
from messaging.settings import Settings
from messaging.storage import conversations as conversation_sql
from messaging.storage import message_changes as change_store
from messaging.storage import messages as message_sql
from tests.support.servers import free_port, postgres_bin_dir

MESSAGES = 2_000
PAGE = 50
CONCURRENCY = (1, 16)


def _count(engine: AsyncEngine, counts: Counter[str], name: str) -> None:
    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _one(*_: Any) -> None:
        counts[name] += 1


def _as_owner(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def start_replica(primary_port: int, workdir: Path) -> tuple[int, Path]:
    bin_dir = postgres_bin_dir()
    assert bin_dir is not None
    data = workdir / "replica"
    workdir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres")
    subprocess.run(
        _as_owner([str(bin_dir / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary_port),
                   "-U", "bench", "-D", str(data), "-R", "-X", "stream", "-c", "fast"]),
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c max_connections=300"
    subprocess.run(
        _as_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options,
                   "-l", str(workdir / "replica.log"), "-w", "start"]),
        check=True, capture_output=True,
    )  # fmt: skip
    return port, data


def stop_replica(data: Path) -> None:
    bin_dir = postgres_bin_dir()
    assert bin_dir is not None
    subprocess.run(
        _as_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
        check=False,
        capture_output=True,
    )


async def seed(
    chat: Chat, alice: str, bob: str
) -> tuple[uuid.UUID, list[tuple[datetime, uuid.UUID]]]:
    conversation_id = uuid.uuid4()
    start = datetime.now(UTC) - timedelta(days=1)
    positions: list[tuple[datetime, uuid.UUID]] = []
    async with chat.engine.begin() as conn:
        await conversation_sql.get_or_create_conversation(
            conn, conversation_id=conversation_id, user_a=alice, user_b=bob, created_at=start
        )
        batch = []
        for i in range(MESSAGES):
            at = start + timedelta(seconds=i)
            message_id = uuid7_at(int(at.timestamp() * 1000))
            batch.append(NewMessage(message_id, conversation_id, alice, f"m{i}", at, None))
            positions.append((at, message_id))
        for i in range(0, MESSAGES, 500):
            await message_sql.insert_messages(conn, batch[i : i + 500])
        for at, message_id in positions[::10]:
            await change_store.add_reaction(
                conn, message_id=message_id, emoji="+1", user_id=bob, at=at
            )
    return conversation_id, positions


async def one_round(
    chat: Chat,
    user: str,
    conversation: uuid.UUID,
    tokens: list[str],
    *,
    reads: int,
    in_flight: int,
) -> list[float]:
    latencies: list[float] = []
    queue = list(range(reads))

    async def worker() -> None:
        while queue:
            queue.pop()
            token = random.choice(tokens)  # noqa: S311 - a sample, not a secret
            started = time.perf_counter()
            page = await chat.messages.history(
                user, conversation_id=conversation, page_size=PAGE, page_token=token
            )
            latencies.append(time.perf_counter() - started)
            assert len(page.items) == PAGE

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return latencies


async def main(reads: int, rounds: int) -> dict[str, Any]:  # noqa: PLR0915 - one run, in order
    workdir = Path(tempfile.mkdtemp(prefix="bench-read-replica-"))
    procs = cluster.Processes(workdir)
    replica_data: Path | None = None
    try:
        primary = procs.postgres()
        url = primary.url("postgres")
        cluster.migrate({"MESSAGING_DATABASE_URL": url, "MESSAGING_JWT_SECRET": cluster.JWT_SECRET})
        replica_port, replica_data = start_replica(primary.port, workdir / "standby")
        replica_url = f"postgresql://bench@127.0.0.1:{replica_port}/postgres"
        base: dict[str, Any] = {
            "database_url": url,
            "jwt_secret": cluster.JWT_SECRET,
            "log_level": "WARNING",
        }
        plain = build_service(Settings(**base)).chat
        routed_service = build_service(Settings(**base, database_read_url=replica_url))
        routed = routed_service.chat
        assert routed_service.replica is not None
        counts: dict[str, Counter[str]] = {"primary_only": Counter(), "with_replica": Counter()}
        _count(plain.engine, counts["primary_only"], "primary")
        _count(routed.engine, counts["with_replica"], "primary")
        _count(routed_service.replica.engine, counts["with_replica"], "replica")
        alice, bob = "alice", "bob"
        conversation, positions = await seed(plain, alice, bob)
        key = Settings(**base).cursor_key
        tokens = [
            encode_page_token(key, kind="history", scope=str(conversation), at=at, row_id=mid)
            for at, mid in positions[PAGE:]
        ]
        arms = {"primary_only": plain, "with_replica": routed}
        for chat in arms.values():  # warm: pools, the conversation cache, the replica caught up
            await one_round(chat, bob, conversation, tokens, reads=50, in_flight=4)
        samples: dict[str, dict[int, list[float]]] = {a: {c: [] for c in CONCURRENCY} for a in arms}
        done: dict[str, dict[int, int]] = {a: {c: 0 for c in CONCURRENCY} for a in arms}
        statements: dict[str, dict[int, Counter[str]]] = {
            a: {c: Counter() for c in CONCURRENCY} for a in arms
        }
        loads = [os.getloadavg()[0]]
        for _ in range(rounds):
            for in_flight in CONCURRENCY:
                for arm, chat in arms.items():
                    before = Counter(counts[arm])
                    lat = await one_round(
                        chat, bob, conversation, tokens, reads=reads // rounds, in_flight=in_flight
                    )
                    statements[arm][in_flight] += counts[arm] - before
                    samples[arm][in_flight] += lat
                    done[arm][in_flight] += len(lat)
            loads.append(os.getloadavg()[0])
        result: dict[str, Any] = {
            "revision": cluster.revision(),
            "load_average_1m": loads,
            "messages": MESSAGES,
            "page": PAGE,
            "arms": {},
        }
        for arm in arms:
            for in_flight in CONCURRENCY:
                n = done[arm][in_flight]
                summary = LatencySummary.of_microseconds(
                    int(s * 1_000_000) for s in samples[arm][in_flight]
                )
                per_read = {k: v / n for k, v in statements[arm][in_flight].items()}
                result["arms"][f"{arm}/{in_flight}"] = {
                    "reads": n,
                    "statements_per_read": per_read,
                    "latency_ms": summary.as_json(),
                }
                print(
                    f"{arm:>13} in flight {in_flight:>2}: {n} reads, statements per read "
                    + ", ".join(f"{k} {v:.2f}" for k, v in sorted(per_read.items()))
                    + f"; latency ms p50 {summary.p50_ms:.2f} p99 {summary.p99_ms:.2f}"
                )
        served = {
            f"{sample.labels['served_by']}/{sample.labels['reason']}": sample.value
            for metric in READ_REPLICA_READS.collect()
            for sample in metric.samples
            if sample.name.endswith("_total") and sample.labels["read"] == "history"
        }
        result["with_replica_served"] = served
        print(f"with_replica reads by where served and why (warm-up included): {served}")
        print(f"load average (1 min) during the run: {loads}")
        for svc in (plain, routed):
            await svc.engine.dispose()
        await routed_service.replica.dispose()
        cluster.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (cluster.RESULTS_DIR / "read_replica.json").write_text(
            json.dumps(result, indent=2, default=str)
        )
        return result
    finally:
        if replica_data is not None:
            stop_replica(replica_data)
        procs.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    reads = 300 if args.quick else 2000
    asyncio.run(main(reads, rounds=5 if args.quick else 10))
