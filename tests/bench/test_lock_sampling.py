"""The lock sampler of bench.scaleout against a real PostgreSQL: a contended counter row is seen
as a lock wait on its table, and writers of different rows are seen waiting for nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped]
import pytest

from bench.lockwaits import SAMPLE_SQL, WaitSample, parse_sample, statement_label
from tests.support.servers import PostgresServer

BUMP = "UPDATE counters SET position = position + 1 WHERE user_id = $1"
UPSERT = """
INSERT INTO counters AS c (user_id, position) VALUES ($1, 1)
ON CONFLICT (user_id) DO UPDATE SET position = c.position + 1
"""


@pytest.fixture
async def database(postgres_server: PostgresServer) -> AsyncIterator[str]:
    name = f"locks_{uuid.uuid4().hex[:8]}"
    postgres_server.create_database(name)
    url = (
        f"postgresql://{postgres_server.user}@{postgres_server.host}:{postgres_server.port}/{name}"
    )
    conn = await asyncpg.connect(url)
    await conn.execute("CREATE TABLE counters (user_id text PRIMARY KEY, position bigint)")
    await conn.execute("INSERT INTO counters VALUES ('alice', 0), ('bob', 0)")
    await conn.close()
    yield url


async def sample_until(
    sampler: asyncpg.Connection, waiting: int, attempts: int = 200
) -> WaitSample:
    """Sample until ``waiting`` backends wait on a lock (a blocked statement takes a moment)."""
    sample = parse_sample(await sampler.fetch(SAMPLE_SQL))
    for _ in range(attempts):
        if sum(n for k, n in sample.waits.items() if k.startswith("Lock:")) >= waiting:
            break
        await asyncio.sleep(0.05)
        sample = parse_sample(await sampler.fetch(SAMPLE_SQL))
    return sample


async def test_two_writers_of_one_counter_row_show_as_lock_waits_on_its_table(
    database: str,
) -> None:
    holder, second, third, sampler = [await asyncpg.connect(database) for _ in range(4)]
    try:
        holding = holder.transaction()
        await holding.start()
        await holder.execute(BUMP, "alice")
        blocked = [
            asyncio.create_task(conn.execute(BUMP.replace("$1", "'alice'")))
            for conn in (second, third)
        ]
        sample = await sample_until(sampler, waiting=2)
        await holding.commit()
        await asyncio.gather(*blocked)
    finally:
        for conn in (holder, second, third, sampler):
            await conn.close()
    # The first waiter holds the row's tuple lock and waits for the holder's transaction; the
    # second queues on the tuple lock. Both are attributed to the table.
    assert sample.waits.get("Lock:transactionid") == 1
    assert sample.waits.get("Lock:tuple") == 1
    assert sample.locks == {
        "transactionid on counters (ShareLock)": 1,
        "tuple on counters (ExclusiveLock)": 1,
    }
    assert sample.waits.get("ClientInTransaction") == 1  # the holder, between statements


async def test_an_upsert_waiting_on_a_counter_row_is_named_by_its_statement(database: str) -> None:
    holder, waiter, sampler = [await asyncpg.connect(database) for _ in range(3)]
    try:
        holding = holder.transaction()
        await holding.start()
        await holder.execute(UPSERT, "alice")
        blocked = asyncio.create_task(waiter.execute(UPSERT, "alice"))
        sample = await sample_until(sampler, waiting=1)
        await holding.commit()
        await blocked
    finally:
        for conn in (holder, waiter, sampler):
            await conn.close()
    # ON CONFLICT DO UPDATE waits on the writer's transaction without a tuple lock.
    assert sample.locks == {f'transactionid in "{statement_label(UPSERT)}" (ShareLock)': 1}
    assert statement_label(UPSERT).startswith("INSERT INTO counters")


async def test_writers_of_different_counter_rows_wait_for_nothing(database: str) -> None:
    first, second, sampler = [await asyncpg.connect(database) for _ in range(3)]
    try:
        async with first.transaction(), second.transaction():
            await first.execute(BUMP, "alice")
            await second.execute(BUMP, "bob")
            sample = parse_sample(await sampler.fetch(SAMPLE_SQL))
    finally:
        for conn in (first, second, sampler):
            await conn.close()
    assert sample.active == 2
    assert sample.locks == {}
    assert not any(k.startswith("Lock:") for k in sample.waits)
