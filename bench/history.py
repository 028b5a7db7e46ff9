"""GetMessageHistory at depth: one conversation of 1,000,000 messages, pages of 50 over gRPC.

    .venv/bin/python -m bench.history            # 1,000,000 messages, 2,000 samples per depth
    .venv/bin/python -m bench.history --quick    # 100,000 messages, 300 samples (about a minute)
    .venv/bin/python -m bench.history --replicas 2   # the 8 clients over two replicas

What it does (issue 3's benchmark; target: p99 under 10 ms for a 50-message page at any depth):

1. Starts a private PostgreSQL (shared_buffers 256MB, fsync off: see ``bench.cluster``), runs
   ``messaging migrate``, and bulk-loads one conversation with COPY, writing what the service
   writes: UUIDv7 ids from ``messaging.ids`` for each message's millisecond, created_at (about
   one message every half second, 2% sharing their predecessor's exact timestamp, so ties are
   broken by id), and in the same transaction each message logged as created in both
   participants' change logs (``user_changes``, counters in ``user_streams``), as if the
   service had stored them.
   Then VACUUM ANALYZE, as autovacuum would do after such a load.
2. Starts the Connections stand-in and ``--replicas`` ``messaging serve`` processes (default one;
   the concurrent clients' channels are spread over them, as a Service spreads connections).
3. Page tokens for a depth are minted with ``messaging.cursor.encode_page_token`` and the key the
   service uses (``Settings.cursor_key``: derived from the JWT secret when
   MESSAGING_CURSOR_SECRET is unset), from the (created_at, id) of the message just above that
   depth. Walking a million messages to reach the deep pages would take minutes; to show the
   minted tokens are the ones the service hands out, the first pages are walked with page_size
   100 and the service's tokens compared byte for byte with the minted ones. Each sample of
   depth D reads the page below a depth in [D, D+1000) (a different page each time, not one
   cached page), and every response is checked: 50 messages, the first one the expected id.
4. Measures, per depth: gRPC latency sequentially (one client) and with 8 concurrent clients
   (one channel each), with the service process's CPU per request; the same read done
   in-process through ``storage.messages.history_page`` on an engine built like the service's
   (``db.create_engine``: pool_pre_ping, a transaction per read), the same on an AUTOCOMMIT
   connection without pre-ping (one round trip), and the bare SQL statement on a raw asyncpg
   connection (see ``StoreReads``). A Health.Check loop gives gRPC's floor. Prints EXPLAIN
   (ANALYZE, BUFFERS) of the deepest page and writes bench/results/history.json.

Latency is measured by the client, so it includes the client's own gRPC overhead; the machine
is shared (its load average is recorded), so re-run when figures look noisy. The processes run
the service code of ``--service-from`` (default HEAD; ``working`` for the checkout as it is);
the in-process reads use the checkout's ``messaging``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import sys
import tempfile
import time
import uuid
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from bench import cluster
from messaging import db
from messaging.auth import mint_token
from messaging.bench.accounting import LatencySummary
from messaging.cursor import encode_page_token
from messaging.ids import uuid7_at
from messaging.proto.messaging.v1 import messaging_pb2 as pb
from messaging.proto.messaging.v1 import messaging_pb2_grpc as pb_grpc
from messaging.settings import Settings
from messaging.storage import messages as message_sql
from tests.support import servers
from tests.support.servers import ServerError

PAGE_SIZE = 50
TARGET_P99_MS = 10.0
DEPTH_SPREAD = 1000  # samples of depth D read pages below depths D .. D+999
COPY_CHUNK = 100_000
TIE_SHARE = 0.02
USERS = ("history-alice", "history-bob")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
COLUMNS = (
    "id",
    "conversation_id",
    "author_id",
    "content",
    "status",
    "created_at",
    "client_message_id",
)


# --- the data set ----------------------------------------------------------------------------


@dataclass
class Dataset:
    """One conversation's messages in ascending (created_at, id) order, kept compactly."""

    conversation_id: uuid.UUID
    micros: array[int]
    ids: bytearray  # 16 bytes per message

    @property
    def count(self) -> int:
        return len(self.micros)

    def created_at(self, index: int) -> datetime:
        return _EPOCH + timedelta(microseconds=self.micros[index])

    def message_id(self, index: int) -> uuid.UUID:
        return uuid.UUID(bytes=bytes(self.ids[16 * index : 16 * index + 16]))

    def page_token(self, key: bytes, depth: int) -> str:
        """The token a client holds after reading the ``depth`` newest messages ('' for 0)."""
        if depth == 0:
            return ""
        last = self.count - depth  # the oldest message already read
        return encode_page_token(
            key,
            kind="history",
            scope=str(self.conversation_id),
            at=self.created_at(last),
            row_id=self.message_id(last),
        )

    def first_of_page(self, depth: int) -> str:
        """The id the page below ``depth`` starts with (newest first)."""
        return str(self.message_id(self.count - 1 - depth))


def generate(
    count: int, conversation_id: uuid.UUID, seed: int = 7
) -> tuple[Dataset, Iterator[list[tuple[Any, ...]]]]:
    """The data set and an iterator of COPY chunks."""
    rng = random.Random(seed)  # noqa: S311 - synthetic data, not secrets
    micros = array("q")
    ids = bytearray()
    dataset = Dataset(conversation_id, micros, ids)
    # About one message every half second, ending now: a week of one very busy conversation.
    now_ms = time.time_ns() // 1_000_000
    start_ms = now_ms - count * 500

    def chunks() -> Iterator[list[tuple[Any, ...]]]:
        ms = start_ms
        previous = 0
        chunk: list[tuple[Any, ...]] = []
        for index in range(count):
            if index and rng.random() < TIE_SHARE:
                at = previous  # same instant as the previous message: the id breaks the tie
            else:
                ms += rng.randint(1, 999)
                at = ms * 1000 + rng.randrange(1000)
            previous = at
            message_id = uuid7_at(at // 1000)
            micros.append(at)
            ids.extend(message_id.bytes)
            author = USERS[rng.getrandbits(1)]
            status = "read" if index < count - 20 else "sent"
            chunk.append(
                (
                    message_id,
                    conversation_id,
                    author,
                    f"message {index} of the history benchmark, a typical short chat line",
                    status,
                    _EPOCH + timedelta(microseconds=at),
                    str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                )
            )
            if len(chunk) == COPY_CHUNK:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    return dataset, chunks()


async def bulk_load(dsn: str, count: int) -> tuple[Dataset, dict[str, Any]]:
    """Create the conversation and COPY ``count`` messages into it; returns timings and sizes."""
    conversation_id = uuid.uuid4()
    dataset, chunks = generate(count, conversation_id)
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            low, high = sorted(USERS)
            created = datetime.now(UTC) - timedelta(days=30)
            await conn.execute(
                "INSERT INTO conversations (id, user_low, user_high, created_at) "
                "VALUES ($1, $2, $3, $4)",
                conversation_id,
                low,
                high,
                created,
            )
            await conn.executemany(
                "INSERT INTO participants (conversation_id, user_id) VALUES ($1, $2)",
                [(conversation_id, low), (conversation_id, high)],
            )
            loaded = 0
            for chunk in chunks:
                await conn.copy_records_to_table("messages", records=chunk, columns=COLUMNS)
                loaded += len(chunk)
                _progress(f"loaded {loaded:,} / {count:,} messages")
            # Each participant's log, in commit (here: creation) order, as the service writes it.
            await conn.execute(
                "INSERT INTO user_changes (user_id, position, message_id, kind, actor_id, "
                "changed_at) SELECT p.user_id, row_number() OVER (PARTITION BY p.user_id "
                "ORDER BY m.created_at, m.id), m.id, 'created', m.author_id, m.created_at "
                "FROM messages m JOIN participants p ON p.conversation_id = m.conversation_id "
                "WHERE m.conversation_id = $1",
                conversation_id,
            )
            await conn.execute(
                "INSERT INTO user_streams (user_id, position) SELECT user_id, max(position) "
                "FROM user_changes WHERE user_id = ANY($1::varchar[]) GROUP BY user_id "
                "ON CONFLICT (user_id) DO UPDATE SET position = excluded.position",
                list(USERS),
            )
        copied = time.perf_counter() - started
        await conn.execute("VACUUM (ANALYZE) messages, user_changes")
        await conn.execute("ANALYZE conversations, participants, user_streams")
        total = time.perf_counter() - started
        sizes = await conn.fetchrow(
            "SELECT pg_total_relation_size('messages') AS total, "
            "pg_relation_size('messages') AS heap, "
            "pg_relation_size('ix_messages_conversation_id_created_at') AS history_index"
        )
        counter = await conn.fetchval(
            "SELECT min(position) FROM user_streams WHERE user_id = ANY($1::varchar[])",
            list(USERS),
        )
        top = await conn.fetchval(
            "SELECT count(*) FROM messages WHERE conversation_id = $1", conversation_id
        )
    finally:
        await conn.close()
    if counter != top:
        raise ServerError(f"the change logs hold {counter} messages, the table {top}")
    _progress("")
    return dataset, {
        "messages": count,
        "copy_seconds": round(copied, 1),
        "total_seconds_with_vacuum_analyze": round(total, 1),
        "rows_per_second": round(count / copied),
        "table_mb": round(sizes["total"] / 2**20, 1),
        "heap_mb": round(sizes["heap"] / 2**20, 1),
        "history_index_mb": round(sizes["history_index"] / 2**20, 1),
        "stream_position": counter,
    }


# --- measurements ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """What one sample asks for: a token and the id its page must start with."""

    depth: int
    token: str
    first_id: str


def probes_for(dataset: Dataset, key: bytes, depth: int, samples: int) -> list[Probe]:
    spread = max(1, min(DEPTH_SPREAD, dataset.count - PAGE_SIZE - depth + 1))
    out = []
    for i in range(samples):
        d = depth + (i * 7919) % spread if depth else 0
        out.append(Probe(d, dataset.page_token(key, d), dataset.first_of_page(d)))
    return out


def summary(samples_ns: Sequence[int]) -> dict[str, Any]:
    return LatencySummary.of_microseconds(s // 1000 for s in samples_ns).as_json()


class Mismatch(Exception):
    """The service returned a page other than the one the token points to."""


def check_page(reply: pb.GetMessageHistoryResponse, probe: Probe, count: int) -> None:
    expected = min(PAGE_SIZE, count - probe.depth)
    if len(reply.messages) != expected or reply.messages[0].id != probe.first_id:
        got = reply.messages[0].id if reply.messages else None
        raise Mismatch(
            f"depth {probe.depth}: {len(reply.messages)} messages starting at {got}, "
            f"expected {expected} starting at {probe.first_id}"
        )


async def verify_tokens(
    stub: pb_grpc.MessagingServiceAsyncStub,
    metadata: tuple[tuple[str, str], ...],
    dataset: Dataset,
    key: bytes,
    pages: int = 3,
) -> list[int]:
    """Walk the first pages as a client would; the service's tokens must equal the minted ones."""
    token = ""
    checked = []
    for page in range(1, pages + 1):
        reply = await stub.GetMessageHistory(
            pb.GetMessageHistoryRequest(
                conversation_id=str(dataset.conversation_id), page_size=100, page_token=token
            ),
            metadata=metadata,
        )
        token = reply.next_page_token
        depth = 100 * page
        if token != dataset.page_token(key, depth):
            raise Mismatch(f"the service's token after {depth} messages differs from ours")
        checked.append(depth)
    return checked


async def health_latencies(address: str, samples: int) -> list[int]:
    """The transport's floor: a Health.Check round trip (no auth, no database)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="")
        for _ in range(20):
            await stub.Check(request)
        out = []
        for _ in range(samples):
            started = time.perf_counter_ns()
            await stub.Check(request)
            out.append(time.perf_counter_ns() - started)
        return out


@dataclass(frozen=True)
class GrpcRun:
    samples_ns: list[int]
    requests_per_s: float
    service_cpu_ms_per_request: float
    client_cpu_ms_per_request: float


async def grpc_latencies(
    services: Sequence[cluster.Service],
    metadata: tuple[tuple[str, str], ...],
    dataset: Dataset,
    probes: list[Probe],
    clients: int,
) -> GrpcRun:
    """Every probe's request with ``clients`` concurrent channels: latencies, rate, CPU costs.

    Channel i goes to replica i mod N, as a Kubernetes Service spreads gRPC connections over its
    pods; the CPU per request is the replicas' together. One client uses the first replica."""
    services = services[: max(1, min(clients, len(services)))]
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{services[i % len(services)].grpc_port}")
        for i in range(clients)
    ]
    try:
        stubs = [pb_grpc.MessagingServiceStub(c) for c in channels]
        conversation = str(dataset.conversation_id)
        warm = probes[: min(20, len(probes))]

        async def warm_up(stub: pb_grpc.MessagingServiceAsyncStub) -> None:
            for probe in warm:
                await stub.GetMessageHistory(
                    pb.GetMessageHistoryRequest(
                        conversation_id=conversation, page_size=PAGE_SIZE, page_token=probe.token
                    ),
                    metadata=metadata,
                )

        # All channels at once, as measured: the service's connections that only concurrency
        # uses prepare their statements here (asyncpg prepares per connection, and PostgreSQL
        # plans a prepared statement five times before it settles on a generic plan), not in
        # the first measured depth.
        await asyncio.gather(*(warm_up(stub) for stub in stubs))
        samples: list[int] = []

        async def client(stub: pb_grpc.MessagingServiceAsyncStub, share: list[Probe]) -> None:
            for probe in share:
                request = pb.GetMessageHistoryRequest(
                    conversation_id=conversation, page_size=PAGE_SIZE, page_token=probe.token
                )
                started = time.perf_counter_ns()
                reply = await stub.GetMessageHistory(request, metadata=metadata)
                samples.append(time.perf_counter_ns() - started)
                check_page(reply, probe, dataset.count)

        service_cpu = _cpu_seconds(services)
        client_cpu = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(client(s, probes[i::clients]) for i, s in enumerate(stubs)))
        elapsed = time.perf_counter() - started
        return GrpcRun(
            samples_ns=samples,
            requests_per_s=len(probes) / elapsed,
            service_cpu_ms_per_request=(_cpu_seconds(services) - service_cpu) * 1000 / len(probes),
            client_cpu_ms_per_request=(time.process_time() - client_cpu) * 1000 / len(probes),
        )
    finally:
        for channel in channels:
            await channel.close()


Before = tuple[datetime, uuid.UUID] | None


def befores_of(dataset: Dataset, probes: list[Probe]) -> list[Before]:
    """The (created_at, id) each probe's token decodes to."""
    out: list[Before] = []
    for probe in probes:
        last = dataset.count - probe.depth
        out.append((dataset.created_at(last), dataset.message_id(last)) if probe.depth else None)
    return out


class StoreReads:
    """The service's read done in-process, and two leaner ways to send the same statement.

    ``service``: an engine built like the service's (``db.create_engine``: pool_pre_ping), one
    transaction per read (``engine.begin()``, as ``Database.transaction``),
    ``storage.messages.history_page``. On PostgreSQL that is five round trips: the pre-ping's
    BEGIN and ROLLBACK, then BEGIN, the SELECT, COMMIT. ``one_round_trip``: the same
    ``storage.messages.history_page`` on an AUTOCOMMIT connection without pre-ping (only the
    SELECT). ``raw``: the page's statement (``history_statement``), prepared once, on a bare
    asyncpg connection (no SQLAlchemy at all).
    """

    def __init__(self, settings: Settings, dataset: Dataset) -> None:
        self.engine = db.create_engine(settings)
        self.lean = create_async_engine(
            settings.database_url, pool_size=10, isolation_level="AUTOCOMMIT"
        )
        self.dataset = dataset
        self.statements = {
            before: message_sql.history_statement(after_join=False, before=before).sql
            for before in (False, True)
        }
        self._raw: Any = None
        self._dsn = settings.database_url.replace("postgresql+asyncpg://", "postgresql://")

    async def __aenter__(self) -> StoreReads:
        self._raw = await asyncpg.connect(self._dsn)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._raw.close()
        await self.engine.dispose()
        await self.lean.dispose()

    async def _page(self, conn: AsyncConnection, before: Before) -> None:
        rows = await message_sql.history_page(
            conn, conversation_id=self.dataset.conversation_id, limit=PAGE_SIZE + 1, before=before
        )
        if not rows:
            raise Mismatch("message_sql.history_page returned nothing")

    async def service_page(self, before: Before) -> None:
        async with self.engine.begin() as conn:
            await self._page(conn, before)

    async def lean_page(self, before: Before) -> None:
        async with self.lean.connect() as conn:
            await self._page(conn, before)

    def _values(self, before: Before) -> list[Any]:
        if before is None:
            return [self.dataset.conversation_id, PAGE_SIZE + 1]
        return [self.dataset.conversation_id, before[0], before[1], PAGE_SIZE + 1]

    async def timed_store(self, befores: list[Before], *, lean: bool = False) -> list[int]:
        read = self.lean_page if lean else self.service_page
        for before in befores[:20]:
            await read(before)  # warm-up
        out = []
        for before in befores:
            started = time.perf_counter_ns()
            await read(before)
            out.append(time.perf_counter_ns() - started)
        return out

    async def timed_sql(self, befores: list[Before]) -> list[int]:
        prepared = await self._raw.prepare(self.statements[befores[0] is not None])
        for before in befores[:20]:
            await prepared.fetch(*self._values(before))
        out = []
        for before in befores:
            values = self._values(before)
            started = time.perf_counter_ns()
            await prepared.fetch(*values)
            out.append(time.perf_counter_ns() - started)
        return out

    async def explain(self, before: Before) -> str:
        statement = self.statements[before is not None]
        plan = await self._raw.fetch(
            "EXPLAIN (ANALYZE, BUFFERS, VERBOSE, SETTINGS) " + statement, *self._values(before)
        )
        return "\n".join(r[0] for r in plan)


def _cpu_seconds(services: Sequence[cluster.Service]) -> float:
    return sum(cluster.cpu_seconds(service.pid) for service in services)


async def measure(
    args: argparse.Namespace,
    services: Sequence[cluster.Service],
    database_url: str,
    dataset: Dataset,
) -> dict[str, Any]:
    settings = Settings(jwt_secret=SecretStr(cluster.JWT_SECRET), database_url=database_url)
    key = settings.cursor_key
    metadata = (("authorization", f"Bearer {mint_token(settings, USERS[0])}"),)
    address = f"127.0.0.1:{services[0].grpc_port}"
    depths = sorted({d for d in args.depths if 0 <= d <= dataset.count - PAGE_SIZE})

    channel = grpc.aio.insecure_channel(address)
    try:
        verified = await verify_tokens(
            pb_grpc.MessagingServiceStub(channel), metadata, dataset, key
        )
    finally:
        await channel.close()

    floor = summary(await health_latencies(address, args.samples))
    print(
        f"gRPC floor (Health.Check, 1 client): p50 {floor['p50']} ms, p99 {floor['p99']} ms, "
        f"max {floor['max']} ms\n"
    )
    _print_header(args.clients)
    results: dict[str, Any] = {}
    explain = ""
    cpu_start = _cpu_seconds(services)
    async with StoreReads(settings, dataset) as reads:
        for depth in depths:
            probes = probes_for(dataset, key, depth, args.samples)
            row: dict[str, Any] = {"depth": depth}
            for clients in (1, args.clients):
                run = await grpc_latencies(services, metadata, dataset, probes, clients)
                label = "grpc_sequential" if clients == 1 else f"grpc_{clients}_clients"
                row[label] = {
                    **summary(run.samples_ns),
                    "requests_per_s": round(run.requests_per_s),
                    "service_cpu_ms_per_request": round(run.service_cpu_ms_per_request, 3),
                    "client_cpu_ms_per_request": round(run.client_cpu_ms_per_request, 3),
                }
            befores = befores_of(dataset, probes)
            row["store_in_process"] = summary(await reads.timed_store(befores))
            row["store_one_round_trip"] = summary(await reads.timed_store(befores, lean=True))
            row["sql_raw_asyncpg"] = summary(await reads.timed_sql(befores))
            if depth == depths[-1]:
                explain = await reads.explain(befores[0])
            results[str(depth)] = row
            _print_row(row, args.clients)
        statements = {("keyset" if k else "first_page"): v for k, v in reads.statements.items()}
    return {
        "grpc_floor_health_check": floor,
        "depths": results,
        "sql": statements,
        "explain_analyze_deepest_page": explain,
        "tokens_verified_against_service_at_depths": verified,
        "service_cpu_seconds_while_measuring": round(_cpu_seconds(services) - cpu_start, 2),
    }


# --- output ----------------------------------------------------------------------------------


def _progress(text: str) -> None:
    if sys.stderr.isatty():
        print(f"\r{text:<60}", end="" if text else "\r", file=sys.stderr, flush=True)


def _fmt(summary: dict[str, Any], *keys: str) -> str:
    return " ".join(f"{summary[k]:>7.2f}" if summary[k] is not None else "    n/a" for k in keys)


def _print_header(clients: int) -> None:
    print("latencies in ms; cpu: the service's CPU ms per request")
    print(
        f"{'depth':>9} | {'gRPC, 1 client':^31} | {f'gRPC, {clients} clients':^39} "
        f"| {'service read':^15} | {'1 round trip':^15} | {'raw SQL':^15}"
    )
    print(
        f"{'':>9} | {'p50':>7} {'p99':>7} {'max':>7} {'cpu':>7} | {'p50':>7} {'p99':>7} "
        f"{'max':>7} {'req/s':>7} {'cpu':>7} | {'p50':>7} {'p99':>7} | {'p50':>7} {'p99':>7} "
        f"| {'p50':>7} {'p99':>7}"
    )


def _print_row(row: dict[str, Any], clients: int) -> None:
    seq = row["grpc_sequential"]
    conc = row[f"grpc_{clients}_clients"]
    print(
        f"{row['depth']:>9,} | {_fmt(seq, 'p50', 'p99', 'max', 'service_cpu_ms_per_request')} | "
        f"{_fmt(conc, 'p50', 'p99', 'max')} {conc['requests_per_s']:>7} "
        f"{_fmt(conc, 'service_cpu_ms_per_request')} | "
        f"{_fmt(row['store_in_process'], 'p50', 'p99')} | "
        f"{_fmt(row['store_one_round_trip'], 'p50', 'p99')} | "
        f"{_fmt(row['sql_raw_asyncpg'], 'p50', 'p99')}",
        flush=True,
    )


def verdict(depths: dict[str, Any], clients: int) -> dict[str, Any]:
    worst_seq = max(r["grpc_sequential"]["p99"] for r in depths.values())
    worst_conc = max(r[f"grpc_{clients}_clients"]["p99"] for r in depths.values())
    return {
        "target_p99_ms": TARGET_P99_MS,
        "worst_p99_ms_sequential": worst_seq,
        f"worst_p99_ms_{clients}_clients": worst_conc,
        "met_sequential": worst_seq < TARGET_P99_MS,
        f"met_{clients}_clients": worst_conc < TARGET_P99_MS,
    }


# --- driver ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100k messages, 300 samples")
    parser.add_argument("--messages", type=int, default=None, help="default 1,000,000")
    parser.add_argument("--samples", type=int, default=None, help="per depth (default 2,000)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent gRPC clients")
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="service processes the concurrent clients' channels are spread over (default 1; "
        "a MessagingCluster runs at least 2)",
    )
    parser.add_argument(
        "--depths",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        help="comma-separated depths in messages (default 0,1k,10k,100k,500k,999k,last page)",
    )
    parser.add_argument(
        "--service-from",
        default="HEAD",
        metavar="REF",
        help="commit whose service/ the processes run (default HEAD), or 'working'",
    )
    parser.add_argument("--out", type=Path, default=cluster.RESULTS_DIR / "history.json")
    parser.add_argument(
        "--cprofile",
        type=Path,
        default=None,
        metavar="OUT.prof",
        help="run the service under bench.profiled_serve: a CPU-clock cProfile of the measuring",
    )
    args = parser.parse_args(argv)
    if args.messages is None:
        args.messages = 100_000 if args.quick else 1_000_000
    if args.samples is None:
        args.samples = 300 if args.quick else 2_000
    if args.depths is None:
        n = args.messages
        args.depths = [0, 1_000, 10_000, n // 10, n // 2, n - n // 1000, n - PAGE_SIZE]
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_before = cluster.load_average()
    with tempfile.TemporaryDirectory(prefix="messaging-bench-history-") as tmp:
        procs = cluster.Processes(Path(tmp))
        try:
            measured_revision = procs.export_service(args.service_from)
            print(f"service code: {measured_revision}\nstarting PostgreSQL ...", flush=True)
            pg = procs.postgres()
            pg.create_database("history")
            database_url = pg.url("history")
            asyncpg_url = database_url.replace("postgresql://", "postgresql+asyncpg://")
            connections = procs.connections()
            env = cluster.service_env(
                database_url=database_url,
                connections=connections,
                workdir=Path(tmp),
                code=procs.code,
            )
            cluster.migrate(env)
            print(f"loading {args.messages:,} messages with COPY ...", flush=True)
            dataset, loaded = cluster.run_async(bulk_load(database_url, args.messages))
            print(
                f"loaded in {loaded['copy_seconds']} s ({loaded['rows_per_second']:,} rows/s), "
                f"{loaded['table_mb']} MB with indexes; VACUUM ANALYZE done "
                f"({loaded['total_seconds_with_vacuum_analyze']} s in all)",
                flush=True,
            )
            profiled = [sys.executable, "-m", "bench.profiled_serve", str(args.cprofile)]
            # The first replica is the one profiled (and the one client's).
            services = [
                procs.service(
                    f"history-service-{n}", env, profiled if args.cprofile and n == 0 else None
                )
                for n in range(args.replicas)
            ]
            service = services[0]
            if args.cprofile:
                args.cprofile.unlink(missing_ok=True)
                os.kill(service.proc.pid, signal.SIGUSR1)
            print(
                f"measuring {args.samples:,} pages of {PAGE_SIZE} per depth "
                f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)\n",
                flush=True,
            )
            measured = cluster.run_async(measure(args, services, asyncpg_url, dataset))
            if args.cprofile:
                os.kill(service.proc.pid, signal.SIGUSR2)
                servers.wait_until(args.cprofile.exists, "the service's profile", service.proc)
        finally:
            procs.close()
            procs.keep_logs(cluster.RESULTS_DIR / "logs" / "history")
    result = {
        "schema": "messaging-bench-history/1",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "messages": args.messages,
            "page_size": PAGE_SIZE,
            "samples_per_depth": args.samples,
            "concurrent_clients": args.clients,
            "replicas": args.replicas,
            "depth_spread": DEPTH_SPREAD,
            "postgres_settings": dict(cluster.BENCH_PG_SETTINGS),
            "tokens": "minted with messaging.cursor.encode_page_token and Settings.cursor_key "
            "(derived from MESSAGING_JWT_SECRET); checked equal to the service's own tokens",
        },
        "revision": measured_revision,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_before": load_before,
            "load_average_after": cluster.load_average(),
        },
        "load": loaded,
        **measured,
    }
    result["verdict"] = verdict(measured["depths"], args.clients)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with cluster.sigterm_unwinds():
            result = run(args)
    except (KeyboardInterrupt, cluster.Interrupted):
        print("\ninterrupted; every process started was stopped", file=sys.stderr)
        return 130
    except (ServerError, Mismatch) as exc:
        print(f"history benchmark failed: {exc}", file=sys.stderr)
        return 1
    print("\nEXPLAIN (ANALYZE, BUFFERS) of the deepest page:\n")
    print(result["explain_analyze_deepest_page"])
    v = result["verdict"]
    print(
        f"\ntarget p99 < {TARGET_P99_MS} ms: worst p99 {v['worst_p99_ms_sequential']} ms "
        f"sequential ({'met' if v['met_sequential'] else 'NOT met'}), "
        f"{v[f'worst_p99_ms_{args.clients}_clients']} ms with {args.clients} clients "
        f"({'met' if v[f'met_{args.clients}_clients'] else 'NOT met'}); load average "
        f"{result['machine']['load_average_before'][0]:.1f} -> "
        f"{result['machine']['load_average_after'][0]:.1f}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
